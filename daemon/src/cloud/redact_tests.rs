//! Tests of [`super`]: every form of the token the module claims to catch, every way of
//! cutting a stream into deltas, and the edges of excerpts.

use std::borrow::Cow;

use super::*;

const TOKEN: &str = "hf_SeCrEtToKeN0123456789abcdefXyZ";
/// A token with the characters JSON and URLs escape (`/`, `+`, `=`).
const SLASHY: &str = "sk-proj/Ab+Cd==Ef/0123456789";

fn redactor(token: &str) -> Redactor {
    Redactor::new(Some(ApiToken::from_string(token.to_string()).unwrap()))
}

fn percent_all(s: &str) -> String {
    s.bytes().map(|b| format!("%{b:02X}")).collect()
}

fn json_u_all(s: &str) -> String {
    s.bytes().map(|b| format!("\\u{b:04x}")).collect()
}

/// The token, and every fragment of it worth hiding, is absent from `shown`.
fn assert_hidden(shown: &str, token: &str) {
    assert!(!shown.contains(token), "token shown: {shown}");
    assert!(
        !shown.contains(&token[3..3 + MIN_PARTIAL + 1]),
        "a fragment of the token shown: {shown}"
    );
}

/// Runs `deltas` through a stream redactor; returns the pieces handed out.
fn stream_pieces(r: &Redactor, deltas: &[&str]) -> Vec<String> {
    let mut s = r.stream();
    let mut out: Vec<String> = deltas.iter().map(|d| s.push(d).into_owned()).collect();
    out.push(s.finish());
    out
}

/// The whole text redacted in one go (what every cut into deltas must add up to).
fn whole(r: &Redactor, text: &str) -> String {
    stream_pieces(r, &[text]).concat()
}

#[test]
fn excerpts_see_through_json_escapes() {
    let r = redactor(TOKEN);
    let escaped = TOKEN.replace('_', "\\u005f");
    for body in [
        format!(r#"{{"error":"Invalid credentials: Bearer {escaped}"}}"#),
        format!(
            r#"{{"error":"Invalid credentials: Bearer {}"}}"#,
            TOKEN.replace('_', "\\u005F")
        ),
        format!("Bearer {}", json_u_all(TOKEN)),
        // Escaped twice (a JSON document quoted inside another).
        format!("Bearer {}", TOKEN.replace('_', "\\\\u005f")),
        // Percent-encoding inside a JSON escape, and the other way round.
        format!("Bearer {}", TOKEN.replace('_', "%5Cu005f")),
        format!("Bearer {}", TOKEN.replace('_', "\\u00255F")),
    ] {
        let shown = r.excerpt(&body, 300);
        assert_hidden(shown.as_str(), TOKEN);
        assert!(
            shown.as_str().contains("Bearer [redacted]"),
            "{body} -> {shown}"
        );
    }
    let r = redactor(SLASHY);
    let shown = r.excerpt(
        &format!(
            r#"{{"detail":"key {} refused"}}"#,
            SLASHY.replace('/', "\\/")
        ),
        300,
    );
    assert_eq!(shown.as_str(), r#"{"detail":"key [redacted] refused"}"#);
}

#[test]
fn excerpts_see_through_percent_encoding() {
    let r = redactor(TOKEN);
    for body in [
        format!("GET /v1?token={}", TOKEN.replace('_', "%5F")),
        format!("GET /v1?token={}", TOKEN.replace('_', "%5f")),
        format!("GET /v1?token={}", percent_all(TOKEN)),
        format!("GET /v1?token={}", percent_all(TOKEN).to_lowercase()),
        format!("GET /v1?token={}", TOKEN.replace('_', "%255F")),
    ] {
        let shown = r.excerpt(&body, 300);
        assert_eq!(shown.as_str(), "GET /v1?token=[redacted]", "{body}");
    }
    let r = redactor(SLASHY);
    let shown = r.excerpt(&format!("key={}&x=1", percent_all(SLASHY)), 300);
    assert_eq!(shown.as_str(), "key=[redacted]&x=1");
}

#[test]
fn excerpts_catch_the_token_broken_by_control_characters() {
    let r = redactor(TOKEN);
    let broken = format!("{}\r\n{}\u{1b}{}", &TOKEN[..7], &TOKEN[7..20], &TOKEN[20..]);
    let shown = r.excerpt(&format!("token {broken} refused"), 300);
    assert_eq!(shown.as_str(), "token [redacted] refused");
    // As JSON escapes, too.
    let shown = r.excerpt(
        &format!("token {}\\n{} refused", &TOKEN[..9], &TOKEN[9..]),
        300,
    );
    assert_eq!(shown.as_str(), "token [redacted] refused");
}

#[test]
fn excerpts_strip_controls_and_are_bounded() {
    let r = redactor(TOKEN);
    for r in [&r, &Redactor::new(None)] {
        assert_eq!(
            r.excerpt("a\r\n\x1b[31mb  \t c ", 100).as_str(),
            "a [31mb c"
        );
        assert_eq!(r.excerpt("ééééé", 3).as_str(), "ééé…");
        assert_eq!(r.excerpt("", 3).as_str(), "");
        assert_eq!(r.excerpt("abc", 3).as_str(), "abc");
        assert_eq!(r.excerpt("a\\u0000b%07c", 10).as_str(), "a b c");
        assert_eq!(
            r.excerpt(&"x".repeat(10_000), 300).as_str().chars().count(),
            301
        );
    }
}

/// An excerpt cut anywhere near the token shows none of it: the token is redacted before
/// the cut, so the cut lands in the marker or outside.
#[test]
fn an_excerpt_cut_inside_the_token_shows_no_piece_of_it() {
    let r = redactor(TOKEN);
    let text = format!("Invalid credentials: {TOKEN} (auth)");
    for max in 0..text.len() + 5 {
        let shown = r.excerpt(&text, max);
        assert_hidden(shown.as_str(), TOKEN);
        assert!(shown.as_str().chars().count() <= max + 1, "{max}: {shown}");
    }
    // A piece of the token in the text, and the cut just after it.
    let text = format!("first {} then more", &TOKEN[..20]);
    let shown = r.excerpt(&text, 6 + 20);
    assert_eq!(shown.as_str(), "first [redacted]…");
}

/// A body read up to a byte limit may end inside the token: that piece is redacted, down
/// to [`MIN_PARTIAL`] bytes; shorter ones are too common to hide ("h", "hf").
#[test]
fn a_text_ending_inside_the_token_hides_that_piece() {
    let r = redactor(TOKEN);
    for k in 1..TOKEN.len() {
        let shown = r.excerpt(&format!("Bearer {}", &TOKEN[..k]), 300);
        if k >= MIN_PARTIAL {
            assert_eq!(shown.as_str(), "Bearer [redacted]", "{k}");
        } else {
            assert_eq!(shown.as_str(), format!("Bearer {}", &TOKEN[..k]), "{k}");
        }
        // Percent-encoded and cut inside an escape.
        let enc = percent_all(&TOKEN[..k]);
        let shown = r.excerpt(&format!("Bearer {}", &enc[..enc.len() - 1]), 300);
        assert_hidden(shown.as_str(), TOKEN);
    }
    // And one starting inside it.
    let shown = r.excerpt(&format!("{} was refused", &TOKEN[10..]), 300);
    assert_eq!(shown.as_str(), "[redacted] was refused");
}

#[test]
fn a_token_with_brackets_gets_a_marker_it_cannot_overlap() {
    for token in ["d]hf_SeCrEt0123", "[a]bcdefgh", "act"] {
        let r = redactor(token);
        for text in [
            format!("[redacte{token}"),
            format!("{token}{token}]x"),
            format!("x{token}"),
        ] {
            let out = whole(&r, &text);
            assert!(!out.contains(token), "{token}: {text} -> {out}");
            let shown = r.excerpt(&text, 100);
            assert!(!shown.as_str().contains(token), "{token}: {shown}");
        }
    }
}

#[test]
fn a_token_holding_escape_characters_is_matched_as_it_is() {
    let token = "ab%41cd\\u0041ef";
    let r = redactor(token);
    assert_eq!(whole(&r, &format!("<{token}>")), "<[redacted]>");
    assert_eq!(
        r.excerpt(&format!("<{token}>"), 100).as_str(),
        "<[redacted]>"
    );
}

// ---------------------------------------------------------------------------------------
// Streams

/// The token split between two deltas at every possible offset, in several encodings.
#[test]
fn a_token_split_across_two_deltas_at_every_offset_is_caught() {
    let r = redactor(TOKEN);
    for form in [
        TOKEN.to_string(),
        TOKEN.replace('_', "%5F"),
        percent_all(TOKEN),
        json_u_all(TOKEN),
        format!("{}\r\n{}", &TOKEN[..12], &TOKEN[12..]),
    ] {
        let text = format!("Your key is {form}, keep it safe.");
        for i in 0..=text.len() {
            let pieces = stream_pieces(&r, &[&text[..i], &text[i..]]);
            let out = pieces.concat();
            assert_eq!(
                out, "Your key is [redacted], keep it safe.",
                "{form} split at {i}"
            );
            for p in &pieces {
                assert!(!p.contains(&TOKEN[..MIN_PARTIAL + 2]), "{i}: piece {p:?}");
            }
        }
    }
}

#[test]
fn a_token_split_across_three_deltas_is_caught() {
    let r = redactor(TOKEN);
    let text = format!("a{TOKEN}b{TOKEN}");
    for i in 0..=text.len() {
        for j in i..=text.len() {
            let out = stream_pieces(&r, &[&text[..i], &text[i..j], &text[j..]]).concat();
            assert_eq!(out, "a[redacted]b[redacted]", "split at {i}, {j}");
        }
    }
    // One byte per delta.
    let bytes: Vec<String> = text.chars().map(String::from).collect();
    let refs: Vec<&str> = bytes.iter().map(String::as_str).collect();
    assert_eq!(stream_pieces(&r, &refs).concat(), "a[redacted]b[redacted]");
}

/// Multibyte characters around the token: deltas are split only at char boundaries (they
/// are `&str`), and what is held back starts on an ASCII byte, so no piece handed out is
/// ever cut inside a character.
#[test]
fn multibyte_neighbours_are_never_split() {
    let r = redactor(TOKEN);
    let text = format!("é🦀{TOKEN}ü€ h 漢字%{}\\", &TOKEN[..9]);
    let want = "é🦀[redacted]ü€ h 漢字%[redacted]";
    let bounds: Vec<usize> = (0..=text.len())
        .filter(|&i| text.is_char_boundary(i))
        .collect();
    for &i in &bounds {
        for &j in bounds.iter().filter(|&&j| j >= i) {
            let pieces = stream_pieces(&r, &[&text[..i], &text[i..j], &text[j..]]);
            assert_eq!(pieces.concat(), want, "split at {i}, {j}");
        }
    }
}

#[test]
fn what_is_held_back_is_released_by_the_next_delta_or_the_end() {
    let r = redactor(TOKEN);
    let mut s = r.stream();
    assert_eq!(s.push("say hf"), "say ");
    assert_eq!(s.push("_Se and more"), "hf_Se and more");
    assert_eq!(s.push(" %6"), " ");
    assert_eq!(s.push("1"), "%61");
    assert_eq!(s.push(" h"), " ");
    assert_eq!(s.finish(), "h");
    // A stream ending inside the token: that piece is redacted.
    let mut s = r.stream();
    assert_eq!(s.push(&format!("key {}", &TOKEN[..10])), "key ");
    assert_eq!(s.finish(), "[redacted]");
    // Text with nothing that could start the token is passed on without a copy.
    assert!(matches!(s.push("plain words"), Cow::Borrowed(_)));
}

#[test]
fn with_no_token_configured_text_passes_through_untouched() {
    let r = Redactor::new(None);
    let mut s = r.stream();
    for d in ["hf_", "SeCrEt", "%5F", "\\u005f", "é"] {
        assert!(matches!(s.push(d), Cow::Borrowed(x) if x == d));
    }
    assert_eq!(s.finish(), "");
    assert_eq!(
        r.excerpt("Bearer hf_SeCrEtToKeN", 100).as_str(),
        "Bearer hf_SeCrEtToKeN"
    );
}

/// Pseudo-random texts made of the token, pieces of it, its encodings and filler, cut at
/// random points: the pieces always add up to the whole text redacted at once, and never
/// contain the token.
#[test]
fn any_cut_into_deltas_adds_up_to_the_whole_redacted() {
    let r = redactor(TOKEN);
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move |n: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n as u64) as usize
    };
    let parts = [
        TOKEN.to_string(),
        TOKEN[..7].to_string(),
        TOKEN[5..].to_string(),
        percent_all(&TOKEN[..4]),
        "%".into(),
        "\\".into(),
        "\\u00".into(),
        "h".into(),
        "hf_".into(),
        " é ".into(),
        "🦀".into(),
        "\n".into(),
        "text".into(),
    ];
    for _ in 0..400 {
        let text: String = (0..next(12))
            .map(|_| parts[next(parts.len())].clone())
            .collect();
        let want = whole(&r, &text);
        assert!(!want.contains(TOKEN), "{text:?} -> {want:?}");
        let mut cuts: Vec<usize> = (0..next(5))
            .map(|_| next(text.len() + 1))
            .filter(|&c| text.is_char_boundary(c))
            .collect();
        cuts.sort_unstable();
        let mut deltas = Vec::new();
        let mut at = 0;
        for c in cuts.into_iter().chain([text.len()]) {
            deltas.push(&text[at..c]);
            at = c;
        }
        assert_eq!(
            stream_pieces(&r, &deltas).concat(),
            want,
            "{text:?} as {deltas:?}"
        );
    }
}
