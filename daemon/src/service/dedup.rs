//! Recognising redeliveries. A QoS 1 request can arrive twice (a lost PUBACK, a reconnect);
//! it must run once. The window remembers the last N requests by a keyed hash of their id
//! and reply address (two clients may both use id "1"), in fixed memory: N hashes in a ring
//! plus a set over them.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

/// The last `capacity` request keys seen.
#[derive(Debug)]
pub struct DedupWindow {
    hasher: RandomState,
    ring: VecDeque<u64>,
    set: HashSet<u64>,
    capacity: usize,
}

impl DedupWindow {
    pub fn new(capacity: usize) -> DedupWindow {
        DedupWindow {
            hasher: RandomState::new(),
            ring: VecDeque::with_capacity(capacity),
            set: HashSet::with_capacity(capacity),
            capacity: capacity.max(1),
        }
    }

    fn key(&self, id: &str, reply_topic: &str, correlation: &[u8]) -> u64 {
        self.hasher.hash_one((id, reply_topic, correlation))
    }

    /// Records a request; returns false if the same request was seen within the window.
    pub fn first_time(&mut self, id: &str, reply_topic: &str, correlation: &[u8]) -> bool {
        let k = self.key(id, reply_topic, correlation);
        if !self.set.insert(k) {
            return false;
        }
        if self.ring.len() == self.capacity
            && let Some(old) = self.ring.pop_front()
        {
            self.set.remove(&old);
        }
        self.ring.push_back(k);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_caught_within_the_window_only() {
        let mut w = DedupWindow::new(3);
        assert!(w.first_time("1", "r/a", b""));
        assert!(!w.first_time("1", "r/a", b""));
        assert!(w.first_time("1", "r/b", b""), "same id, another client");
        assert!(
            w.first_time("1", "r/a", b"c"),
            "same id, other correlation data"
        );
        assert!(w.first_time("2", "r/a", b""));
        // "1"/"r/a" has been pushed out of the 3-entry window.
        assert!(w.first_time("1", "r/a", b""));
        assert_eq!(w.ring.len(), 3);
        assert_eq!(w.set.len(), 3);
    }
}
