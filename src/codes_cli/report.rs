//! What the read-only `codes` commands print.

use std::fmt::Write as _;
use std::io::Write;

use super::{CodesError, ListArgs, StateFilter};
use crate::codes::export::{code_type_name, match_mode_name, policy_name};
use crate::codes::{CodeEntry, CodeState, CodeTable};
use crate::explain::describe_code;
use crate::redis::store::{Snapshot, VersionMeta};
use crate::timefmt::{Instant, format_instant, parse_rfc3339};

fn moment(at: Option<&str>) -> Result<Instant, CodesError> {
    match at {
        None => Ok(chrono::Utc::now()),
        Some(text) => parse_rfc3339(text).ok_or_else(|| {
            CodesError::Usage(format!(
                "--at {text:?} is not an RFC 3339 instant like 2026-11-27T10:00:00Z"
            ))
        }),
    }
}

/// The code's schedule state at `at`: the State column first, then the dates.
fn state_at(entry: &CodeEntry, at: Instant) -> StateFilter {
    if entry.state == CodeState::Expired || entry.end.is_some_and(|end| at >= end) {
        StateFilter::Expired
    } else if entry.start.is_some_and(|start| at < start) {
        StateFilter::Pending
    } else {
        StateFilter::Active
    }
}

pub fn list(snapshot: &Snapshot, args: &ListArgs) -> Result<(), CodesError> {
    let at = moment(args.at.as_deref())?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<24} {:<4} {:<10} {:<12} {:<8} {:<21} {:<21} STATE",
        "PROGRAM", "CODE", "MODE", "TYPE", "OWNER", "POLICY", "START", "END"
    );
    let mut shown = 0usize;
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
        shown += 1;
        let instant = |t: &Option<Instant>| t.as_ref().map(format_instant).unwrap_or("-".into());
        let _ = writeln!(
            out,
            "{:<10} {:<24} {:<4} {:<10} {:<12} {:<8} {:<21} {:<21} {}",
            entry.program_id,
            entry.code,
            match_mode_name(entry.match_type),
            code_type_name(entry.code_type),
            entry.owner_partner_id.as_deref().unwrap_or("-"),
            entry.credit_policy.map(policy_name).unwrap_or("-"),
            instant(&entry.start),
            instant(&entry.end),
            match state {
                StateFilter::Pending => "PENDING",
                StateFilter::Active => "ACTIVE",
                StateFilter::Expired => "EXPIRED",
            }
        );
    }
    let _ = writeln!(
        out,
        "{shown} of {} codes at {}",
        snapshot.entries.len(),
        format_instant(&at)
    );
    print_out(&out)
}

pub fn show(
    table: &CodeTable,
    raw: &str,
    program: Option<&str>,
    at: Option<&str>,
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
    let mut out = format!(
        "{raw:?} in code table version {}, judged at {}\n",
        table.version(),
        format_instant(&at)
    );
    for program_id in programs {
        let _ = writeln!(out, "program {program_id}:");
        describe_code(
            &mut out,
            table,
            table.program(program_id),
            raw,
            at,
            "entered",
        );
    }
    print_out(&out)
}

pub fn history(history: &[VersionMeta], retained: &[bool], current: Option<u64>) {
    let mut out = String::new();
    for (meta, &kept) in history.iter().zip(retained) {
        let marks = [
            (Some(meta.version) == current).then_some("current"),
            (!kept).then_some("content removed"),
        ]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(", ");
        let _ = writeln!(
            out,
            "{:>6}  {:<16}  {}  {:<20} {:<40} {}{}",
            meta.version,
            // The name outputs carry is `<version>-<fingerprint>`; versions published before
            // fingerprints existed show a dash.
            meta.fingerprint.as_deref().unwrap_or("-"),
            meta.published_at,
            meta.author,
            meta.command,
            meta.summary,
            if marks.is_empty() {
                String::new()
            } else {
                format!("  [{marks}]")
            }
        );
    }
    if history.is_empty() {
        out.push_str("no version has been published\n");
    }
    let _ = print_out(&out);
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
