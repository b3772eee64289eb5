//! Reading code and partner tables from impact.com's bulk-upload CSV format.
//!
//! Every row is checked and every problem is collected, so a person fixing a file sees all of
//! them in one go; a file with any problem yields no rows at all (nothing is half-loaded).

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::str::FromStr;
use std::sync::Arc;

use chrono_tz::Tz;

use super::normalize::exact_key;
use super::{
    CodeEntry, CodeState, CodeType, CreditGroup, CreditPolicy, DEFAULT_REFERRAL_WINDOW_DAYS,
    MatchType, Partner, PartnerStatus,
};
use crate::timefmt::{Instant, parse_table_datetime};

/// Longest exact code accepted, in characters: impact's tracking parameter is a String(64).
pub const MAX_EXACT_CODE_CHARS: usize = 64;
/// Longest regex pattern accepted, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
const MAX_REFERRAL_WINDOW_DAYS: u32 = 3650;

/// One thing wrong with an input file, pointing at the line and column to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadProblem {
    pub origin: String,
    pub line: u64,
    pub column: Option<String>,
    pub reason: String,
}

impl fmt::Display for LoadProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.origin, self.line)?;
        if let Some(column) = &self.column {
            write!(f, "column \"{column}\": ")?;
        }
        f.write_str(&self.reason)
    }
}

/// All problems found in a table. Displayed one per line, at most [`SHOWN_PER_COLUMN`] per
/// column with a count of the rest: one wrong value repeated over a million rows must not print
/// a million lines (or log them as one 70 MB line). [`LoadProblems::full`] has every one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LoadProblems(pub Vec<LoadProblem>);

/// Problems displayed per column (and for whole rows) before the rest are only counted.
pub const SHOWN_PER_COLUMN: usize = 20;

impl LoadProblems {
    /// Every problem, one per line, for a `--problems` file.
    pub fn full(&self) -> String {
        self.0.iter().map(|p| format!("{p}\n")).collect()
    }

    /// Whether the display leaves problems out.
    pub fn truncated(&self) -> bool {
        let mut per_column: HashMap<Option<&str>, usize> = HashMap::new();
        self.0.iter().any(|p| {
            let shown = per_column.entry(p.column.as_deref()).or_default();
            *shown += 1;
            *shown > SHOWN_PER_COLUMN
        })
    }
}

impl fmt::Display for LoadProblems {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut shown: HashMap<Option<&str>, usize> = HashMap::new();
        let mut hidden: std::collections::BTreeMap<Option<&str>, usize> = Default::default();
        let mut first = true;
        for problem in &self.0 {
            let column = problem.column.as_deref();
            let count = shown.entry(column).or_default();
            if *count == SHOWN_PER_COLUMN {
                *hidden.entry(column).or_default() += 1;
                continue;
            }
            *count += 1;
            if !first {
                writeln!(f)?;
            }
            first = false;
            write!(f, "{problem}")?;
        }
        for (column, count) in hidden {
            match column {
                Some(column) => {
                    write!(f, "\n... and {count} more problems in column \"{column}\"")?
                }
                None => write!(f, "\n... and {count} more problems with whole rows")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for LoadProblems {}

/// Columns of the codes file: impact's bulk-upload columns, then ours.
pub const CODE_COLUMNS: [&str; 14] = [
    "Promo Code",
    "Program Id",
    "Media Id",
    "Type",
    "Credit Rule",
    "Match Mode",
    "Deal Id",
    "Active Start Date",
    "Active End Date",
    "Timezone",
    "State",
    "Usage Limit",
    "Customer Limit",
    "Priority",
];
const REQUIRED_CODE_COLUMNS: [&str; 3] = ["Promo Code", "Program Id", "Type"];

pub const PARTNER_COLUMNS: [&str; 7] = [
    "Partner Id",
    "Status",
    "Contract Start",
    "Contract End",
    "Referral Window Days",
    "Credit Group",
    "Identity Hashes",
];
const REQUIRED_PARTNER_COLUMNS: [&str; 1] = ["Partner Id"];

/// Collects problems for one file while its rows are read.
struct Collector {
    origin: String,
    problems: Vec<LoadProblem>,
}

impl Collector {
    fn push(&mut self, line: u64, column: Option<&str>, reason: impl Into<String>) {
        self.problems.push(LoadProblem {
            origin: self.origin.clone(),
            line,
            column: column.map(str::to_string),
            reason: reason.into(),
        });
    }
}

/// One data row with its header map; the accessors report problems against the row's line.
struct Row<'r> {
    record: &'r csv::StringRecord,
    columns: &'r HashMap<&'static str, usize>,
    line: u64,
}

impl Row<'_> {
    fn text(&self, column: &str) -> &str {
        self.columns
            .get(column)
            .and_then(|&i| self.record.get(i))
            .unwrap_or("")
    }

    fn optional(&self, column: &str) -> Option<&str> {
        Some(self.text(column)).filter(|v| !v.is_empty())
    }

    fn required(&self, out: &mut Collector, column: &str) -> Option<String> {
        let value = self.optional(column).map(str::to_string);
        if value.is_none() {
            out.push(self.line, Some(column), "a value is required");
        }
        value
    }

    /// An enum value, case-insensitive; blank gives `None`.
    fn choice<T: Copy>(
        &self,
        out: &mut Collector,
        column: &str,
        choices: &[(&str, T)],
    ) -> Result<Option<T>, ()> {
        let Some(value) = self.optional(column) else {
            return Ok(None);
        };
        match choices
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(value))
        {
            Some(&(_, choice)) => Ok(Some(choice)),
            None => {
                let names: Vec<&str> = choices.iter().map(|(n, _)| *n).collect();
                out.push(
                    self.line,
                    Some(column),
                    format!(
                        "unknown value {value:?} (expected one of {})",
                        names.join(", ")
                    ),
                );
                Err(())
            }
        }
    }

    fn number<T: FromStr>(
        &self,
        out: &mut Collector,
        column: &str,
        what: &str,
    ) -> Result<Option<T>, ()> {
        let Some(value) = self.optional(column) else {
            return Ok(None);
        };
        match value.parse::<T>() {
            Ok(n) => Ok(Some(n)),
            Err(_) => {
                out.push(self.line, Some(column), format!("{value:?} is not {what}"));
                Err(())
            }
        }
    }

    fn date(&self, out: &mut Collector, column: &str, zone: Tz) -> Result<Option<Instant>, ()> {
        let Some(value) = self.optional(column) else {
            return Ok(None);
        };
        let instant = parse_table_datetime(value, zone).map_err(|e| {
            out.push(self.line, Some(column), format!("{value:?}: {e}"));
        })?;
        // Exports write UTC instants in RFC 3339, which has four-digit years only.
        if !(1..=9999).contains(&chrono::Datelike::year(&instant)) {
            out.push(
                self.line,
                Some(column),
                format!("{value:?} falls outside the years 1-9999 in UTC"),
            );
            return Err(());
        }
        Ok(Some(instant))
    }
}

/// Reads the header, checking names exactly (impact rejects files whose headers differ in case or
/// spacing), and returns the column map, or `None` when rows cannot be read meaningfully.
fn read_header<R: Read>(
    reader: &mut csv::Reader<R>,
    out: &mut Collector,
    known: &[&'static str],
    required: &[&'static str],
) -> Option<HashMap<&'static str, usize>> {
    let headers = match reader.headers() {
        Ok(h) => h.clone(),
        Err(e) => {
            out.push(1, None, format!("cannot read the header row: {e}"));
            return None;
        }
    };
    let before = out.problems.len();
    let mut columns = HashMap::new();
    for (index, name) in headers.iter().enumerate() {
        match known.iter().find(|k| **k == name) {
            Some(&k) if columns.insert(k, index).is_some() => {
                out.push(1, Some(name), "column appears twice");
            }
            Some(_) => {}
            None => {
                let hint = known
                    .iter()
                    .find(|k| k.eq_ignore_ascii_case(name.trim()))
                    .map(|k| format!(" (did you mean \"{k}\"? headers must match exactly)"))
                    .unwrap_or_else(|| format!(" (known columns: {})", known.join(", ")));
                out.push(1, Some(name), format!("unknown column{hint}"));
            }
        }
    }
    for name in required {
        if !columns.contains_key(name) {
            out.push(1, Some(name), "required column is missing");
        }
    }
    if out.problems.len() != before
        && let Some(hint) = other_kind_of_file(&headers, known)
    {
        // Said first: it explains every other header problem at once.
        out.problems.insert(
            before,
            LoadProblem {
                origin: out.origin.clone(),
                line: 1,
                column: None,
                reason: hint.into(),
            },
        );
    }
    (out.problems.len() == before).then_some(columns)
}

/// A hint when a file has the columns of the other kind of table (a partners file passed as the
/// codes, or the reverse).
fn other_kind_of_file(headers: &csv::StringRecord, expected: &[&str]) -> Option<&'static str> {
    let has = |name: &str| headers.iter().any(|h| h.trim().eq_ignore_ascii_case(name));
    if expected.contains(&"Promo Code") && has("Partner Id") && !has("Promo Code") {
        Some(
            "this looks like a partners file (it has a \"Partner Id\" column); pass it with --partners and the codes file as the codes",
        )
    } else if expected.contains(&"Partner Id") && has("Promo Code") && !has("Partner Id") {
        Some(
            "this looks like a codes file (it has a \"Promo Code\" column); pass it as the codes and the partners file with --partners",
        )
    } else {
        None
    }
}

fn csv_reader<R: Read>(input: R) -> csv::Reader<R> {
    csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input)
}

/// Walks the data rows, reporting rows with the wrong number of fields and unreadable CSV.
fn for_each_row<R: Read>(
    reader: &mut csv::Reader<R>,
    columns: &HashMap<&'static str, usize>,
    out: &mut Collector,
    mut visit: impl FnMut(&Row<'_>, &mut Collector),
) {
    let width = reader.headers().map(|h| h.len()).unwrap_or(0);
    let mut record = csv::StringRecord::new();
    loop {
        match reader.read_record(&mut record) {
            Ok(false) => break,
            Ok(true) => {
                let line = record.position().map_or(0, |p| p.line());
                if record.iter().all(str::is_empty) {
                    continue;
                }
                if record.len() != width {
                    out.push(
                        line,
                        None,
                        format!("row has {} fields, the header has {width}", record.len()),
                    );
                    continue;
                }
                visit(
                    &Row {
                        record: &record,
                        columns,
                        line,
                    },
                    out,
                );
            }
            Err(e) => {
                let line = e.position().map_or(0, |p| p.line());
                out.push(line, None, format!("unreadable CSV: {e}"));
                if !matches!(e.kind(), csv::ErrorKind::Utf8 { .. }) {
                    break;
                }
            }
        }
    }
}

/// Reads a codes file. Cross-row checks (duplicates, regex compilation) happen when the table is
/// built; see [`super::table::CodeTable::build`].
pub fn read_codes<R: Read>(input: R, origin: &str) -> Result<Vec<CodeEntry>, LoadProblems> {
    let (entries, problems) = read_codes_lenient(input, origin);
    if problems.is_empty() {
        Ok(entries)
    } else {
        Err(LoadProblems(problems))
    }
}

/// Reads a codes file, returning the rows that are valid on their own together with the problems
/// of the others, so that cross-row checks can still run over the good rows and a person sees
/// every problem in one report.
pub fn read_codes_lenient<R: Read>(input: R, origin: &str) -> (Vec<CodeEntry>, Vec<LoadProblem>) {
    let mut out = Collector {
        origin: origin.to_string(),
        problems: Vec::new(),
    };
    let mut reader = csv_reader(input);
    let Some(columns) = read_header(&mut reader, &mut out, &CODE_COLUMNS, &REQUIRED_CODE_COLUMNS)
    else {
        return (Vec::new(), out.problems);
    };
    let mut entries = Vec::new();
    let mut interner = Interner::default();
    for_each_row(&mut reader, &columns, &mut out, |row, out| {
        if let Some(entry) = code_row(row, out, &mut interner) {
            entries.push(entry);
        }
    });
    (entries, out.problems)
}

/// Hands out one shared copy of each distinct program, partner or deal id.
#[derive(Default)]
pub struct Interner(std::collections::HashSet<Arc<str>>);

impl Interner {
    pub fn intern(&mut self, text: &str) -> Arc<str> {
        if let Some(shared) = self.0.get(text) {
            return shared.clone();
        }
        let shared: Arc<str> = Arc::from(text);
        self.0.insert(shared.clone());
        shared
    }
}

fn code_row(row: &Row<'_>, out: &mut Collector, interner: &mut Interner) -> Option<CodeEntry> {
    let before = out.problems.len();
    let code = row.required(out, "Promo Code");
    let program_id = row.required(out, "Program Id");
    let code_type = row
        .choice(
            out,
            "Type",
            &[
                ("TRACKING", CodeType::Tracking),
                ("RESTRICTED", CodeType::Restricted),
            ],
        )
        .ok()
        .flatten();
    if code_type.is_none() && row.optional("Type").is_none() {
        out.push(
            row.line,
            Some("Type"),
            "a value is required (TRACKING or RESTRICTED)",
        );
    }
    let credit_policy = row
        .choice(
            out,
            "Credit Rule",
            &[
                ("ALWAYS", CreditPolicy::Always),
                ("INVOLVED", CreditPolicy::Involved),
                ("WINNER", CreditPolicy::Winner),
            ],
        )
        .ok()
        .flatten();
    let match_type = row
        .choice(
            out,
            "Match Mode",
            &[("LI", MatchType::Exact), ("RE", MatchType::Regex)],
        )
        .ok()
        .flatten()
        .unwrap_or(MatchType::Exact);
    let owner = row.optional("Media Id").map(str::to_string);
    match code_type {
        Some(CodeType::Tracking) => {
            if owner.is_none() {
                out.push(
                    row.line,
                    Some("Media Id"),
                    "a TRACKING code needs the partner that owns it",
                );
            }
            if credit_policy.is_none() && row.optional("Credit Rule").is_none() {
                out.push(
                    row.line,
                    Some("Credit Rule"),
                    "a TRACKING code needs ALWAYS, INVOLVED or WINNER",
                );
            }
        }
        Some(CodeType::Restricted) => {
            if owner.is_some() {
                out.push(
                    row.line,
                    Some("Media Id"),
                    "a RESTRICTED code has no owner; leave it empty",
                );
            }
            if credit_policy.is_some() {
                out.push(
                    row.line,
                    Some("Credit Rule"),
                    "a RESTRICTED code credits nobody; leave it empty",
                );
            }
        }
        None => {}
    }
    let timezone = match row.optional("Timezone") {
        None => Tz::UTC,
        Some(name) => name.parse::<Tz>().unwrap_or_else(|_| {
            out.push(
                row.line,
                Some("Timezone"),
                format!("{name:?} is not an IANA time zone name (e.g. America/New_York)"),
            );
            Tz::UTC
        }),
    };
    let start = row.date(out, "Active Start Date", timezone).ok().flatten();
    let end = row.date(out, "Active End Date", timezone).ok().flatten();
    if let (Some(s), Some(e)) = (start, end)
        && e <= s
    {
        out.push(
            row.line,
            Some("Active End Date"),
            "the end must be after the start (the end is exclusive)",
        );
    }
    let state = row
        .choice(
            out,
            "State",
            &[
                ("ACTIVE", CodeState::Active),
                ("EXPIRED", CodeState::Expired),
            ],
        )
        .ok()
        .flatten()
        .unwrap_or_default();
    let usage_limit = positive(row, out, "Usage Limit");
    let customer_limit = positive(row, out, "Customer Limit");
    let priority = row
        .number::<i32>(out, "Priority", "a whole number")
        .ok()
        .flatten()
        .unwrap_or(0);
    if let Some(code) = &code {
        check_code_text(row, out, code, match_type);
    }
    if out.problems.len() != before {
        return None;
    }
    Some(CodeEntry {
        program_id: interner.intern(&program_id?),
        code: code?.into_boxed_str(),
        match_type,
        code_type: code_type?,
        owner_partner_id: owner.map(|o| interner.intern(&o)),
        credit_policy,
        deal_id: row.optional("Deal Id").map(|d| interner.intern(d)),
        start,
        end,
        timezone,
        state,
        usage_limit,
        customer_limit,
        priority,
        source_line: u32::try_from(row.line).unwrap_or(u32::MAX),
    })
}

fn positive(row: &Row<'_>, out: &mut Collector, column: &str) -> Option<u32> {
    let value = row
        .number::<u32>(out, column, "a whole number")
        .ok()
        .flatten();
    if value == Some(0) {
        out.push(
            row.line,
            Some(column),
            "must be at least 1 (leave it empty for no limit)",
        );
    }
    value
}

fn check_code_text(row: &Row<'_>, out: &mut Collector, code: &str, match_type: MatchType) {
    if code.chars().any(char::is_control) {
        out.push(row.line, Some("Promo Code"), "contains control characters");
        return;
    }
    match match_type {
        MatchType::Exact => {
            let key = exact_key(code);
            if key.is_empty() {
                out.push(row.line, Some("Promo Code"), "is empty after trimming");
            } else if key.chars().count() > MAX_EXACT_CODE_CHARS {
                out.push(
                    row.line,
                    Some("Promo Code"),
                    format!("longer than {MAX_EXACT_CODE_CHARS} characters (the limit of the column, for patterns as for exact codes)"),
                );
            }
        }
        MatchType::Regex if code.len() > MAX_PATTERN_BYTES => {
            out.push(
                row.line,
                Some("Promo Code"),
                format!("pattern longer than {MAX_PATTERN_BYTES} bytes"),
            );
        }
        MatchType::Regex => {}
    }
}

/// Regex rows whose pattern is longer than [`MAX_EXACT_CODE_CHARS`]: the `Promo Code` cell
/// holds at most 64 characters whatever the match mode (impact's column is a String(64)).
/// Checked where new tables come in (`codes import`); versions stored before the rule still
/// load, up to [`MAX_PATTERN_BYTES`].
pub fn long_pattern_problems(entries: &[CodeEntry], origin: &str) -> Vec<LoadProblem> {
    entries
        .iter()
        .filter(|e| e.match_type == MatchType::Regex)
        .filter(|e| e.code.chars().count() > MAX_EXACT_CODE_CHARS)
        .map(|e| LoadProblem {
            origin: origin.to_string(),
            line: u64::from(e.source_line),
            column: Some("Promo Code".into()),
            reason: format!(
                "longer than {MAX_EXACT_CODE_CHARS} characters (the limit of the column, for patterns as for exact codes)"
            ),
        })
        .collect()
}

/// Reads a partners file; a partner not listed later counts as [`Partner::unlisted`].
pub fn read_partners<R: Read>(input: R, origin: &str) -> Result<Vec<Partner>, LoadProblems> {
    let mut out = Collector {
        origin: origin.to_string(),
        problems: Vec::new(),
    };
    let mut reader = csv_reader(input);
    let Some(columns) = read_header(
        &mut reader,
        &mut out,
        &PARTNER_COLUMNS,
        &REQUIRED_PARTNER_COLUMNS,
    ) else {
        return Err(LoadProblems(out.problems));
    };
    let mut partners: Vec<Partner> = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for_each_row(&mut reader, &columns, &mut out, |row, out| {
        if let Some(partner) = partner_row(row, out) {
            if let Some(first) = seen.insert(partner.partner_id.clone(), row.line) {
                out.push(
                    row.line,
                    Some("Partner Id"),
                    format!("partner already listed on line {first}"),
                );
            } else {
                partners.push(partner);
            }
        }
    });
    if out.problems.is_empty() {
        Ok(partners)
    } else {
        Err(LoadProblems(out.problems))
    }
}

fn partner_row(row: &Row<'_>, out: &mut Collector) -> Option<Partner> {
    let before = out.problems.len();
    let partner_id = row.required(out, "Partner Id");
    let status = row
        .choice(
            out,
            "Status",
            &[
                ("ACTIVE", PartnerStatus::Active),
                ("INACTIVE", PartnerStatus::Inactive),
            ],
        )
        .ok()
        .flatten()
        .unwrap_or_default();
    let contract_start = row.date(out, "Contract Start", Tz::UTC).ok().flatten();
    let contract_end = row.date(out, "Contract End", Tz::UTC).ok().flatten();
    if let (Some(s), Some(e)) = (contract_start, contract_end)
        && e <= s
    {
        out.push(
            row.line,
            Some("Contract End"),
            "the end must be after the start (the end is exclusive)",
        );
    }
    let referral_window_days = row
        .number::<u32>(out, "Referral Window Days", "a whole number of days")
        .ok()
        .flatten()
        .unwrap_or(DEFAULT_REFERRAL_WINDOW_DAYS);
    if referral_window_days > MAX_REFERRAL_WINDOW_DAYS {
        out.push(
            row.line,
            Some("Referral Window Days"),
            format!("more than {MAX_REFERRAL_WINDOW_DAYS} days"),
        );
    }
    let credit_group = row
        .choice(
            out,
            "Credit Group",
            &[
                ("PREFERRED", CreditGroup::Preferred),
                ("STANDARD", CreditGroup::Standard),
                ("NON_PREFERRED", CreditGroup::NonPreferred),
            ],
        )
        .ok()
        .flatten()
        .unwrap_or_default();
    let identity_hashes = identity_hashes(row, out);
    if out.problems.len() != before {
        return None;
    }
    Some(Partner {
        partner_id: partner_id?,
        status,
        contract_start,
        contract_end,
        referral_window_days,
        credit_group,
        identity_hashes,
    })
}

/// The partner's own identity hashes (email, customer or device hashes, as the order system
/// hashes them), `;`-separated; the self-referral detector compares customers against them.
fn identity_hashes(row: &Row<'_>, out: &mut Collector) -> Vec<String> {
    let Some(text) = row.optional("Identity Hashes") else {
        return Vec::new();
    };
    let mut hashes = Vec::new();
    for hash in text.split(';').map(str::trim).filter(|h| !h.is_empty()) {
        if hash.len() > 128 || !hash.bytes().all(|b| b.is_ascii_graphic() && b != b',') {
            out.push(
                row.line,
                Some("Identity Hashes"),
                format!("{hash:?} is not a hash (printable ASCII, at most 128 characters)"),
            );
        } else {
            hashes.push(hash.to_string());
        }
    }
    hashes
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode,Deal Id,Active Start Date,Active End Date,Timezone";

    fn codes(body: &str) -> Result<Vec<CodeEntry>, LoadProblems> {
        read_codes(format!("{HEADER}\n{body}").as_bytes(), "codes.csv")
    }

    #[test]
    fn reads_a_valid_row_with_local_dates() {
        let entries =
            codes("SUMMER10,1001,55,TRACKING,WINNER,LI,7,2026-06-01,2026-09-01,America/New_York\n")
                .expect("valid");
        let entry = &entries[0];
        assert_eq!(entry.owner_partner_id.as_deref(), Some("55"));
        assert_eq!(entry.credit_policy, Some(CreditPolicy::Winner));
        assert_eq!(entry.deal_id.as_deref(), Some("7"));
        assert_eq!(
            entry.start.map(|t| t.to_rfc3339()),
            Some("2026-06-01T04:00:00+00:00".into())
        );
        assert_eq!(entry.source_line, 2);
        assert_eq!(entry.code_id(), "LI:SUMMER10");
    }

    #[test]
    fn restricted_rows_may_leave_owner_rule_and_mode_empty() {
        let entries = codes("STAFF50,1001,,RESTRICTED,,,,,,\n").expect("valid");
        assert_eq!(entries[0].code_type, CodeType::Restricted);
        assert_eq!(entries[0].owner_partner_id, None);
        assert_eq!(entries[0].match_type, MatchType::Exact);
    }

    #[test]
    fn reports_every_bad_row_with_line_and_column() {
        let body = "\
A,1001,55,TRACKING,SOMETIMES,LI,,,,
B,1001,,TRACKING,ALWAYS,LI,,,,
C,1001,55,TRACKING,ALWAYS,XX,,,,
D,1001,55,TRACKING,ALWAYS,LI,,yesterday,,
E,1001,55,TRACKING,ALWAYS,LI,,2026-02-01,2026-01-01,
F,1001,55,TRACKING,ALWAYS,LI,,,,Mars/Olympus
G,1001,55,TRACKING,ALWAYS,LI,,,
";
        let problems = codes(body).expect_err("invalid").0;
        let found: Vec<(u64, Option<&str>)> = problems
            .iter()
            .map(|p| (p.line, p.column.as_deref()))
            .collect();
        assert_eq!(
            found,
            vec![
                (2, Some("Credit Rule")),
                (3, Some("Media Id")),
                (4, Some("Match Mode")),
                (5, Some("Active Start Date")),
                (6, Some("Active End Date")),
                (7, Some("Timezone")),
                (8, None),
            ]
        );
        assert!(
            problems[0]
                .to_string()
                .starts_with("codes.csv:2: column \"Credit Rule\": unknown value \"SOMETIMES\"")
        );
    }

    #[test]
    fn headers_must_match_exactly() {
        let problems = read_codes(
            "Promo Code,Program ID,Type\nX,1,TRACKING\n".as_bytes(),
            "c.csv",
        )
        .expect_err("bad header")
        .0;
        let text = LoadProblems(problems).to_string();
        assert!(text.contains("did you mean \"Program Id\""), "{text}");
        assert!(
            text.contains("\"Program Id\": required column is missing"),
            "{text}"
        );
    }

    #[test]
    fn optional_columns_are_validated() {
        let header = "Promo Code,Program Id,Media Id,Type,Credit Rule,State,Usage Limit,Customer Limit,Priority";
        let ok = read_codes(
            format!("{header}\nX,1,5,TRACKING,ALWAYS,expired,1,2,-3\n").as_bytes(),
            "c",
        )
        .expect("valid");
        assert_eq!(
            (
                ok[0].state,
                ok[0].usage_limit,
                ok[0].customer_limit,
                ok[0].priority
            ),
            (CodeState::Expired, Some(1), Some(2), -3)
        );
        let bad = read_codes(
            format!("{header}\nX,1,5,TRACKING,ALWAYS,PAUSED,0,x,1.5\n").as_bytes(),
            "c",
        )
        .expect_err("bad")
        .0;
        let columns: Vec<_> = bad.iter().filter_map(|p| p.column.clone()).collect();
        assert_eq!(
            columns,
            ["State", "Usage Limit", "Customer Limit", "Priority"]
        );
    }

    #[test]
    fn partners_defaults_and_duplicates() {
        let text = "Partner Id,Status,Contract Start,Contract End,Referral Window Days,Credit Group\n\
                    55,,,,,\n\
                    56,INACTIVE,2026-01-01,2027-01-01T00:00:00+01:00,7,STANDARD\n\
                    55,ACTIVE,,,,\n";
        let problems = read_partners(text.as_bytes(), "partners.csv")
            .expect_err("duplicate")
            .0;
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 4);
        let ok = read_partners(
            &text.as_bytes()[..text.rfind("55,ACTIVE").unwrap_or(0)],
            "p",
        )
        .expect("valid");
        assert_eq!(ok[0].referral_window_days, 30);
        assert_eq!(ok[0].credit_group, CreditGroup::Preferred);
        assert_eq!(ok[1].credit_group, CreditGroup::Standard);
        assert_eq!(
            ok[1].contract_end.map(|t| t.to_rfc3339()),
            Some("2026-12-31T23:00:00+00:00".into())
        );
    }

    #[test]
    fn display_shows_at_most_twenty_problems_per_column_and_counts_the_rest() {
        let problem = |line: u64, column: Option<&str>| LoadProblem {
            origin: "c.csv".into(),
            line,
            column: column.map(str::to_string),
            reason: "wrong".into(),
        };
        let mut all: Vec<LoadProblem> = (2..1002).map(|l| problem(l, Some("Program Id"))).collect();
        all.extend((2..5).map(|l| problem(l, None)));
        let problems = LoadProblems(all);
        let text = problems.to_string();
        assert_eq!(text.lines().count(), SHOWN_PER_COLUMN + 3 + 1, "{text}");
        assert!(
            text.ends_with("... and 980 more problems in column \"Program Id\""),
            "{text}"
        );
        assert!(problems.truncated());
        assert_eq!(problems.full().lines().count(), 1003);
        assert!(!LoadProblems(vec![problem(2, None)]).truncated());
    }

    #[test]
    fn a_partners_file_read_as_codes_is_recognised_and_vice_versa() {
        let partners = "Partner Id,Status\n55,ACTIVE\n";
        let problems = read_codes(partners.as_bytes(), "partners.csv")
            .expect_err("not codes")
            .0;
        assert!(
            problems[0]
                .reason
                .starts_with("this looks like a partners file"),
            "{problems:?}"
        );
        let codes_text = format!("{HEADER}\nA,1,5,TRACKING,ALWAYS,LI,,,,\n");
        let problems = read_partners(codes_text.as_bytes(), "codes.csv")
            .expect_err("not partners")
            .0;
        assert!(
            problems[0]
                .reason
                .starts_with("this looks like a codes file"),
            "{problems:?}"
        );
        // A codes file with a bad header gets no such hint.
        let problems = read_codes("Promo Code,Program\n".as_bytes(), "c")
            .expect_err("bad")
            .0;
        assert!(problems.iter().all(|p| !p.reason.contains("looks like")));
    }

    #[test]
    fn patterns_and_exact_codes_share_the_64_character_limit() {
        let long = format!("^(A{}).*", "B".repeat(60));
        let exact = "C".repeat(65);
        let body =
            format!("{long},1,5,TRACKING,ALWAYS,RE,,,,\n^(OK).*,1,5,TRACKING,ALWAYS,RE,,,,\n");
        let entries = codes(&body).expect("stored tables still load long patterns");
        let problems = long_pattern_problems(&entries, "c.csv");
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].line, 2);
        assert!(problems[0].reason.starts_with("longer than 64 characters"));
        let exact_problems = codes(&format!("{exact},1,5,TRACKING,ALWAYS,LI,,,,\n"))
            .expect_err("exact over 64")
            .0;
        assert!(
            exact_problems[0]
                .reason
                .starts_with("longer than 64 characters")
        );
    }
}
