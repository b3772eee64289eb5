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

/// Bits per indexed literal in each stage: about a 1-in-16 false "maybe" per question.
const BITS_PER_KEY: usize = 16;
const BLOCK_BITS: usize = 512;
const MAX_BLOCKS: usize = 1 << 15;
const MAX_ANCHOR_WORDS: usize = 1 << 18;

/// A two-stage filter over the literals of one literal index of [`super::regex_index`].
///
/// Every literal is at least `anchor` bytes long (the shortest literal's length), so every
/// literal a code could hit shares the code's anchor: its first `anchor` bytes, or its last for
/// suffix literals. The first stage keeps one bit per anchor hash; a code whose anchor no literal
/// has (nearly every code, exact hits included) is answered for all its probe lengths by that one
/// bit. The second stage is a blocked one-hash Bloom filter over the packed keys, whose block is
/// chosen by the anchor, so all the probes of one code read one cache line.
#[derive(Debug, Default)]
pub(crate) struct KeyFilter {
    anchors: Vec<u64>,
    blocks: Vec<[u64; BLOCK_BITS / 64]>,
    block_shift: u32,
    anchor: usize,
    from_end: bool,
}

/// What the first stage said about one code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Anchor {
    /// No filter was built: every probe must be made.
    Unfiltered,
    /// No literal has this code's anchor: no probe can hit.
    Absent,
    /// Literals with this anchor may exist; their keys' bits are in this block.
    Block(usize),
}

fn mix(key: &InlineKey) -> u64 {
    let packed = u128::from_le_bytes(*key);
    let (lo, hi) = (packed as u64, (packed >> 64) as u64);
    let h = (lo ^ hi.rotate_left(31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h ^ (h >> 29)).wrapping_mul(0xBF58_476D_1CE4_E5B9)
}

impl KeyFilter {
    /// Builds over every literal of the index, inline or spilled. `anchor` must not exceed the
    /// length of any literal: a literal shorter than it, or an anchor too long to pack, leaves
    /// the filter unbuilt (always "maybe").
    pub(crate) fn build(literals: &[&[u8]], anchor: usize, from_end: bool) -> KeyFilter {
        let blocks = (literals.len() * BITS_PER_KEY / BLOCK_BITS)
            .next_power_of_two()
            .clamp(1, MAX_BLOCKS);
        let anchor_words = (literals.len() * BITS_PER_KEY / 64)
            .next_power_of_two()
            .clamp(1, MAX_ANCHOR_WORDS);
        let mut filter = KeyFilter {
            anchors: vec![0; anchor_words],
            blocks: vec![[0; BLOCK_BITS / 64]; blocks],
            block_shift: 64 - blocks.trailing_zeros(),
            anchor,
            from_end,
        };
        for literal in literals {
            let Some(hash) = filter.anchor_hash(literal) else {
                return KeyFilter::default();
            };
            let bit = filter.anchor_bit(hash);
            set(&mut filter.anchors, bit);
            // Literals over 15 bytes are probed in the spilled map without the second stage.
            let block = filter.block(hash);
            if let (Some(key), Some(block)) = (pack(literal), filter.blocks.get_mut(block)) {
                set(&mut block[..], mix(&key) as usize % BLOCK_BITS);
            }
        }
        filter
    }

    /// The hash of the code's anchor; `None` when the code is shorter than the anchor.
    fn anchor_hash(&self, code: &[u8]) -> Option<u64> {
        let start = if self.from_end {
            code.len().checked_sub(self.anchor)?
        } else {
            0
        };
        pack(code.get(start..start + self.anchor)?).map(|key| mix(&key))
    }

    fn anchor_bit(&self, hash: u64) -> usize {
        hash as usize % (self.anchors.len() * 64)
    }

    fn block(&self, hash: u64) -> usize {
        // A 64-bit shift by 64 (one block) would overflow; one block means block 0.
        hash.checked_shr(self.block_shift).unwrap_or(0) as usize
    }

    /// The first stage for an entered code (already trimmed).
    pub(crate) fn anchor(&self, code: &[u8]) -> Anchor {
        if self.anchors.is_empty() {
            return Anchor::Unfiltered;
        }
        // A code shorter than the shortest literal contains none of them.
        match self.anchor_hash(code) {
            Some(hash) if test(&self.anchors, self.anchor_bit(hash)) => {
                Anchor::Block(self.block(hash))
            }
            _ => Anchor::Absent,
        }
    }

    pub(crate) fn memory_usage(&self) -> usize {
        self.blocks.capacity() * BLOCK_BITS / 8 + self.anchors.capacity() * 8
    }

    /// The second stage: `false` only when the key is certainly not indexed.
    pub(crate) fn may_contain(&self, anchor: Anchor, key: &InlineKey) -> bool {
        match anchor {
            Anchor::Unfiltered => true,
            Anchor::Absent => false,
            Anchor::Block(block) => self
                .blocks
                .get(block)
                .is_none_or(|block| test(&block[..], mix(key) as usize % BLOCK_BITS)),
        }
    }
}

/// Which strings of one, two or three bytes some match of the unindexed patterns can start with.
///
/// Any match of a pattern starts with one of the literals regex-syntax extracts as its prefix
/// (when that set is finite), so a code containing none of their leading bytes matches none of
/// the patterns and the `RegexSet` search can be skipped. Three bytes where the literal has them:
/// a pattern such as `A{3}B` then asks about `AAA`, which few codes contain, not `AA`.
#[derive(Debug, Default)]
pub(crate) struct StartFilter {
    /// `None` means some pattern's matches cannot be bounded this way: always search.
    tables: Option<StartTables>,
}

#[derive(Debug)]
struct StartTables {
    /// Which of the three tables hold anything: a code is not tested against an empty one.
    used: [bool; 3],
    single: [u64; 4],
    pairs: Box<[u64; 1024]>,
    /// Hashed to 16 bits, so a "maybe" here can be false.
    triples: Box<[u64; 1024]>,
}

fn pair(first: u8, second: u8) -> usize {
    usize::from(first) << 8 | usize::from(second)
}

fn triple(first: u8, second: u8, third: u8) -> usize {
    let packed = u32::from(first) << 16 | u32::from(second) << 8 | u32::from(third);
    (packed.wrapping_mul(0x9E37_79B1) >> 16) as usize
}

fn test(bits: &[u64], index: usize) -> bool {
    bit(bits, index) != 0
}

fn set(bits: &mut [u64], index: usize) {
    if let Some(word) = bits.get_mut(index / 64) {
        *word |= 1 << (index % 64);
    }
}

impl StartFilter {
    pub(crate) fn build<'h>(patterns: impl IntoIterator<Item = &'h Hir>) -> StartFilter {
        let mut tables = StartTables {
            used: [false; 3],
            single: [0; 4],
            pairs: Box::new([0; 1024]),
            triples: Box::new([0; 1024]),
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
                    [only] => {
                        tables.used[0] = true;
                        set(&mut tables.single, usize::from(*only))
                    }
                    [first, second] => {
                        tables.used[1] = true;
                        set(&mut tables.pairs[..], pair(*first, *second))
                    }
                    [first, second, third, ..] => {
                        tables.used[2] = true;
                        set(&mut tables.triples[..], triple(*first, *second, *third))
                    }
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
            .map_or(0, |_| 2 * std::mem::size_of::<[u64; 1024]>())
    }

    /// `false` only when no pattern the filter was built from can match `code`.
    ///
    /// The strings starting at one position are tested together and or-ed, so each position
    /// costs one well-predicted branch instead of one per table and per byte looked at.
    pub(crate) fn may_match(&self, code: &[u8]) -> bool {
        let Some(tables) = &self.tables else {
            return true;
        };
        let [single, pairs, triples] = tables.used;
        let mut rest = code;
        while let [first, after @ ..] = rest {
            let mut hit = 0;
            if single {
                hit |= bit(&tables.single, usize::from(*first));
            }
            if let [second, after_second @ ..] = after {
                if pairs {
                    hit |= bit(&tables.pairs[..], pair(*first, *second));
                }
                if triples && let [third, ..] = after_second {
                    hit |= bit(&tables.triples[..], triple(*first, *second, *third));
                }
            }
            if hit != 0 {
                return true;
            }
            rest = after;
        }
        false
    }
}

/// Bit `index` of `bits` as 0 or 1 (0 past the end).
fn bit(bits: &[u64], index: usize) -> u64 {
    bits.get(index / 64)
        .map_or(0, |word| word >> (index % 64) & 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hir(pattern: &str) -> Hir {
        regex_syntax::Parser::new().parse(pattern).expect("valid")
    }

    /// Asks both stages about `code` probed at its full length, as `candidates` does.
    fn may_hold(filter: &KeyFilter, code: &[u8]) -> bool {
        pack(code).is_some_and(|key| filter.may_contain(filter.anchor(code), &key))
    }

    #[test]
    fn key_filter_never_rules_out_an_indexed_key() {
        let owned: Vec<Vec<u8>> = (0..5000)
            .map(|i| format!("PFX{i}").into_bytes())
            .chain(std::iter::once(b"PFX-LONGER-THAN-FIFTEEN".to_vec()))
            .collect();
        let literals: Vec<&[u8]> = owned.iter().map(Vec::as_slice).collect();
        let prefixes = KeyFilter::build(&literals, 4, false);
        let suffixes = KeyFilter::build(&literals, 4, true);
        for literal in &literals[..5000] {
            assert!(may_hold(&prefixes, literal));
            assert!(may_hold(&suffixes, literal));
        }
        // A spilled literal has no second-stage bit, but its anchor must pass the first stage.
        let long = literals[5000];
        assert_ne!(prefixes.anchor(long), Anchor::Absent);
        assert_ne!(suffixes.anchor(long), Anchor::Absent);
        let absent = (0..5000)
            .filter(|i| may_hold(&prefixes, format!("NOT{i}").as_bytes()))
            .count();
        assert!(absent < 1000, "{absent} false maybes of 5000");
        let other_anchors = (0..5000)
            .filter(|i| prefixes.anchor(format!("Q{i:04}XYZ").as_bytes()) != Anchor::Absent)
            .count();
        assert!(
            other_anchors < 1000,
            "{other_anchors} false anchors of 5000"
        );
        assert_eq!(
            prefixes.anchor(b"PFX"),
            Anchor::Absent,
            "shorter than every literal"
        );
    }

    #[test]
    fn unbuilt_key_filters_always_say_maybe() {
        let literals: [&[u8]; 2] = [b"SHORT", b"LONGER"];
        for filter in [
            KeyFilter::default(),
            KeyFilter::build(&literals, 6, false),
            KeyFilter::build(&[b"SIXTEEN-BYTES-XX"], 16, false),
        ] {
            assert_eq!(filter.anchor(b"ANYTHING"), Anchor::Unfiltered);
            assert!(filter.may_contain(Anchor::Unfiltered, &[0; 16]));
        }
    }

    #[test]
    fn start_filter_rules_out_codes_without_a_leading_string() {
        let patterns = [hir("A{3}B"), hir("(?i)xy+"), hir("Q")];
        let filter = StartFilter::build(&patterns);
        for code in ["zzAAABzz", "XY", "xY1", "abQ"] {
            assert!(filter.may_match(code.as_bytes()), "{code}");
        }
        for code in ["", "ABAB", "X", "yx", "BA", "zzAABzz"] {
            assert!(!filter.may_match(code.as_bytes()), "{code}");
        }
    }

    proptest::proptest! {
        /// Whatever mix of one-, two- and three-byte starts the patterns have, a code one of
        /// them matches is never ruled out.
        #[test]
        fn start_filter_never_rules_out_a_match(
            chosen in proptest::sample::subsequence(
                vec!["Q", "xy+", "A{3}B", "(?i)k[0-9]", "ZZ|W", "[ab]c{2}", "9"],
                1..5,
            ),
            code in "[a-cAkKQWxyZ0-9]{0,12}",
        ) {
            let patterns: Vec<Hir> = chosen.iter().map(|p| hir(p)).collect();
            let filter = StartFilter::build(&patterns);
            let matched = chosen
                .iter()
                .any(|p| regex::Regex::new(p).is_ok_and(|r| r.is_match(&code)));
            proptest::prop_assert!(!matched || filter.may_match(code.as_bytes()));
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
