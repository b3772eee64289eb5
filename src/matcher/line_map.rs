//! A map from packed keys to `u32` in which each bucket is one cache line.
//!
//! At a million codes a lookup costs what its cache misses cost. A general hash table keeps its
//! tags and its slots in two arrays, and a hit reads one after the other (the tag says which
//! slot to read): two misses in a row. Here a bucket holds three keys and their values in one
//! 64-byte line, so a hit or a miss usually reads that one line. Keys are only ever added (a
//! table is built once per code-table version): a key lives in the first bucket from its home
//! with a free slot, every full bucket it passed on the way is marked, and a search ends at the
//! first unmarked bucket. The three keys of a bucket are compared at once, without branching on
//! how full it is.

use std::hash::BuildHasher;

use foldhash::fast::RandomState;

const SLOTS: usize = 3;
/// No packed key is all ones: its last byte is its length, at most 15.
const EMPTY: u128 = u128::MAX;
/// Buckets are added before more than this share of the slots (as a fraction of 5) is taken,
/// so every search meets a bucket with a free slot soon.
const MAX_LOAD_FIFTHS: usize = 4;

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Bucket {
    keys: [u128; SLOTS],
    values: [u32; SLOTS],
    /// Non-zero once a key whose search passes this bucket was placed further on.
    passed: u32,
}

const EMPTY_BUCKET: Bucket = Bucket {
    keys: [EMPTY; SLOTS],
    values: [0; SLOTS],
    passed: 0,
};

impl Bucket {
    /// The slot holding `key`.
    fn slot_of(&self, key: u128) -> Option<usize> {
        let found = usize::from(self.keys[0] == key)
            | usize::from(self.keys[1] == key) << 1
            | usize::from(self.keys[2] == key) << 2;
        (found != 0).then(|| found.trailing_zeros() as usize)
    }
}

/// A key and its home bucket, hashed once for both the prefetch and the lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefetched {
    key: u128,
    home: usize,
}

impl Prefetched {
    #[cfg(test)]
    pub(crate) fn key(self) -> u128 {
        self.key
    }
}

#[derive(Default)]
pub(crate) struct LineMap {
    buckets: Vec<Bucket>,
    len: usize,
    hasher: RandomState,
}

impl std::fmt::Debug for LineMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineMap")
            .field("len", &self.len)
            .field("buckets", &self.buckets.len())
            .finish()
    }
}

fn buckets_for(len: usize) -> usize {
    (len * 5 / (SLOTS * MAX_LOAD_FIFTHS) + 1).next_power_of_two()
}

impl LineMap {
    pub(crate) fn with_capacity(capacity: usize) -> LineMap {
        LineMap {
            buckets: vec![EMPTY_BUCKET; buckets_for(capacity)],
            len: 0,
            hasher: RandomState::default(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn memory_usage(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<Bucket>()
    }

    pub(crate) fn keys(&self) -> impl Iterator<Item = u128> + '_ {
        self.buckets
            .iter()
            .flat_map(|bucket| bucket.keys)
            .filter(|&key| key != EMPTY)
    }

    fn home(&self, key: u128) -> usize {
        self.hasher.hash_one(key) as usize & (self.buckets.len().wrapping_sub(1))
    }

    /// The bucket and slot holding `key`, whose home bucket is `home`.
    fn find(&self, key: u128, home: usize) -> Option<(usize, usize)> {
        let mask = self.buckets.len().checked_sub(1)?;
        let mut at = home;
        // Bounded by the bucket count: the load limit leaves free slots, so a search ends sooner.
        for _ in 0..self.buckets.len() {
            let bucket = self.buckets.get(at)?;
            if let Some(slot) = bucket.slot_of(key) {
                return Some((at, slot));
            }
            if bucket.passed == 0 {
                return None;
            }
            at = (at + 1) & mask;
        }
        None
    }

    /// Asks for the line of `key`'s home bucket without waiting for it, and returns what
    /// [`LineMap::get_prefetched`] needs to finish the lookup without hashing again.
    pub(crate) fn prefetch(&self, key: u128) -> Prefetched {
        let home = self.home(key);
        #[cfg(target_arch = "x86_64")]
        if let Some(bucket) = self.buckets.get(home) {
            use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            // SAFETY: a prefetch is a hint: it never faults and changes no memory, and SSE, which
            // it needs, is part of every x86_64 target.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(std::ptr::from_ref(bucket).cast()) };
        }
        Prefetched { key, home }
    }

    pub(crate) fn get(&self, key: u128) -> Option<u32> {
        self.get_prefetched(Prefetched {
            key,
            home: self.home(key),
        })
    }

    /// The value of a key [`LineMap::prefetch`] asked for, on this map.
    pub(crate) fn get_prefetched(&self, probe: Prefetched) -> Option<u32> {
        let (at, slot) = self.find(probe.key, probe.home)?;
        self.buckets.get(at)?.values.get(slot).copied()
    }

    /// Adds `key`; returns the value it displaced, if any.
    pub(crate) fn insert(&mut self, key: u128, value: u32) -> Option<u32> {
        // Growing one insert early when `key` turns out to be present changes nothing found.
        if (self.len + 1) * 5 > self.buckets.len() * SLOTS * MAX_LOAD_FIFTHS {
            self.grow();
        }
        // One walk serves both cases: a present key sits before any free slot on its path,
        // because every bucket it passed was full when it was placed and keys are never removed.
        let mask = self.buckets.len().wrapping_sub(1);
        let mut at = self.home(key);
        for _ in 0..self.buckets.len() {
            let bucket = self.buckets.get_mut(at)?;
            if let Some(slot) = bucket.slot_of(key) {
                return Some(std::mem::replace(&mut bucket.values[slot], value));
            }
            if let Some(slot) = bucket.slot_of(EMPTY) {
                bucket.keys[slot] = key;
                bucket.values[slot] = value;
                self.len += 1;
                return None;
            }
            bucket.passed = 1;
            at = (at + 1) & mask;
        }
        None
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.buckets);
        self.buckets = vec![EMPTY_BUCKET; (old.len() * 2).max(buckets_for(self.len + 1))];
        self.len = 0;
        for bucket in old {
            for (&key, &value) in bucket.keys.iter().zip(&bucket.values) {
                if key != EMPTY {
                    self.insert(key, value);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    proptest::proptest! {
        /// Agrees with a `HashMap` on any sequence of inserts (repeated keys replace, growth from
        /// an empty map rehashes everything), for keys present and absent.
        #[test]
        fn agrees_with_a_hash_map(
            keys in proptest::collection::vec(0u128..5_000, 0..3_000),
            capacity in 0usize..100,
        ) {
            let mut ours = LineMap::with_capacity(capacity);
            let mut expected = HashMap::new();
            for (value, &key) in keys.iter().enumerate() {
                proptest::prop_assert_eq!(
                    ours.insert(key, value as u32),
                    expected.insert(key, value as u32)
                );
            }
            proptest::prop_assert_eq!(ours.len(), expected.len());
            let mut keys: Vec<u128> = ours.keys().collect();
            keys.sort_unstable();
            let mut expected_keys: Vec<u128> = expected.keys().copied().collect();
            expected_keys.sort_unstable();
            proptest::prop_assert_eq!(keys, expected_keys);
            for key in 0u128..5_100 {
                proptest::prop_assert_eq!(ours.get(key), expected.get(&key).copied());
            }
        }
    }

    #[test]
    fn an_empty_map_finds_nothing() {
        assert_eq!(LineMap::default().get(7), None);
        assert_eq!(LineMap::with_capacity(0).get(7), None);
        let mut grown = LineMap::default();
        assert_eq!(grown.insert(7, 1), None);
        assert_eq!(grown.get(7), Some(1));
        assert_eq!(std::mem::size_of::<Bucket>(), 64);
    }
}
