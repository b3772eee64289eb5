//! The literals regex patterns are indexed by (see [`super::regex_index`]), each with the
//! patterns filed under it, and the probes an entered code makes into them.

use std::collections::HashMap;

use foldhash::fast::RandomState;

use super::exact::{INLINE_BYTES, InlineKey, pack};
use super::line_map::LineMap;
use super::prefilter::{Anchor, KeyFilter};

/// A literal's entry in [`LiteralIndex::inline`]: the one pattern filed under it, or with this
/// bit set, the position of its list of several in [`LiteralIndex::shared`].
const SHARED: u32 = 1 << 31;

#[derive(Default)]
pub(super) struct LiteralIndex {
    /// Literals of up to 15 bytes (all real prefixes) inline, like exact codes, so a probe reads
    /// one cache line and, nearly always, finds its pattern there; longer ones spill to boxed keys.
    inline: LineMap,
    shared: Vec<Vec<u32>>,
    spilled: HashMap<Box<[u8]>, Vec<u32>, RandomState>,
    /// Distinct literal lengths, ascending: the probes an entered code needs.
    lengths: Vec<usize>,
    /// Built by [`super::RegexIndex::finish`] over every literal; lets most probes skip the maps.
    filter: KeyFilter,
}

/// The patterns filed under one literal.
enum Filed<'s> {
    One(Option<u32>),
    Many(std::slice::Iter<'s, u32>),
}

impl Iterator for Filed<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match self {
            Filed::One(pattern) => pattern.take(),
            Filed::Many(patterns) => patterns.next().copied(),
        }
    }
}

impl LiteralIndex {
    pub(super) fn add(&mut self, literal: &[u8], pattern: u32) {
        match pack(literal).map(u128::from_le_bytes) {
            Some(key) => match self.inline.get(key) {
                None => {
                    self.inline.insert(key, pattern);
                }
                Some(filed) if filed & SHARED != 0 => {
                    if let Some(list) = self.shared.get_mut((filed & !SHARED) as usize)
                        && !list.contains(&pattern)
                    {
                        list.push(pattern);
                    }
                }
                Some(filed) if filed != pattern => {
                    self.inline.insert(key, SHARED | self.shared.len() as u32);
                    self.shared.push(vec![filed, pattern]);
                }
                Some(_) => {}
            },
            None => {
                let list = self.spilled.entry(literal.into()).or_default();
                if !list.contains(&pattern) {
                    list.push(pattern);
                }
            }
        }
        if let Err(at) = self.lengths.binary_search(&literal.len()) {
            self.lengths.insert(at, literal.len());
        }
        // A filter built before this literal would wrongly rule it out.
        self.filter = KeyFilter::default();
    }

    pub(super) fn finish(&mut self, from_end: bool) {
        let anchor = self.lengths.first().copied().unwrap_or(0);
        let keys: Vec<InlineKey> = self.inline.keys().map(u128::to_le_bytes).collect();
        let literals: Vec<&[u8]> = keys
            .iter()
            .map(unpack)
            .chain(self.spilled.keys().map(|key| &key[..]))
            .collect();
        self.filter = KeyFilter::build(&literals, anchor, from_end);
    }

    fn filed(&self, filed: u32) -> Filed<'_> {
        if filed & SHARED == 0 {
            return Filed::One(Some(filed));
        }
        let list = self.shared.get((filed & !SHARED) as usize);
        Filed::Many(list.map_or(&[][..], Vec::as_slice).iter())
    }

    pub(super) fn memory_usage(&self) -> usize {
        let list = std::mem::size_of::<Vec<u32>>();
        self.inline.memory_usage()
            + self.shared.capacity() * list
            + self.shared.iter().map(Vec::capacity).sum::<usize>() * 4
            + self.spilled.capacity() * (std::mem::size_of::<(Box<[u8]>, Vec<u32>)>() + 17)
            + self.spilled.values().map(Vec::capacity).sum::<usize>() * 4
            + self.filter.memory_usage()
    }

    pub(super) fn candidates<'s>(
        &'s self,
        code: &'s [u8],
        from_end: bool,
    ) -> impl Iterator<Item = u32> + 's {
        let anchor = self.filter.anchor(code);
        let lengths = match anchor {
            Anchor::Absent => &[][..],
            _ => &self.lengths[..],
        };
        lengths
            .iter()
            .take_while(move |&&len| len <= code.len())
            .filter_map(move |&len| {
                let probe = if from_end {
                    &code[code.len() - len..]
                } else {
                    &code[..len]
                };
                match pack(probe) {
                    Some(key) if self.filter.may_contain(anchor, &key) => self
                        .inline
                        .get(u128::from_le_bytes(key))
                        .map(|filed| self.filed(filed)),
                    Some(_) => None,
                    None => self.spilled.get(probe).map(|list| Filed::Many(list.iter())),
                }
            })
            .flatten()
    }
}

fn unpack(key: &InlineKey) -> &[u8] {
    &key[..usize::from(key[INLINE_BYTES]).min(INLINE_BYTES)]
}
