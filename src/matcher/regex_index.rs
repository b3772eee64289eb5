//! Regex code lookup without running every pattern.
//!
//! `RegexSet::matches` over 10 k patterns costs ~10 µs per entered code. Nearly every promo-code
//! pattern pins its start or its end to literal text (`^(SUMMER).*`, `^.*(SUMMER)$`), so each
//! pattern is indexed by the literals a match must begin (or end) with, an entered code probes the
//! index once per distinct literal length, and only the few candidates found are run. Patterns of
//! the form `^LITERAL<anything that may be empty>` need no regex run at all: a prefix hit is the
//! match. Patterns with no anchored literal fall back to a set of all of them.
//!
//! The regexes are regex-automata's meta regexes (what the `regex` crate wraps) because those
//! report their heap size: every compiled regex, set and first search cache is counted in
//! [`RegexIndex::memory_usage`], which the table's matcher budget checks (see
//! [`crate::codes::table`]). Unicode classes keep their Unicode meaning (`\w` is any of ~140,000
//! word characters) and are counted at their real cost, so a table full of them is refused for
//! its size rather than silently read with other semantics.

use regex_automata::meta::{self, Regex};
use regex_automata::nfa::thompson::WhichCaptures;
use regex_automata::util::syntax;
use regex_automata::{Input, MatchKind, PatternSet};
use regex_syntax::hir::literal::{ExtractKind, Extractor};
use regex_syntax::hir::{Hir, HirKind, Look};

use super::literal_index::LiteralIndex;
use super::prefilter::StartFilter;
use super::shape::Shape;

/// Compiled-size bound per pattern; generous for promo-code patterns, fatal for a pathological
/// one such as `(a{100}){100}`.
pub const DEFAULT_REGEX_SIZE_LIMIT: usize = 256 * 1024;
/// More case variants than this (from `(?i)` on a long prefix) and a pattern is not worth indexing.
const MAX_LITERALS_PER_PATTERN: usize = 256;
/// The lazy DFA's cache of one regex may grow to this with use (the `regex` crate's default).
const LAZY_DFA_CACHE_BYTES: usize = 2 * 1024 * 1024;
/// Heap a compiled regex holds that `memory_usage` does not report (its shared state, cache pool
/// and pattern); measured as the resident-size growth of 1,000 small regexes minus what they
/// report.
const PER_REGEX_OVERHEAD: usize = 4 * 1024;

enum Check {
    /// The pattern is exactly "starts with the indexed literal".
    PrefixHit,
    Shape(Box<Shape>),
    Run(Regex),
}

impl Check {
    fn is_match(&self, code: &str) -> bool {
        match self {
            Check::PrefixHit => true,
            Check::Shape(shape) => shape.is_match(code),
            Check::Run(regex) => regex.is_match(code),
        }
    }
}

struct Pattern {
    value: u32,
    check: Check,
}

/// How one pattern ended up being indexed; reported by `explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexedBy {
    PrefixOnly,
    Prefix,
    Suffix,
    Scan,
}

#[derive(Default)]
pub struct RegexIndex {
    patterns: Vec<Pattern>,
    prefix: LiteralIndex,
    suffix: LiteralIndex,
    unindexed: Vec<u32>,
    unindexed_set: Option<Regex>,
    unindexed_sources: Vec<String>,
    /// Rules out the unindexed patterns for most codes before any of them runs.
    unindexed_filter: StartFilter,
    size_limit: usize,
    /// Heap of the compiled regexes and the set, with one search cache each.
    compiled_bytes: usize,
}

impl RegexIndex {
    pub fn new(size_limit: usize) -> RegexIndex {
        RegexIndex {
            size_limit,
            ..RegexIndex::default()
        }
    }

    /// Adds a pattern carrying `value`; on error the pattern is not added and the message says
    /// why it was refused.
    pub fn add(&mut self, pattern: &str, value: u32) -> Result<IndexedBy, String> {
        let hir = parse(pattern)?;
        let local = self.patterns.len() as u32;
        if let Some(literal) = literal_prefix_only(&hir) {
            self.patterns.push(Pattern {
                value,
                check: Check::PrefixHit,
            });
            self.prefix.add(&literal, local);
            return Ok(IndexedBy::PrefixOnly);
        }
        if let Some(shape) = Shape::of(&hir) {
            self.prefix.add(shape.literal(), local);
            self.compiled_bytes += shape.memory_usage();
            self.patterns.push(Pattern {
                value,
                check: Check::Shape(Box::new(shape)),
            });
            return Ok(IndexedBy::Prefix);
        }
        let (regex, bytes) = compile(pattern, self.size_limit)?;
        self.compiled_bytes += bytes;
        let properties = hir.properties();
        let indexed = if let Some(literals) = properties
            .look_set_prefix()
            .contains(Look::Start)
            .then(|| anchored_literals(&hir, ExtractKind::Prefix))
            .flatten()
        {
            literals.iter().for_each(|l| self.prefix.add(l, local));
            IndexedBy::Prefix
        } else if let Some(literals) = properties
            .look_set_suffix()
            .contains(Look::End)
            .then(|| anchored_literals(&hir, ExtractKind::Suffix))
            .flatten()
        {
            literals.iter().for_each(|l| self.suffix.add(l, local));
            IndexedBy::Suffix
        } else {
            self.unindexed.push(local);
            self.unindexed_sources.push(pattern.to_string());
            // Built from all of them in `finish`; until then no pattern may be ruled out.
            self.unindexed_filter = StartFilter::default();
            IndexedBy::Scan
        };
        self.patterns.push(Pattern {
            value,
            check: Check::Run(regex),
        });
        Ok(indexed)
    }

    /// Builds the fallback set and the pre-filters once all patterns are in.
    pub fn finish(&mut self) -> Result<(), String> {
        self.finish_within(usize::MAX)
    }

    /// [`RegexIndex::finish`], refusing to compile a fallback set larger than `budget` bytes.
    pub fn finish_within(&mut self, budget: usize) -> Result<(), String> {
        self.prefix.finish(false);
        self.suffix.finish(true);
        let hirs: Vec<Hir> = self
            .unindexed_sources
            .iter()
            .map(|source| parse(source))
            .collect::<Result<_, _>>()?;
        self.unindexed_filter = StartFilter::build(&hirs);
        self.unindexed_set = if self.unindexed.len() > 8 {
            let limit = self.set_limit().min(budget);
            let set = meta::Builder::new()
                .configure(
                    config(limit)
                        .match_kind(MatchKind::All)
                        .which_captures(WhichCaptures::None),
                )
                .syntax(syntax::Config::new().utf8(true))
                .build_many(&self.unindexed_sources)
                .map_err(build_error)?;
            self.compiled_bytes += heap_of(&set);
            Some(set)
        } else {
            None
        };
        Ok(())
    }

    /// The compiled-size bound of the fallback set without a budget.
    pub fn set_limit(&self) -> usize {
        self.size_limit.saturating_mul(self.unindexed.len())
    }

    /// Heap held by the index: compiled regexes and set with a first search cache each (a cache
    /// grows with use, up to the lazy DFA's capacity per searching thread), literal tables and
    /// filters.
    pub fn memory_usage(&self) -> usize {
        let literal_tables = self.prefix.memory_usage() + self.suffix.memory_usage();
        self.compiled_bytes
            + literal_tables
            + self.patterns.capacity() * std::mem::size_of::<Pattern>()
            + self.unindexed_filter.memory_usage()
            + self
                .unindexed_sources
                .iter()
                .map(String::len)
                .sum::<usize>()
    }

    /// Appends the values of every pattern that matches `code` (already trimmed), each once.
    pub fn matches_into(&self, code: &str, out: &mut Vec<u32>) {
        let start = out.len();
        let bytes = code.as_bytes();
        let indexed = self
            .prefix
            .candidates(bytes, false)
            .chain(self.suffix.candidates(bytes, true));
        for local in indexed {
            let pattern = &self.patterns[local as usize];
            if pattern.check.is_match(code) && !out[start..].contains(&pattern.value) {
                out.push(pattern.value);
            }
        }
        let mut push_unindexed = |position: usize| {
            let pattern = &self.patterns[self.unindexed[position] as usize];
            if !out[start..].contains(&pattern.value) {
                out.push(pattern.value);
            }
        };
        if !self.unindexed_filter.may_match(bytes) {
            return;
        }
        match &self.unindexed_set {
            // `is_match` stops at the first hit and usually runs on the lazy DFA; `matches` must
            // run every pattern to completion. Almost no code hits the fallback patterns, so
            // asking the cheap question first keeps the common miss at tens of nanoseconds.
            Some(set) if set.is_match(code) => {
                let mut matched = PatternSet::new(set.pattern_len());
                set.which_overlapping_matches(&Input::new(code), &mut matched);
                matched.iter().for_each(|id| push_unindexed(id.as_usize()))
            }
            Some(_) => {}
            None => (0..self.unindexed.len())
                // Only `add`'s last branch files a pattern here, always with a compiled regex.
                .filter(|&i| {
                    self.patterns[self.unindexed[i] as usize]
                        .check
                        .is_match(code)
                })
                .for_each(&mut push_unindexed),
        }
    }

    pub fn len(&self) -> usize {
        self.patterns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }
}

/// `^` followed by literal text and then only parts that can match the empty string without any
/// assertion: under search semantics such a pattern matches exactly the codes that start with the
/// literal.
fn literal_prefix_only(hir: &Hir) -> Option<Vec<u8>> {
    let HirKind::Concat(items) = hir.kind() else {
        return None;
    };
    let (first, rest) = items.split_first()?;
    if !matches!(first.kind(), HirKind::Look(Look::Start)) {
        return None;
    }
    let mut prefix = Vec::new();
    let mut in_prefix = true;
    for item in rest {
        if in_prefix && let Some(bytes) = literal_bytes(item) {
            prefix.extend_from_slice(&bytes);
            continue;
        }
        in_prefix = false;
        let properties = item.properties();
        if properties.minimum_len() != Some(0) || !properties.look_set().is_empty() {
            return None;
        }
    }
    (!prefix.is_empty()).then_some(prefix)
}

pub(super) fn literal_bytes(hir: &Hir) -> Option<Vec<u8>> {
    match hir.kind() {
        HirKind::Literal(literal) => Some(literal.0.to_vec()),
        HirKind::Capture(capture) => literal_bytes(&capture.sub),
        HirKind::Concat(items) => items.iter().try_fold(Vec::new(), |mut acc, item| {
            acc.extend(literal_bytes(item)?);
            Some(acc)
        }),
        _ => None,
    }
}

/// The finite, non-empty literals every match must start (or end) with, if there are few enough.
///
/// When they share a common prefix (suffix) only that is kept: `^WIN[0-9]{2,4}$` expands to
/// `WIN00`..`WIN99` and more, and probing one literal `WIN` is cheaper than probing each length
/// of a hundred; the regex run on the candidate does the rest.
fn anchored_literals(hir: &Hir, kind: ExtractKind) -> Option<Vec<Vec<u8>>> {
    let from_end = matches!(kind, ExtractKind::Suffix);
    let seq = Extractor::new().kind(kind).extract(hir);
    let literals = seq.literals()?;
    if literals.is_empty()
        || literals.len() > MAX_LITERALS_PER_PATTERN
        || literals.iter().any(|l| l.as_bytes().is_empty())
    {
        return None;
    }
    let common = if from_end {
        seq.longest_common_suffix()
    } else {
        seq.longest_common_prefix()
    };
    if let Some(common) = common.filter(|c| !c.is_empty()) {
        return Some(vec![common.to_vec()]);
    }
    Some(literals.iter().map(|l| l.as_bytes().to_vec()).collect())
}

/// The meta configuration the `regex` crate uses, with our NFA size limit.
fn config(nfa_size_limit: usize) -> meta::Config {
    meta::Config::new()
        .nfa_size_limit(Some(nfa_size_limit))
        .hybrid_cache_capacity(LAZY_DFA_CACHE_BYTES)
        .utf8_empty(true)
}

/// Compiles one pattern as `regex::Regex` would and tells its heap size with a search cache.
fn compile(pattern: &str, size_limit: usize) -> Result<(Regex, usize), String> {
    let regex = meta::Builder::new()
        .configure(config(size_limit).match_kind(MatchKind::LeftmostFirst))
        .syntax(syntax::Config::new().utf8(true))
        .build(pattern)
        .map_err(build_error)?;
    let bytes = heap_of(&regex);
    Ok((regex, bytes))
}

/// The heap `pattern` would take in an index (see [`RegexIndex::memory_usage`]), compiled and
/// dropped; `0` for a pattern indexed by its literal prefix alone, which compiles nothing.
pub fn measure(pattern: &str, size_limit: usize) -> Result<usize, String> {
    let hir = parse(pattern)?;
    if literal_prefix_only(&hir).is_some() {
        return Ok(0);
    }
    if let Some(shape) = Shape::of(&hir) {
        return Ok(shape.memory_usage());
    }
    compile(pattern, size_limit).map(|(_, bytes)| bytes)
}

fn heap_of(regex: &Regex) -> usize {
    regex.memory_usage() + regex.create_cache().memory_usage() + PER_REGEX_OVERHEAD
}

/// One line, worded as the `regex` crate words its errors.
fn build_error(error: meta::BuildError) -> String {
    if let Some(limit) = error.size_limit() {
        return format!("compiled regex exceeds size limit of {limit} bytes");
    }
    match error.syntax_error() {
        Some(syntax) => one_line(&syntax.to_string()),
        None => one_line(&error.to_string()),
    }
}

fn parse(pattern: &str) -> Result<Hir, String> {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(pattern)
        .map_err(|e| one_line(&e.to_string()))
}

/// regex errors span several lines with a caret diagram; table problems are one line each.
fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| c == '^' || c == ' '))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use regex::RegexSet;

    use super::*;

    fn index(patterns: &[&str]) -> RegexIndex {
        let mut index = RegexIndex::new(DEFAULT_REGEX_SIZE_LIMIT);
        for (i, p) in patterns.iter().enumerate() {
            index.add(p, i as u32).expect("valid pattern");
        }
        index.finish().expect("set builds");
        index
    }

    fn hits(index: &RegexIndex, code: &str) -> Vec<u32> {
        let mut out = Vec::new();
        index.matches_into(code, &mut out);
        out.sort_unstable();
        out
    }

    #[test]
    fn classifies_patterns() {
        let mut index = RegexIndex::new(DEFAULT_REGEX_SIZE_LIMIT);
        assert_eq!(index.add("^(SUMMER).*", 0), Ok(IndexedBy::PrefixOnly));
        assert_eq!(index.add("^SUMMER", 1), Ok(IndexedBy::PrefixOnly));
        assert_eq!(index.add("^(?i)(SUMMER).*", 2), Ok(IndexedBy::Prefix));
        assert_eq!(index.add("^WIN[0-9]{2,4}$", 3), Ok(IndexedBy::Prefix));
        assert_eq!(index.add("^.*(SUMMER)$", 4), Ok(IndexedBy::Suffix));
        assert_eq!(index.add("SUMMER", 5), Ok(IndexedBy::Scan));
        assert_eq!(index.add("^SUMMER$", 6), Ok(IndexedBy::Prefix));
    }

    #[test]
    fn impact_documented_examples() {
        let starts = index(&["^(SUMMER).*"]);
        for code in ["SUMMER20OFF", "SUMMER10", "SUMMER25", "SUMMER"] {
            assert_eq!(hits(&starts, code), [0], "{code}");
        }
        for code in ["summer10", "20OFFSUMMER", "SUMME"] {
            assert!(hits(&starts, code).is_empty(), "{code}");
        }
        let ends = index(&["^.*(SUMMER)$"]);
        for code in ["20OFFSUMMER", "10SUMMER", "25SUMMER", "SUMMER"] {
            assert_eq!(hits(&ends, code), [0], "{code}");
        }
        assert!(hits(&ends, "SUMMER10").is_empty());
        let insensitive = index(&["^(?i)(SUMMER).*"]);
        assert_eq!(hits(&insensitive, "summer10"), [0]);
        assert_eq!(hits(&insensitive, "SuMmEr"), [0]);
        assert!(hits(&insensitive, "10summer").is_empty());
    }

    #[test]
    fn unanchored_patterns_search_anywhere() {
        let index = index(&["SUMMER", "^WIN[0-9]{2,4}$"]);
        assert_eq!(hits(&index, "XXSUMMERXX"), [0]);
        assert_eq!(hits(&index, "WIN123"), [1]);
        assert!(hits(&index, "WIN12345").is_empty());
        assert!(hits(&index, "WIN1").is_empty());
    }

    #[test]
    fn agrees_with_a_regex_set_on_a_mixed_table() {
        let patterns: Vec<String> = (0..40)
            .map(|i| match i % 5 {
                0 => format!("^(P{i}).*"),
                1 => format!("^(?i)q{i}[a-z]*$"),
                2 => format!("^.*(S{i})$"),
                3 => format!("M{i}"),
                _ => format!("^(R{i}|T{i})[0-9]+"),
            })
            .collect();
        let refs: Vec<&str> = patterns.iter().map(String::as_str).collect();
        let ours = index(&refs);
        let set = RegexSet::new(&patterns).expect("valid");
        for code in [
            "P0abc", "Q1xyz", "q11", "xxS2", "aM3b", "R4123", "T44", "P10", "S7", "none", "M33x",
        ] {
            let expected: Vec<u32> = set.matches(code).iter().map(|i| i as u32).collect();
            assert_eq!(hits(&ours, code), expected, "{code}");
        }
    }

    #[test]
    fn patterns_sharing_a_literal_are_all_filed_under_it() {
        let index = index(&[
            "^(AB).*",
            "^AB[0-9]$",
            "^(AB)X",
            "^(AB).*",
            "^.*(YZ)$",
            "^.*YZ$",
        ]);
        assert_eq!(hits(&index, "AB1"), [0, 1, 3]);
        assert_eq!(hits(&index, "ABX"), [0, 2, 3]);
        assert_eq!(hits(&index, "AB"), [0, 3]);
        assert_eq!(hits(&index, "XYZ"), [4, 5]);
    }

    #[test]
    fn literals_over_fifteen_bytes_are_found_past_the_filters() {
        let index = index(&[
            "^(AB).*",
            "^(ABCDEFGHIJKLMNOPQ).*",
            "^.*(YZ)$",
            "^.*(0123456789ABCDEFXYZ)$",
        ]);
        assert_eq!(hits(&index, "ABCDEFGHIJKLMNOPQRS"), [0, 1]);
        assert_eq!(hits(&index, "ABCDEFGHIJKLMNOP"), [0]);
        assert_eq!(hits(&index, "__0123456789ABCDEFXYZ"), [2, 3]);
        assert_eq!(hits(&index, "0123456789ABCDEFXY"), Vec::<u32>::new());
    }

    proptest::proptest! {
        /// The pre-filters only ever skip work: with them the index answers exactly what a
        /// `RegexSet` of the same patterns answers, on codes made of the patterns' own letters,
        /// with the unindexed patterns run one by one (few) or as a set (many).
        #[test]
        fn filters_never_change_the_answer(code in "[ABXYab019]{0,10}") {
            let patterns = [
                "^(AB).*", "^(ABX).*", "^XY[0-9]{2,4}$", "^.*(Y0)$", "^(?i)ba[0-9]",
                "A{2}B", "X{3}Y", "B{2}A", "Y{2}X", "(?i)b{2}y", "0{3}1", "9{2}8", "a{2}b", "x{2}",
            ];
            for count in [8, patterns.len()] {
                let ours = index(&patterns[..count]);
                let set = RegexSet::new(&patterns[..count]).expect("valid");
                let expected: Vec<u32> = set.matches(&code).iter().map(|i| i as u32).collect();
                proptest::prop_assert_eq!(hits(&ours, &code), expected);
            }
        }
    }

    #[test]
    fn refuses_bad_and_oversized_patterns() {
        let mut index = RegexIndex::new(10 * 1024);
        assert!(
            index.add("(?<=x)a", 0).is_err(),
            "look-behind is unsupported"
        );
        assert!(index.add("(a", 1).is_err());
        let err = index.add("(\\w{100}){100}", 2).expect_err("too big");
        assert!(err.contains("size limit"), "{err}");
        assert!(!err.contains('\n'));
        assert!(index.is_empty());
    }
}
