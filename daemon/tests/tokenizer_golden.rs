//! The tokenizer against its references: mistral-common's ids for every golden case from
//! both vocabulary sources, decoding back to the text, llama.cpp's GGUF tokenizer metadata
//! reproduced key for key, and the two sources agreeing on every token.

mod tokenizer_support;

use std::time::Instant;

use spillway::tokenizer::{DEFAULT_CONTROL_NAMES, Tokenizer};
use spillway_gguf::{GgufFile, MetaValue, ValueRef};
use tokenizer_support::{both, fixtures, gguf, golden, tekken, tekken_gguf_path, tekken_json_path};

#[test]
fn golden_ids_from_both_sources() {
    let cases = golden();
    assert!(cases.len() >= 29, "{} golden cases", cases.len());
    for (label, tok) in both() {
        for case in &cases {
            assert_eq!(
                tok.encode(&case.text),
                case.ids,
                "{label}: ids of {:?}",
                case.text
            );
        }
    }
}

#[test]
fn golden_round_trip_and_reference_decoding() {
    for (label, tok) in both() {
        for case in golden() {
            let ids = tok.encode(&case.text);
            assert_eq!(tok.decode(&ids).unwrap(), case.text, "{label}: round trip");
            assert_eq!(tok.decode(&case.ids).unwrap(), case.decoded, "{label}");
        }
    }
}

#[test]
fn corpus_lines_match_golden_texts() {
    // The corpus is the golden file's input: every line has a golden case.
    let corpus = std::fs::read_to_string(fixtures().join("tokenizer-corpus.txt")).unwrap();
    let texts: Vec<String> = golden().into_iter().map(|g| g.text).collect();
    for line in corpus.lines().filter(|l| !l.is_empty()) {
        let text: String = serde_json::from_str(line).unwrap();
        assert!(
            texts.contains(&text),
            "corpus line without golden ids: {text:?}"
        );
    }
}

#[test]
fn both_sources_hold_the_same_vocabulary() {
    let (a, b) = (tekken(), gguf());
    assert_eq!(a.n_vocab(), 131072);
    assert_eq!(a.n_vocab(), b.n_vocab());
    assert_eq!(a.vocab().n_control(), 1000);
    assert_eq!(a.vocab().control_names(), b.vocab().control_names());
    assert_eq!(a.vocab().special(), b.vocab().special());
    assert_eq!(a.vocab().add_special(), b.vocab().add_special());
    for id in 1000..a.n_vocab() as u32 {
        assert_eq!(
            a.vocab().token_bytes(id),
            b.vocab().token_bytes(id),
            "id {id}"
        );
    }
    let names = a.vocab().control_names();
    assert_eq!(&names[..20], DEFAULT_CONTROL_NAMES);
    assert_eq!(names[20], "<SPECIAL_20>");
    assert_eq!(names[999], "<SPECIAL_999>");
    let s = a.vocab().special();
    assert_eq!((s.bos, s.eos, s.unk, s.pad), (1, 2, 0, 11));
}

fn same(key: &str, ours: &MetaValue, theirs: ValueRef<'_>) {
    match (ours, theirs) {
        (MetaValue::String(a), ValueRef::Str(b)) => assert_eq!(a, b, "{key}"),
        (MetaValue::U32(a), ValueRef::U32(b)) => assert_eq!(a, &b, "{key}"),
        (MetaValue::I32(a), ValueRef::I32(b)) => assert_eq!(a, &b, "{key}"),
        (MetaValue::Bool(a), ValueRef::Bool(b)) => assert_eq!(a, &b, "{key}"),
        (MetaValue::Array(ty, items), ValueRef::Array(arr)) => {
            assert_eq!(*ty, arr.elem_type(), "{key}: element type");
            assert_eq!(items.len(), arr.len(), "{key}: length");
            for (i, (a, b)) in items.iter().zip(arr.iter()).enumerate() {
                same(&format!("{key}[{i}]"), a, b);
            }
        }
        (a, b) => panic!("{key}: ours {a:?}, the fixture's {b:?}"),
    }
}

#[test]
fn gguf_metadata_reproduces_the_converter_exactly() {
    let file = GgufFile::open(tekken_gguf_path()).unwrap();
    let theirs: Vec<(&str, ValueRef<'_>)> = file
        .metadata()
        .filter(|(k, _)| k.starts_with("tokenizer."))
        .collect();
    let ours = tekken().gguf_metadata().unwrap();
    assert_eq!(
        ours.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(),
        theirs.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
        "keys and their order"
    );
    for ((key, a), (_, b)) in ours.iter().zip(theirs) {
        same(key, a, b);
    }
    // The same holds for the vocabulary read back from the GGUF itself.
    let again = gguf().gguf_metadata().unwrap();
    assert!(again == ours, "GGUF-loaded vocabulary exports differently");
}

#[test]
fn merges_count_and_first_entries() {
    let merges = tekken().gguf_merges().unwrap();
    assert_eq!(merges.len(), 269443);
    assert_eq!(&merges[..5], ["Ġ Ġ", "Ġ t", "e r", "i n", "Ġ ĠĠĠ"]);
}

#[test]
fn load_times() {
    // Not a timed assertion (CI shares its cores), but the numbers stay visible with
    // `--nocapture`.
    let t = Instant::now();
    Tokenizer::from_tekken_json(tekken_json_path()).unwrap();
    eprintln!("tekken.json: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
    let t = Instant::now();
    let file = GgufFile::open(tekken_gguf_path()).unwrap();
    Tokenizer::from_gguf(&file).unwrap();
    eprintln!("GGUF vocabulary: {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
}
