//! Byte-pair encoding of one pre-tokenizer piece, with tiktoken's semantics: start from the
//! piece's bytes, and repeatedly merge the adjacent pair whose concatenation is the token
//! of lowest rank (the leftmost such pair on ties) until no adjacent pair is a token.
//!
//! Two implementations of that one rule: a linear rescan after each merge (tiktoken's
//! algorithm, fastest for the short pieces that make up nearly all text) and a heap over a
//! linked list for long pieces, so that a megabyte of unbroken CJK or a run of one letter
//! costs O(n log n) rather than O(n²). A property test holds them equal.
//!
//! [`PieceCache`] remembers the ids of recently seen multi-token pieces; it is bounded and
//! simply cleared when full.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use super::vocab::Vocab;

/// Pieces longer than this (in bytes) use the heap.
const LINEAR_MAX: usize = 96;

/// Rank of a pair that is not a token.
const NONE: u32 = u32::MAX;

/// Reusable buffers for [`encode_piece`], so that encoding a text allocates once.
#[derive(Debug, Default)]
pub(crate) struct Scratch {
    /// Linear: (start, rank of the pair starting here).
    parts: Vec<(u32, u32)>,
    /// Heap: the linked list of parts and the candidate pairs.
    next: Vec<usize>,
    prev: Vec<usize>,
    heap: BinaryHeap<Reverse<(u32, usize)>>,
}

/// Appends the ids of `piece` (non-empty) to `out`.
pub(crate) fn encode_piece(vocab: &Vocab, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
    if piece.len() == 1 {
        // Ranks 0..256 are the bytes themselves (checked when the vocabulary was built).
        out.push(vocab.rank_to_id(u32::from(piece[0])));
    } else if piece.len() <= LINEAR_MAX {
        merge_linear(vocab, piece, scratch, out);
    } else {
        merge_heap(vocab, piece, scratch, out);
    }
}

#[inline]
fn rank(vocab: &Vocab, bytes: &[u8]) -> u32 {
    vocab.rank_of(bytes).unwrap_or(NONE)
}

/// The id of a part left after merging. Every part is a token by construction (a byte, or a
/// pair whose rank was found); the fallback only keeps a broken invariant from panicking.
#[inline]
fn part_id(vocab: &Vocab, bytes: &[u8]) -> u32 {
    match vocab.rank_of(bytes) {
        Some(r) => vocab.rank_to_id(r),
        None => {
            debug_assert!(false, "BPE left a part that is not a token: {bytes:?}");
            vocab.special().unk
        }
    }
}

/// Rescans the pairs after every merge (tiktoken's `_byte_pair_merge`).
pub(crate) fn merge_linear(vocab: &Vocab, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
    let parts = &mut scratch.parts;
    parts.clear();
    // parts[i] = (start of part i, rank of part i joined with part i + 1); two sentinels
    // mark the end so that a window of parts i..i+3 always exists for the re-ranking.
    for i in 0..piece.len() - 1 {
        parts.push((i as u32, rank(vocab, &piece[i..i + 2])));
    }
    parts.push(((piece.len() - 1) as u32, NONE));
    parts.push((piece.len() as u32, NONE));

    let pair_rank = |parts: &[(u32, u32)], i: usize| -> u32 {
        if i + 3 < parts.len() {
            rank(vocab, &piece[parts[i].0 as usize..parts[i + 3].0 as usize])
        } else {
            NONE
        }
    };
    loop {
        let mut best = (NONE, 0usize);
        for (i, &(_, r)) in parts[..parts.len() - 1].iter().enumerate() {
            if r < best.0 {
                best = (r, i);
            }
        }
        let (r, i) = best;
        if r == NONE {
            break;
        }
        // Join parts i and i + 1; the pairs that change are (i - 1, i) and (i, i + 1).
        if i > 0 {
            parts[i - 1].1 = pair_rank(parts, i - 1);
        }
        parts[i].1 = pair_rank(parts, i);
        parts.remove(i + 1);
    }
    for w in parts.windows(2) {
        out.push(part_id(vocab, &piece[w[0].0 as usize..w[1].0 as usize]));
    }
}

/// The same merges in O(n log n): parts form a linked list, candidate pairs sit in a
/// min-heap keyed by (rank, start) — the leftmost lowest — and stale entries are skipped.
pub(crate) fn merge_heap(vocab: &Vocab, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
    const HEAD: usize = usize::MAX;
    const DEAD: usize = usize::MAX - 1;
    let n = piece.len();
    let Scratch {
        next, prev, heap, ..
    } = scratch;
    // Part k starts at byte k; next[k] and prev[k] link the live parts, `n` ends the list.
    next.clear();
    next.extend(1..=n);
    prev.clear();
    prev.push(HEAD);
    prev.extend(0..n - 1);
    heap.clear();
    for k in 0..n - 1 {
        let r = rank(vocab, &piece[k..k + 2]);
        if r != NONE {
            heap.push(Reverse((r, k)));
        }
    }
    // The rank of the pair that starts with part `k`, given the current links.
    let pair = |next: &[usize], k: usize| -> u32 {
        let mid = next[k];
        if mid >= n {
            return NONE;
        }
        rank(vocab, &piece[k..next[mid]])
    };
    while let Some(Reverse((r, k))) = heap.pop() {
        // Skip entries of absorbed parts and of pairs whose right side has grown since.
        // Ranks name byte strings, so an equal rank means the same, still valid, pair.
        if prev[k] == DEAD || pair(next, k) != r {
            continue;
        }
        let mid = next[k];
        let after = next[mid];
        next[k] = after;
        prev[mid] = DEAD;
        if after < n {
            prev[after] = k;
        }
        let r_right = pair(next, k);
        if r_right != NONE {
            heap.push(Reverse((r_right, k)));
        }
        let before = prev[k];
        if before != HEAD {
            let r_left = pair(next, before);
            if r_left != NONE {
                heap.push(Reverse((r_left, before)));
            }
        }
    }
    let mut k = 0;
    while k < n {
        let end = next[k];
        out.push(part_id(vocab, &piece[k..end]));
        k = end;
    }
}

/// Pieces longer than this are not cached (long pieces rarely repeat).
const CACHE_KEY_MAX: usize = 64;
/// Entries kept before the cache is cleared.
const CACHE_ENTRIES: usize = 1 << 14;

/// Ids of recently encoded multi-token pieces. std's `HashMap` keeps its per-process random
/// keys, so text chosen to collide cannot slow the table down.
#[derive(Default)]
pub(crate) struct PieceCache {
    map: HashMap<Box<[u8]>, Box<[u32]>>,
}

impl std::fmt::Debug for PieceCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PieceCache")
            .field("entries", &self.map.len())
            .finish()
    }
}

impl PieceCache {
    pub(crate) fn get(&self, piece: &[u8]) -> Option<&[u32]> {
        self.map.get(piece).map(|ids| &ids[..])
    }

    pub(crate) fn insert(&mut self, piece: &[u8], ids: &[u32]) {
        if piece.len() > CACHE_KEY_MAX {
            return;
        }
        if self.map.len() >= CACHE_ENTRIES {
            self.map.clear();
        }
        self.map.insert(piece.into(), ids.into());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::vocab::AddSpecial;
    use proptest::prelude::*;

    /// The 256 bytes plus `extra` tokens, each the concatenation of two earlier tokens over a
    /// four-letter alphabet, so that pieces have many competing merges.
    fn random_vocab(seed: u64, extra: usize) -> Vocab {
        let mut state = seed | 1;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut tokens: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        let alphabet = 97..101; // a b c d
        let mut seen: std::collections::HashSet<Vec<u8>> = tokens.iter().cloned().collect();
        let mut pool: Vec<Vec<u8>> = alphabet.clone().map(|b| vec![b as u8]).collect();
        while tokens.len() < 256 + extra {
            let a = &pool[next() as usize % pool.len()];
            let b = &pool[next() as usize % pool.len()];
            let t: Vec<u8> = a.iter().chain(b).copied().collect();
            if t.len() <= 12 && seen.insert(t.clone()) {
                pool.push(t.clone());
                tokens.push(t);
            }
        }
        let slices: Vec<&[u8]> = tokens.iter().map(Vec::as_slice).collect();
        let control = ["<unk>", "<s>", "</s>", "<pad>"].map(String::from).to_vec();
        Vocab::new(control, &slices, None, AddSpecial::default()).unwrap()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// The heap and the linear rescan make the same merges.
        #[test]
        fn heap_equals_linear(seed in any::<u64>(), extra in 1usize..300,
                              text in proptest::collection::vec(97u8..101, 2..200)) {
            let vocab = random_vocab(seed, extra);
            let mut scratch = Scratch::default();
            let (mut a, mut b) = (Vec::new(), Vec::new());
            merge_linear(&vocab, &text, &mut scratch, &mut a);
            merge_heap(&vocab, &text, &mut scratch, &mut b);
            prop_assert_eq!(&a, &b);
            let bytes: Vec<u8> = a
                .iter()
                .flat_map(|&id| vocab.token_bytes(id).unwrap().to_vec())
                .collect();
            prop_assert_eq!(bytes, text);
        }
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = PieceCache::default();
        for i in 0..CACHE_ENTRIES as u32 + 10 {
            cache.insert(&i.to_le_bytes(), &[i]);
        }
        assert!(cache.map.len() <= CACHE_ENTRIES);
        cache.insert(&[b'x'; CACHE_KEY_MAX + 1], &[1]);
        assert!(cache.get(&[b'x'; CACHE_KEY_MAX + 1]).is_none());
    }
}
