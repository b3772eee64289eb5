//! What the read-only `codes` commands print.

use std::fmt::Write as _;
use std::io::Write;

use super::format::{OutputFormat, render};
use super::{CodesError, ListArgs, StateFilter};
use crate::codes::export::{code_type_name, match_mode_name, policy_name};
use crate::codes::{CodeEntry, CodeState, CodeTable};
use crate::explain::describe_code;
use crate::redis::store::{Snapshot, VersionMeta};
use crate::timefmt::{Instant, format_instant, parse_cli_instant};

fn moment(at: Option<&str>) -> Result<Instant, CodesError> {
    match at {
        None => Ok(chrono::Utc::now()),
        Some(text) => parse_cli_instant(text)
            .map_err(|e| CodesError::Usage(format!("--at {text:?}: {e}; without an offset, UTC"))),
    }
}

/// Where `at` falls in the code's dates, whatever its stored State.
fn schedule_at(entry: &CodeEntry, at: Instant) -> &'static str {
    if entry.end.is_some_and(|end| at >= end) {
        "ENDED"
    } else if entry.start.is_some_and(|start| at < start) {
        "NOT_STARTED"
    } else {
        "IN_PERIOD"
    }
}

/// The code's state in force at `at`: the stored State first, then the dates.
fn state_at(entry: &CodeEntry, at: Instant) -> StateFilter {
    match (entry.state, schedule_at(entry, at)) {
        (CodeState::Expired, _) | (_, "ENDED") => StateFilter::Expired,
        (_, "NOT_STARTED") => StateFilter::Pending,
        _ => StateFilter::Active,
    }
}

const LIST_COLUMNS: [&str; 11] = [
    "PROGRAM", "CODE", "MODE", "TYPE", "OWNER", "POLICY", "START", "END", "STORED", "SCHEDULE",
    "IN_FORCE",
];

/// `codes list`: STORED is the table's State column (what `expire`/`reactivate` set),
/// SCHEDULE where `--at` falls in the dates, IN_FORCE the two combined (what `--state` filters).
pub fn list(snapshot: &Snapshot, args: &ListArgs) -> Result<(), CodesError> {
    let at = moment(args.at.as_deref())?;
    let mut rows = Vec::new();
    for entry in &snapshot.entries {
        let state = state_at(entry, at);
        let keep = args
            .program
            .as_deref()
            .is_none_or(|p| &*entry.program_id == p)
            && args.state.is_none_or(|s| s == state)
            && args
                .partner
                .as_deref()
                .is_none_or(|p| entry.owner_partner_id.as_deref() == Some(p));
        if !keep {
            continue;
        }
        let instant = |t: &Option<Instant>| t.as_ref().map(format_instant).unwrap_or("-".into());
        rows.push(vec![
            entry.program_id.to_string(),
            entry.code.to_string(),
            match_mode_name(entry.match_type).to_string(),
            code_type_name(entry.code_type).to_string(),
            entry.owner_partner_id.as_deref().unwrap_or("-").to_string(),
            entry
                .credit_policy
                .map(policy_name)
                .unwrap_or("-")
                .to_string(),
            instant(&entry.start),
            instant(&entry.end),
            match entry.state {
                CodeState::Active => "ACTIVE",
                CodeState::Expired => "EXPIRED",
            }
            .to_string(),
            schedule_at(entry, at).to_string(),
            match state {
                StateFilter::Pending => "PENDING",
                StateFilter::Active => "ACTIVE",
                StateFilter::Expired => "EXPIRED",
            }
            .to_string(),
        ]);
    }
    let count = format!(
        "{} of {} codes at {}\n",
        rows.len(),
        snapshot.entries.len(),
        format_instant(&at)
    );
    let mut out = render(args.format, &LIST_COLUMNS, &rows);
    // Machine-readable output stays pure; the count goes to stderr there.
    if args.format == OutputFormat::Table {
        out.push_str(&count);
    } else {
        eprint!("{count}");
    }
    print_out(&out)
}

pub fn show(
    table: &CodeTable,
    raw: &str,
    program: Option<&str>,
    at: Option<&str>,
    format: OutputFormat,
) -> Result<(), CodesError> {
    let at = moment(at)?;
    let mut programs: Vec<&str> = table
        .rows()
        .map(|e| &*e.program_id)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    if let Some(only) = program {
        programs.retain(|p| *p == only);
        if programs.is_empty() {
            return Err(CodesError::Request(format!(
                "program {only} has no codes in version {}",
                table.version()
            )));
        }
    }
    let heading = format!(
        "{raw:?} in code table version {}, judged at {}\n",
        table.version(),
        format_instant(&at)
    );
    let mut out = heading.clone();
    let mut rows = Vec::new();
    for program_id in programs {
        let mut text = String::new();
        describe_code(
            &mut text,
            table,
            table.program(program_id),
            raw,
            at,
            "entered",
        );
        let _ = writeln!(out, "program {program_id}:");
        out.push_str(&text);
        rows.extend(
            text.lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| vec![program_id.to_string(), l.trim().to_string()]),
        );
    }
    if format == OutputFormat::Table {
        return print_out(&out);
    }
    eprint!("{heading}");
    print_out(&render(format, &["PROGRAM", "LINE"], &rows))
}

const HISTORY_COLUMNS: [&str; 9] = [
    "VERSION",
    "FINGERPRINT",
    "PUBLISHED",
    "AUTHOR",
    "COMMAND",
    "REASON",
    "SUMMARY",
    "CURRENT",
    "CONTENT",
];

pub fn history(
    history: &[VersionMeta],
    retained: &[bool],
    current: Option<u64>,
    format: OutputFormat,
) {
    let rows: Vec<Vec<String>> = history
        .iter()
        .zip(retained)
        .map(|(meta, &kept)| {
            vec![
                meta.version.to_string(),
                // The name outputs carry is `<version>-<fingerprint>`; versions published
                // before fingerprints existed show a dash.
                meta.fingerprint.clone().unwrap_or("-".into()),
                meta.published_at.clone(),
                meta.author.clone(),
                meta.command.clone(),
                if meta.reason.is_empty() {
                    "-".into()
                } else {
                    meta.reason.clone()
                },
                meta.summary.clone(),
                if Some(meta.version) == current {
                    "current"
                } else {
                    ""
                }
                .to_string(),
                if kept { "kept" } else { "removed" }.to_string(),
            ]
        })
        .collect();
    if history.is_empty() {
        eprintln!("no version has been published");
    }
    let _ = print_out(&render(format, &HISTORY_COLUMNS, &rows));
}

fn print_out(text: &str) -> Result<(), CodesError> {
    let mut stdout = std::io::stdout().lock();
    // A closed pipe (`codes list | head`) is not an error worth a non-zero exit.
    match stdout.write_all(text.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(CodesError::Io(format!("cannot write: {e}")))
        }
        _ => Ok(()),
    }
}
