//! Session slots: each holds one KV cache and the tokens it encodes, so a request whose
//! prompt starts like a previous one (a follow-up turn, a shared system prompt) evaluates
//! only the new part. Slots are allocated at start-up; a request takes the slot of its
//! session key, else the free slot whose cache shares the longest prefix with its prompt,
//! else the least recently used.

use crate::model::KvCache;

/// One slot.
#[derive(Debug)]
pub struct Slot {
    /// The session key that owns the slot, if any.
    pub key: Option<String>,
    pub kv: KvCache,
    /// The tokens whose keys and values `kv` holds, in order.
    pub tokens: Vec<u32>,
    /// Logical time of last use, for LRU eviction.
    pub last_used: u64,
}

impl Slot {
    pub fn new(kv: KvCache) -> Slot {
        let cap = kv.capacity();
        Slot {
            key: None,
            kv,
            tokens: Vec::with_capacity(cap),
            last_used: 0,
        }
    }

    /// Drops cached positions from `n` on (keeping tokens and cache in step).
    pub fn truncate(&mut self, n: usize) {
        self.tokens.truncate(n);
        self.kv.truncate(n);
    }
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// Picks the slot for a request with optional session `key` and `prompt`.
pub fn choose(slots: &[Slot], key: Option<&str>, prompt: &[u32]) -> usize {
    if let Some(k) = key
        && let Some(i) = slots.iter().position(|s| s.key.as_deref() == Some(k))
    {
        return i;
    }
    // Among slots not owned by another live session key (or, for a keyed request, any slot
    // as a last resort): longest shared prefix, then least recently used.
    let best = |candidates: &mut dyn Iterator<Item = (usize, &Slot)>| {
        candidates
            .max_by_key(|(_, s)| {
                (
                    common_prefix(&s.tokens, prompt),
                    std::cmp::Reverse(s.last_used),
                )
            })
            .map(|(i, _)| i)
    };
    best(&mut slots.iter().enumerate().filter(|(_, s)| s.key.is_none()))
        .or_else(|| best(&mut slots.iter().enumerate()))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{KvType, ModelConfig};

    fn slots(n: usize) -> Vec<Slot> {
        let file = std::sync::Arc::new(
            spillway_gguf::GgufFile::open(spillway_e2e::fixtures().join("models/tiny-q4_0.gguf"))
                .unwrap(),
        );
        let cfg = ModelConfig::from_gguf(&file).unwrap();
        (0..n)
            .map(|_| Slot::new(KvCache::new(&cfg, KvType::F16, 8).unwrap()))
            .collect()
    }

    #[test]
    fn keys_then_prefixes_then_lru() {
        let mut s = slots(3);
        s[0].tokens = vec![1, 2, 3];
        s[0].last_used = 5;
        s[1].tokens = vec![1, 2, 9];
        s[1].key = Some("alice".into());
        s[2].last_used = 1;
        assert_eq!(choose(&s, Some("alice"), &[7]), 1, "a key finds its slot");
        assert_eq!(
            choose(&s, None, &[1, 2, 3, 4]),
            0,
            "longest shared prefix among free slots"
        );
        assert_eq!(
            choose(&s, None, &[8]),
            2,
            "no prefix: least recently used free slot"
        );
        assert_eq!(
            choose(&s, Some("bob"), &[1, 2, 3]),
            0,
            "a new key takes a free slot"
        );
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
    }
}
