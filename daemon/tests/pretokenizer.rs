//! The hand-written Tekken pre-tokenizer equals fancy-regex (what tiktoken, and so
//! mistral-common, runs the pattern with) on every input: property tests over arbitrary
//! Unicode weighted towards the hard cases (combining marks, Devanagari, Thai, CJK, emoji,
//! modifier and title-case letters, every kind of whitespace, `\r\n` mixes), and every code
//! point in the contexts where its class decides the split.

use fancy_regex::Regex;
use proptest::prelude::*;
use spillway::tokenizer::TEKKEN_PATTERN;
use spillway::tokenizer::pretokenize::split;

fn reference() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(TEKKEN_PATTERN).expect("the Tekken pattern compiles"))
}

/// fancy-regex's pieces, as tiktoken's `find_iter` loop takes them.
fn reference_pieces(text: &str) -> Vec<&str> {
    reference()
        .find_iter(text)
        .map(|m| m.expect("no backtracking limit hit").as_str())
        .collect()
}

fn assert_same(text: &str) {
    let ours: Vec<&str> = split(text).collect();
    let theirs = reference_pieces(text);
    if ours != theirs {
        let first = ours
            .iter()
            .zip(&theirs)
            .position(|(a, b)| a != b)
            .unwrap_or(ours.len().min(theirs.len()));
        panic!(
            "pieces differ from piece {first} on {text:?}\n ours:   {:?}\n theirs: {:?}",
            &ours[first..(first + 4).min(ours.len())],
            &theirs[first..(first + 4).min(theirs.len())]
        );
    }
    assert_eq!(ours.concat(), text, "pieces cover the text");
}

/// Characters where the pattern's classes meet or overlap.
const POOLS: &[&str] = &[
    "abcxyzABCXYZ0189",
    " \t\r\n\r\n",
    "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~",
    "\u{300}\u{301}\u{308}\u{327}\u{20DD}\u{483}\u{94D}\u{93F}\u{E31}\u{E47}\u{FE0F}",
    "नमस्ते दुनियाक्षत्रिय",
    "สวัสดีครับภาษาไทยน้ำ",
    "你好世界今天。，！",
    "こんにちはカタカナー",
    "😀🎉👍🏽👨\u{200D}👩\u{200D}👧🇫🇷",
    "ʰʲˈǅǈᾈ\u{2160}\u{2170}",
    "\u{A0}\u{2028}\u{2029}\u{3000}\u{85}\u{B}\u{C}\u{200B}\u{200D}\u{1680}",
    "éÉßøłŁçñ",
    "٣٤৫𝟙Ⅻ½",
];

fn interesting_char() -> impl Strategy<Value = char> {
    let pools: Vec<BoxedStrategy<char>> = POOLS
        .iter()
        .map(|p| {
            let chars: Vec<char> = p.chars().collect();
            proptest::sample::select(chars).boxed()
        })
        .collect();
    prop_oneof![
        8 => proptest::strategy::Union::new(pools),
        1 => any::<char>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::collection::vec(interesting_char(), 0..48).prop_map(|v| v.into_iter().collect())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(20_000))]

    #[test]
    fn same_pieces_as_fancy_regex(s in text()) {
        assert_same(&s);
    }

    #[test]
    fn same_pieces_on_arbitrary_unicode(s in any::<String>()) {
        assert_same(&s);
    }
}

#[test]
fn same_pieces_on_the_golden_texts() {
    for text in [
        "नमस्ते दुनिया, आप कैसे हैं?",
        "สวัสดีครับ ภาษาไทย",
        "é combining accent vs é precomposed",
        "line one\nline two\r\nline three\n\n\nend",
        "   \n   \n",
        "tabs\tand\tspaces \t mixed",
        "MixedCASEWordsLikeThisAndTHAT camelCase snake_case kebab-case",
        " \u{301}abc \u{301}ABC\u{301}def ǅungla ʰA ʰʰ",
        "",
        " ",
        "\r\n\r\n \n",
        "a  \u{A0}b",
    ] {
        assert_same(text);
    }
}

/// Every code point (but surrogates) in contexts that make its class matter: as a word's
/// prefix, inside lower- and upper-case runs, after a space, before a number, between
/// newlines. Any difference between the two Unicode tables shows up here.
#[test]
fn every_code_point_in_context() {
    let mut chunk = String::new();
    let mut n = 0;
    for c in (0..=char::MAX as u32).filter_map(char::from_u32) {
        for ctx in [
            ['a', c, 'A'],
            [c, 'b', c],
            ['B', c, ' '],
            [' ', c, '1'],
            ['\n', c, c],
        ] {
            chunk.extend(ctx);
        }
        n += 1;
        if n % 4096 == 0 {
            assert_same(&chunk);
            chunk.clear();
        }
    }
    assert_same(&chunk);
}
