//! Changes to a code table as the admin CLI makes them: merging or replacing with an uploaded
//! file, the single-code edits, and the summary of what a change does. Pure: the store decides
//! where the rows come from and where they go.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

use super::normalize::exact_key;
use super::{CodeEntry, CodeState, CodeType, MatchType, Partner};
use crate::timefmt::{Instant, parse_table_datetime};

/// A code's identity: its program and [`CodeEntry::code_id`].
pub type CodeKey = (Arc<str>, String);

pub fn key_of(entry: &CodeEntry) -> CodeKey {
    (entry.program_id.clone(), entry.code_id())
}

/// How an uploaded file combines with the table in force.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImportMode {
    /// Rows of the file add codes or change the codes they name; every other code stays.
    Merge,
    /// The file becomes the whole set of codes of the programs it covers (or of `--program`);
    /// codes of those programs missing from the file are removed.
    Replace,
}

/// Combines `incoming` with `base`. Kept rows keep their position, so regex ties (broken by row
/// order) do not change behind an operator's back; new rows go at the end in file order. When
/// merging, a column the uploaded file does not have (`columns` lists those it has) keeps the
/// code's current value instead of falling back to the default: a file without a `State` column
/// must not reactivate expired codes.
pub fn combine(
    base: &[CodeEntry],
    incoming: Vec<CodeEntry>,
    mode: ImportMode,
    program: Option<&str>,
    columns: &[String],
) -> Vec<CodeEntry> {
    let has = |name: &str| columns.iter().any(|c| c == name);
    let replaced_programs: HashSet<Arc<str>> = match (mode, program) {
        (ImportMode::Merge, _) => HashSet::new(),
        (ImportMode::Replace, Some(program)) => HashSet::from([Arc::from(program)]),
        (ImportMode::Replace, None) => incoming.iter().map(|e| e.program_id.clone()).collect(),
    };
    let mut incoming_by_key: HashMap<CodeKey, CodeEntry> = HashMap::with_capacity(incoming.len());
    let mut order = Vec::with_capacity(incoming.len());
    for entry in incoming {
        let key = key_of(&entry);
        order.push(key.clone());
        incoming_by_key.insert(key, entry);
    }
    let mut result = Vec::with_capacity(base.len() + order.len());
    for entry in base {
        let key = key_of(entry);
        match incoming_by_key.remove(&key) {
            Some(mut updated) => {
                if mode == ImportMode::Merge {
                    keep_absent_columns(&mut updated, entry, &has);
                }
                result.push(updated)
            }
            None if replaced_programs.contains(&entry.program_id) => {}
            None => result.push(entry.clone()),
        }
    }
    for key in order {
        if let Some(entry) = incoming_by_key.remove(&key) {
            result.push(entry);
        }
    }
    result
}

/// For each `"Column" => field`: when the uploaded file has no such column, the updated row keeps
/// the current row's value.
macro_rules! keep_absent {
    ($has:expr, $updated:expr, $current:expr; $($column:literal => $field:ident),* $(,)?) => {
        $( if !$has($column) {
            $updated.$field = $current.$field.clone();
        } )*
    };
}

fn keep_absent_columns(updated: &mut CodeEntry, current: &CodeEntry, has: &dyn Fn(&str) -> bool) {
    keep_absent!(has, updated, current;
        "Media Id" => owner_partner_id,
        "Credit Rule" => credit_policy,
        "Deal Id" => deal_id,
        "Timezone" => timezone,
        "Active Start Date" => start,
        "Active End Date" => end,
        "State" => state,
        "Usage Limit" => usage_limit,
        "Customer Limit" => customer_limit,
        "Priority" => priority,
    );
}

/// Adds or updates partners; a partner is never removed by an upload, because codes of programs
/// the upload does not cover may belong to it. Columns the file does not have keep their values.
pub fn merge_partners(base: &[Partner], incoming: &[Partner], columns: &[String]) -> Vec<Partner> {
    let has = |name: &str| columns.iter().any(|c| c == name);
    let mut by_id: BTreeMap<&str, Partner> = base
        .iter()
        .map(|p| (p.partner_id.as_str(), p.clone()))
        .collect();
    for partner in incoming {
        let mut updated = partner.clone();
        if let Some(current) = by_id.get(partner.partner_id.as_str()) {
            keep_absent!(has, updated, current;
                "Status" => status,
                "Contract Start" => contract_start,
                "Contract End" => contract_end,
                "Referral Window Days" => referral_window_days,
                "Credit Group" => credit_group,
                "Identity Hashes" => identity_hashes,
            );
        }
        by_id.insert(&partner.partner_id, updated);
    }
    by_id.into_values().collect()
}

/// Rows of `incoming` that name a program other than `program`: an upload for one program must
/// not touch another.
pub fn outside_program<'e>(incoming: &'e [CodeEntry], program: &str) -> Vec<&'e CodeEntry> {
    incoming
        .iter()
        .filter(|e| &*e.program_id != program)
        .collect()
}

/// What a new version changes, for the import report and the history.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChangeSummary {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    pub unchanged: usize,
    pub partners_changed: usize,
    pub programs_changed: usize,
    /// A few of the affected codes, as `program/code`, for a one-line history entry.
    pub examples: Vec<String>,
}

const SUMMARY_EXAMPLES: usize = 3;

impl ChangeSummary {
    pub fn is_empty(&self) -> bool {
        self.added + self.changed + self.removed + self.partners_changed + self.programs_changed
            == 0
    }
}

impl fmt::Display for ChangeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} added, {} changed, {} removed, {} unchanged",
            self.added, self.changed, self.removed, self.unchanged
        )?;
        if self.partners_changed > 0 {
            write!(f, ", {} partners changed", self.partners_changed)?;
        }
        if self.programs_changed > 0 {
            write!(f, ", {} program settings changed", self.programs_changed)?;
        }
        if !self.examples.is_empty() {
            write!(f, " ({}", self.examples.join(", "))?;
            let more = self.added + self.changed + self.removed - self.examples.len();
            if more > 0 {
                write!(f, ", +{more} more")?;
            }
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// Entries equal in every column; the line they were read from does not count.
pub fn same_entry(a: &CodeEntry, b: &CodeEntry) -> bool {
    CodeEntry {
        source_line: 0,
        ..a.clone()
    } == CodeEntry {
        source_line: 0,
        ..b.clone()
    }
}

pub fn summarize(
    old: &[CodeEntry],
    new: &[CodeEntry],
    old_partners: &[Partner],
    new_partners: &[Partner],
    programs_changed: usize,
) -> ChangeSummary {
    let mut summary = ChangeSummary {
        programs_changed,
        ..ChangeSummary::default()
    };
    let old_by_key: HashMap<CodeKey, &CodeEntry> = old.iter().map(|e| (key_of(e), e)).collect();
    let mut seen = HashSet::with_capacity(new.len());
    let example = |summary: &mut ChangeSummary, what: &str, entry: &CodeEntry| {
        if summary.examples.len() < SUMMARY_EXAMPLES {
            summary
                .examples
                .push(format!("{what} {}/{}", entry.program_id, entry.code));
        }
    };
    for entry in new {
        let key = key_of(entry);
        match old_by_key.get(&key) {
            None => {
                summary.added += 1;
                example(&mut summary, "+", entry);
            }
            Some(before) if same_entry(before, entry) => summary.unchanged += 1,
            Some(_) => {
                summary.changed += 1;
                example(&mut summary, "~", entry);
            }
        }
        seen.insert(key);
    }
    for entry in old {
        if !seen.contains(&key_of(entry)) {
            summary.removed += 1;
            example(&mut summary, "-", entry);
        }
    }
    let old_partners: BTreeMap<&str, &Partner> = old_partners
        .iter()
        .map(|p| (p.partner_id.as_str(), p))
        .collect();
    let new_ids: HashSet<&str> = new_partners.iter().map(|p| p.partner_id.as_str()).collect();
    summary.partners_changed = new_partners
        .iter()
        .filter(|p| old_partners.get(p.partner_id.as_str()) != Some(p))
        .count()
        + old_partners
            .keys()
            .filter(|id| !new_ids.contains(*id))
            .count();
    summary
}

/// Why a single-code edit cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("no code {code:?}{}", program_note(.program))]
    UnknownCode {
        code: String,
        program: Option<String>,
    },
    #[error("code {code:?} exists in programs {}; choose one with --program", .programs.join(", "))]
    Ambiguous { code: String, programs: Vec<String> },
    #[error("{0}")]
    Invalid(String),
}

fn program_note(program: &Option<String>) -> String {
    program
        .as_ref()
        .map(|p| format!(" in program {p}"))
        .unwrap_or_default()
}

/// The row a code names: an exact code in any spelling that normalises the same, or a regex
/// code by its exact pattern; `mode` chooses when a program has both with the same text.
pub fn find(
    entries: &[CodeEntry],
    code: &str,
    program: Option<&str>,
    mode: Option<MatchType>,
) -> Result<usize, EditError> {
    let key = exact_key(code);
    let found: Vec<usize> = entries
        .iter()
        .enumerate()
        .filter(|(_, e)| program.is_none_or(|p| &*e.program_id == p))
        .filter(|(_, e)| mode.is_none_or(|m| e.match_type == m))
        .filter(|(_, e)| match e.match_type {
            MatchType::Exact => exact_key(&e.code) == key,
            MatchType::Regex => &*e.code == code,
        })
        .map(|(i, _)| i)
        .collect();
    match found.as_slice() {
        [] => Err(EditError::UnknownCode {
            code: code.to_string(),
            program: program.map(str::to_string),
        }),
        [one] => Ok(*one),
        [first, second] if entries[*first].program_id == entries[*second].program_id => {
            Err(EditError::Invalid(format!(
                "program {} has an exact code and a regex code {code:?}; choose one with --match-mode",
                entries[*first].program_id
            )))
        }
        many => Err(EditError::Ambiguous {
            code: code.to_string(),
            programs: many
                .iter()
                .map(|&i| entries[i].program_id.to_string())
                .collect(),
        }),
    }
}

/// One change to one code.
#[derive(Debug, Clone, PartialEq)]
pub enum Edit {
    Expire,
    Reactivate,
    /// Texts as an operator types them, read in the code's own time zone; `""` clears a bound.
    SetDates {
        start: Option<String>,
        end: Option<String>,
    },
    Assign {
        partner: String,
    },
}

impl Edit {
    pub fn describe(&self) -> String {
        match self {
            Edit::Expire => "expire".into(),
            Edit::Reactivate => "reactivate".into(),
            Edit::SetDates { start, end } => format!(
                "set-dates start={} end={}",
                start.as_deref().unwrap_or("(kept)"),
                end.as_deref().unwrap_or("(kept)")
            ),
            Edit::Assign { partner } => format!("assign to {partner}"),
        }
    }
}

/// Applies `edit` to `entry`, refusing changes the loader would refuse.
pub fn apply(entry: &mut CodeEntry, edit: &Edit) -> Result<(), EditError> {
    match edit {
        Edit::Expire => entry.state = CodeState::Expired,
        Edit::Reactivate => entry.state = CodeState::Active,
        Edit::SetDates { start, end } => {
            let read = |text: &str, what: &str| -> Result<Option<Instant>, EditError> {
                if text.trim().is_empty() {
                    return Ok(None);
                }
                let instant = parse_table_datetime(text, entry.timezone).map_err(|e| {
                    EditError::Invalid(format!("{what} {text:?} ({}): {e}", entry.timezone.name()))
                })?;
                // The table's CSV form has four-digit years (see the loader).
                if !(1..=9999).contains(&chrono::Datelike::year(&instant)) {
                    return Err(EditError::Invalid(format!(
                        "{what} {text:?} falls outside the years 1-9999 in UTC"
                    )));
                }
                Ok(Some(instant))
            };
            let new_start = match start {
                Some(text) => read(text, "--start")?,
                None => entry.start,
            };
            let new_end = match end {
                Some(text) => read(text, "--end")?,
                None => entry.end,
            };
            if let (Some(s), Some(e)) = (new_start, new_end)
                && e <= s
            {
                return Err(EditError::Invalid(
                    "the end must be after the start (the end is exclusive)".into(),
                ));
            }
            entry.start = new_start;
            entry.end = new_end;
        }
        Edit::Assign { partner } => {
            if entry.code_type == CodeType::Restricted {
                return Err(EditError::Invalid(
                    "a RESTRICTED code credits nobody and cannot be assigned".into(),
                ));
            }
            if partner.trim().is_empty() {
                return Err(EditError::Invalid("--partner must not be empty".into()));
            }
            entry.owner_partner_id = Some(Arc::from(partner.trim()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codes::load::read_codes;

    fn rows(body: &str) -> Vec<CodeEntry> {
        let header = "Promo Code,Program Id,Media Id,Type,Credit Rule,Match Mode";
        read_codes(format!("{header}\n{body}").as_bytes(), "t.csv").expect("valid rows")
    }

    fn all_columns() -> Vec<String> {
        crate::codes::load::CODE_COLUMNS
            .iter()
            .map(|c| c.to_string())
            .collect()
    }

    #[test]
    fn merge_keeps_the_values_of_columns_the_file_lacks() {
        let mut base = rows("A1,1,p1,TRACKING,ALWAYS,LI\n");
        base[0].state = CodeState::Expired;
        base[0].priority = 7;
        let incoming = rows("a1,1,p2,TRACKING,WINNER,LI\n");
        // The first six: code, program, owner, type, rule, mode; no State or Priority.
        let columns: Vec<String> = crate::codes::load::CODE_COLUMNS[..6]
            .iter()
            .map(|c| c.to_string())
            .collect();
        let merged = combine(&base, incoming, ImportMode::Merge, None, &columns);
        assert_eq!(
            merged[0].state,
            CodeState::Expired,
            "no State column: still expired"
        );
        assert_eq!(merged[0].priority, 7);
        assert_eq!(merged[0].owner_partner_id.as_deref(), Some("p2"));
    }

    #[test]
    fn same_text_as_exact_and_regex_needs_a_match_mode() {
        let entries = rows("SUMMER,1,p1,TRACKING,ALWAYS,LI\nSUMMER,1,p2,TRACKING,ALWAYS,RE\n");
        assert!(matches!(
            find(&entries, "SUMMER", None, None),
            Err(EditError::Invalid(_))
        ));
        assert_eq!(
            find(&entries, "SUMMER", None, Some(MatchType::Regex)),
            Ok(1)
        );
    }

    fn codes(entries: &[CodeEntry]) -> Vec<String> {
        entries
            .iter()
            .map(|e| {
                format!(
                    "{}/{}/{}",
                    e.program_id,
                    e.code,
                    e.owner_partner_id.as_deref().unwrap_or("")
                )
            })
            .collect()
    }

    #[test]
    fn merge_updates_in_place_and_appends_new_codes() {
        let base = rows(
            "A1,1,p1,TRACKING,ALWAYS,LI\nB1,1,p1,TRACKING,ALWAYS,LI\nC1,2,p2,TRACKING,ALWAYS,LI\n",
        );
        let incoming = rows("b1,1,p9,TRACKING,ALWAYS,LI\nD1,1,p1,TRACKING,ALWAYS,LI\n");
        let merged = combine(&base, incoming, ImportMode::Merge, None, &all_columns());
        assert_eq!(codes(&merged), ["1/A1/p1", "1/b1/p9", "2/C1/p2", "1/D1/p1"]);
        let summary = summarize(&base, &merged, &[], &[], 0);
        assert_eq!(
            (
                summary.added,
                summary.changed,
                summary.removed,
                summary.unchanged
            ),
            (1, 1, 0, 2)
        );
    }

    #[test]
    fn replace_drops_missing_codes_of_covered_programs_only() {
        let base = rows(
            "A1,1,p1,TRACKING,ALWAYS,LI\nB1,1,p1,TRACKING,ALWAYS,LI\nC1,2,p2,TRACKING,ALWAYS,LI\n",
        );
        let incoming = rows("B1,1,p1,TRACKING,ALWAYS,LI\n");
        let replaced = combine(
            &base,
            incoming.clone(),
            ImportMode::Replace,
            None,
            &all_columns(),
        );
        assert_eq!(codes(&replaced), ["1/B1/p1", "2/C1/p2"]);
        let summary = summarize(&base, &replaced, &[], &[], 0);
        assert_eq!(
            (
                summary.added,
                summary.changed,
                summary.removed,
                summary.unchanged
            ),
            (0, 0, 1, 2)
        );
        assert!(summary.to_string().contains("- 1/A1"), "{summary}");
        // Replacing program 2 with a file of program 1 rows is refused by the caller.
        assert_eq!(outside_program(&incoming, "2").len(), 1);
    }

    #[test]
    fn find_normalises_exact_codes_and_reports_ambiguity() {
        let entries = rows(
            "Anna10,1,p1,TRACKING,ALWAYS,LI\nANNA10,2,p1,TRACKING,ALWAYS,LI\n^X.*,1,p1,TRACKING,ALWAYS,RE\n",
        );
        assert_eq!(find(&entries, " anna10 ", Some("2"), None), Ok(1));
        assert!(matches!(
            find(&entries, "ANNA10", None, None),
            Err(EditError::Ambiguous { .. })
        ));
        assert_eq!(find(&entries, "^X.*", None, None), Ok(2));
        assert!(matches!(
            find(&entries, "^x.*", None, None),
            Err(EditError::UnknownCode { .. })
        ));
    }

    #[test]
    fn edits_validate_like_the_loader() {
        let mut entry = rows("A1,1,p1,TRACKING,ALWAYS,LI\n").remove(0);
        apply(&mut entry, &Edit::Expire).expect("expire");
        assert_eq!(entry.state, CodeState::Expired);
        apply(
            &mut entry,
            &Edit::SetDates {
                start: Some("2026-05-01".into()),
                end: Some("2026-06-01".into()),
            },
        )
        .expect("dates");
        assert!(entry.start.is_some() && entry.end.is_some());
        let backwards = Edit::SetDates {
            start: None,
            end: Some("2026-04-01".into()),
        };
        assert!(matches!(
            apply(&mut entry, &backwards),
            Err(EditError::Invalid(_))
        ));
        apply(
            &mut entry,
            &Edit::Assign {
                partner: "p2".into(),
            },
        )
        .expect("assign");
        assert_eq!(entry.owner_partner_id.as_deref(), Some("p2"));
    }
}
