//! Properties of the tokenizer on arbitrary input: it never panics, decoding gives the text
//! back, text never yields a control id (typed control-token names stay text), both
//! vocabulary sources agree, the streaming detokenizer only emits valid UTF-8 and adds up
//! to whole decoding; and untrusted vocabulary files are refused with errors that name the
//! problem.

mod tokenizer_support;

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use spillway::tokenizer::{DEFAULT_CONTROL_NAMES, Tokenizer, TokenizerError};
use spillway_gguf::{Gguf, GgufWriter, MetaValue, ValueType};
use tokenizer_support::{both, gguf, tekken};

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    }
}

const POOLS: &[&str] = &[
    "abcxyzABCXYZ0189 ",
    " \t\r\n",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\u{300}\u{301}\u{308}\u{94D}\u{93F}\u{E31}",
    "नमस्ते दुनियाสวัสดีครับ",
    "你好世界今天。，！こんにちはカタカナ",
    "😀🎉👍🏽👨\u{200D}👩🇫🇷",
    "ʰǅ\u{A0}\u{2028}\u{3000}éßł٣½",
    "[INST][/INST]<s></s>[TOOL_CALLS][SYSTEM_PROMPT]",
];

fn text() -> impl Strategy<Value = String> {
    let pools: Vec<BoxedStrategy<char>> = POOLS
        .iter()
        .map(|p| proptest::sample::select(p.chars().collect::<Vec<_>>()).boxed())
        .collect();
    let c = prop_oneof![6 => proptest::strategy::Union::new(pools), 1 => any::<char>()];
    proptest::collection::vec(c, 0..64).prop_map(|v| v.into_iter().collect())
}

fn check_text(s: &str) {
    let ids = tekken().encode(s);
    assert!(
        ids.iter()
            .all(|&id| id >= 1000 && (id as usize) < tekken().n_vocab()),
        "{s:?} gave a control or out-of-range id: {ids:?}"
    );
    assert_eq!(tekken().decode(&ids).unwrap(), s, "round trip");
    assert_eq!(
        gguf().encode(s),
        ids,
        "GGUF and tekken.json disagree on {s:?}"
    );
    // Streaming: the chunks are valid UTF-8 (they are &str), none is a replacement
    // character (the text was valid), and together they are the text.
    let mut detok = tekken().detokenizer();
    let mut streamed = String::new();
    for &id in &ids {
        streamed.push_str(detok.push(id).unwrap());
    }
    streamed.push_str(detok.finish());
    assert_eq!(streamed, s, "streamed decoding");
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn arbitrary_unicode_round_trips(s in any::<String>()) {
        check_text(&s);
    }

    #[test]
    fn mixed_scripts_round_trip(s in text()) {
        check_text(&s);
    }

    /// Long runs of one character make single long pieces (the heap BPE path).
    #[test]
    fn long_pieces_round_trip(c in prop::sample::select(vec!['a', 'A', '你', 'ก', '\u{301}', ' ', '!', '7']),
                              n in 90usize..1500) {
        let s: String = std::iter::repeat_n(c, n).collect();
        check_text(&s);
    }

    /// Any id sequence, control ids and split characters included: streaming equals whole
    /// decoding, even where the bytes are not valid UTF-8.
    #[test]
    fn streaming_equals_whole_decoding(ids in proptest::collection::vec(0u32..131072, 0..40)) {
        let tok = tekken();
        let whole = tok.decode(&ids).unwrap();
        let mut detok = tok.detokenizer();
        let mut streamed = String::new();
        for &id in &ids {
            streamed.push_str(detok.push(id).unwrap());
        }
        streamed.push_str(detok.finish());
        prop_assert_eq!(streamed, whole);
    }

    /// Byte tokens (ids 1000..1256) split characters anywhere.
    #[test]
    fn streaming_single_bytes(s in text()) {
        let tok = tekken();
        let ids: Vec<u32> = s.bytes().map(|b| 1000 + u32::from(b)).collect();
        let mut detok = tok.detokenizer();
        let mut streamed = String::new();
        for &id in &ids {
            let chunk = detok.push(id).unwrap();
            let replaced = chunk.contains(char::REPLACEMENT_CHARACTER);
            prop_assert!(!replaced || s.contains(char::REPLACEMENT_CHARACTER), "a replacement in {:?}", chunk);
            streamed.push_str(chunk);
        }
        prop_assert!(!detok.has_pending());
        streamed.push_str(detok.finish());
        prop_assert_eq!(streamed, s);
    }
}

#[test]
fn control_token_names_typed_by_users_stay_text() {
    for (label, tok) in both() {
        for id in 0..tok.vocab().n_control() as u32 {
            let name = tok.vocab().control_name(id).unwrap();
            for text in [
                name.to_owned(),
                format!(" {name}"),
                format!("x{name}y"),
                format!("{name}{name}\n{name}"),
            ] {
                let ids = tok.encode(&text);
                assert!(
                    ids.iter().all(|&i| !tok.is_control(i)),
                    "{label}: {text:?} produced a control id: {ids:?}"
                );
                assert_eq!(tok.decode(&ids).unwrap(), text);
            }
        }
    }
    // And the names themselves are the expected ones.
    assert_eq!(tekken().control_id("[INST]"), Some(3));
    assert_eq!(tekken().control_id("[SYSTEM_PROMPT]"), Some(17));
    assert_eq!(DEFAULT_CONTROL_NAMES.len(), 20);
}

#[test]
fn streaming_holds_back_split_characters() {
    let tok = tekken();
    // "é" is C3 A9: as two byte tokens nothing comes out until the second.
    let mut detok = tok.detokenizer();
    assert_eq!(detok.push(1000 + 0xC3).unwrap(), "");
    assert!(detok.has_pending());
    // A control token in between renders nothing and keeps the pending byte.
    assert_eq!(detok.push(tok.control_id("[INST]").unwrap()).unwrap(), "");
    assert_eq!(detok.push(1000 + 0xA9).unwrap(), "é");
    // A 4-byte emoji one byte at a time.
    let mut out = String::new();
    for b in "😀".bytes() {
        out.push_str(detok.push(1000 + u32::from(b)).unwrap());
    }
    assert_eq!(out, "😀");
    // A sequence that can never complete becomes one U+FFFD, then text continues.
    assert_eq!(detok.push(1000 + 0xE2).unwrap(), "");
    assert_eq!(detok.push(1000 + u32::from(b'a')).unwrap(), "\u{FFFD}a");
    // A truncated sequence at the end is flushed by finish().
    assert_eq!(detok.push(1000 + 0xF0).unwrap(), "");
    assert_eq!(detok.finish(), "\u{FFFD}");
    assert_eq!(detok.finish(), "");
}

#[test]
fn decoding_refuses_ids_outside_the_vocabulary() {
    let tok = tekken();
    let err = tok.decode(&[1000, 131072]).unwrap_err();
    assert!(matches!(err, TokenizerError::UnknownId { id: 131072, .. }));
    assert!(err.to_string().contains("131072"), "{err}");
    let mut detok = tok.detokenizer();
    let r = detok.push(u32::MAX);
    assert!(
        matches!(r, Err(TokenizerError::UnknownId { id: u32::MAX, .. })),
        "{r:?}"
    );
    // Control tokens are skipped, not rendered.
    assert_eq!(tok.decode(&[1, 3, 22177, 4, 2]).unwrap(), "Hello");
}

// ---- untrusted tekken.json ----

/// A small valid tekken.json: the 256 bytes, then "ab" and "abc", 4 control tokens.
fn small_tekken(edit: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    use base64::Engine as _;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let mut vocab: Vec<serde_json::Value> = (0..=255u8)
        .map(|b| serde_json::json!({"rank": b, "token_bytes": b64(&[b]), "token_str": null}))
        .collect();
    vocab.push(serde_json::json!({"rank": 256, "token_bytes": b64(b"ab")}));
    vocab.push(serde_json::json!({"rank": 257, "token_bytes": b64(b"abc")}));
    let mut v = serde_json::json!({
        "config": {
            "pattern": spillway::tokenizer::TEKKEN_PATTERN,
            "num_vocab_tokens": 258,
            "default_vocab_size": 262,
            "default_num_special_tokens": 4,
            "version": "v3"
        },
        "vocab": vocab,
        "special_tokens": [
            {"rank": 0, "token_str": "<unk>", "is_control": true},
            {"rank": 1, "token_str": "<s>", "is_control": true},
            {"rank": 2, "token_str": "</s>", "is_control": true},
            {"rank": 3, "token_str": "<pad>", "is_control": true}
        ]
    });
    edit(&mut v);
    serde_json::to_vec(&v).unwrap()
}

#[test]
fn a_small_tekken_json_loads_and_encodes() {
    let tok = Tokenizer::from_tekken_json_bytes(&small_tekken(|_| {})).unwrap();
    assert_eq!(tok.n_vocab(), 262);
    assert_eq!(tok.version(), Some("v3"));
    assert_eq!(tok.encode("abcab"), [4 + 257, 4 + 256]);
    assert_eq!(tok.encode("</s>").iter().filter(|&&i| i < 4).count(), 0);
}

#[test]
fn bad_tekken_json_is_refused_with_a_reason() {
    use serde_json::json;
    type Edit = Box<dyn FnOnce(&mut serde_json::Value)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v| v["config"]["pattern"] = json!("\\w+")),
            "unsupported pre-tokenizer pattern",
        ),
        (
            Box::new(|v| v["config"]["default_vocab_size"] = json!(5_000_000)),
            "default_vocab_size",
        ),
        (
            Box::new(|v| v["config"]["default_num_special_tokens"] = json!(262)),
            "default_num_special_tokens",
        ),
        (
            Box::new(|v| v["config"]["default_vocab_size"] = json!(300)),
            "fewer than",
        ),
        (
            Box::new(|v| v["vocab"][7]["rank"] = json!(8)),
            "ranks must be 0, 1, 2",
        ),
        (
            Box::new(|v| v["vocab"][256]["token_bytes"] = json!("!!notbase64")),
            "not base64",
        ),
        (
            Box::new(|v| v["vocab"][257]["token_bytes"] = json!("YWI=")),
            "repeats the bytes",
        ),
        (
            Box::new(|v| v["vocab"][65]["token_bytes"] = json!("Qg==")),
            "must be the single byte",
        ),
        (
            Box::new(|v| v["vocab"][256]["token_bytes"] = json!("")),
            "has 0 bytes",
        ),
        (
            Box::new(|v| v["vocab"][256]["token_bytes"] = json!("QUFB".repeat(400))),
            "longer than",
        ),
        (
            Box::new(|v| v["special_tokens"][2]["token_str"] = json!("<s>")),
            "appears twice",
        ),
        (
            Box::new(|v| v["special_tokens"][1]["rank"] = json!(5)),
            "special_tokens entry 1",
        ),
        (
            Box::new(|v| v["special_tokens"][1]["token_str"] = json!("<bos>")),
            "no control token named <s>",
        ),
        (
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("vocab");
            }),
            "missing field `vocab`",
        ),
        (Box::new(|v| *v = json!([1, 2, 3])), "not a tekken.json"),
    ];
    for (edit, want) in cases {
        let bytes = small_tekken(edit);
        let err = Tokenizer::from_tekken_json_bytes(&bytes)
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{err:?} does not say {want:?}");
        assert!(
            err.starts_with("tekken.json") || err.starts_with("vocabulary"),
            "{err}"
        );
    }
    let r = Tokenizer::from_tekken_json_bytes(b"\xff\xfe");
    assert!(
        matches!(&r, Err(TokenizerError::TekkenJson(m)) if m.starts_with("not a tekken.json")),
        "{r:?}"
    );
    let missing = Tokenizer::from_tekken_json("/nonexistent/tekken.json").unwrap_err();
    assert!(
        missing.to_string().contains("/nonexistent/tekken.json"),
        "{missing}"
    );
}

// ---- untrusted GGUF ----

fn gguf_with(
    edit: impl FnOnce(&mut Vec<(String, MetaValue)>),
) -> Result<Tokenizer, TokenizerError> {
    let small = Tokenizer::from_tekken_json_bytes(&small_tekken(|_| {})).unwrap();
    let mut meta = small.gguf_metadata().unwrap();
    edit(&mut meta);
    let bytes = GgufWriter::new(Vec::new(), &meta, Vec::new())
        .unwrap()
        .finish()
        .unwrap();
    Tokenizer::from_gguf(&Gguf::parse(bytes).unwrap())
}

fn set(meta: &mut [(String, MetaValue)], key: &str, value: MetaValue) {
    meta.iter_mut()
        .find(|(k, _)| k == &format!("tokenizer.ggml.{key}"))
        .unwrap()
        .1 = value;
}

#[test]
fn a_written_gguf_vocabulary_reads_back() {
    let tok = gguf_with(|_| {}).unwrap();
    assert_eq!(tok.encode("abcab"), [261, 260]);
}

fn strings(v: &[&str]) -> MetaValue {
    MetaValue::strings(v.iter().copied())
}

#[test]
fn bad_gguf_vocabularies_are_refused_with_a_reason() {
    type Edit = Box<dyn FnOnce(&mut Vec<(String, MetaValue)>)>;
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|m| set(m, "model", MetaValue::String("llama".into()))),
            "only Tekken",
        ),
        (
            Box::new(|m| set(m, "pre", MetaValue::String("gpt-4o".into()))),
            "\"tekken\" pre-tokenizer",
        ),
        (
            Box::new(|m| set(m, "model", MetaValue::U32(3))),
            "not a string",
        ),
        (
            Box::new(|m| m.retain(|(k, _)| k != "tokenizer.ggml.tokens")),
            "tokens is missing",
        ),
        (
            Box::new(|m| {
                set(
                    m,
                    "token_type",
                    MetaValue::Array(ValueType::I32, vec![MetaValue::I32(1); 3]),
                )
            }),
            "3 entries for 262 tokens",
        ),
        (
            Box::new(|m| {
                let mut types = vec![MetaValue::I32(3); 4];
                types.extend(vec![MetaValue::I32(1); 257]);
                types.push(MetaValue::I32(6));
                set(m, "token_type", MetaValue::Array(ValueType::I32, types));
            }),
            "has type 6",
        ),
        (
            Box::new(|m| {
                let mut types = vec![MetaValue::I32(3); 4];
                types.extend(vec![MetaValue::I32(1); 257]);
                types.push(MetaValue::I32(3));
                set(m, "token_type", MetaValue::Array(ValueType::I32, types));
            }),
            "after the first normal one",
        ),
        (
            Box::new(|m| set(m, "merges", strings(&["ab c", "a b"]))),
            "out of rank order",
        ),
        (Box::new(|m| set(m, "merges", strings(&["a b"]))), "need 2"),
        (
            Box::new(|m| set(m, "merges", strings(&["a b", "ab c", "x y"]))),
            "not a token",
        ),
        (
            Box::new(|m| set(m, "merges", strings(&["a  b"]))),
            "separated by one space",
        ),
        (
            Box::new(|m| set(m, "merges", strings(&["€ b"]))),
            "GPT-2's byte mapping",
        ),
        (
            Box::new(|m| set(m, "bos_token_id", MetaValue::U32(200))),
            "BOS token id 200 is not a control token",
        ),
        (
            Box::new(|m| set(m, "eos_token_id", MetaValue::String("2".into()))),
            "not a token id",
        ),
        (
            Box::new(|m| {
                let MetaValue::Array(_, tokens) = &mut m
                    .iter_mut()
                    .find(|(k, _)| k == "tokenizer.ggml.tokens")
                    .unwrap()
                    .1
                else {
                    unreachable!()
                };
                tokens[100] = MetaValue::String("€".into());
            }),
            "not spelled in GPT-2's byte mapping",
        ),
    ];
    for (edit, want) in cases {
        let err = gguf_with(edit).unwrap_err().to_string();
        assert!(err.contains(want), "{err:?} does not say {want:?}");
    }
}

#[test]
fn a_model_without_a_vocabulary_is_refused() {
    let path = tokenizer_support::fixtures().join("models/tiny-q4_0.gguf");
    let file = spillway_gguf::GgufFile::open(path).unwrap();
    let err = Tokenizer::from_gguf(&file).unwrap_err().to_string();
    assert!(err.contains("no_vocab"), "{err}");
}
