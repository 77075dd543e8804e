//! Mistral's Tekken tokenizer, id for id as mistral-common computes it: a tiktoken-style
//! pre-tokenizer split ([`pretokenize`]), byte-level BPE by merge rank (`bpe`), decoding
//! with a streaming [`Detokenizer`], and the Instruct chat format ([`chat`]).
//!
//! Layout: `vocab` holds the validated vocabulary; `tekken_json` and `gguf_vocab` load it
//! (the latter also writes it back as llama.cpp's converter does); `byte_map` is GPT-2's
//! byte-to-character spelling used in GGUF.
//!
//! The vocabulary loads from a GGUF model ([`Tokenizer::from_gguf`]) or from
//! mistral-common's `tekken.json` ([`Tokenizer::from_tekken_json`]); both give the same
//! ids. Ids `0..1000` are control tokens (`<s>`, `[INST]`, ...). Encoding text never
//! produces them: `[INST]` typed by a user is five characters of text, never control token
//! 3, so user text cannot forge the prompt format. Only [`chat`] inserts control ids.

mod bpe;
mod byte_map;
pub mod chat;
mod decode;
mod demo_vocab;
mod gguf_vocab;
pub mod pretokenize;
pub mod reply;
mod tekken_json;
mod vocab;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use spillway_gguf::{Gguf, MetaValue};

pub use chat::{ChatError, ChatPrompt, Message, ToolCall, ToolsPosition};
pub use decode::Detokenizer;
pub use pretokenize::TEKKEN_PATTERN;
pub use reply::{AssistantReply, GeneratedCall, ReplyParser, ReplyPiece};
pub use vocab::{AddSpecial, DEFAULT_CONTROL_NAMES, MAX_VOCAB, SpecialIds, Vocab};

/// Why a vocabulary could not be loaded, or an id not decoded.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("reading {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("tekken.json: {0}")]
    TekkenJson(String),
    #[error("GGUF tokenizer: {0}")]
    Gguf(String),
    #[error("vocabulary: {0}")]
    Vocab(String),
    #[error("token id {id} is outside the vocabulary (ids 0..{n_vocab})")]
    UnknownId { id: u32, n_vocab: usize },
}

/// A loaded Tekken tokenizer. Cheap to share between threads (`&Tokenizer` is all that
/// encoding and decoding need).
#[derive(Debug)]
pub struct Tokenizer {
    vocab: Vocab,
    /// mistral-common's tokenizer version (`config.version` in `tekken.json`), if known.
    version: Option<String>,
    /// Ids of recent multi-token pieces. An encode call that finds the cache busy (another
    /// thread is encoding) goes without rather than waiting.
    cache: Mutex<bpe::PieceCache>,
}

impl Tokenizer {
    fn new(vocab: Vocab, version: Option<String>) -> Tokenizer {
        pretokenize::warm_up();
        Tokenizer {
            vocab,
            version,
            cache: Mutex::new(bpe::PieceCache::default()),
        }
    }

    /// Loads the tokenizer of a GGUF model (`tokenizer.ggml.model = gpt2`, `pre = tekken`).
    pub fn from_gguf<B: AsRef<[u8]>>(gguf: &Gguf<B>) -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer::new(gguf_vocab::load(gguf)?, None))
    }

    /// Loads mistral-common's `tekken.json`.
    pub fn from_tekken_json(path: impl AsRef<Path>) -> Result<Tokenizer, TokenizerError> {
        let (vocab, version) = tekken_json::load_file(path.as_ref())?;
        Ok(Tokenizer::new(vocab, version))
    }

    /// Loads a `tekken.json` already in memory.
    pub fn from_tekken_json_bytes(bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let (vocab, version) = tekken_json::parse(bytes)?;
        Ok(Tokenizer::new(vocab, version))
    }

    /// The built-in demo vocabulary (see `demo_vocab`): small, trained at run time on a
    /// text compiled into the binary. Not Mistral's; for `spillway demo` without a
    /// `tekken.json`.
    pub fn demo() -> Result<Tokenizer, TokenizerError> {
        Ok(Tokenizer::new(demo_vocab::build()?, None))
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// mistral-common's version of this tokenizer (e.g. `v3`, `v13`), when the source said.
    pub fn version(&self) -> Option<&str> {
        self.version.as_deref()
    }

    /// Where this tokenizer's chat format puts the tool definitions: before the first user
    /// turn from mistral-common's v13 on (Ministral 3), before the last one earlier. A GGUF
    /// does not record the version; there, a vocabulary with `[THINK]` (added with v13's
    /// table, which Ministral 3 ships) is taken as v13.
    pub fn tools_position(&self) -> ToolsPosition {
        let v13 = match self.version.as_deref() {
            Some(v) => v
                .strip_prefix('v')
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 13),
            None => self.control_id("[THINK]").is_some(),
        };
        if v13 {
            ToolsPosition::BeforeFirstUser
        } else {
            ToolsPosition::BeforeLastUser
        }
    }

    /// Number of ids.
    pub fn n_vocab(&self) -> usize {
        self.vocab.n_vocab()
    }

    /// The beginning-of-sequence id (`<s>`).
    pub fn bos_id(&self) -> u32 {
        self.vocab.special().bos
    }

    /// The end-of-sequence id (`</s>`): generation stops here.
    pub fn eos_id(&self) -> u32 {
        self.vocab.special().eos
    }

    /// Whether `id` is a control token (never produced from text, never rendered).
    pub fn is_control(&self, id: u32) -> bool {
        self.vocab.is_control(id)
    }

    /// The id of a control token by name, e.g. `[INST]`.
    pub fn control_id(&self, name: &str) -> Option<u32> {
        self.vocab.control_id(name)
    }

    /// Encodes text as plain text: no BOS/EOS, and never a control id.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        let mut ids = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_into(text, &mut ids);
        ids
    }

    /// Appends the ids of `text` to `out` (see [`Tokenizer::encode`]).
    pub fn encode_into(&self, text: &str, out: &mut Vec<u32>) {
        let mut scratch = bpe::Scratch::default();
        let mut cache = self.cache.try_lock().ok();
        for piece in pretokenize::split(text) {
            let piece = piece.as_bytes();
            // tiktoken looks the whole piece up first: most words are one token.
            if let Some(rank) = self.vocab.rank_of(piece) {
                out.push(self.vocab.rank_to_id(rank));
                continue;
            }
            if let Some(ids) = cache.as_ref().and_then(|c| c.get(piece)) {
                out.extend_from_slice(ids);
                continue;
            }
            let start = out.len();
            bpe::encode_piece(&self.vocab, piece, &mut scratch, out);
            if let Some(c) = cache.as_mut() {
                c.insert(piece, &out[start..]);
            }
        }
    }

    /// Decodes ids to text, skipping control tokens; invalid UTF-8 (a sequence cut short)
    /// becomes U+FFFD. Fails on an id outside the vocabulary.
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        decode::decode(self, ids)
    }

    /// The raw bytes of the non-control tokens of `ids`.
    pub fn decode_bytes(&self, ids: &[u32]) -> Result<Vec<u8>, TokenizerError> {
        decode::decode_bytes(self, ids)
    }

    /// A streaming detokenizer for one generated sequence.
    pub fn detokenizer(&self) -> Detokenizer<'_> {
        Detokenizer::new(self)
    }

    /// The tokenizer keys of a GGUF file holding this vocabulary, exactly as llama.cpp's
    /// converter writes them (order, types and values): `tokenizer.ggml.model`, `pre`,
    /// `merges`, special ids, `tokens`, `scores`, `token_type`, `add_bos_token`,
    /// `add_eos_token`.
    pub fn gguf_metadata(&self) -> Result<Vec<(String, MetaValue)>, TokenizerError> {
        gguf_vocab::metadata(&self.vocab)
    }

    /// The GGUF merge list llama.cpp's converter derives from the ranks.
    pub fn gguf_merges(&self) -> Result<Vec<String>, TokenizerError> {
        gguf_vocab::derive_merges(&self.vocab)
    }
}
