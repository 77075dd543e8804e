//! Loading mistral-common's `tekken.json`.
//!
//! The file holds `config` (the pre-tokenizer pattern, `default_vocab_size`,
//! `default_num_special_tokens`, `version`), `vocab` (every rank with its base64
//! `token_bytes`), and in newer releases `special_tokens` (the control token names). As in
//! mistral-common, only the first `default_vocab_size - default_num_special_tokens` ranks
//! are used, and control ids come first: id = rank + number of control tokens.
//!
//! The file is untrusted: its size is bounded before it is read, and every field that
//! shapes memory or ids is checked before use.

use std::borrow::Cow;
use std::path::Path;

use base64::Engine as _;
use serde::Deserialize;

use super::TokenizerError;
use super::pretokenize::TEKKEN_PATTERN;
use super::vocab::{
    AddSpecial, DEFAULT_CONTROL_NAMES, MAX_TOKEN_BYTES, MAX_VOCAB, Vocab, placeholder_control_name,
};

/// Largest `tekken.json` accepted (mistral-common's are about 15–20 MB).
pub(crate) const MAX_FILE_BYTES: u64 = 128 << 20;

#[derive(Deserialize)]
struct File<'a> {
    #[serde(borrow)]
    config: Config<'a>,
    #[serde(borrow)]
    vocab: Vec<Entry<'a>>,
    #[serde(default, borrow)]
    special_tokens: Option<Vec<Special<'a>>>,
}

#[derive(Deserialize)]
struct Config<'a> {
    #[serde(borrow)]
    pattern: Cow<'a, str>,
    default_vocab_size: u64,
    default_num_special_tokens: u64,
    #[serde(default, borrow)]
    version: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    rank: u64,
    #[serde(borrow)]
    token_bytes: Cow<'a, str>,
}

#[derive(Deserialize)]
struct Special<'a> {
    rank: u64,
    #[serde(borrow)]
    token_str: Cow<'a, str>,
}

fn err(msg: impl Into<String>) -> TokenizerError {
    TokenizerError::TekkenJson(msg.into())
}

/// Reads and validates a `tekken.json` file.
pub(crate) fn load_file(path: &Path) -> Result<(Vocab, Option<String>), TokenizerError> {
    let io = |source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    };
    let len = std::fs::metadata(path).map_err(io)?.len();
    if len > MAX_FILE_BYTES {
        return Err(err(format!(
            "{}: {len} bytes is more than a tokenizer file may hold ({MAX_FILE_BYTES})",
            path.display()
        )));
    }
    let bytes = std::fs::read(path).map_err(io)?;
    parse(&bytes)
}

/// Parses and validates the contents of a `tekken.json`; also returns its `version`.
pub(crate) fn parse(bytes: &[u8]) -> Result<(Vocab, Option<String>), TokenizerError> {
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(err(format!(
            "{} bytes is more than a tokenizer file may hold ({MAX_FILE_BYTES})",
            bytes.len()
        )));
    }
    let file: File<'_> =
        serde_json::from_slice(bytes).map_err(|e| err(format!("not a tekken.json: {e}")))?;
    let config = &file.config;
    if config.pattern != TEKKEN_PATTERN {
        return Err(err(format!(
            "unsupported pre-tokenizer pattern {:?} (only Tekken's is implemented)",
            config.pattern
        )));
    }
    let n_vocab = config.default_vocab_size;
    let n_control = config.default_num_special_tokens;
    if n_vocab > MAX_VOCAB as u64 || n_control >= n_vocab {
        return Err(err(format!(
            "default_vocab_size {n_vocab} with default_num_special_tokens {n_control}: need \
             special < vocab <= {MAX_VOCAB}"
        )));
    }
    let (n_vocab, n_control) = (n_vocab as usize, n_control as usize);
    let n_ranks = n_vocab - n_control;
    if file.vocab.len() < n_ranks {
        return Err(err(format!(
            "vocab has {} entries, fewer than the {n_ranks} ranks that default_vocab_size \
             {n_vocab} minus {n_control} special tokens needs",
            file.vocab.len()
        )));
    }

    let control = control_names(file.special_tokens.as_deref(), n_control)?;

    // Decode the ranks in use into one buffer, then hand slices of it to the vocabulary.
    let engine = base64::engine::general_purpose::STANDARD;
    let mut all = Vec::new();
    let mut ends = Vec::with_capacity(n_ranks);
    for (i, entry) in file.vocab[..n_ranks].iter().enumerate() {
        if entry.rank != i as u64 {
            return Err(err(format!(
                "vocab entry {i} has rank {}: ranks must be 0, 1, 2... in order",
                entry.rank
            )));
        }
        // Bound the decoded size before decoding (base64 is 4 chars per 3 bytes).
        if entry.token_bytes.len() > MAX_TOKEN_BYTES.div_ceil(3) * 4 {
            return Err(err(format!(
                "rank {i}: token_bytes is longer than a {MAX_TOKEN_BYTES}-byte token"
            )));
        }
        engine
            .decode_vec(entry.token_bytes.as_bytes(), &mut all)
            .map_err(|e| err(format!("rank {i}: token_bytes is not base64: {e}")))?;
        ends.push(all.len());
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
    let vocab = Vocab::new(control, &slices, None, AddSpecial::default())?;
    Ok((vocab, config.version.as_deref().map(str::to_owned)))
}

/// mistral-common's default control token names for `n_control` ids (`<SPECIAL_i>` past
/// the named ones), as for a `tekken.json` without a `special_tokens` table.
pub(crate) fn default_control_names(n_control: usize) -> Vec<String> {
    let mut names: Vec<String> = DEFAULT_CONTROL_NAMES
        .iter()
        .take(n_control)
        .map(|s| (*s).to_owned())
        .collect();
    let named = names.len();
    names.extend((named..n_control).map(placeholder_control_name));
    names
}

/// Control token names: the file's `special_tokens` if it has them, else mistral-common's
/// defaults; `<SPECIAL_i>` for the ids neither names.
fn control_names(
    listed: Option<&[Special<'_>]>,
    n_control: usize,
) -> Result<Vec<String>, TokenizerError> {
    let mut names: Vec<String> = Vec::with_capacity(n_control);
    match listed {
        Some(list) => {
            if list.len() > n_control {
                return Err(err(format!(
                    "{} special_tokens for {n_control} control ids",
                    list.len()
                )));
            }
            for (i, s) in list.iter().enumerate() {
                if s.rank != i as u64 {
                    return Err(err(format!(
                        "special_tokens entry {i} has rank {}: ranks must be 0, 1, 2... in order",
                        s.rank
                    )));
                }
                names.push(s.token_str.clone().into_owned());
            }
        }
        None => return Ok(default_control_names(n_control)),
    }
    let named = names.len();
    names.extend((named..n_control).map(placeholder_control_name));
    Ok(names)
}
