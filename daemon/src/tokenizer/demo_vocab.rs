//! The built-in demo vocabulary: a small Tekken-layout vocabulary (1000 control tokens, the
//! 256 bytes, then byte-pair merges) trained at run time on a short English text compiled
//! into the binary (`demo_corpus.txt`).
//!
//! It exists so that `spillway demo` runs from a plain clone, offline, without
//! mistral-common's `tekken.json` (which the repository does not carry). It is not
//! Mistral's vocabulary and no real model uses it: a model synthesized with it has random
//! weights anyway. Everything else about it is real: the same pre-tokenizer, the same
//! rank-ordered BPE, the same GGUF layout, so the demo exercises the same code paths as
//! the official model.
//!
//! Training is classic BPE over the pre-tokenized corpus, with one constraint that keeps
//! the result a valid tiktoken-style vocabulary: a pair is merged only when the BPE
//! encoding of its concatenation (with the ranks so far) is exactly that pair. Then every
//! token's own bytes encode to that token, and llama.cpp-style merges can be derived from
//! the ranks (see `gguf_vocab::derive_merges`).

use std::collections::HashMap;

use super::vocab::{AddSpecial, Vocab};
use super::{TokenizerError, pretokenize, tekken_json};

/// The training text.
const CORPUS: &str = include_str!("demo_corpus.txt");

/// Control ids, as in Mistral's vocabularies.
const N_CONTROL: usize = 1000;

/// Most merges learned; training also stops when no pair occurs twice.
const MAX_MERGES: usize = 1024;

/// Builds the demo vocabulary (deterministic: the same binary always builds the same one).
pub(crate) fn build() -> Result<Vocab, TokenizerError> {
    let ranks = train(CORPUS, MAX_MERGES);
    let slices: Vec<&[u8]> = ranks.iter().map(Vec::as_slice).collect();
    let control = tekken_json::default_control_names(N_CONTROL);
    Vocab::new(control, &slices, None, AddSpecial::default())
}

/// Learns up to `max_merges` merges from `text`; returns every rank's bytes, the 256 single
/// bytes first.
fn train(text: &str, max_merges: usize) -> Vec<Vec<u8>> {
    let mut ranks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
    let mut rank_of: HashMap<Vec<u8>, u32> = ranks
        .iter()
        .enumerate()
        .map(|(r, bytes)| (bytes.clone(), r as u32))
        .collect();

    // Each distinct piece once, with how often it occurs, as its current list of ranks.
    let mut counts: HashMap<&str, u32> = HashMap::new();
    for piece in pretokenize::split(text) {
        *counts.entry(piece).or_default() += 1;
    }
    let mut pieces: Vec<(&str, u32)> = counts.into_iter().collect();
    // HashMap order is random: sort so that ties are broken the same way every run.
    pieces.sort_unstable();
    let mut words: Vec<(Vec<u32>, u32)> = pieces
        .iter()
        .map(|&(p, n)| (p.bytes().map(u32::from).collect(), n))
        .collect();

    while ranks.len() < 256 + max_merges {
        let mut pairs: HashMap<(u32, u32), u32> = HashMap::new();
        for (ids, n) in &words {
            for w in ids.windows(2) {
                *pairs.entry((w[0], w[1])).or_default() += n;
            }
        }
        let mut candidates: Vec<((u32, u32), u32)> =
            pairs.into_iter().filter(|&(_, n)| n >= 2).collect();
        // Most frequent first; among equals, the lowest ranks: deterministic.
        candidates.sort_unstable_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let chosen = candidates.into_iter().find_map(|((a, b), _)| {
            let mut bytes = ranks[a as usize].clone();
            bytes.extend_from_slice(&ranks[b as usize]);
            (!rank_of.contains_key(&bytes) && bpe(&rank_of, &bytes) == [a, b])
                .then_some(((a, b), bytes))
        });
        let Some(((a, b), bytes)) = chosen else {
            break;
        };
        let new = ranks.len() as u32;
        rank_of.insert(bytes.clone(), new);
        ranks.push(bytes);
        // The new rank is the highest, so BPE applies it last: merging it into the current
        // encodings gives exactly the encodings under the larger vocabulary.
        for (ids, _) in &mut words {
            merge_pair(ids, (a, b), new);
        }
    }
    ranks
}

/// Replaces every adjacent `pair` in `ids` by `new`, left to right.
fn merge_pair(ids: &mut Vec<u32>, pair: (u32, u32), new: u32) {
    let mut out = 0;
    let mut i = 0;
    while i < ids.len() {
        if i + 1 < ids.len() && (ids[i], ids[i + 1]) == pair {
            ids[out] = new;
            i += 2;
        } else {
            ids[out] = ids[i];
            i += 1;
        }
        out += 1;
    }
    ids.truncate(out);
}

/// tiktoken's byte-pair encoding of `bytes` with `rank_of`: repeatedly merge the adjacent
/// pair whose concatenation has the lowest rank. Training only; encoding proper lives in
/// `bpe`.
fn bpe(rank_of: &HashMap<Vec<u8>, u32>, bytes: &[u8]) -> Vec<u32> {
    let mut parts: Vec<Vec<u8>> = bytes.iter().map(|&b| vec![b]).collect();
    loop {
        let best = (0..parts.len().saturating_sub(1))
            .filter_map(|i| {
                let joined = [parts[i].as_slice(), parts[i + 1].as_slice()].concat();
                rank_of.get(&joined).map(|&r| (r, i))
            })
            .min();
        let Some((_, i)) = best else { break };
        let right = parts.remove(i + 1);
        parts[i].extend_from_slice(&right);
    }
    parts.iter().map(|p| rank_of[p]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    #[test]
    fn training_is_deterministic_and_learns_merges() {
        let a = train(CORPUS, MAX_MERGES);
        let b = train(CORPUS, MAX_MERGES);
        assert_eq!(a, b);
        assert!(a.len() > 256 + 300, "only {} merges learned", a.len() - 256);
        assert!(
            a.iter().any(|t| t == b" capital"),
            "a frequent word is one token"
        );
    }

    #[test]
    fn every_token_encodes_to_itself_and_text_round_trips() {
        let tok = Tokenizer::demo().unwrap();
        assert_eq!(tok.n_vocab(), N_CONTROL + train(CORPUS, MAX_MERGES).len());
        for id in N_CONTROL as u32..tok.n_vocab() as u32 {
            let bytes = tok.decode_bytes(&[id]).unwrap();
            let text = String::from_utf8_lossy(&bytes);
            if text.as_bytes() == bytes.as_slice() {
                assert_eq!(tok.encode(&text), [id], "token {id} {text:?}");
            }
        }
        for text in [CORPUS, "Ünïcödé, 日本語 and [INST] typed by a user."] {
            let ids = tok.encode(text);
            assert_eq!(tok.decode(&ids).unwrap(), text);
            assert!(ids.iter().all(|&id| !tok.is_control(id)));
        }
        assert!(
            tok.encode(CORPUS).len() < CORPUS.len() / 2,
            "merges compress"
        );
    }

    #[test]
    fn its_gguf_form_loads_back_to_the_same_ids() {
        let tok = Tokenizer::demo().unwrap();
        let meta = tok.gguf_metadata().unwrap();
        let file = spillway_gguf::GgufWriter::new(Vec::new(), &meta, Vec::new())
            .unwrap()
            .finish()
            .unwrap();
        let gguf = spillway_gguf::Gguf::parse(file).unwrap();
        let back = Tokenizer::from_gguf(&gguf).unwrap();
        assert_eq!(back.n_vocab(), tok.n_vocab());
        assert_eq!(back.encode(CORPUS), tok.encode(CORPUS));
    }
}
