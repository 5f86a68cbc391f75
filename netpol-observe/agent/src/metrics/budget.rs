//! The series budget: each labelled flow family admits at most `limit` distinct label sets;
//! a label set seen after that is collapsed into the family's `other` bucket.

use std::{
    hash::Hash,
    sync::{Mutex, PoisonError},
};

use rustc_hash::FxHashSet;

/// Admission of label sets into one family, bounded by a limit.
#[derive(Debug)]
pub(crate) struct Budget<K> {
    limit: usize,
    admitted: Mutex<FxHashSet<K>>,
}

impl<K: Hash + Eq + Clone> Budget<K> {
    /// A budget admitting at most `limit` distinct label sets.
    pub(crate) fn new(limit: usize) -> Self {
        Budget {
            limit,
            admitted: Mutex::new(FxHashSet::default()),
        }
    }

    /// Whether `key` may have a series of its own: it already has one, or there is room left
    /// (in which case it is admitted now). `false` means: collapse it into `other`.
    pub(crate) fn admit(&self, key: &K) -> bool {
        // A poisoned lock only means another thread panicked between two set operations; the
        // set itself is still a valid set, so keep using it.
        let mut admitted = self.admitted.lock().unwrap_or_else(PoisonError::into_inner);
        if admitted.contains(key) {
            return true;
        }
        if admitted.len() >= self.limit {
            return false;
        }
        admitted.insert(key.clone());
        true
    }

    /// Number of admitted label sets.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.admitted
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_keeps_admitted_keys() {
        let b = Budget::new(2);
        assert!(b.admit(&1));
        assert!(b.admit(&2));
        assert!(!b.admit(&3));
        assert!(b.admit(&1), "an admitted key stays admitted");
        assert!(!b.admit(&4));
        assert_eq!(b.len(), 2);
        let zero = Budget::new(0);
        assert!(!zero.admit(&1));
    }
}
