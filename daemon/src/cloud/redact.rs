//! Keeping the API token out of everything the cloud client shows or forwards.
//!
//! A router may quote the credentials it refused, and not always as sent: JSON-escaped
//! (`hf\u005f…`, `\/`), percent-encoded (`hf%5F…`), cut off at the end of a bounded body, or
//! spread over two stream chunks. Redacting raw bytes event by event misses all of these, so
//! upstream text reaches the outside only through this module:
//!
//! - [`Redactor::excerpt`], for text that is *shown* (error messages, log lines, circuit and
//!   cooldown reasons, telemetry, finish reasons, provider names): decoded first (JSON string
//!   escapes and percent-encoding, layer after layer), every occurrence of the token replaced
//!   with `[redacted]`, control characters and whitespace runs turned into single spaces,
//!   cut to a bound, and a piece of the token left at either edge (a body cut mid-token, an
//!   excerpt cut short) redacted too. The result is an [`Excerpt`]: the only type the error
//!   messages accept, and one nothing outside this module can make.
//! - [`StreamRedactor`], for the answer's text: each delta is passed on with the token
//!   replaced, holding back a tail that could be the token's beginning until the next delta
//!   (or the end) shows whether it is. The pieces it hands out, concatenated, are the whole
//!   text redacted at once, however the text was cut into deltas.
//!
//! Matching: the token is visible ASCII, and each of its bytes is recognised as itself,
//! percent-encoded (`%5F`, `%5f`) or JSON-escaped (`\u005F`, `\/`, `\\`, `\"`), with up to
//! two control characters between bytes (a token broken by a line end). Out of scope, and
//! not recognised: base64 (`Basic` credentials made of `user:token`), HTML entities, other
//! encodings, a token spread out by spaces, and pieces of the token shorter than
//! [`MIN_PARTIAL`] bytes (`hf_` is public; three bytes of the rest say next to nothing).
//! With no token configured, all of this costs nothing: text passes through untouched.

use std::borrow::Cow;
use std::fmt;

use secrecy::ExposeSecret;

use super::secrets::ApiToken;

/// What replaces the token.
const MARKER: &str = "[redacted]";
/// The marker when the token could overlap `[redacted]` (it holds a bracket, or is part of
/// the word): the token is ASCII, so a non-ASCII marker can never be part of it.
const SAFE_MARKER: &str = "\u{2588}";
/// What an excerpt says if, against everything above, the token survived in it.
const WITHHELD: &str = "[upstream text withheld]";
/// Most control characters skipped between two bytes of the token.
const MAX_GAP: usize = 2;
/// Shortest piece of the token redacted at the edge of a text (a text cut mid-token).
pub(crate) const MIN_PARTIAL: usize = 4;
/// Most layers of encoding peeled off (`\\u005f` is two).
const DECODE_ROUNDS: usize = 4;

/// Upstream text fit to show: decoded, without the token, without control characters,
/// bounded. Made only by the redactor (`Redactor::excerpt`).
#[derive(Clone, PartialEq, Eq)]
pub struct Excerpt(String);

impl Excerpt {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn into_string(self) -> String {
        self.0
    }
}

impl fmt::Display for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Excerpt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// Holds the token and removes it from text.
pub(crate) struct Redactor {
    token: Option<ApiToken>,
    marker: &'static str,
}

impl fmt::Debug for Redactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redactor")
            .field("token", &self.token)
            .finish_non_exhaustive()
    }
}

impl Redactor {
    pub(crate) fn new(token: Option<ApiToken>) -> Redactor {
        let marker = match &token {
            Some(t) => {
                let t = t.expose_secret();
                if t.contains(['[', ']']) || MARKER.contains(t) {
                    SAFE_MARKER
                } else {
                    MARKER
                }
            }
            None => MARKER,
        };
        Redactor { token, marker }
    }

    pub(crate) fn token(&self) -> Option<&ApiToken> {
        self.token.as_ref()
    }

    fn token_bytes(&self) -> Option<&[u8]> {
        self.token
            .as_ref()
            .map(|t| t.expose_secret().as_bytes())
            .filter(|t| !t.is_empty())
    }

    /// `text` made fit to show, at most about `max_chars` characters (see the module doc).
    pub(crate) fn excerpt(&self, text: &str, max_chars: usize) -> Excerpt {
        let Some(token) = self.token_bytes() else {
            return Excerpt(clean_text(&decode(text), max_chars).0);
        };
        // Before decoding as well as after: a token that itself holds `%` or `\` must not
        // be decoded out of recognition first.
        let mut raw = String::with_capacity(text.len());
        redact_into(text, token, self.marker, Mode::Final, &mut raw);
        let decoded = decode(&raw);
        let mut redacted = String::with_capacity(decoded.len());
        redact_into(&decoded, token, self.marker, Mode::Final, &mut redacted);
        let redacted = redact_leading_partial(&redacted, token, self.marker);
        let (mut shown, cut) = clean_text(&redacted, max_chars);
        if cut {
            // The cut may have kept the beginning of a piece of the token.
            let body_len = shown.len() - '…'.len_utf8();
            let k = trailing_partial(&shown.as_bytes()[..body_len], token);
            if k >= MIN_PARTIAL {
                shown.replace_range(body_len - k..body_len, self.marker);
            }
        }
        // A guard, not a path: nothing above lets the token through.
        if contains(shown.as_bytes(), token) {
            shown = WITHHELD.to_string();
        }
        Excerpt(shown)
    }

    /// A redactor for one answer's stream of deltas.
    pub(crate) fn stream(&self) -> StreamRedactor<'_> {
        StreamRedactor {
            redactor: self,
            held: String::new(),
        }
    }
}

/// Redacts one stream of deltas; see the module doc.
#[derive(Debug)]
pub(crate) struct StreamRedactor<'r> {
    redactor: &'r Redactor,
    /// The tail of what came in that may be the beginning of the token (always starting on
    /// an ASCII byte, so never inside a UTF-8 sequence). At most one encoded token long.
    held: String,
}

impl StreamRedactor<'_> {
    /// The part of `delta` (after what was held back) that can be passed on now.
    pub(crate) fn push<'a>(&mut self, delta: &'a str) -> Cow<'a, str> {
        let Some(token) = self.redactor.token_bytes() else {
            return Cow::Borrowed(delta);
        };
        if self.held.is_empty() && !delta.bytes().any(|b| may_start(b, token[0])) {
            return Cow::Borrowed(delta);
        }
        let mut pending = std::mem::take(&mut self.held);
        pending.push_str(delta);
        let mut out = String::with_capacity(pending.len());
        let keep_from = redact_into(
            &pending,
            token,
            self.redactor.marker,
            Mode::Stream,
            &mut out,
        );
        pending.drain(..keep_from);
        self.held = pending;
        Cow::Owned(out)
    }

    /// The end of the stream: whatever was held back, redacted (a long enough piece of the
    /// token at the very end is redacted too).
    pub(crate) fn finish(&mut self) -> String {
        let held = std::mem::take(&mut self.held);
        let mut out = String::new();
        if let Some(token) = self.redactor.token_bytes() {
            redact_into(&held, token, self.redactor.marker, Mode::Final, &mut out);
        }
        out
    }
}

/// Makes text fit for a log line or a reply: control characters become spaces, runs of
/// whitespace collapse, and it is cut to `max` characters (then ending in `…`). Returns the
/// text and whether it was cut. Only for text already redacted, or when there is no token.
fn clean_text(s: &str, max: usize) -> (String, bool) {
    let mut out = String::with_capacity(s.len().min(max + 3));
    let mut n = 0;
    let mut last_space = true;
    for c in s.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if c == ' ' && last_space {
            continue;
        }
        if n == max {
            out.push('…');
            return (out, true);
        }
        last_space = c == ' ';
        out.push(c);
        n += 1;
    }
    if out.ends_with(' ') {
        out.pop();
    }
    (out, false)
}

// ---------------------------------------------------------------------------------------
// Decoding

/// `text` with JSON string escapes and percent-encoding undone, repeatedly (bounded), so
/// that nested encodings are seen through. Invalid UTF-8 from percent-decoding becomes
/// U+FFFD.
fn decode(text: &str) -> Cow<'_, str> {
    let mut cur = Cow::Borrowed(text);
    for _ in 0..DECODE_ROUNDS {
        let unescaped = json_unescape(&cur);
        let step = match unescaped {
            Some(u) => Some(percent_decode(&u).unwrap_or(u)),
            None => percent_decode(&cur),
        };
        match step {
            Some(next) if next != *cur => cur = Cow::Owned(next),
            _ => break,
        }
    }
    cur
}

/// JSON string escapes (`\"`, `\\`, `\/`, `\b`, `\f`, `\n`, `\r`, `\t`, `\uXXXX` with
/// surrogate pairs) decoded wherever they appear; `None` if there were none. Anything else
/// after a backslash is left as it is.
fn json_unescape(s: &str) -> Option<String> {
    if !s.contains('\\') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = String::with_capacity(s.len());
    let (mut last, mut i) = (0, 0);
    let mut changed = false;
    while let Some(off) = s[i..].find('\\') {
        let p = i + off;
        let simple = match b.get(p + 1) {
            Some(b'"') => Some('"'),
            Some(b'\\') => Some('\\'),
            Some(b'/') => Some('/'),
            Some(b'b') => Some('\u{8}'),
            Some(b'f') => Some('\u{c}'),
            Some(b'n') => Some('\n'),
            Some(b'r') => Some('\r'),
            Some(b't') => Some('\t'),
            _ => None,
        };
        let decoded = match (simple, b.get(p + 1)) {
            (Some(c), _) => Some((c, 2)),
            (None, Some(b'u')) => match hex(b, p + 2, 4) {
                Hex::Value(hi @ 0xD800..=0xDBFF) => {
                    let lo = match (b.get(p + 6..p + 8), hex(b, p + 8, 4)) {
                        (Some(br"\u"), Hex::Value(lo @ 0xDC00..=0xDFFF)) => Some(lo),
                        _ => None,
                    };
                    match lo {
                        Some(lo) => {
                            let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                            Some((char::from_u32(c).unwrap_or('\u{FFFD}'), 12))
                        }
                        None => Some(('\u{FFFD}', 6)),
                    }
                }
                Hex::Value(v) => Some((char::from_u32(v).unwrap_or('\u{FFFD}'), 6)),
                _ => None,
            },
            _ => None,
        };
        match decoded {
            Some((c, len)) => {
                out.push_str(&s[last..p]);
                out.push(c);
                i = p + len;
                last = i;
                changed = true;
            }
            None => i = p + 1,
        }
    }
    if !changed {
        return None;
    }
    out.push_str(&s[last..]);
    Some(out)
}

/// `%HH` sequences decoded; `None` if there were none.
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return None;
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut changed = false;
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && let Hex::Value(v) = hex(b, i + 1, 2)
        {
            out.push(v as u8);
            i += 3;
            changed = true;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    changed.then(|| String::from_utf8_lossy(&out).into_owned())
}

enum Hex {
    Value(u32),
    /// The text ends before `n` digits, and those present are hex digits.
    Short,
    Invalid,
}

/// The `n` hex digits at `b[at..]`.
fn hex(b: &[u8], at: usize, n: usize) -> Hex {
    let mut v = 0u32;
    for k in 0..n {
        let Some(&c) = b.get(at + k) else {
            return Hex::Short;
        };
        let Some(d) = char::from(c).to_digit(16) else {
            return Hex::Invalid;
        };
        v = v << 4 | d;
    }
    Hex::Value(v)
}

// ---------------------------------------------------------------------------------------
// Matching

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// More text may follow: a possible beginning of the token at the end is held back.
    Stream,
    /// The text is complete: a piece of the token of at least [`MIN_PARTIAL`] bytes at the
    /// end is redacted, a shorter one kept.
    Final,
}

enum Match {
    /// The token, ending before byte `end`.
    Full {
        end: usize,
    },
    /// The text ended after `matched` bytes of the token.
    Partial {
        matched: usize,
    },
    No,
}

enum Step {
    Advance(usize),
    /// The text ends inside what may be an encoded byte.
    Incomplete,
    Mismatch,
}

/// Whether a match of the token may start at byte `b`.
fn may_start(b: u8, first: u8) -> bool {
    b == first || b == b'%' || b == b'\\'
}

/// Between two bytes of the token: a control character (a line end).
fn ignorable(b: u8) -> bool {
    b < 0x20 || b == 0x7f
}

/// Appends `text` to `out` with each occurrence of the token replaced by `marker`. Returns
/// where the text held back in [`Mode::Stream`] begins (`text.len()` when nothing is).
fn redact_into(text: &str, token: &[u8], marker: &str, mode: Mode, out: &mut String) -> usize {
    let b = text.as_bytes();
    let (mut last, mut i) = (0, 0);
    while i < b.len() {
        if !may_start(b[i], token[0]) {
            i += 1;
            continue;
        }
        // `i` is an ASCII byte, so every slice boundary below is a char boundary.
        match match_at(b, i, token) {
            Match::Full { end } => {
                out.push_str(&text[last..i]);
                out.push_str(marker);
                (last, i) = (end, end);
            }
            Match::Partial { .. } if mode == Mode::Stream => {
                out.push_str(&text[last..i]);
                return i;
            }
            Match::Partial { matched } if matched >= MIN_PARTIAL => {
                out.push_str(&text[last..i]);
                out.push_str(marker);
                return b.len();
            }
            Match::Partial { .. } | Match::No => i += 1,
        }
    }
    out.push_str(&text[last..]);
    b.len()
}

/// Whether the token, in any of the recognised forms, starts at `b[start]`.
fn match_at(b: &[u8], start: usize, token: &[u8]) -> Match {
    let mut i = start;
    for (k, &want) in token.iter().enumerate() {
        if k > 0 {
            let mut gap = 0;
            while gap < MAX_GAP && i < b.len() && ignorable(b[i]) {
                i += 1;
                gap += 1;
            }
        }
        if i >= b.len() {
            return Match::Partial { matched: k };
        }
        match step(b, i, want) {
            Step::Advance(n) => i += n,
            Step::Incomplete => return Match::Partial { matched: k },
            Step::Mismatch => return Match::No,
        }
    }
    Match::Full { end: i }
}

/// Whether `b[i..]` begins with the byte `want`, encoded or not. An encoded form is
/// preferred; the literal byte (a token holding `%` or `\`) is tried next.
fn step(b: &[u8], i: usize, want: u8) -> Step {
    let literal = b[i] == want;
    let decoded = match b[i] {
        b'%' => match hex(b, i + 1, 2) {
            Hex::Value(v) => (v == u32::from(want)).then_some(Step::Advance(3)),
            Hex::Short => Some(Step::Incomplete),
            Hex::Invalid => None,
        },
        b'\\' => match b.get(i + 1) {
            None => Some(Step::Incomplete),
            Some(b'u') => match hex(b, i + 2, 4) {
                Hex::Value(v) => (v == u32::from(want)).then_some(Step::Advance(6)),
                Hex::Short => Some(Step::Incomplete),
                Hex::Invalid => None,
            },
            Some(&e @ (b'/' | b'\\' | b'"')) => (e == want).then_some(Step::Advance(2)),
            Some(_) => None,
        },
        _ => None,
    };
    match decoded {
        Some(Step::Advance(n)) => Step::Advance(n),
        _ if literal => Step::Advance(1),
        Some(Step::Incomplete) => Step::Incomplete,
        _ => Step::Mismatch,
    }
}

/// Whether `hay` contains `needle` as it is.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The length of the longest end of `text` that is the beginning of the token (and
/// shorter than it).
fn trailing_partial(text: &[u8], token: &[u8]) -> usize {
    (1..token.len().min(text.len() + 1))
        .rev()
        .find(|&k| text.ends_with(&token[..k]))
        .unwrap_or(0)
}

/// `text` with a beginning that is the end of the token (at least [`MIN_PARTIAL`] bytes)
/// replaced by the marker: text that began mid-token.
fn redact_leading_partial<'t>(text: &'t str, token: &[u8], marker: &str) -> Cow<'t, str> {
    let k = (MIN_PARTIAL..token.len())
        .rev()
        .find(|&k| text.as_bytes().starts_with(&token[token.len() - k..]))
        .unwrap_or(0);
    if k == 0 {
        return Cow::Borrowed(text);
    }
    // The token is ASCII, so `k` is a char boundary.
    Cow::Owned(format!("{marker}{}", &text[k..]))
}

#[cfg(test)]
#[path = "redact_tests.rs"]
mod tests;
