//! Cheap "certainly not" answers in front of the regex index.
//!
//! Every lookup, exact hits included, must also ask the regex index (an exact hit is still
//! ambiguous when another owner's pattern matches it), and nearly every such question has the
//! answer "no". Without these filters each "no" costs one hash probe per distinct literal length
//! plus a `RegexSet` search; with them it costs a few bit tests in tables small enough to stay
//! in the CPU cache. A filter may say "maybe" wrongly, never "no" wrongly.

use regex_syntax::hir::Hir;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use super::exact::{InlineKey, pack};

/// Bits per indexed literal: about a 1-in-16 false "maybe" per probe.
const BITS_PER_KEY: usize = 16;
const BLOCK_BITS: usize = 512;
const MAX_BLOCKS: usize = 1 << 15;

/// A blocked one-hash Bloom filter over the packed literal keys of one literal index of
/// [`super::regex_index`]. The length is part of a packed key, so one filter serves every probe
/// length; and a key's bit lives in the 64-byte block chosen by its anchor (its first `anchor`
/// bytes, or its last for suffix literals), which every probe of one code shares, so all the
/// probes of a lookup read one cache line.
#[derive(Debug, Default)]
pub(crate) struct KeyFilter {
    blocks: Vec<[u64; BLOCK_BITS / 64]>,
    block_shift: u32,
    /// The shortest literal length: every key, and every probe, is at least this long.
    anchor: usize,
    from_end: bool,
}

fn mix(key: &InlineKey) -> u64 {
    let packed = u128::from_le_bytes(*key);
    let (lo, hi) = (packed as u64, (packed >> 64) as u64);
    let h = (lo ^ hi.rotate_left(31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl KeyFilter {
    /// `anchor` must not exceed the length of any key; a key shorter than it disables the filter.
    pub(crate) fn build<'k>(
        keys: impl ExactSizeIterator<Item = &'k InlineKey>,
        anchor: usize,
        from_end: bool,
    ) -> KeyFilter {
        let count = (keys.len() * BITS_PER_KEY / BLOCK_BITS)
            .next_power_of_two()
            .clamp(1, MAX_BLOCKS);
        let mut filter = KeyFilter {
            blocks: vec![[0; BLOCK_BITS / 64]; count],
            block_shift: 64 - count.trailing_zeros(),
            anchor,
            from_end,
        };
        for key in keys {
            let Some((block, bit)) = filter.position(key) else {
                return KeyFilter::default();
            };
            if let Some(block) = filter.blocks.get_mut(block) {
                block[bit / 64] |= 1 << (bit % 64);
            }
        }
        filter
    }

    /// The block of the key's anchor and the bit of the whole key in it.
    fn position(&self, key: &InlineKey) -> Option<(usize, usize)> {
        let len = usize::from(key[15]);
        let start = if self.from_end {
            len.checked_sub(self.anchor)?
        } else {
            0
        };
        let anchor = pack(
            key.get(start..start + self.anchor)
                .filter(|_| self.anchor <= len)?,
        )?;
        // A 64-bit shift by 64 (one block) would overflow; one block means block 0.
        let block = mix(&anchor).checked_shr(self.block_shift).unwrap_or(0) as usize;
        Some((block, mix(key) as usize % BLOCK_BITS))
    }

    pub(crate) fn memory_usage(&self) -> usize {
        self.blocks.capacity() * BLOCK_BITS / 8
    }

    /// `false` only when the key is certainly not indexed; an unbuilt filter always says maybe.
    pub(crate) fn may_contain(&self, key: &InlineKey) -> bool {
        if self.blocks.is_empty() {
            return true;
        }
        let Some((block, bit)) = self.position(key) else {
            return true;
        };
        self.blocks
            .get(block)
            .is_none_or(|block| block[bit / 64] & (1 << (bit % 64)) != 0)
    }
}

/// Which one- and two-byte strings some match of the unindexed patterns can start with.
///
/// Any match of a pattern starts with one of the literals regex-syntax extracts as its prefix
/// (when that set is finite), so a code containing none of their leading bytes matches none of
/// the patterns and the `RegexSet` search can be skipped.
#[derive(Debug, Default)]
pub(crate) struct StartFilter {
    /// `None` means some pattern's matches cannot be bounded this way: always search.
    tables: Option<StartTables>,
}

#[derive(Debug)]
struct StartTables {
    single: [u64; 4],
    pairs: Box<[u64; 1024]>,
}

fn test(bits: &[u64], index: usize) -> bool {
    bits.get(index / 64)
        .is_some_and(|word| word & (1 << (index % 64)) != 0)
}

fn set(bits: &mut [u64], index: usize) {
    if let Some(word) = bits.get_mut(index / 64) {
        *word |= 1 << (index % 64);
    }
}

impl StartFilter {
    pub(crate) fn build<'h>(patterns: impl IntoIterator<Item = &'h Hir>) -> StartFilter {
        let mut tables = StartTables {
            single: [0; 4],
            pairs: Box::new([0; 1024]),
        };
        for hir in patterns {
            let seq = Extractor::new().kind(ExtractKind::Prefix).extract(hir);
            let Some(literals) = seq.literals() else {
                return StartFilter { tables: None };
            };
            if literals.is_empty() {
                return StartFilter { tables: None };
            }
            for literal in literals {
                match literal.as_bytes() {
                    [] => return StartFilter { tables: None },
                    [only] => set(&mut tables.single, usize::from(*only)),
                    [first, second, ..] => set(
                        &mut tables.pairs[..],
                        usize::from(*first) << 8 | usize::from(*second),
                    ),
                }
            }
        }
        StartFilter {
            tables: Some(tables),
        }
    }

    pub(crate) fn memory_usage(&self) -> usize {
        self.tables
            .as_ref()
            .map_or(0, |_| std::mem::size_of::<[u64; 1024]>())
    }

    /// `false` only when no pattern the filter was built from can match `code`.
    pub(crate) fn may_match(&self, code: &[u8]) -> bool {
        let Some(tables) = &self.tables else {
            return true;
        };
        code.iter().enumerate().any(|(i, &byte)| {
            test(&tables.single, usize::from(byte))
                || code.get(i + 1).is_some_and(|&next| {
                    test(
                        &tables.pairs[..],
                        usize::from(byte) << 8 | usize::from(next),
                    )
                })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hir(pattern: &str) -> Hir {
        regex_syntax::Parser::new().parse(pattern).expect("valid")
    }

    #[test]
    fn key_filter_never_rules_out_an_indexed_key() {
        let keys: Vec<InlineKey> = (0..5000)
            .filter_map(|i| pack(format!("PFX{i}").as_bytes()))
            .collect();
        let filter = KeyFilter::build(keys.iter(), 4, false);
        assert!(keys.iter().all(|k| filter.may_contain(k)));
        let suffixes = KeyFilter::build(keys.iter(), 4, true);
        assert!(keys.iter().all(|k| suffixes.may_contain(k)));
        assert!(KeyFilter::build(keys.iter(), 5, false).may_contain(&[0; 16]));
        let absent = (0..5000)
            .filter_map(|i| pack(format!("NOT{i}").as_bytes()))
            .filter(|k| filter.may_contain(k))
            .count();
        assert!(absent < 1000, "{absent} false maybes of 5000");
        assert!(KeyFilter::default().may_contain(&[0; 16]));
    }

    #[test]
    fn start_filter_rules_out_codes_without_a_leading_pair() {
        let patterns = [hir("A{3}B"), hir("(?i)xy+"), hir("Q")];
        let filter = StartFilter::build(&patterns);
        for code in ["zzAAABzz", "XY", "xY1", "abQ"] {
            assert!(filter.may_match(code.as_bytes()), "{code}");
        }
        for code in ["", "ABAB", "X", "yx", "BA"] {
            assert!(!filter.may_match(code.as_bytes()), "{code}");
        }
    }

    #[test]
    fn start_filter_gives_up_on_unbounded_starts() {
        for pattern in ["\\w+Z", "a*", "(?i)\\p{L}{2}"] {
            let filter = StartFilter::build(&[hir(pattern)]);
            assert!(filter.may_match(b""), "{pattern}");
            assert!(filter.may_match(b"anything"), "{pattern}");
        }
    }
}
