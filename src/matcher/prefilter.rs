//! Cheap "certainly not" answers in front of the regex index.
//!
//! Every lookup, exact hits included, must also ask the regex index (an exact hit is still
//! ambiguous when another owner's pattern matches it), and nearly every such question has the
//! answer "no". Without these filters each "no" costs one hash probe per distinct literal length
//! plus a `RegexSet` search; with them it costs a few bit tests in tables small enough to stay
//! in the CPU cache. A filter may say "maybe" wrongly, never "no" wrongly.

use regex_syntax::hir::Hir;
use regex_syntax::hir::literal::{ExtractKind, Extractor};

use super::exact::InlineKey;

/// Bits per indexed literal: about a 1-in-16 false "maybe" per probe.
const BITS_PER_KEY: usize = 16;
const MIN_BITS: usize = 1 << 10;
const MAX_BITS: usize = 1 << 24;

/// A one-hash Bloom filter over the packed literal keys of one [`super::regex_index`] literal
/// index. The length is part of a packed key, so one filter serves every probe length.
#[derive(Debug, Default)]
pub(crate) struct KeyFilter {
    bits: Vec<u64>,
    shift: u32,
}

fn mix(key: &InlineKey) -> u64 {
    let packed = u128::from_le_bytes(*key);
    let (lo, hi) = (packed as u64, (packed >> 64) as u64);
    let h = (lo ^ hi.rotate_left(31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl KeyFilter {
    pub(crate) fn build<'k>(keys: impl ExactSizeIterator<Item = &'k InlineKey>) -> KeyFilter {
        let size = (keys.len() * BITS_PER_KEY)
            .next_power_of_two()
            .clamp(MIN_BITS, MAX_BITS);
        let mut filter = KeyFilter {
            bits: vec![0; size / 64],
            shift: 64 - size.trailing_zeros(),
        };
        for key in keys {
            let bit = filter.bit(key);
            filter.bits[bit / 64] |= 1 << (bit % 64);
        }
        filter
    }

    fn bit(&self, key: &InlineKey) -> usize {
        (mix(key) >> self.shift) as usize
    }

    /// `false` only when the key is certainly not indexed; an unbuilt filter always says maybe.
    pub(crate) fn may_contain(&self, key: &InlineKey) -> bool {
        if self.bits.is_empty() {
            return true;
        }
        let bit = self.bit(key);
        self.bits
            .get(bit / 64)
            .is_none_or(|word| word & (1 << (bit % 64)) != 0)
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
    use crate::matcher::exact::pack;

    fn hir(pattern: &str) -> Hir {
        regex_syntax::Parser::new().parse(pattern).expect("valid")
    }

    #[test]
    fn key_filter_never_rules_out_an_indexed_key() {
        let keys: Vec<InlineKey> = (0..5000)
            .filter_map(|i| pack(format!("PFX{i}").as_bytes()))
            .collect();
        let filter = KeyFilter::build(keys.iter());
        assert!(keys.iter().all(|k| filter.may_contain(k)));
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
