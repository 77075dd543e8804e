//! Session slots: each holds one KV cache and the tokens it encodes, so a request whose
//! prompt starts like a previous one (a follow-up turn, a shared system prompt) evaluates
//! only the new part. Slots are allocated at start-up.
//!
//! # Who may reuse a cached prefix
//!
//! A cached prefix is another request's prompt: reusing it shows in `usage.cached_tokens`
//! (and in the time to the first token), so a client that could reuse any slot would learn
//! other clients' prompts token by token. A slot therefore records the session key and the
//! client identity ([`Slot::owner`]) of the request that filled it, and its prefix serves
//! only:
//!
//! - a request with a session key: the slot of that same key, and no other;
//! - a request without one: slots whose owner equals the request's owner. An unknown owner
//!   (`None`) matches nothing, not even another `None`: requests that cannot be told apart
//!   must not share.
//!
//! Any other slot a request is given is cleared first (nothing cached), so it starts as if
//! the cache were cold.
//!
//! # Which slot
//!
//! Only a slot not running a generation can be given. A keyed request takes its session's
//! slot, and waits while that slot is busy (a session's turns run one after another);
//! failing that, the least recently used slot without a key, or the least recently used of
//! all as a last resort (evicting a session).
//! An unkeyed request takes, among slots without a key (all slots as a last resort), the
//! one with the longest prefix it may reuse, then the least recently used.

use crate::model::KvCache;

/// One slot.
#[derive(Debug)]
pub struct Slot {
    /// The session key that owns the slot, if any.
    pub key: Option<String>,
    /// The client identity of the request that last filled the slot (an MQTT reply topic,
    /// an API key's id), if known.
    pub owner: Option<String>,
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
            owner: None,
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

    /// Whether a request with session `key` and client `owner` may reuse this slot's cached
    /// prefix (see the module documentation).
    pub fn serves(&self, key: Option<&str>, owner: Option<&str>) -> bool {
        match key {
            Some(k) => self.key.as_deref() == Some(k),
            None => owner.is_some() && self.owner.as_deref() == owner,
        }
    }
}

/// Length of the common prefix of two token sequences.
pub fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The slot chosen for a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Choice {
    pub slot: usize,
    /// Whether the request may reuse the slot's cached prefix; when false the caller must
    /// clear the slot before use.
    pub reuse: bool,
}

/// Picks the slot for a request with optional session `key`, client `owner` and `prompt`
/// among the slots not `busy` (running a generation); `None` if its session's slot is busy
/// or every slot is.
pub fn choose(
    slots: &[Slot],
    busy: impl Fn(usize) -> bool,
    key: Option<&str>,
    owner: Option<&str>,
    prompt: &[u32],
) -> Option<Choice> {
    let free = |i: usize| !busy(i);
    if let Some(k) = key
        && let Some(slot) = slots.iter().position(|s| s.key.as_deref() == Some(k))
    {
        return free(slot).then_some(Choice { slot, reuse: true });
    }
    // The prefix this request may reuse from a slot: none from a slot it may not read.
    let usable = |s: &Slot| {
        if s.serves(key, owner) {
            common_prefix(&s.tokens, prompt)
        } else {
            0
        }
    };
    // Among slots not owned by a session key (or any slot as a last resort): longest
    // usable prefix, then least recently used.
    let best = |candidates: &mut dyn Iterator<Item = (usize, &Slot)>| {
        candidates
            .max_by_key(|(_, s)| (usable(s), std::cmp::Reverse(s.last_used)))
            .map(|(i, _)| i)
    };
    let slot = best(
        &mut slots
            .iter()
            .enumerate()
            .filter(|&(i, s)| free(i) && s.key.is_none()),
    )
    .or_else(|| best(&mut slots.iter().enumerate().filter(|&(i, _)| free(i))))?;
    let reuse = slots[slot].serves(key, owner);
    Some(Choice { slot, reuse })
}

impl AsRef<KvCache> for Slot {
    fn as_ref(&self) -> &KvCache {
        &self.kv
    }
}

impl AsMut<KvCache> for Slot {
    fn as_mut(&mut self) -> &mut KvCache {
        &mut self.kv
    }
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
        s[0].owner = Some("carol".into());
        s[0].last_used = 5;
        s[1].tokens = vec![1, 2, 9];
        s[1].key = Some("alice".into());
        s[2].last_used = 1;
        let pick = |key, owner, prompt: &[u32]| choose(&s, |_| false, key, owner, prompt).unwrap();
        assert_eq!(
            pick(Some("alice"), None, &[7]),
            Choice {
                slot: 1,
                reuse: true
            },
            "a key finds its slot"
        );
        assert_eq!(
            pick(None, Some("carol"), &[1, 2, 3, 4]),
            Choice {
                slot: 0,
                reuse: true
            },
            "longest shared prefix among the owner's free slots"
        );
        assert_eq!(
            pick(None, Some("carol"), &[8]),
            Choice {
                slot: 2,
                reuse: false
            },
            "no prefix: least recently used free slot, cleared"
        );
        assert_eq!(
            pick(Some("bob"), Some("carol"), &[1, 2, 3]),
            Choice {
                slot: 2,
                reuse: false
            },
            "a new key takes the least recently used free slot, cleared"
        );
        assert_eq!(common_prefix(&[1, 2, 3], &[1, 2, 4, 5]), 2);
    }

    #[test]
    fn another_clients_prefix_is_never_reused() {
        let mut s = slots(2);
        s[0].tokens = vec![1, 2, 3];
        s[0].owner = Some("carol".into());
        s[0].last_used = 1;
        s[1].tokens = vec![1, 2, 3];
        s[1].key = Some("alice".into());
        s[1].owner = Some("dave".into());
        s[1].last_used = 2;
        // Another owner, or no owner at all, gets a cleared slot whatever the prefix.
        for owner in [Some("mallory"), None] {
            let c = choose(&s, |_| false, None, owner, &[1, 2, 3, 4]).unwrap();
            assert_eq!(
                c,
                Choice {
                    slot: 0,
                    reuse: false
                },
                "{owner:?}"
            );
        }
        // A None owner does not match a slot whose owner is None either.
        s[0].owner = None;
        assert!(
            !choose(&s, |_| false, None, None, &[1, 2, 3, 4])
                .unwrap()
                .reuse
        );
        // With every slot keyed, an unkeyed request evicts one: it may read it only if
        // it is the same client's.
        s[0].key = Some("bob".into());
        assert_eq!(
            choose(&s, |_| false, None, Some("dave"), &[1, 2, 3, 4]).unwrap(),
            Choice {
                slot: 1,
                reuse: true
            },
            "the same client reads its own cache"
        );
        assert_eq!(
            choose(&s, |_| false, None, Some("mallory"), &[1, 2, 3, 4]).unwrap(),
            Choice {
                slot: 0,
                reuse: false
            },
            "another client evicts the least recently used session, cleared"
        );
        // Another session key of the same owner does not read the session.
        assert!(
            !choose(&s, |_| false, Some("eve"), Some("dave"), &[1, 2, 3])
                .unwrap()
                .reuse
        );
    }

    #[test]
    fn busy_slots_are_never_chosen() {
        let mut s = slots(3);
        s[0].tokens = vec![1, 2, 3];
        s[0].owner = Some("carol".into());
        s[1].key = Some("alice".into());
        let busy = [true, true, false];
        assert_eq!(
            choose(&s, |i| busy[i], None, Some("carol"), &[1, 2, 3, 4]),
            Some(Choice {
                slot: 2,
                reuse: false
            }),
            "the owner's own slot is busy: a free one, cleared"
        );
        assert_eq!(
            choose(&s, |i| busy[i], Some("alice"), None, &[1]),
            None,
            "a session waits for its own slot"
        );
        assert_eq!(choose(&s, |_| true, None, Some("carol"), &[1]), None);
    }
}
