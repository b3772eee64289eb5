//! Exact (case-insensitive) code lookup.
//!
//! At a million codes the cost of a lookup is cache misses, not hashing: a `HashMap<String, _>`
//! touches the table slot and then a separate heap string. Codes of up to 15 bytes (nearly all of
//! them) are therefore stored inline in a `u128` together with their length, and the entered code
//! is folded into a stack buffer, so a hit or a miss costs one probe of one table.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use foldhash::fast::RandomState;

use crate::codes::normalize::{exact_key, exact_key_ascii_inline};

const INLINE_BYTES: usize = 15;

/// Packs a key of at most 15 bytes, with its length in the last byte so that keys differing only
/// in trailing NULs stay distinct.
pub(crate) fn pack(bytes: &[u8]) -> Option<InlineKey> {
    if bytes.len() > INLINE_BYTES {
        return None;
    }
    let mut packed = [0u8; 16];
    packed[..bytes.len()].copy_from_slice(bytes);
    packed[INLINE_BYTES] = bytes.len() as u8;
    Some(packed)
}

pub(crate) type InlineKey = [u8; 16];

/// A packed key as a map key: it hashes as one `u128`, which the hasher folds in a single step,
/// instead of as a length prefix plus a byte slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct MapKey(pub(crate) InlineKey);

impl Hash for MapKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_ne_bytes(self.0));
    }
}

#[derive(Debug, Default)]
pub struct ExactIndex {
    inline: HashMap<MapKey, u32, RandomState>,
    spilled: HashMap<Box<str>, u32, RandomState>,
}

impl ExactIndex {
    pub fn with_capacity(capacity: usize) -> ExactIndex {
        ExactIndex {
            inline: HashMap::with_capacity_and_hasher(capacity, RandomState::default()),
            spilled: HashMap::default(),
        }
    }

    /// Adds a canonical key (see [`exact_key`]); returns the value it displaced, if any.
    pub fn insert(&mut self, canonical_key: &str, value: u32) -> Option<u32> {
        match pack(canonical_key.as_bytes()) {
            Some(packed) => self.inline.insert(MapKey(packed), value),
            None => self.spilled.insert(canonical_key.into(), value),
        }
    }

    /// Looks up a code as the customer entered it.
    pub fn get(&self, entered: &str) -> Option<u32> {
        // Folded straight into the packed key: no copy between the fold and the probe.
        let mut key: InlineKey = [0; 16];
        if let Some(folded) = exact_key_ascii_inline(entered, &mut key[..INLINE_BYTES]) {
            key[INLINE_BYTES] = folded.len() as u8;
            return self.inline.get(&MapKey(key)).copied();
        }
        self.get_canonical(&exact_key(entered))
    }

    fn get_canonical(&self, key: &str) -> Option<u32> {
        match pack(key.as_bytes()) {
            Some(packed) => self.inline.get(&MapKey(packed)).copied(),
            None => self.spilled.get(key).copied(),
        }
    }

    pub fn len(&self) -> usize {
        self.inline.len() + self.spilled.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_short_long_and_unicode_keys() {
        let mut index = ExactIndex::default();
        let long = "A-VERY-LONG-CODE-OVER-FIFTEEN";
        for (i, code) in ["SAVE10", long, "STRASSE", "X"].iter().enumerate() {
            assert_eq!(index.insert(&exact_key(code), i as u32), None);
        }
        assert_eq!(index.get(" save10 "), Some(0));
        assert_eq!(index.get(&long.to_lowercase()), Some(1));
        assert_eq!(index.get("Straße"), Some(2));
        assert_eq!(index.get("x"), Some(3));
        assert_eq!(index.get("SAVE1"), None);
        assert_eq!(index.get("SAVE10\0"), None);
        assert_eq!(index.get(""), None);
        assert_eq!(index.len(), 4);
    }

    #[test]
    fn length_is_part_of_the_key() {
        assert_ne!(pack(b"A"), pack(b"A\0"));
        assert_eq!(pack(&[b'A'; 16]), None);
    }
}
