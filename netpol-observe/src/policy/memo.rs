//! The explanations of allowed directions, memoised: an explanation (the allowing rules and
//! their policies) depends only on the rule sets whose merged condition the peer meets (found
//! from the group, protocol, port and the destination pod's named ports) and on the peer's
//! class and address region, so it is computed once per such key and then handed out as a
//! shared [`Names`] pair (two reference-count increments, no allocation, names resolved once).
//!
//! Bounded: at most `capacity` entries; the memo starts over when full.

use std::sync::Mutex;

use rustc_hash::FxHashMap;

use super::{Names, table::Rows};

/// At most this many sets make up a memoised explanation (more: computed each time).
pub(crate) const MEMO_SETS: usize = 4;

/// What an explanation depends on: the peer's rows and the allowing sets (ascending, padded
/// with `u32::MAX`).
pub(crate) type MemoKey = (Rows, [u32; MEMO_SETS]);

/// Entries kept by default (about 100 bytes each, plus the rule ids they hold).
pub(crate) const DEFAULT_CAPACITY: usize = 1 << 15;

/// The memo: explanation (`policies`, `rules`) by key.
pub(crate) struct ExplainMemo {
    capacity: usize,
    map: Mutex<FxHashMap<MemoKey, (Names, Names)>>,
}

impl ExplainMemo {
    /// A memo of at most `capacity` entries (0: off).
    pub(crate) fn new(capacity: usize) -> Self {
        ExplainMemo {
            capacity,
            map: Mutex::new(FxHashMap::default()),
        }
    }

    /// The explanation of `key`, computed by `make` when not memoised.
    #[inline]
    pub(crate) fn get_or(
        &self,
        key: MemoKey,
        make: impl FnOnce() -> (Names, Names),
    ) -> (Names, Names) {
        if self.capacity == 0 {
            return make();
        }
        if let Ok(map) = self.map.lock()
            && let Some(v) = map.get(&key)
        {
            return v.clone();
        }
        let v = make();
        // A poisoned lock only loses the memo, never the answer.
        if let Ok(mut map) = self.map.lock() {
            if map.len() >= self.capacity {
                map.clear();
            }
            map.insert(key, v.clone());
        }
        v
    }

    /// Entries held now.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.map.lock().map_or(0, |m| m.len())
    }
}

impl Clone for ExplainMemo {
    /// A clone starts with an empty memo of the same capacity.
    fn clone(&self) -> Self {
        ExplainMemo::new(self.capacity)
    }
}

impl std::fmt::Debug for ExplainMemo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExplainMemo")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}
