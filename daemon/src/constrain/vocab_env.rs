//! The model's vocabulary as llguidance sees it: a token trie of every id's bytes, with
//! control tokens under toktrie's special-token marker (`\xff` + name, so no text can
//! spell them), and our own Tekken encoder for the text llguidance forces.

use std::sync::Arc;

use llguidance::toktrie::{TokRxInfo, TokTrie, TokenId, TokenizerEnv};

use crate::tokenizer::Tokenizer;

/// A [`TokenizerEnv`] over a [`Tokenizer`]. Built once per model (the trie of a 131072-id
/// vocabulary takes tens of milliseconds), shared by every request's grammar.
pub struct VocabEnv {
    tokenizer: Arc<Tokenizer>,
    trie: TokTrie,
}

impl VocabEnv {
    pub fn new(tokenizer: Arc<Tokenizer>) -> VocabEnv {
        let vocab = tokenizer.vocab();
        let n = vocab.n_vocab();
        let words: Vec<Vec<u8>> = (0..n as u32)
            .map(|id| match vocab.control_name(id) {
                Some(name) => {
                    let mut w = Vec::with_capacity(name.len() + 1);
                    w.push(TokTrie::SPECIAL_TOKEN_MARKER);
                    w.extend_from_slice(name.as_bytes());
                    w
                }
                None => vocab.token_bytes(id).unwrap_or_default().to_vec(),
            })
            .collect();
        let mut info = TokRxInfo::new(n as u32, tokenizer.eos_id());
        info.tok_bos = Some(tokenizer.bos_id());
        let trie = TokTrie::from(&info, &words);
        VocabEnv { tokenizer, trie }
    }
}

impl std::fmt::Debug for VocabEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VocabEnv")
            .field("n_vocab", &self.trie.vocab_size())
            .finish()
    }
}

impl TokenizerEnv for VocabEnv {
    fn tok_trie(&self) -> &TokTrie {
        &self.trie
    }

    /// Text is encoded the way prompts are (canonical Tekken BPE), so forced text reads as
    /// the model would have written it; bytes that are not UTF-8 fall back to the trie's
    /// greedy split.
    fn tokenize_bytes(&self, s: &[u8]) -> Vec<TokenId> {
        match std::str::from_utf8(s) {
            Ok(text) => self.tokenizer.encode(text),
            Err(_) => self.trie.greedy_tokenize(s),
        }
    }
}
