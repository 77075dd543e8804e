//! The Tekken vocabulary as GGUF stores it: reading it from a model file, and writing the
//! same keys (for `spillway synth`) exactly as llama.cpp's converter does.
//!
//! llama.cpp's converter (`convert_hf_to_gguf.py` with gguf-py's `MistralVocab`) writes a
//! Tekken vocabulary as a GPT-2 style byte-level BPE: `tokens` spelled with GPT-2's
//! byte-to-character mapping (control tokens by name), `token_type` CONTROL for the control
//! ids and NORMAL for the rest, all-zero `scores`, and `merges` derived from the tiktoken
//! ranks. A merge `"a b"` is recorded for every way of splitting a token of rank >= 256
//! into two tokens; the splits of one token are ordered by (rank of a, rank of b), and the
//! tokens by rank, so the list order follows the rank order tiktoken merges by.
//!
//! When reading, the merges are checked against that rule rather than used: tiktoken merges
//! the adjacent pair whose concatenation has the lowest rank, and with ids = rank + control
//! count that is fully determined by the token list. A file whose merges disagree with its
//! token order is refused, because it would not tokenize like mistral-common.

use spillway_gguf::{Gguf, MetaValue, ValueRef, ValueType};

use super::TokenizerError;
use super::byte_map;
use super::vocab::{AddSpecial, MAX_VOCAB, SpecialIds, Vocab};

/// GGUF token types (llama.cpp's `llama_token_type`).
const TYPE_NORMAL: i32 = 1;
const TYPE_CONTROL: i32 = 3;

fn err(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::Gguf(msg.into())
}

fn get_str<'a, B: AsRef<[u8]>>(
    g: &'a Gguf<B>,
    key: &str,
) -> Result<Option<&'a str>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_str()
            .map(Some)
            .ok_or_else(|| err(format!("{key} is a {}, not a string", v.value_type()))),
    }
}

fn get_id<B: AsRef<[u8]>>(g: &Gguf<B>, key: &str) -> Result<Option<u32>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|x| u32::try_from(x).ok())
            .map(Some)
            .ok_or_else(|| err(format!("{key} is not a token id: {v:?}"))),
    }
}

fn get_bool<B: AsRef<[u8]>>(g: &Gguf<B>, key: &str) -> Result<Option<bool>, TokenizerError> {
    match g.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_bool()
            .map(Some)
            .ok_or_else(|| err(format!("{key} is a {}, not a bool", v.value_type()))),
    }
}

/// Reads the tokenizer of a GGUF model file.
pub(crate) fn load<B: AsRef<[u8]>>(g: &Gguf<B>) -> Result<Vocab, TokenizerError> {
    let model = get_str(g, "tokenizer.ggml.model")?
        .ok_or_else(|| err("the file has no tokenizer (tokenizer.ggml.model is missing)"))?;
    if model != "gpt2" {
        return Err(err(format!(
            "tokenizer.ggml.model is {model:?}; only Tekken (\"gpt2\" with pre-tokenizer \"tekken\") is supported"
        )));
    }
    let pre = get_str(g, "tokenizer.ggml.pre")?.unwrap_or("(missing)");
    if pre != "tekken" {
        return Err(err(format!(
            "tokenizer.ggml.pre is {pre:?}; only the \"tekken\" pre-tokenizer is supported"
        )));
    }

    let tokens = g
        .get("tokenizer.ggml.tokens")
        .ok_or_else(|| err("tokenizer.ggml.tokens is missing"))?
        .as_array()
        .filter(|a| a.elem_type() == ValueType::String)
        .ok_or_else(|| err("tokenizer.ggml.tokens is not an array of strings"))?;
    let n = tokens.len();
    if n > MAX_VOCAB {
        return Err(err(format!(
            "tokenizer.ggml.tokens has {n} entries, more than {MAX_VOCAB}"
        )));
    }
    let types = g
        .get("tokenizer.ggml.token_type")
        .ok_or_else(|| err("tokenizer.ggml.token_type is missing"))?
        .as_array()
        .ok_or_else(|| err("tokenizer.ggml.token_type is not an array"))?;
    if types.len() != n {
        return Err(err(format!(
            "tokenizer.ggml.token_type has {} entries for {n} tokens",
            types.len()
        )));
    }

    // Control tokens first, by name; then byte-level tokens, decoded from GPT-2 spelling.
    let mut control = Vec::new();
    let mut all = Vec::new();
    let mut ends = Vec::with_capacity(n);
    for (id, (text, ty)) in tokens.iter().zip(types.iter()).enumerate() {
        let text = text.as_str().unwrap_or_default();
        let ty = ty.as_i64().ok_or_else(|| {
            err(format!(
                "tokenizer.ggml.token_type holds a {}, not an integer",
                ty.value_type()
            ))
        })?;
        match ty {
            t if t == i64::from(TYPE_CONTROL) && ends.is_empty() => control.push(text.to_owned()),
            t if t == i64::from(TYPE_NORMAL) => {
                if !byte_map::decode_into(text, &mut all) {
                    return Err(err(format!(
                        "token {id} ({text:?}) is not spelled in GPT-2's byte mapping"
                    )));
                }
                ends.push(all.len());
            }
            t if t == i64::from(TYPE_CONTROL) => {
                return Err(err(format!(
                    "token {id} is a control token after the first normal one: control \
                     tokens must be the first ids"
                )));
            }
            t => {
                return Err(err(format!(
                    "token {id} ({text:?}) has type {t}; a Tekken vocabulary has only control \
                     (3) and normal (1) tokens"
                )));
            }
        }
    }
    let mut start = 0;
    let slices: Vec<&[u8]> = ends
        .iter()
        .map(|&end| {
            let s = &all[start..end];
            start = end;
            s
        })
        .collect();

    let n_control = control.len();
    let named = |name: &str| control.iter().position(|c| c == name).map(|i| i as u32);
    let bos = get_id(g, "tokenizer.ggml.bos_token_id")?.or_else(|| named("<s>"));
    let eos = get_id(g, "tokenizer.ggml.eos_token_id")?.or_else(|| named("</s>"));
    let unk = get_id(g, "tokenizer.ggml.unknown_token_id")?.or_else(|| named("<unk>"));
    let pad = get_id(g, "tokenizer.ggml.padding_token_id")?.or_else(|| named("<pad>"));
    let special = SpecialIds {
        bos: bos.ok_or_else(|| err("no BOS token id"))?,
        eos: eos.ok_or_else(|| err("no EOS token id"))?,
        unk: unk.ok_or_else(|| err("no unknown token id"))?,
        pad: pad.or(eos).unwrap_or_default(),
    };
    let add = AddSpecial {
        bos: get_bool(g, "tokenizer.ggml.add_bos_token")?.unwrap_or(true),
        eos: get_bool(g, "tokenizer.ggml.add_eos_token")?.unwrap_or(false),
    };
    let vocab = Vocab::new(control, &slices, Some(special), add)?;
    check_merges(g, &vocab, n_control)?;
    Ok(vocab)
}

/// Checks that `tokenizer.ggml.merges` is what the converter derives from this token list:
/// each merge joins two tokens into a third, the merged tokens never go down in rank, and
/// every token of rank >= 256 is produced by some merge.
fn check_merges<B: AsRef<[u8]>>(
    g: &Gguf<B>,
    vocab: &Vocab,
    n_control: usize,
) -> Result<(), TokenizerError> {
    let merges = g
        .get("tokenizer.ggml.merges")
        .ok_or_else(|| err("tokenizer.ggml.merges is missing"))?
        .as_array()
        .filter(|a| a.elem_type() == ValueType::String)
        .ok_or_else(|| err("tokenizer.ggml.merges is not an array of strings"))?;
    let mut joined = Vec::new();
    let mut right = Vec::new();
    let mut last_rank = 0u32;
    let mut distinct = 0usize;
    for (i, m) in merges.iter().enumerate() {
        let ValueRef::Str(m) = m else {
            return Err(err(format!("merge {i} is not a string")));
        };
        let bad = |why: &str| err(format!("merge {i} ({m:?}) {why}"));
        let (a, b) = m
            .split_once(' ')
            .filter(|(_, b)| !b.contains(' '))
            .ok_or_else(|| bad("is not two tokens separated by one space"))?;
        joined.clear();
        right.clear();
        if !byte_map::decode_into(a, &mut joined) || !byte_map::decode_into(b, &mut right) {
            return Err(bad("is not spelled in GPT-2's byte mapping"));
        }
        if vocab.rank_of(&joined).is_none() || vocab.rank_of(&right).is_none() {
            return Err(bad("joins a string that is not a token"));
        }
        joined.extend_from_slice(&right);
        let rank = vocab
            .rank_of(&joined)
            .ok_or_else(|| bad("makes a string that is not a token"))?;
        if rank < last_rank || rank < 256 {
            return Err(bad(&format!(
                "makes token {} out of rank order (after token {}): this vocabulary would \
                 not tokenize like Tekken",
                vocab.rank_to_id(rank),
                vocab.rank_to_id(last_rank)
            )));
        }
        if rank != last_rank {
            distinct += 1;
        }
        last_rank = rank;
    }
    let expected = vocab.n_ranks() - 256;
    if distinct != expected {
        return Err(err(format!(
            "tokenizer.ggml.merges makes {distinct} distinct tokens; the {} BPE tokens after \
             the 256 bytes need {expected} (ids {}..{})",
            vocab.n_ranks(),
            n_control + 256,
            vocab.n_vocab()
        )));
    }
    Ok(())
}

/// The converter's merges: for each rank >= 256 in order, every split of its bytes into two
/// tokens, ordered by (left rank, right rank), spelled in GPT-2's mapping as `"a b"`.
pub(crate) fn derive_merges(vocab: &Vocab) -> Result<Vec<String>, TokenizerError> {
    let mut merges = Vec::with_capacity(vocab.n_ranks() * 2);
    let mut local: Vec<(u32, u32)> = Vec::new();
    for rank in 256..vocab.n_ranks() as u32 {
        let token = vocab.rank_bytes(rank);
        local.clear();
        for split in 1..token.len() {
            let (a, b) = token.split_at(split);
            if let (Some(ra), Some(rb)) = (vocab.rank_of(a), vocab.rank_of(b)) {
                local.push((ra, rb));
            }
        }
        if local.is_empty() {
            return Err(TokenizerError::Vocab(format!(
                "token {} cannot be made by merging two tokens, so it has no GGUF merge",
                vocab.rank_to_id(rank)
            )));
        }
        local.sort_unstable();
        for &(ra, rb) in &local {
            let mut s = String::new();
            byte_map::encode_into(vocab.rank_bytes(ra), &mut s);
            s.push(' ');
            byte_map::encode_into(vocab.rank_bytes(rb), &mut s);
            merges.push(s);
        }
    }
    Ok(merges)
}

/// The tokenizer keys of a GGUF file, in the order, types and values llama.cpp's converter
/// writes them for a Tekken vocabulary.
pub(crate) fn metadata(vocab: &Vocab) -> Result<Vec<(String, MetaValue)>, TokenizerError> {
    let special = vocab.special();
    let add = vocab.add_special();
    let n = vocab.n_vocab();
    let mut tokens = Vec::with_capacity(n);
    tokens.extend(
        vocab
            .control_names()
            .iter()
            .map(|name| MetaValue::String(name.clone())),
    );
    for rank in 0..vocab.n_ranks() as u32 {
        let mut s = String::new();
        byte_map::encode_into(vocab.rank_bytes(rank), &mut s);
        tokens.push(MetaValue::String(s));
    }
    let types = (0..n)
        .map(|id| {
            MetaValue::I32(if id < vocab.n_control() {
                TYPE_CONTROL
            } else {
                TYPE_NORMAL
            })
        })
        .collect();
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    Ok(vec![
        (key("model"), MetaValue::String("gpt2".into())),
        (key("pre"), MetaValue::String("tekken".into())),
        (key("merges"), MetaValue::strings(derive_merges(vocab)?)),
        (key("bos_token_id"), MetaValue::U32(special.bos)),
        (key("eos_token_id"), MetaValue::U32(special.eos)),
        (key("unknown_token_id"), MetaValue::U32(special.unk)),
        (key("padding_token_id"), MetaValue::U32(special.pad)),
        (key("tokens"), MetaValue::Array(ValueType::String, tokens)),
        (
            key("scores"),
            MetaValue::Array(ValueType::I32, vec![MetaValue::I32(0); n]),
        ),
        (key("token_type"), MetaValue::Array(ValueType::I32, types)),
        (key("add_bos_token"), MetaValue::Bool(add.bos)),
        (key("add_eos_token"), MetaValue::Bool(add.eos)),
    ])
}
