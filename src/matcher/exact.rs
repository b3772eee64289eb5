//! Exact (case-insensitive) code lookup.
//!
//! At a million codes the cost of a lookup is cache misses, not hashing: a `HashMap<String, _>`
//! touches the table slot and then a separate heap string. Codes of up to 15 bytes (nearly all of
//! them) are therefore stored inline in a `u128` together with their length, in a map whose
//! buckets are single cache lines ([`super::line_map`]), and the entered code is folded in
//! registers, so a hit or a miss usually reads one cache line.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::line_map::{LineMap, Prefetched};

use crate::codes::normalize::{exact_key, trim_entered};

pub(crate) const INLINE_BYTES: usize = 15;

/// Packs a key of at most 15 bytes, with its length in the last byte so that keys differing only
/// in trailing NULs stay distinct.
pub(crate) fn pack(bytes: &[u8]) -> Option<InlineKey> {
    (bytes.len() <= INLINE_BYTES).then(|| with_length(load_short(bytes), bytes.len()))
}

fn with_length(loaded: u128, len: usize) -> InlineKey {
    (loaded | (len as u128) << (8 * INLINE_BYTES)).to_le_bytes()
}

/// Up to 15 bytes as the low bytes of a little-endian `u128`, read as two overlapping words.
/// A byte copy into a buffer that is then read whole costs more than the probe it feeds: the
/// wide read waits for the narrow stores (no store forwarding), and every probe pays it.
fn load_short(bytes: &[u8]) -> u128 {
    let n = bytes.len();
    let word = |at: usize| {
        bytes
            .get(at..at + 8)
            .and_then(|w| <[u8; 8]>::try_from(w).ok())
            .map_or(0, u64::from_le_bytes)
    };
    let half = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|w| <[u8; 4]>::try_from(w).ok())
            .map_or(0, u32::from_le_bytes)
    };
    // The second word overlaps the first; shifting drops the bytes the first already holds.
    match n {
        8..=15 => {
            let high = word(n - 8).checked_shr(8 * (16 - n) as u32).unwrap_or(0);
            u128::from(word(0)) | u128::from(high) << 64
        }
        4..=7 => {
            let high = half(n - 4).checked_shr(8 * (8 - n) as u32).unwrap_or(0);
            u128::from(half(0)) | u128::from(high) << 32
        }
        _ => bytes
            .iter()
            .rev()
            .fold(0, |acc, &byte| acc << 8 | u128::from(byte)),
    }
}

const LOW_15: u128 = u128::MAX >> 8;
const ONES: u128 = LOW_15 / 0xFF;
const HIGH_BITS: u128 = ONES * 0x80;

/// ASCII lower-case letters to upper case in every byte at once; `None` if a byte is not ASCII.
fn ascii_upper(loaded: u128) -> Option<u128> {
    if loaded & HIGH_BITS != 0 {
        return None;
    }
    // Bytes are below 0x80, so no per-byte sum carries into the next byte.
    let from_a = loaded + ONES * (0x80 - u128::from(b'a'));
    let past_z = loaded + ONES * (0x80 - u128::from(b'z') - 1);
    let lower = from_a & !past_z & HIGH_BITS;
    Some(loaded - (lower >> 2))
}

pub(crate) type InlineKey = [u8; 16];

/// An entered code's lookup between [`ExactIndex::start`] and [`ExactIndex::finish`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started(Prefetched);

#[derive(Debug, Default)]
pub struct ExactIndex {
    inline: LineMap,
    spilled: HashMap<Box<str>, u32, RandomState>,
}

impl ExactIndex {
    pub fn with_capacity(capacity: usize) -> ExactIndex {
        ExactIndex {
            inline: LineMap::with_capacity(capacity),
            spilled: HashMap::default(),
        }
    }

    /// Adds a canonical key (see [`exact_key`]); returns the value it displaced, if any.
    pub fn insert(&mut self, canonical_key: &str, value: u32) -> Option<u32> {
        match pack(canonical_key.as_bytes()) {
            Some(packed) => self.inline.insert(u128::from_le_bytes(packed), value),
            None => self.spilled.insert(canonical_key.into(), value),
        }
    }

    /// Looks up a code as the customer entered it.
    pub fn get(&self, entered: &str) -> Option<u32> {
        self.finish(self.start(entered), entered)
    }

    /// The first half of [`ExactIndex::get`]: the entered code's key, with the read of its
    /// bucket already asked for, so that the caller's other work overlaps the cache miss.
    pub fn start(&self, entered: &str) -> Option<Started> {
        // Nearly every entered code is short ASCII: folded in registers, straight into the key.
        let trimmed = trim_entered(entered).as_bytes();
        if trimmed.len() <= INLINE_BYTES
            && let Some(folded) = ascii_upper(load_short(trimmed))
        {
            let key = u128::from_le_bytes(with_length(folded, trimmed.len()));
            return Some(Started(self.inline.prefetch(key)));
        }
        None
    }

    /// The second half of [`ExactIndex::get`], given what [`ExactIndex::start`] returned for
    /// the same `entered` on this index.
    pub fn finish(&self, started: Option<Started>, entered: &str) -> Option<u32> {
        match started {
            Some(Started(probe)) => self.inline.get_prefetched(probe),
            None => self.get_canonical(&exact_key(entered)),
        }
    }

    fn get_canonical(&self, key: &str) -> Option<u32> {
        match pack(key.as_bytes()) {
            Some(packed) => self.inline.get(u128::from_le_bytes(packed)),
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
    fn packing_and_folding_agree_with_bytewise_code() {
        let bytes: Vec<u8> = (0u8..=255).collect();
        for len in 0..=INLINE_BYTES {
            for start in (0..bytes.len() - len).step_by(7) {
                let window = &bytes[start..start + len];
                let mut expected = [0u8; 16];
                expected[..len].copy_from_slice(window);
                expected[INLINE_BYTES] = len as u8;
                assert_eq!(pack(window), Some(expected), "{window:?}");
                let folded = ascii_upper(load_short(window)).map(|v| with_length(v, len));
                let bytewise = window.is_ascii().then(|| {
                    let mut upper = expected;
                    upper[..len].make_ascii_uppercase();
                    upper
                });
                assert_eq!(folded, bytewise, "{window:?}");
            }
        }
    }

    proptest::proptest! {
        /// The key `start` folds in registers is the packed canonical key of the general path
        /// (NFKC, upper case, trimmed), whenever it takes the fast path at all.
        #[test]
        fn fast_key_is_the_canonical_key(raw in r"[ \t\u{A0}\u{3000}\u{200B}a-zA-Z0-9ﬁß_-]{0,17}") {
            let index = ExactIndex::default();
            if let Some(Started(probe)) = index.start(&raw) {
                let key = probe.key();
                let canonical = pack(exact_key(&raw).as_bytes()).map(u128::from_le_bytes);
                proptest::prop_assert_eq!(Some(key), canonical);
            }
        }
    }

    #[test]
    fn length_is_part_of_the_key() {
        assert_ne!(pack(b"A"), pack(b"A\0"));
        assert_eq!(pack(&[b'A'; 16]), None);
    }
}
