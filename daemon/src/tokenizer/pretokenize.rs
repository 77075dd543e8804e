//! The Tekken pre-tokenizer: splits text into the pieces that BPE then encodes one by one.
//!
//! mistral-common hands [`TEKKEN_PATTERN`] to tiktoken, whose Rust core runs it with the
//! `fancy-regex` crate (a backtracking engine, because of the `(?!\S)` look-ahead). This
//! module is a hand-written matcher for exactly that pattern: a single forward pass with
//! bounded look-ahead over runs of characters, no backtracking and no allocation. Its
//! results are proven equal to fancy-regex's `find_iter` by the property tests in
//! `daemon/tests/pretokenizer.rs` (arbitrary Unicode, combining marks, Devanagari, Thai,
//! CJK, emoji, `\r\n` mixes, and every code point in several contexts).
//!
//! The Unicode general categories and `White_Space` come from `regex-syntax`, the very
//! tables fancy-regex matches `\p{L}`, `\p{M}`, `\s`… against, so both always agree on the
//! Unicode version. They are folded once into a two-level lookup table of [`Class`]es.
//!
//! How the pattern reads, alternative by alternative (leftmost-first, as the regex engine
//! tries them), with `P = [^\r\n\p{L}\p{N}]`, `U = [\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`,
//! `W = [\p{Ll}\p{Lm}\p{Lo}\p{M}]`, `O = [^\s\p{L}\p{N}]`:
//!
//! 1. `P? U* W+` — a word with an optional leading non-letter (usually a space); the
//!    backtracking of `U*` into `W+` is resolved by remembering the last character that is
//!    in both `U` and `W`.
//! 2. `P? U+ W*` — an all-capitals word (with trailing lower case).
//! 3. `\p{N}` — one digit or number character.
//! 4. ` ?O+[\r\n/]*` — punctuation and symbols, with trailing newlines and slashes.
//! 5. `\s*[\r\n]+` — whitespace up to and including its last newline.
//! 6. `\s+(?!\S)` — whitespace except the last character before a non-space.
//! 7. `\s+` — whatever whitespace is left.
//!
//! Combining marks (`\p{M}`) belong to `P`, `U`, `W` and `O` at once; that overlap is what
//! makes Devanagari and Thai split the way they do, and why engines that treat marks
//! differently (llama.cpp's) disagree with mistral-common there.

use std::sync::OnceLock;

/// The Tekken pre-tokenizer pattern, as in `tekken.json`'s `config.pattern`.
pub const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// What the pattern cares about in a character. General categories are disjoint and no
/// `White_Space` character is a letter, mark or number, so every character has exactly one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Class {
    /// `\p{Lu}` or `\p{Lt}`: in `U` only.
    Upper = 0,
    /// `\p{Ll}`: in `W` only.
    Lower = 1,
    /// `\p{Lm}` or `\p{Lo}`: in both `U` and `W`.
    Letter = 2,
    /// `\p{M}`: in `U`, `W`, and (not being a letter) in `P` and `O` too.
    Mark = 3,
    /// `\p{N}`.
    Number = 4,
    /// `\r` or `\n`.
    Newline = 5,
    /// Any other `White_Space` character (space, tab, NBSP, U+2028, ...).
    Space = 6,
    /// Everything else: punctuation, symbols, controls, unassigned code points.
    Other = 7,
}

impl Class {
    /// `[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]`
    #[inline]
    fn in_u(self) -> bool {
        matches!(self, Class::Upper | Class::Letter | Class::Mark)
    }

    /// `[\p{Ll}\p{Lm}\p{Lo}\p{M}]`
    #[inline]
    fn in_w(self) -> bool {
        matches!(self, Class::Lower | Class::Letter | Class::Mark)
    }

    /// In both `U` and `W`: where `U*` may give a character back to `W+`.
    #[inline]
    fn in_u_and_w(self) -> bool {
        matches!(self, Class::Letter | Class::Mark)
    }

    /// `[^\r\n\p{L}\p{N}]`
    #[inline]
    fn in_p(self) -> bool {
        matches!(self, Class::Mark | Class::Space | Class::Other)
    }

    /// `[^\s\p{L}\p{N}]`
    #[inline]
    fn in_o(self) -> bool {
        matches!(self, Class::Mark | Class::Other)
    }

    /// `\s`
    #[inline]
    fn in_s(self) -> bool {
        matches!(self, Class::Space | Class::Newline)
    }
}

/// Code points per block of the two-level table.
const BLOCK: usize = 256;
const N_BLOCKS: usize = (char::MAX as usize + 1) / BLOCK;

/// Code point -> [`Class`], as a block index per 256 code points and deduplicated blocks
/// (a few hundred distinct ones: most of Unicode is uniform over whole blocks).
struct ClassTable {
    ascii: [Class; 128],
    block_of: Box<[u16]>,
    blocks: Vec<[Class; BLOCK]>,
}

impl ClassTable {
    fn build() -> ClassTable {
        let mut flat = vec![Class::Other; char::MAX as usize + 1];
        // Later entries win; the sets are disjoint except `\s`, which contains \r and \n,
        // so the newline set comes last.
        let sets: [(&str, Class); 8] = [
            (r"\p{Lu}", Class::Upper),
            (r"\p{Lt}", Class::Upper),
            (r"\p{Ll}", Class::Lower),
            (r"\p{Lm}", Class::Letter),
            (r"\p{Lo}", Class::Letter),
            (r"\p{M}", Class::Mark),
            (r"\p{N}", Class::Number),
            (r"\s", Class::Space),
        ];
        for (pattern, class) in sets {
            for (lo, hi) in unicode_ranges(pattern) {
                flat[lo as usize..=hi as usize].fill(class);
            }
        }
        flat[usize::from(b'\r')] = Class::Newline;
        flat[usize::from(b'\n')] = Class::Newline;

        let mut ascii = [Class::Other; 128];
        ascii.copy_from_slice(&flat[..128]);
        let mut blocks: Vec<[Class; BLOCK]> = Vec::new();
        let mut index: std::collections::HashMap<[u8; BLOCK], u16> =
            std::collections::HashMap::new();
        let mut block_of = vec![0u16; N_BLOCKS].into_boxed_slice();
        for (b, chunk) in flat.chunks_exact(BLOCK).enumerate() {
            let mut key = [0u8; BLOCK];
            for (k, c) in key.iter_mut().zip(chunk) {
                *k = *c as u8;
            }
            let next = blocks.len() as u16;
            let id = *index.entry(key).or_insert_with(|| {
                let mut block = [Class::Other; BLOCK];
                block.copy_from_slice(chunk);
                blocks.push(block);
                next
            });
            block_of[b] = id;
        }
        ClassTable {
            ascii,
            block_of,
            blocks,
        }
    }

    #[inline]
    fn class(&self, c: char) -> Class {
        let cp = c as usize;
        if cp < 128 {
            self.ascii[cp]
        } else {
            self.blocks[usize::from(self.block_of[cp / BLOCK])][cp % BLOCK]
        }
    }
}

/// The code point ranges of a one-class pattern, from regex-syntax's Unicode tables.
fn unicode_ranges(pattern: &str) -> Vec<(u32, u32)> {
    use regex_syntax::hir::{Class as HirClass, HirKind};
    // The patterns are constants of this module; a failure here is a build mistake that
    // every test would catch, so it is reported loudly rather than threaded through.
    let hir = regex_syntax::parse(pattern).expect("valid Unicode class pattern");
    match hir.kind() {
        HirKind::Class(HirClass::Unicode(cls)) => cls
            .ranges()
            .iter()
            .map(|r| (u32::from(r.start()), u32::from(r.end())))
            .collect(),
        other => panic!("{pattern} is not a Unicode class: {other:?}"),
    }
}

fn table() -> &'static ClassTable {
    static TABLE: OnceLock<ClassTable> = OnceLock::new();
    TABLE.get_or_init(ClassTable::build)
}

/// The [`Class`] of a character (exposed for tests and diagnostics).
pub fn class_of(c: char) -> Class {
    table().class(c)
}

/// Builds the character tables now rather than on first use (they take a few
/// milliseconds).
pub(crate) fn warm_up() {
    let _ = table();
}

/// The pieces of `text`, in order; their concatenation is `text`.
pub fn split(text: &str) -> Pieces<'_> {
    Pieces {
        text,
        at: 0,
        table: table(),
    }
}

/// Iterator over the pre-tokenizer pieces of a text. See [`split`].
#[derive(Clone)]
pub struct Pieces<'a> {
    text: &'a str,
    at: usize,
    table: &'static ClassTable,
}

impl std::fmt::Debug for Pieces<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pieces").field("at", &self.at).finish()
    }
}

impl<'a> Iterator for Pieces<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.at >= self.text.len() {
            return None;
        }
        let m = Matcher {
            text: self.text,
            table: self.table,
        };
        let end = m.match_at(self.at);
        let piece = &self.text[self.at..end];
        self.at = end;
        Some(piece)
    }
}

/// One match attempt at a position; every helper returns byte offsets into `text`.
struct Matcher<'a> {
    text: &'a str,
    table: &'static ClassTable,
}

impl Matcher<'_> {
    /// The class and UTF-8 length of the character at byte `i`, or `None` at the end.
    #[inline]
    fn at(&self, i: usize) -> Option<(Class, usize)> {
        let bytes = self.text.as_bytes();
        let b = *bytes.get(i)?;
        if b < 0x80 {
            return Some((self.table.ascii[usize::from(b)], 1));
        }
        let c = self.text[i..].chars().next()?;
        Some((self.table.class(c), c.len_utf8()))
    }

    /// End of the run of characters from `i` whose class satisfies `f`.
    #[inline]
    fn run(&self, mut i: usize, f: impl Fn(Class) -> bool) -> usize {
        while let Some((c, len)) = self.at(i) {
            if !f(c) {
                break;
            }
            i += len;
        }
        i
    }

    /// `U* W+` from `j`. `U*` takes the longest run; if the next character cannot start
    /// `W+` (it is not lower case), the engine gives back characters of the run one by one
    /// until one is also in `W` (a modifier/other letter or a mark): `W+` then holds just
    /// that one, since everything after it in the run is `Lu`/`Lt`.
    fn upper_then_lower(&self, j: usize) -> Option<usize> {
        let mut k = j;
        let mut last_shared_end = None;
        while let Some((c, len)) = self.at(k) {
            if !c.in_u() {
                break;
            }
            k += len;
            if c.in_u_and_w() {
                last_shared_end = Some(k);
            }
        }
        match self.at(k) {
            Some((Class::Lower, _)) => Some(self.run(k, Class::in_w)),
            _ => last_shared_end,
        }
    }

    /// `U+ W*` from `j`.
    fn upper_run_then_lower(&self, j: usize) -> Option<usize> {
        match self.at(j) {
            Some((c, _)) if c.in_u() => {
                let k = self.run(j, Class::in_u);
                Some(self.run(k, Class::in_w))
            }
            _ => None,
        }
    }

    /// End of the leftmost-first match of [`TEKKEN_PATTERN`] at `i` (`i < text.len()`).
    fn match_at(&self, i: usize) -> usize {
        let Some((c0, len0)) = self.at(i) else {
            return self.text.len();
        };
        let prefixed = c0.in_p().then_some(i + len0);

        // 1. P? U* W+   (the optional prefix is tried taken first, then not)
        if let Some(end) = prefixed.and_then(|j| self.upper_then_lower(j)) {
            return end;
        }
        if let Some(end) = self.upper_then_lower(i) {
            return end;
        }
        // 2. P? U+ W*
        if let Some(end) = prefixed.and_then(|j| self.upper_run_then_lower(j)) {
            return end;
        }
        if let Some(end) = self.upper_run_then_lower(i) {
            return end;
        }
        // 3. \p{N}
        if c0 == Class::Number {
            return i + len0;
        }
        // 4. ' '?O+[\r\n/]*
        let symbols = |j: usize| {
            let k = self.run(j, Class::in_o);
            let bytes = self.text.as_bytes();
            let mut e = k;
            while matches!(bytes.get(e), Some(b'\r' | b'\n' | b'/')) {
                e += 1;
            }
            e
        };
        if self.text.as_bytes()[i] == b' '
            && let Some((c1, _)) = self.at(i + 1)
            && c1.in_o()
        {
            return symbols(i + 1);
        }
        if c0.in_o() {
            return symbols(i);
        }
        // Only whitespace is left. 5. \s*[\r\n]+ ends after the run's last newline.
        let mut k = i;
        let mut after_newline = None;
        let mut last_start = i;
        while let Some((c, len)) = self.at(k) {
            if !c.in_s() {
                break;
            }
            last_start = k;
            k += len;
            if c == Class::Newline {
                after_newline = Some(k);
            }
        }
        if let Some(end) = after_newline {
            return end;
        }
        // 6. \s+(?!\S): the whole run at the end of the text, else all but its last
        // character (which then starts the next piece, e.g. as a word's leading space).
        if k == self.text.len() {
            return k;
        }
        if last_start > i {
            return last_start;
        }
        // 7. \s+ (a single whitespace character before a non-space). The pattern matches
        // every character, so `k > i` here; the `max` only guarantees progress.
        k.max(i + len0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(s: &str) -> Vec<&str> {
        split(s).collect()
    }

    #[test]
    fn words_spaces_and_punctuation() {
        assert_eq!(pieces("Hello, world!"), ["Hello", ",", " world", "!"]);
        assert_eq!(pieces("  a   "), [" ", " a", "   "]);
        assert_eq!(pieces("x  \n\n y"), ["x", "  \n\n", " y"]);
        assert_eq!(pieces("HTTPServer"), ["HTTPServer"]);
        assert_eq!(pieces("ABC DEF"), ["ABC", " DEF"]);
        assert_eq!(pieces("42nd"), ["4", "2", "nd"]);
        assert_eq!(pieces("a//b\n"), ["a", "//", "b", "\n"]);
        assert_eq!(pieces(" !!\r\n/x"), [" !!\r\n/", "x"]);
    }

    #[test]
    fn classes_of_a_few_characters() {
        assert_eq!(class_of('A'), Class::Upper);
        assert_eq!(class_of('ǅ'), Class::Upper);
        assert_eq!(class_of('a'), Class::Lower);
        assert_eq!(class_of('ʰ'), Class::Letter);
        assert_eq!(class_of('你'), Class::Letter);
        assert_eq!(class_of('\u{0301}'), Class::Mark);
        assert_eq!(class_of('\u{093F}'), Class::Mark);
        assert_eq!(class_of('٣'), Class::Number);
        assert_eq!(class_of('\n'), Class::Newline);
        assert_eq!(class_of('\u{2028}'), Class::Space);
        assert_eq!(class_of('\u{A0}'), Class::Space);
        assert_eq!(class_of('😀'), Class::Other);
    }
}
