//! The Tekken vocabulary in memory: control token names, the byte strings of the BPE ranks,
//! and the byte-string -> rank index that BPE looks up on every merge.
//!
//! Ids are laid out as Tekken does: ids `0..n_control` are control tokens (named, never
//! produced from text), and id `n_control + rank` is the BPE token of that rank. Ranks
//! `0..256` are the single bytes, so every byte string can be encoded.
//!
//! The byte strings live in one buffer and the index is a table of ranks hashed by those
//! bytes (hashbrown's `HashTable`), so the 130k tokens cost about 1.5 MB and no per-token
//! allocation. Both loaders ([`super::tekken_json`], [`super::gguf_vocab`]) end in
//! [`Vocab::new`], which validates everything they could not.

use std::hash::BuildHasher;

use hashbrown::{DefaultHashBuilder, HashTable};

use super::TokenizerError;

/// Most ids a vocabulary may have (Tekken has 131072).
pub const MAX_VOCAB: usize = 1 << 20;
/// Longest token, in bytes (Tekken's longest is far shorter).
pub(crate) const MAX_TOKEN_BYTES: usize = 1024;
/// Longest control token name, in bytes.
pub(crate) const MAX_CONTROL_NAME: usize = 256;

/// The names mistral-common gives the first control tokens of a `tekken.json` that does not
/// list its own (`special_tokens`); the remaining ids up to the control count are
/// `<SPECIAL_i>`.
pub const DEFAULT_CONTROL_NAMES: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

/// The placeholder name of control id `i` when the vocabulary does not name it.
pub(crate) fn placeholder_control_name(i: usize) -> String {
    format!("<SPECIAL_{i}>")
}

/// Ids with a fixed meaning. All are control tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub bos: u32,
    pub eos: u32,
    pub unk: u32,
    pub pad: u32,
}

/// Whether BOS/EOS are added by default (GGUF's `add_bos_token`/`add_eos_token`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddSpecial {
    pub bos: bool,
    pub eos: bool,
}

impl Default for AddSpecial {
    fn default() -> AddSpecial {
        AddSpecial {
            bos: true,
            eos: false,
        }
    }
}

/// A validated Tekken vocabulary.
pub struct Vocab {
    control: Vec<String>,
    /// Every rank's bytes, concatenated in rank order.
    bytes: Vec<u8>,
    /// `ends[r]`: end of rank `r`'s bytes in `bytes` (its start is `ends[r - 1]`, or 0).
    ends: Vec<u32>,
    index: HashTable<u32>,
    hasher: DefaultHashBuilder,
    /// Length of the longest token: longer strings are not looked up at all.
    max_len: usize,
    special: SpecialIds,
    add: AddSpecial,
}

impl std::fmt::Debug for Vocab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vocab")
            .field("n_control", &self.control.len())
            .field("n_ranks", &self.ends.len())
            .field("special", &self.special)
            .finish()
    }
}

impl Vocab {
    /// Builds and validates a vocabulary from control names (ids `0..n`) and the bytes of
    /// every rank in order. The special ids default to the control tokens named `<s>`,
    /// `</s>`, `<unk>` and `<pad>` when not given.
    pub(crate) fn new(
        control: Vec<String>,
        ranks: &[&[u8]],
        special: Option<SpecialIds>,
        add: AddSpecial,
    ) -> Result<Vocab, TokenizerError> {
        let n_control = control.len();
        let n_ranks = ranks.len();
        let total = n_control
            .checked_add(n_ranks)
            .filter(|&n| n <= MAX_VOCAB)
            .ok_or_else(|| {
                TokenizerError::Vocab(format!(
                    "{n_control} control tokens and {n_ranks} BPE tokens exceed the limit of {MAX_VOCAB} ids"
                ))
            })?;
        if n_ranks < 256 {
            return Err(TokenizerError::Vocab(format!(
                "{n_ranks} BPE tokens: the 256 single bytes must come first"
            )));
        }
        let mut names = std::collections::HashSet::with_capacity(n_control);
        for (id, name) in control.iter().enumerate() {
            if name.is_empty() || name.len() > MAX_CONTROL_NAME {
                return Err(TokenizerError::Vocab(format!(
                    "control token {id} has a name of {} bytes (1 to {MAX_CONTROL_NAME} allowed)",
                    name.len()
                )));
            }
            if !names.insert(name.as_str()) {
                return Err(TokenizerError::Vocab(format!(
                    "control token name {name:?} appears twice (id {id})"
                )));
            }
        }

        let mut vocab = Vocab {
            control,
            bytes: Vec::new(),
            ends: Vec::with_capacity(n_ranks),
            index: HashTable::with_capacity(n_ranks),
            hasher: DefaultHashBuilder::default(),
            max_len: 0,
            special: SpecialIds {
                bos: 0,
                eos: 0,
                unk: 0,
                pad: 0,
            },
            add,
        };
        for (rank, &token) in ranks.iter().enumerate() {
            let id = n_control + rank;
            if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
                return Err(TokenizerError::Vocab(format!(
                    "token {id} (rank {rank}) has {} bytes (1 to {MAX_TOKEN_BYTES} allowed)",
                    token.len()
                )));
            }
            if rank < 256 && token != [rank as u8] {
                return Err(TokenizerError::Vocab(format!(
                    "rank {rank} must be the single byte {rank:#04x}, found {token:?}"
                )));
            }
            if let Some(first) = vocab.rank_of(token) {
                return Err(TokenizerError::Vocab(format!(
                    "token {id} (rank {rank}) repeats the bytes of rank {first}: {token:?}"
                )));
            }
            vocab.bytes.extend_from_slice(token);
            vocab.max_len = vocab.max_len.max(token.len());
            let end = u32::try_from(vocab.bytes.len()).map_err(|_| {
                TokenizerError::Vocab("token bytes exceed 4 GiB in total".to_owned())
            })?;
            vocab.ends.push(end);
            let hash = vocab.hasher.hash_one(token);
            let (bytes, ends) = (&vocab.bytes, &vocab.ends);
            vocab.index.insert_unique(hash, rank as u32, |&r| {
                hash_rank(&vocab.hasher, bytes, ends, r)
            });
        }
        debug_assert_eq!(vocab.n_vocab(), total);

        let by_name = |name: &str| {
            vocab
                .control_id(name)
                .ok_or_else(|| TokenizerError::Vocab(format!("no control token named {name}")))
        };
        let special = match special {
            Some(s) => s,
            None => SpecialIds {
                bos: by_name("<s>")?,
                eos: by_name("</s>")?,
                unk: by_name("<unk>")?,
                pad: by_name("<pad>")?,
            },
        };
        for (what, id) in [
            ("BOS", special.bos),
            ("EOS", special.eos),
            ("unknown", special.unk),
            ("padding", special.pad),
        ] {
            if id as usize >= n_control {
                return Err(TokenizerError::Vocab(format!(
                    "the {what} token id {id} is not a control token (ids 0..{n_control})"
                )));
            }
        }
        vocab.special = special;
        Ok(vocab)
    }

    /// Number of ids (control tokens and BPE tokens).
    pub fn n_vocab(&self) -> usize {
        self.control.len() + self.ends.len()
    }

    /// Number of control tokens (ids `0..n_control`).
    pub fn n_control(&self) -> usize {
        self.control.len()
    }

    /// Number of BPE ranks.
    pub fn n_ranks(&self) -> usize {
        self.ends.len()
    }

    /// BOS, EOS, unknown and padding ids.
    pub fn special(&self) -> SpecialIds {
        self.special
    }

    /// Whether BOS/EOS are added by default.
    pub fn add_special(&self) -> AddSpecial {
        self.add
    }

    /// The bytes of BPE rank `rank`.
    #[inline]
    pub fn rank_bytes(&self, rank: u32) -> &[u8] {
        rank_slice(&self.bytes, &self.ends, rank)
    }

    /// The rank of a byte string, if it is a token.
    #[inline]
    pub fn rank_of(&self, bytes: &[u8]) -> Option<u32> {
        if bytes.len() > self.max_len {
            return None;
        }
        let hash = self.hasher.hash_one(bytes);
        self.index
            .find(hash, |&r| self.rank_bytes(r) == bytes)
            .copied()
    }

    /// The id of a BPE rank.
    #[inline]
    pub fn rank_to_id(&self, rank: u32) -> u32 {
        rank + self.control.len() as u32
    }

    /// Whether `id` is a control token.
    #[inline]
    pub fn is_control(&self, id: u32) -> bool {
        (id as usize) < self.control.len()
    }

    /// The bytes of a non-control token; `None` for control ids and ids out of range.
    #[inline]
    /// Length in bytes of the longest token.
    pub fn max_token_len(&self) -> usize {
        self.max_len
    }

    pub fn token_bytes(&self, id: u32) -> Option<&[u8]> {
        let rank = (id as usize).checked_sub(self.control.len())?;
        (rank < self.ends.len()).then(|| self.rank_bytes(rank as u32))
    }

    /// The name of a control token.
    pub fn control_name(&self, id: u32) -> Option<&str> {
        self.control.get(id as usize).map(String::as_str)
    }

    /// The id of the control token with this name.
    pub fn control_id(&self, name: &str) -> Option<u32> {
        self.control
            .iter()
            .position(|n| n == name)
            .map(|i| i as u32)
    }

    /// Control token names, by id.
    pub fn control_names(&self) -> &[String] {
        &self.control
    }
}

#[inline]
fn rank_slice<'a>(bytes: &'a [u8], ends: &[u32], rank: u32) -> &'a [u8] {
    let r = rank as usize;
    let start = if r == 0 { 0 } else { ends[r - 1] as usize };
    &bytes[start..ends[r] as usize]
}

fn hash_rank(hasher: &DefaultHashBuilder, bytes: &[u8], ends: &[u32], rank: u32) -> u64 {
    hasher.hash_one(rank_slice(bytes, ends, rank))
}
