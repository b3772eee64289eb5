//! `promo-attribution dlq replay`: sends dead letters back (to the input topic, once their cause
//! is fixed) with the original key, value and headers — the record as it was consumed, without
//! the error context the worker added (`kafka::outputs::dlq_header`).
//!
//! Exit codes: 0 done (also when nothing matched); 2 usage, I/O or Kafka errors.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::kafka::outputs::dlq_header;
use crate::kafka::tools::{self, Isolation, RawRecord, RecordProducer};
use crate::replay::compare::DeadLetterRef;
use crate::replay::{ToolError, exit_with};

#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Send dead letters back with their original key, value and headers.
    Replay(DlqReplayArgs),
}

#[derive(Debug, Args)]
pub struct DlqReplayArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub brokers: String,
    /// The dead-letter topic (the worker's kafka.dlq_topic).
    #[arg(long)]
    pub dlq_topic: String,
    /// Where to send them, usually the worker's input topic.
    #[arg(long)]
    pub to_topic: String,
    /// Only dead letters with this reason (the promo.dlq.reason header, e.g. too_many_codes).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only dead letters written at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// Print what would be sent; send nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Give up on a topic that sends nothing more for this long.
    #[arg(long, default_value_t = 30)]
    pub quiet_secs: u64,
}

pub fn main(command: DlqCommand) -> ExitCode {
    match command {
        DlqCommand::Replay(args) => exit_with(replay(&args)),
    }
}

/// The headers the worker adds to a dead letter; everything else is the record's own.
const OURS: [&str; 11] = [
    dlq_header::TOPIC,
    dlq_header::PARTITION,
    dlq_header::OFFSET,
    dlq_header::CONNECTOR_NAME,
    dlq_header::TASK_ID,
    dlq_header::STAGE,
    dlq_header::CLASS,
    dlq_header::MESSAGE,
    dlq_header::REASON,
    dlq_header::WORKER_VERSION,
    dlq_header::PAYLOAD_OMITTED,
];

fn header<'r>(record: &'r RawRecord, name: &str) -> Option<&'r str> {
    record
        .headers
        .iter()
        .rev()
        .find(|(key, _)| key == name)
        .and_then(|(_, value)| value.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
}

/// Where a dead letter came from and why, from its headers; `None` for a record without them.
pub fn dead_letter_ref(record: &RawRecord) -> Option<DeadLetterRef> {
    Some(DeadLetterRef {
        topic: header(record, dlq_header::TOPIC)?.to_string(),
        partition: header(record, dlq_header::PARTITION)?.parse().ok()?,
        offset: header(record, dlq_header::OFFSET)?.parse().ok()?,
        reason: header(record, dlq_header::REASON)?.to_string(),
    })
}

/// What a replay of the dead letters sends, and what it leaves out.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// The records to send, as they were consumed, in dead-letter order.
    pub records: Vec<RawRecord>,
    /// Sent per reason.
    pub by_reason: BTreeMap<String, usize>,
    /// Dead letters whose value was too large to keep: they cannot be sent back from here.
    pub omitted: Vec<DeadLetterRef>,
    /// Second dead letters of one input record (a batch redone after a failure): sent once.
    pub repeats: usize,
}

/// Picks the dead letters matching `reason` and written at or after `since_ms`, restores the
/// records' own headers, and drops repeats of one input record.
pub fn select(
    dead_letters: &[RawRecord],
    reason: Option<&str>,
    since_ms: Option<i64>,
) -> Selection {
    let mut selection = Selection::default();
    let mut seen = BTreeSet::new();
    for letter in dead_letters {
        let origin = dead_letter_ref(letter);
        let why = origin.as_ref().map_or("unknown", |o| o.reason.as_str());
        if reason.is_some_and(|r| r != why)
            || since_ms.is_some_and(|since| letter.timestamp.is_none_or(|at| at < since))
        {
            continue;
        }
        // A dead letter without our headers is keyed by its own place, so it is never merged.
        let identity = origin.as_ref().map_or_else(
            || (String::new(), letter.partition, letter.offset),
            |o| (o.topic.clone(), o.partition, o.offset),
        );
        if !seen.insert(identity) {
            selection.repeats += 1;
            continue;
        }
        if header(letter, dlq_header::PAYLOAD_OMITTED).is_some() {
            if let Some(origin) = origin {
                selection.omitted.push(origin);
            }
            continue;
        }
        *selection.by_reason.entry(why.to_string()).or_default() += 1;
        selection.records.push(RawRecord {
            headers: letter
                .headers
                .iter()
                .filter(|(key, _)| !OURS.contains(&key.as_str()))
                .cloned()
                .collect(),
            ..letter.clone()
        });
    }
    selection
}

fn replay(args: &DlqReplayArgs) -> Result<u8, ToolError> {
    let since = args
        .since
        .as_deref()
        .map(|t| {
            crate::timefmt::parse_cli_instant(t)
                .map(|at| at.timestamp_millis())
                .map_err(|e| {
                    ToolError::usage(format!("--since {t:?}: {e}; without an offset, UTC"))
                })
        })
        .transpose()?;
    let quiet = Duration::from_secs(args.quiet_secs);
    let letters = tools::read_all(
        &args.brokers,
        &args.dlq_topic,
        Isolation::ReadCommitted,
        quiet,
    )
    .map_err(ToolError::usage)?;
    let selection = select(&letters, args.reason.as_deref(), since);
    let sent = if args.dry_run || selection.records.is_empty() {
        0
    } else {
        RecordProducer::new(&args.brokers)
            .and_then(|producer| producer.send_raw(&args.to_topic, &selection.records))
            .map_err(ToolError::usage)?
    };
    print!("{}", report(args, &selection, sent, letters.len()));
    Ok(0)
}

/// What was (or, in a dry run, would be) sent, for people.
fn report(args: &DlqReplayArgs, selection: &Selection, sent: usize, read: usize) -> String {
    use std::fmt::Write;
    let mut text = String::new();
    let count = selection.records.len();
    let _ = if args.dry_run {
        writeln!(
            text,
            "dry run: would send {count} of {read} dead letters from {} to {}; nothing sent",
            args.dlq_topic, args.to_topic
        )
    } else {
        writeln!(
            text,
            "sent {sent} of {read} dead letters from {} to {}",
            args.dlq_topic, args.to_topic
        )
    };
    for (reason, n) in &selection.by_reason {
        let _ = writeln!(text, "  {reason}: {n}");
    }
    const SHOWN: usize = 5;
    let keys: Vec<String> = selection
        .records
        .iter()
        .take(SHOWN)
        .map(|r| match &r.key {
            Some(key) => String::from_utf8_lossy(key).into_owned(),
            None => "(no key)".into(),
        })
        .collect();
    if !keys.is_empty() {
        let more = count.saturating_sub(SHOWN);
        let tail = if more > 0 {
            format!(" and {more} more")
        } else {
            String::new()
        };
        let _ = writeln!(text, "  keys: {}{tail}", keys.join(", "));
    }
    if selection.repeats > 0 {
        let _ = writeln!(
            text,
            "  {} repeated dead letters of one input record sent once",
            selection.repeats
        );
    }
    for origin in &selection.omitted {
        let _ = writeln!(
            text,
            "  not sent: {}[{}]@{} ({}): its value was too large to dead-letter; take it from the input topic",
            origin.topic, origin.partition, origin.offset, origin.reason
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(offset: i64, origin: i64, reason: &str, at: i64) -> RawRecord {
        let h = |k: &str, v: &str| (k.to_string(), Some(v.as_bytes().to_vec()));
        RawRecord {
            partition: 0,
            offset,
            timestamp: Some(at),
            key: Some(format!("K{origin}").into_bytes()),
            payload: Some(b"{}".to_vec()),
            headers: vec![
                h("trace-id", "t1"),
                ("empty".into(), None),
                h(dlq_header::TOPIC, "orders"),
                h(dlq_header::PARTITION, "2"),
                h(dlq_header::OFFSET, &origin.to_string()),
                h(dlq_header::CONNECTOR_NAME, "promo-attribution"),
                h(dlq_header::TASK_ID, "promo-attribution-0"),
                h(dlq_header::STAGE, "VALUE_CONVERTER"),
                h(dlq_header::CLASS, "promo_attribution.x"),
                h(dlq_header::MESSAGE, "bad"),
                h(dlq_header::REASON, reason),
                h(dlq_header::WORKER_VERSION, "0.1.0"),
            ],
        }
    }

    #[test]
    fn restores_the_records_own_headers_and_filters() {
        let letters = [
            letter(0, 10, "malformed_json", 1_000),
            letter(1, 11, "too_many_codes", 2_000),
            letter(2, 12, "too_many_codes", 3_000),
        ];
        let all = select(&letters, None, None);
        assert_eq!(all.records.len(), 3);
        assert_eq!(
            all.records[0].headers,
            [
                ("trace-id".to_string(), Some(b"t1".to_vec())),
                ("empty".to_string(), None)
            ],
            "our headers are gone, the record's own kept in order, null values kept"
        );
        assert_eq!(all.records[0].key.as_deref(), Some(&b"K10"[..]));
        let by_reason = select(&letters, Some("too_many_codes"), None);
        assert_eq!(by_reason.records.len(), 2);
        assert_eq!(by_reason.by_reason.get("too_many_codes"), Some(&2));
        let since = select(&letters, Some("too_many_codes"), Some(3_000));
        assert_eq!(since.records.len(), 1);
        assert_eq!(since.records[0].offset, 2);
    }

    #[test]
    fn repeats_are_sent_once_and_omitted_values_are_reported() {
        let mut omitted = letter(2, 12, "oversize", 1);
        omitted.payload = None;
        omitted.headers.push((
            dlq_header::PAYLOAD_OMITTED.into(),
            Some(b"2000000".to_vec()),
        ));
        let letters = [
            letter(0, 10, "malformed_json", 1),
            letter(1, 10, "malformed_json", 2),
            omitted,
        ];
        let selection = select(&letters, None, None);
        assert_eq!(selection.records.len(), 1);
        assert_eq!(selection.repeats, 1);
        assert_eq!(selection.omitted.len(), 1);
        assert_eq!(selection.omitted[0].offset, 12);
        let args = DlqReplayArgs {
            brokers: "b".into(),
            dlq_topic: "d".into(),
            to_topic: "o".into(),
            reason: None,
            since: None,
            dry_run: true,
            quiet_secs: 1,
        };
        let text = report(&args, &selection, 0, 3);
        assert!(text.starts_with("dry run: would send 1 of 3"), "{text}");
        assert!(
            text.contains("malformed_json: 1") && text.contains("keys: K10"),
            "{text}"
        );
        assert!(text.contains("not sent: orders[2]@12 (oversize)"), "{text}");
    }

    #[test]
    fn dead_letter_ref_reads_the_coordinates() {
        let r = dead_letter_ref(&letter(0, 42, "malformed_json", 1)).expect("ours");
        assert_eq!((r.topic.as_str(), r.partition, r.offset), ("orders", 2, 42));
        let mut foreign = letter(0, 42, "x", 1);
        foreign.headers.clear();
        assert_eq!(dead_letter_ref(&foreign), None);
    }
}
