//! The immutable, indexed code table that decisions read.
//!
//! A table is built once per version (from files, or from the Redis store) and never changed;
//! a new version is a new table, swapped in whole, so a decision never sees half of an update.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use super::budget::Budget;
use super::load::{LoadProblem, LoadProblems};
use super::normalize::{exact_key, trim_entered};
use super::{CodeEntry, MatchType, Partner};
use crate::matcher::{DEFAULT_REGEX_SIZE_LIMIT, ProgramMatcher, RegexIndex, regex_index};
use crate::settings::detectors::ProgramSettings;

/// Position of an entry in the table; also its row order, which breaks ties between regexes.
pub type EntryId = u32;

/// What an entered code matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CodeMatch {
    /// The entry that applies: the exact match, else the regex with the highest priority, then
    /// the earliest row.
    pub entry: EntryId,
    /// Entries of two or more different owners matched (an `AMBIGUOUS_CODE_MATCH`).
    pub owners_differ: bool,
}

/// Default of `codes.max_regex_bytes` (see [`super::budget`]).
pub const DEFAULT_MAX_REGEX_BYTES: usize = 256 * 1024 * 1024;
/// Default of `codes.max_regex_rows_per_program`.
pub const DEFAULT_MAX_REGEX_ROWS_PER_PROGRAM: usize = 10_000;

/// Build options that are not part of the table's content.
#[derive(Debug, Clone, Copy)]
pub struct BuildOptions {
    /// Compiled size bound of one pattern.
    pub regex_size_limit: usize,
    /// The matcher budget: compiled size of all regex rows, sets and indexes together.
    pub max_regex_bytes: usize,
    pub max_regex_rows_per_program: usize,
}

impl Default for BuildOptions {
    fn default() -> Self {
        BuildOptions {
            regex_size_limit: DEFAULT_REGEX_SIZE_LIMIT,
            max_regex_bytes: DEFAULT_MAX_REGEX_BYTES,
            max_regex_rows_per_program: DEFAULT_MAX_REGEX_ROWS_PER_PROGRAM,
        }
    }
}

pub struct CodeTable {
    version: String,
    indexed: Arc<Indexed>,
    /// Rows changed by single-code edits since the last full build (see
    /// [`CodeTable::with_patched_rows`]); empty after a build.
    patched: HashMap<EntryId, CodeEntry, foldhash::fast::RandomState>,
    /// Per-program settings published with the table (detector thresholds and the like).
    program_settings: Arc<BTreeMap<String, ProgramSettings>>,
}

/// What a full build makes; shared, unchanged, by the versions that only patch rows.
struct Indexed {
    entries: Vec<CodeEntry>,
    code_ids: Vec<Box<str>>,
    programs: HashMap<Arc<str>, ProgramMatcher, foldhash::fast::RandomState>,
    partners: HashMap<String, Partner, foldhash::fast::RandomState>,
    /// Terms of any partner the partners file does not list.
    unlisted: Partner,
}

impl std::fmt::Debug for CodeTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CodeTable")
            .field("version", &self.version)
            .field("entries", &self.indexed.entries.len())
            .field("patched", &self.patched.len())
            .field("programs", &self.indexed.programs.len())
            .field("partners", &self.indexed.partners.len())
            .finish()
    }
}

impl CodeTable {
    /// Indexes `entries` (in row order) and `partners`, reporting every duplicate code, every
    /// pattern that does not compile, and a table over the matcher budget or the regex rows per
    /// program. `origin` names the codes' source in problems.
    pub fn build(
        entries: Vec<CodeEntry>,
        partners: Vec<Partner>,
        version: impl Into<String>,
        origin: &str,
        options: BuildOptions,
    ) -> Result<CodeTable, LoadProblems> {
        let mut problems = Vec::new();
        let mut problem = |line: u64, reason: String| {
            problems.push(LoadProblem {
                origin: origin.to_string(),
                line,
                column: Some("Promo Code".to_string()),
                reason,
            })
        };
        let mut programs: HashMap<Arc<str>, ProgramMatcher, foldhash::fast::RandomState> =
            HashMap::default();
        let mut pattern_rows: HashMap<(&str, &str), EntryId> = HashMap::new();
        let mut regex_rows: HashMap<&str, usize> = HashMap::new();
        let mut budget = Budget::new(options.max_regex_bytes);
        for (id, entry) in entries.iter().enumerate() {
            let id = id as EntryId;
            let program =
                programs
                    .entry(entry.program_id.clone())
                    .or_insert_with(|| ProgramMatcher {
                        regex: RegexIndex::new(options.regex_size_limit),
                        ..ProgramMatcher::default()
                    });
            let earlier = match entry.match_type {
                MatchType::Exact => program.exact.insert(&exact_key(&entry.code), id),
                MatchType::Regex => pattern_rows.insert((&entry.program_id, &entry.code), id),
            };
            if let Some(earlier) = earlier {
                let first = &entries[earlier as usize];
                let whose = if first.owner_partner_id == entry.owner_partner_id {
                    "the same owner"
                } else {
                    "a different owner"
                };
                problem(
                    u64::from(entry.source_line),
                    format!(
                        "{:?} is the same code as line {} (program {}, {whose}); a code has one row",
                        entry.code, first.source_line, entry.program_id
                    ),
                );
                continue;
            }
            if entry.match_type != MatchType::Regex {
                continue;
            }
            let count = regex_rows.entry(&entry.program_id).or_default();
            *count += 1;
            if *count > options.max_regex_rows_per_program {
                problem(
                    u64::from(entry.source_line),
                    format!(
                        "regex row {count} of program {}: a program has at most {} regex rows (codes.max_regex_rows_per_program)",
                        entry.program_id, options.max_regex_rows_per_program
                    ),
                );
                continue;
            }
            // Once the budget is spent, regexes are compiled only to be measured for the report.
            let added = if budget.exceeded() {
                regex_index::measure(&entry.code, options.regex_size_limit).map(|b| (b, None))
            } else {
                let before = program.regex.memory_usage();
                let indexed = program.regex.add(&entry.code, id);
                indexed.map(|i| (program.regex.memory_usage() - before, Some(i)))
            };
            match added {
                Ok((bytes, indexed)) => budget.charge(
                    entry.source_line,
                    &entry.program_id,
                    &entry.code,
                    bytes,
                    indexed,
                ),
                Err(reason) => problem(
                    u64::from(entry.source_line),
                    format!("regex {:?} refused: {reason}", entry.code),
                ),
            }
        }
        for (program_id, program) in &mut programs {
            if budget.exceeded() {
                break;
            }
            let before = program.regex.memory_usage();
            let remaining = budget.remaining();
            match program.regex.finish_within(remaining) {
                Ok(()) => budget.charge_shared(program.regex.memory_usage() - before),
                Err(_) if program.regex.set_limit() > remaining => budget.refuse_set(program_id),
                Err(reason) => problem(
                    0,
                    format!(
                        "program {program_id}: patterns without a literal anchor do not build together: {reason}"
                    ),
                ),
            }
        }
        for (line, reason) in budget.problems() {
            problem(line, reason);
        }
        if !problems.is_empty() {
            return Err(LoadProblems(problems));
        }
        let code_ids = entries
            .iter()
            .map(|e| e.code_id().into_boxed_str())
            .collect();
        let partners = partners
            .into_iter()
            .map(|p| (p.partner_id.clone(), p))
            .collect();
        Ok(CodeTable::from_indexed(
            version.into(),
            Indexed {
                entries,
                code_ids,
                programs,
                partners,
                unlisted: Partner::unlisted(""),
            },
        ))
    }

    /// A table without codes or partners: every entered code is unknown.
    pub fn empty(version: impl Into<String>) -> CodeTable {
        CodeTable::from_indexed(
            version.into(),
            Indexed {
                entries: Vec::new(),
                code_ids: Vec::new(),
                programs: HashMap::default(),
                partners: HashMap::default(),
                unlisted: Partner::unlisted(""),
            },
        )
    }

    fn from_indexed(version: String, indexed: Indexed) -> CodeTable {
        CodeTable {
            version,
            indexed: Arc::new(indexed),
            patched: HashMap::default(),
            program_settings: Arc::new(BTreeMap::new()),
        }
    }

    /// A new version that differs from this one only in some rows' columns other than the
    /// code itself (state, dates, owner, limits): the indexes are shared, not rebuilt, so a
    /// single-code edit takes effect in microseconds on a table of millions. `rows` pairs each
    /// changed row with its id in this table ([`CodeTable::find`]).
    pub fn with_patched_rows(
        &self,
        version: impl Into<String>,
        rows: impl IntoIterator<Item = (EntryId, CodeEntry)>,
    ) -> CodeTable {
        let mut patched = self.patched.clone();
        patched.extend(rows);
        CodeTable {
            version: version.into(),
            indexed: self.indexed.clone(),
            patched,
            program_settings: self.program_settings.clone(),
        }
    }

    /// The rows as last fully built, handed back without a copy when no other version shares
    /// them (a table just built to validate rows).
    pub fn into_entries(self) -> Vec<CodeEntry> {
        match Arc::try_unwrap(self.indexed) {
            Ok(indexed) => indexed.entries,
            Err(shared) => shared.entries.clone(),
        }
    }

    /// Rows replaced by [`CodeTable::with_patched_rows`] since the last full build.
    pub fn patched_rows(&self) -> usize {
        self.patched.len()
    }

    /// The id of the row with this program and [`CodeEntry::code_id`].
    pub fn find(&self, program_id: &str, code_id: &str) -> Option<EntryId> {
        if let Some(key) = code_id.strip_prefix("LI:") {
            let id = self.program(program_id)?.exact.get(key)?;
            return (self.code_id(id) == code_id).then_some(id);
        }
        // Regex rows are few (thousands at most), so a scan is cheaper than another index.
        self.indexed
            .code_ids
            .iter()
            .enumerate()
            .find(|(id, candidate)| {
                &***candidate == code_id && &*self.indexed.entries[*id].program_id == program_id
            })
            .map(|(id, _)| id as EntryId)
    }

    /// Number of rows.
    pub fn len(&self) -> usize {
        self.indexed.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indexed.entries.is_empty()
    }

    /// Every row in table order, patched rows included.
    pub fn rows(&self) -> impl Iterator<Item = &CodeEntry> {
        (0..self.len() as EntryId).map(|id| self.entry(id))
    }

    /// The same table with these per-program settings.
    pub fn with_program_settings(mut self, settings: BTreeMap<String, ProgramSettings>) -> Self {
        self.program_settings = Arc::new(settings);
        self
    }

    /// Settings published for a program; `None` means the worker-wide defaults apply.
    pub fn program_settings(&self, program_id: &str) -> Option<&ProgramSettings> {
        self.program_settings.get(program_id)
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// The rows as last fully built; rows patched since are only seen through
    /// [`CodeTable::entry`] and [`CodeTable::rows`].
    pub fn built_entries(&self) -> &[CodeEntry] {
        &self.indexed.entries
    }

    pub fn entry(&self, id: EntryId) -> &CodeEntry {
        // The common case (no single-code edit since the last build) costs one length check.
        if !self.patched.is_empty()
            && let Some(row) = self.patched.get(&id)
        {
            return row;
        }
        &self.indexed.entries[id as usize]
    }

    pub fn code_id(&self, id: EntryId) -> &str {
        &self.indexed.code_ids[id as usize]
    }

    pub fn partners(&self) -> impl Iterator<Item = &Partner> {
        self.indexed.partners.values()
    }

    /// The partner's record; `None` means not listed, i.e. [`Partner::unlisted`] defaults.
    pub fn partner(&self, partner_id: &str) -> Option<&Partner> {
        self.indexed.partners.get(partner_id)
    }

    /// The terms that apply to a partner: its record, or the defaults for an unlisted one.
    pub fn partner_terms(&self, partner_id: &str) -> &Partner {
        self.indexed
            .partners
            .get(partner_id)
            .unwrap_or(&self.indexed.unlisted)
    }

    pub fn program(&self, program_id: &str) -> Option<&ProgramMatcher> {
        self.indexed.programs.get(program_id)
    }

    /// Finds the entry an entered code matches in a program. `scratch` is reused between calls
    /// so the hot path does not allocate.
    pub fn lookup(
        &self,
        program: &ProgramMatcher,
        entered: &str,
        scratch: &mut Vec<EntryId>,
    ) -> Option<CodeMatch> {
        scratch.clear();
        // The exact bucket is asked for first and read last, so its cache miss overlaps the
        // regex side's work instead of preceding it.
        let exact = program.exact.start(entered);
        if !program.regex.is_empty() {
            program.regex.matches_into(trim_entered(entered), scratch);
        }
        let exact = program.exact.finish(exact, entered);
        // The common cases are a single match or none: they are answered without reading any
        // entry, because at a million entries each read is a cache and TLB miss.
        let best_regex = match scratch.as_slice() {
            [] => None,
            [only] => Some(*only),
            many => many
                .iter()
                .copied()
                .min_by_key(|&id| (std::cmp::Reverse(self.entry(id).priority), id)),
        };
        let entry = exact.or(best_regex)?;
        let single = scratch.len() + usize::from(exact.is_some()) == 1;
        let owners_differ = !single && {
            let owner = &self.entry(entry).owner_partner_id;
            exact
                .iter()
                .chain(scratch.iter())
                .any(|&id| &self.entry(id).owner_partner_id != owner)
        };
        Some(CodeMatch {
            entry,
            owners_differ,
        })
    }

    /// Every entry an entered code matches, exact first, then regexes in precedence order; the
    /// evidence for an ambiguity alert and for `explain`.
    pub fn all_matches(&self, program: &ProgramMatcher, entered: &str) -> Vec<EntryId> {
        let mut regexes = Vec::new();
        program
            .regex
            .matches_into(trim_entered(entered), &mut regexes);
        regexes.sort_by_key(|&id| (std::cmp::Reverse(self.entry(id).priority), id));
        program
            .exact
            .get(entered)
            .into_iter()
            .chain(regexes)
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::load::read_codes;

    fn table(rows: &str) -> Result<CodeTable, LoadProblems> {
        let text =
            format!("Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode,Priority\n{rows}");
        let entries = read_codes(text.as_bytes(), "codes.csv")?;
        CodeTable::build(
            entries,
            Vec::new(),
            "v1",
            "codes.csv",
            BuildOptions::default(),
        )
    }

    fn matched(table: &CodeTable, program: &str, code: &str) -> Option<(String, bool)> {
        let program = table.program(program)?;
        table
            .lookup(program, code, &mut Vec::new())
            .map(|m| (table.code_id(m.entry).to_string(), m.owners_differ))
    }

    #[test]
    fn exact_beats_regex_and_priority_then_row_orders_regexes() {
        let t = table(
            "SUMMER10,1,A,TRACKING,ALWAYS,LI,\n\
             ^(SUMMER).*,1,B,TRACKING,ALWAYS,RE,\n\
             ^(SUM).*,1,B,TRACKING,ALWAYS,RE,5\n\
             ^(SU).*,1,C,TRACKING,ALWAYS,RE,5\n",
        )
        .expect("valid");
        assert_eq!(
            matched(&t, "1", "SUMMER10"),
            Some(("LI:SUMMER10".into(), true))
        );
        assert_eq!(
            matched(&t, "1", "SUMMER11"),
            Some(("RE:^(SUM).*".into(), true))
        );
        assert_eq!(matched(&t, "1", "SUX"), Some(("RE:^(SU).*".into(), false)));
        assert_eq!(matched(&t, "1", "nothing"), None);
        assert_eq!(
            matched(&t, "2", "SUMMER10"),
            None,
            "codes are scoped to their program"
        );
    }

    #[test]
    fn same_owner_matches_are_not_ambiguous() {
        let t = table("SAVE,1,A,TRACKING,ALWAYS,LI,\n^(SAVE).*,1,A,TRACKING,WINNER,RE,\n")
            .expect("valid");
        assert_eq!(matched(&t, "1", "save"), Some(("LI:SAVE".into(), false)));
    }

    #[test]
    fn duplicates_and_bad_patterns_are_all_reported() {
        let problems = table(
            "SAVE,1,A,TRACKING,ALWAYS,LI,\n\
             save ,1,B,TRACKING,ALWAYS,LI,\n\
             SAVE,2,B,TRACKING,ALWAYS,LI,\n\
             (?<=x)a,1,A,TRACKING,ALWAYS,RE,\n\
             ^X.*,1,A,TRACKING,ALWAYS,RE,\n\
             ^X.*,1,A,TRACKING,ALWAYS,RE,\n",
        )
        .expect_err("invalid")
        .0;
        let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [3, 5, 7]);
        assert!(
            problems[0].reason.contains("line 2") && problems[0].reason.contains("different owner")
        );
        assert!(problems[2].reason.contains("same owner"));
    }

    #[test]
    fn patched_rows_share_the_indexes() {
        let body = "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n\
                    ANNA10,1,p1,TRACKING,ALWAYS,LI\n\
                    ^X.*,1,p1,TRACKING,ALWAYS,RE\n";
        let entries = crate::codes::load::read_codes(body.as_bytes(), "t.csv").expect("valid");
        let table = CodeTable::build(entries, Vec::new(), "1", "t", BuildOptions::default())
            .expect("builds");
        assert_eq!(table.find("1", "LI:ANNA10"), Some(0));
        assert_eq!(table.find("1", "RE:^X.*"), Some(1));
        assert_eq!(table.find("2", "LI:ANNA10"), None);
        let mut expired = table.entry(0).clone();
        expired.state = crate::codes::CodeState::Expired;
        let next = table.with_patched_rows("2", [(0, expired.clone())]);
        assert_eq!((next.version(), next.patched_rows()), ("2", 1));
        assert_eq!(next.entry(0), &expired);
        assert_eq!(table.entry(0).state, crate::codes::CodeState::Active);
        let program = next.program("1").expect("program");
        let mut scratch = Vec::new();
        assert_eq!(
            next.lookup(program, "anna10", &mut scratch)
                .map(|m| m.entry),
            Some(0)
        );
        assert_eq!(
            next.rows()
                .filter(|e| e.state == crate::codes::CodeState::Expired)
                .count(),
            1
        );
    }
}
