//! Turning ids back into text: whole sequences, and a streaming detokenizer for generation.
//!
//! Byte-level tokens do not respect character boundaries: `é` may arrive as two tokens of
//! one byte each. [`Detokenizer`] therefore holds back an incomplete UTF-8 sequence until
//! the token that completes it, and only ever hands out valid UTF-8. Bytes that can never
//! become valid are replaced by U+FFFD exactly as `String::from_utf8_lossy` would replace
//! them in the whole text, so streaming and whole decoding always agree. Control tokens
//! are never rendered (they are protocol, not text).

use std::sync::Arc;

use super::{Tokenizer, TokenizerError};

/// The tokenizer a [`Detokenizer`] reads: borrowed, or shared by a generation that outlives
/// any borrow (one of the engine's running sequences).
#[derive(Debug)]
enum Source<'t> {
    Borrowed(&'t Tokenizer),
    Shared(Arc<Tokenizer>),
}

impl Source<'_> {
    fn get(&self) -> &Tokenizer {
        match self {
            Source::Borrowed(t) => t,
            Source::Shared(t) => t,
        }
    }
}

/// Decodes a generated sequence one token at a time. Create one per generation with
/// [`Tokenizer::detokenizer`] (or [`Detokenizer::shared`]). Its output buffer is sized for
/// the longest token at creation, so pushing tokens never allocates.
#[derive(Debug)]
pub struct Detokenizer<'t> {
    tok: Source<'t>,
    /// An incomplete but so far valid UTF-8 sequence (at most 3 bytes).
    pending: [u8; 4],
    n_pending: usize,
    out: String,
}

impl Detokenizer<'static> {
    /// A detokenizer that holds its tokenizer.
    pub fn shared(tok: Arc<Tokenizer>) -> Detokenizer<'static> {
        Detokenizer::from_source(Source::Shared(tok))
    }
}

impl<'t> Detokenizer<'t> {
    pub(crate) fn new(tok: &'t Tokenizer) -> Detokenizer<'t> {
        Detokenizer::from_source(Source::Borrowed(tok))
    }

    fn from_source(tok: Source<'t>) -> Detokenizer<'t> {
        let longest = tok.get().vocab().max_token_len();
        Detokenizer {
            tok,
            pending: [0; 4],
            n_pending: 0,
            // One token's bytes, plus a held-back partial character that may turn into
            // U+FFFD (3 bytes each) ahead of them.
            out: String::with_capacity(longest + 16),
        }
    }

    /// Adds one token and returns the text it completes (possibly empty: a control token,
    /// or the first bytes of a character that later tokens finish).
    pub fn push(&mut self, id: u32) -> Result<&str, TokenizerError> {
        self.out.clear();
        let vocab = self.tok.get().vocab();
        if !vocab.is_control(id) {
            let bytes = vocab.token_bytes(id).ok_or(TokenizerError::UnknownId {
                id,
                n_vocab: vocab.n_vocab(),
            })?;
            feed(&mut self.pending, &mut self.n_pending, bytes, &mut self.out);
        }
        Ok(&self.out)
    }

    /// Ends the sequence: an incomplete character left over becomes U+FFFD.
    pub fn finish(&mut self) -> &str {
        self.out.clear();
        if self.n_pending > 0 {
            self.out.push(char::REPLACEMENT_CHARACTER);
            self.n_pending = 0;
        }
        &self.out
    }

    /// Whether bytes of an incomplete character are being held back.
    pub fn has_pending(&self) -> bool {
        self.n_pending > 0
    }
}

/// Length of the UTF-8 sequence a lead byte starts, or 0 if it cannot start one.
#[inline]
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7F => 1,
        0xC2..=0xDF => 2,
        0xE0..=0xEF => 3,
        0xF0..=0xF4 => 4,
        _ => 0,
    }
}

/// Whether `b` may follow the bytes in `seq` (which start with a lead byte): the second
/// byte's range depends on the lead, to exclude overlong forms, surrogates and code points
/// above U+10FFFF.
#[inline]
fn continues(seq: &[u8], b: u8) -> bool {
    let range = match (seq.len(), seq[0]) {
        (1, 0xE0) => 0xA0..=0xBF,
        (1, 0xED) => 0x80..=0x9F,
        (1, 0xF0) => 0x90..=0xBF,
        (1, 0xF4) => 0x80..=0x8F,
        _ => 0x80..=0xBF,
    };
    range.contains(&b)
}

/// Appends the complete characters of `pending ++ bytes` to `out` and keeps a trailing
/// incomplete sequence in `pending`.
fn feed(pending: &mut [u8; 4], n_pending: &mut usize, mut bytes: &[u8], out: &mut String) {
    // First finish (or give up on) the sequence held back from earlier tokens.
    while *n_pending > 0 {
        let Some((&b, rest)) = bytes.split_first() else {
            return;
        };
        if continues(&pending[..*n_pending], b) {
            pending[*n_pending] = b;
            *n_pending += 1;
            bytes = rest;
            if *n_pending == sequence_len(pending[0]) {
                // A complete sequence whose every byte was checked: valid.
                out.push_str(std::str::from_utf8(&pending[..*n_pending]).unwrap_or("\u{FFFD}"));
                *n_pending = 0;
            }
        } else {
            // The held bytes are a maximal invalid prefix: one replacement, and `b` is
            // looked at again as the start of what follows.
            out.push(char::REPLACEMENT_CHARACTER);
            *n_pending = 0;
        }
    }
    loop {
        match std::str::from_utf8(bytes) {
            Ok(s) => {
                out.push_str(s);
                return;
            }
            Err(e) => {
                let (valid, rest) = bytes.split_at(e.valid_up_to());
                out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                match e.error_len() {
                    Some(bad) => {
                        out.push(char::REPLACEMENT_CHARACTER);
                        bytes = &rest[bad..];
                    }
                    None => {
                        // An incomplete sequence at the end: std guarantees at most 3 bytes.
                        pending[..rest.len()].copy_from_slice(rest);
                        *n_pending = rest.len();
                        return;
                    }
                }
            }
        }
    }
}

/// Decodes a whole sequence: the bytes of its non-control tokens, with invalid UTF-8
/// replaced by U+FFFD.
pub(crate) fn decode(tok: &Tokenizer, ids: &[u32]) -> Result<String, TokenizerError> {
    let bytes = decode_bytes(tok, ids)?;
    Ok(match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// The concatenated bytes of the non-control tokens.
pub(crate) fn decode_bytes(tok: &Tokenizer, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
    let vocab = tok.vocab();
    let mut out = Vec::with_capacity(ids.len() * 4);
    for &id in ids {
        if vocab.is_control(id) {
            continue;
        }
        let bytes = vocab.token_bytes(id).ok_or(TokenizerError::UnknownId {
            id,
            n_vocab: vocab.n_vocab(),
        })?;
        out.extend_from_slice(bytes);
    }
    Ok(out)
}
