//! The matcher budget: how much memory the regex rows of one table may take once compiled, and
//! how many regex rows one program may have.
//!
//! A regex's compiled size depends on what its classes expand to, not on its length: `\w{5}Q1`
//! is 7 bytes of text and ~420 KiB compiled, because `\w` stands for every word character of
//! Unicode. Every worker builds the same table, so one such table used to take the whole fleet
//! down at once. The size is measured while the table is built (each regex as it is compiled),
//! and building stops keeping regexes once the budget is spent: the rest are compiled only to
//! be measured for the report, then dropped, so refusing a table never costs much more memory
//! than the budget itself.

use crate::matcher::IndexedBy;

/// One regex row's compiled size.
struct Charge<'t> {
    line: u32,
    program: &'t str,
    code: &'t str,
    bytes: usize,
    scanned: bool,
}

pub(super) struct Budget<'t> {
    limit: usize,
    used: usize,
    charges: Vec<Charge<'t>>,
    /// A program's fallback set could not be built within what was left.
    sets_refused: Vec<&'t str>,
}

impl<'t> Budget<'t> {
    pub(super) fn new(limit: usize) -> Self {
        Budget {
            limit,
            used: 0,
            charges: Vec::new(),
            sets_refused: Vec::new(),
        }
    }

    pub(super) fn exceeded(&self) -> bool {
        self.used > self.limit || !self.sets_refused.is_empty()
    }

    pub(super) fn remaining(&self) -> usize {
        self.limit.saturating_sub(self.used)
    }

    pub(super) fn charge(
        &mut self,
        line: u32,
        program: &'t str,
        code: &'t str,
        bytes: usize,
        indexed: Option<IndexedBy>,
    ) {
        self.used = self.used.saturating_add(bytes);
        self.charges.push(Charge {
            line,
            program,
            code,
            bytes,
            scanned: indexed.is_none_or(|i| i == IndexedBy::Scan),
        });
    }

    /// Index structures and fallback sets, not tied to one row.
    pub(super) fn charge_shared(&mut self, bytes: usize) {
        self.used = self.used.saturating_add(bytes);
    }

    /// A program's fallback set would not fit in what is left. A set costs about what its
    /// patterns cost one by one, so that is what it is charged.
    pub(super) fn refuse_set(&mut self, program: &'t str) {
        let estimate: usize = self
            .charges
            .iter()
            .filter(|c| c.program == program && c.scanned)
            .map(|c| c.bytes)
            .sum();
        self.used = self.used.saturating_add(estimate);
        self.sets_refused.push(program);
    }

    /// The problems of a table over budget: one saying so, then the rows whose removal brings
    /// the table within budget, largest first. Empty when the table fits.
    pub(super) fn problems(mut self) -> Vec<(u64, String)> {
        if !self.exceeded() {
            return Vec::new();
        }
        let mut excess = self.used.saturating_sub(self.limit).max(1);
        self.charges
            .sort_by(|a, b| b.bytes.cmp(&a.bytes).then(a.line.cmp(&b.line)));
        let mut problems = vec![(
            0,
            format!(
                "the regex rows take {} once compiled, over the matcher budget of {} \
                 (codes.max_regex_bytes); the rows below cost most, and without them the table \
                 fits. Unicode classes are the usual cause (\\w alone is ~140,000 characters): \
                 write [A-Za-z0-9_], [0-9] or (?-u:\\w) for ASCII-only codes",
                human(self.used),
                human(self.limit)
            ),
        )];
        for charge in &self.charges {
            if excess == 0 || charge.bytes == 0 {
                break;
            }
            excess = excess.saturating_sub(charge.bytes);
            problems.push((
                u64::from(charge.line),
                format!(
                    "regex {:?} (program {}) takes {} compiled{}; the table is over the matcher budget",
                    charge.code,
                    charge.program,
                    human(charge.bytes),
                    if uses_unicode_classes(charge.code) {
                        " (Unicode classes)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        problems
    }
}

/// Whether a pattern names a class that is Unicode-wide by default.
fn uses_unicode_classes(pattern: &str) -> bool {
    [
        "\\w", "\\W", "\\d", "\\D", "\\s", "\\S", "\\b", "\\B", "\\p", "\\P",
    ]
    .iter()
    .any(|class| pattern.contains(class))
}

/// Bytes as KiB or MiB, for messages.
pub(super) fn human(bytes: usize) -> String {
    const KIB: usize = 1024;
    if bytes >= 10 * KIB * KIB {
        format!("{} MiB", bytes / (KIB * KIB))
    } else if bytes >= 10 * KIB {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

#[cfg(test)]
mod tests {
    use crate::codes::LoadProblems;
    use crate::codes::table::{BuildOptions, CodeTable};

    /// A table of regex rows; `program` picks each row's program from its number.
    fn build(
        patterns: &[String],
        program: impl Fn(usize) -> u32,
        options: BuildOptions,
    ) -> Result<CodeTable, LoadProblems> {
        let mut csv = String::from("Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode\n");
        for (i, pattern) in patterns.iter().enumerate() {
            csv.push_str(&format!("{pattern},{},p1,TRACKING,ALWAYS,RE\n", program(i)));
        }
        let entries = crate::codes::load::read_codes(csv.as_bytes(), "t.csv")?;
        CodeTable::build(entries, Vec::new(), "v", "t.csv", options)
    }

    fn numbered(pattern: &str, count: usize) -> Vec<String> {
        (0..count)
            .map(|i| pattern.replace("{i}", &i.to_string()))
            .collect()
    }

    #[test]
    fn real_world_patterns_fit_the_default_budget() {
        let mut patterns = numbered("^(SUMMER{i}).*", 10_000);
        patterns.extend(numbered("^(?i)(WIN{i})[0-9]+$", 200));
        let program = |i| if i < 10_000 { 1 } else { 2 };
        let table = build(&patterns, program, BuildOptions::default()).expect("fits");
        let used: usize = ["1", "2"]
            .iter()
            .filter_map(|id| table.program(id))
            .map(|p| p.regex.memory_usage())
            .sum();
        assert!(used < 32 * 1024 * 1024, "{used} bytes");
        assert!(
            used > 200 * 1024,
            "the compiled regexes are counted: {used}"
        );
    }

    #[test]
    fn a_table_over_the_budget_names_the_rows_that_cost_most() {
        let mut patterns = numbered("^(P{i}).*", 30);
        patterns.extend(numbered("\\w{5}Q{i}", 12));
        patterns.extend(numbered("^A{i}[0-9]$", 5));
        let options = BuildOptions {
            max_regex_bytes: 2 * 1024 * 1024,
            ..BuildOptions::default()
        };
        let problems = build(&patterns, |_| 1, options).expect_err("over budget").0;
        assert_eq!(problems[0].line, 0);
        assert!(
            problems[0].reason.contains("codes.max_regex_bytes")
                && problems[0].reason.contains("[A-Za-z0-9_]"),
            "{}",
            problems[0].reason
        );
        let named: Vec<u64> = problems[1..].iter().map(|p| p.line).collect();
        assert!(!named.is_empty());
        // Lines 32..=43 hold the Unicode-class rows: only they are worth naming.
        assert!(
            named.iter().all(|line| (32..=43).contains(line)),
            "{named:?}"
        );
        assert!(problems[1].reason.contains("(Unicode classes)"));
        assert!(problems[1].reason.contains("KiB compiled"));
        // Without the rows named, the table fits.
        let kept: Vec<String> = patterns
            .iter()
            .enumerate()
            .filter(|(i, _)| !named.contains(&(*i as u64 + 2)))
            .map(|(_, p)| p.clone())
            .collect();
        build(&kept, |_| 1, options).expect("fits without the named rows");
    }

    #[test]
    fn an_unindexed_set_over_what_is_left_is_refused() {
        // Unanchored patterns go into one fallback set per program, built last.
        let patterns = numbered("[a-z]{3}Q{i}", 40);
        let fits = build(&patterns, |_| 1, BuildOptions::default()).expect("fits");
        let needed = fits.program("1").expect("program").regex.memory_usage();
        let options = BuildOptions {
            max_regex_bytes: needed * 2 / 3,
            ..BuildOptions::default()
        };
        let problems = build(&patterns, |_| 1, options)
            .expect_err("set does not fit")
            .0;
        assert!(
            problems[0].reason.contains("matcher budget"),
            "{problems:?}"
        );
    }

    #[test]
    fn regex_rows_per_program_are_capped() {
        let patterns = numbered("^(C{i}).*", 7);
        let options = BuildOptions {
            max_regex_rows_per_program: 3,
            ..BuildOptions::default()
        };
        // Rows 0..=4 in program 1, rows 5 and 6 in program 2.
        let problems = build(&patterns, |i| if i < 5 { 1 } else { 2 }, options)
            .expect_err("program 1 has 5")
            .0;
        let lines: Vec<u64> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [5, 6]);
        assert!(
            problems[0]
                .reason
                .contains("regex row 4 of program 1: a program has at most 3 regex rows (codes.max_regex_rows_per_program)"),
            "{}",
            problems[0].reason
        );
    }
}
