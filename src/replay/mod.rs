//! `promo-attribution replay`: re-decides a range of the input topic with a chosen code table
//! (a store version by number, or CSV files), writes the outputs to files or topics, and with
//! `--verify-topic` audits what the worker wrote for the same records (see [`compare`]).
//!
//! The replay runs the same engine as the worker, without the stateful detectors: their
//! outcome depends on every order seen before the range and on state in Redis that a replay
//! must not change. What that leaves out is reported as "not comparable", never as equal.
//!
//! Exit codes: 0 nothing differs; 1 differences found, or the code table is invalid; 2 usage,
//! configuration, I/O, Kafka or Redis errors.

pub mod compare;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::codes::CodeTable;
use crate::dlq::dead_letter_ref;
use crate::engine::{Engine, Outputs, WriteKind};
use crate::ids::conversion_event_id;
use crate::kafka::tools::{self, Isolation, PartitionRange, RawRecord, RecordProducer};
use crate::offline::{self, TableError};
use crate::redis::store::Store;
use crate::settings::{Settings, SettingsSources};
use compare::{Audit, Rejected, Replayed, ReplayedDecision, Written};

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Kafka bootstrap servers.
    #[arg(long)]
    pub brokers: String,
    /// The input topic to replay (the worker's kafka.input_topic).
    #[arg(long)]
    pub topic: String,
    /// Only this partition (default: every partition).
    #[arg(long)]
    pub partition: Option<i32>,
    /// First offset replayed, in every selected partition (default 0).
    #[arg(long, conflicts_with_all = ["from_time", "to_time"])]
    pub from_offset: Option<i64>,
    /// Offset where the replay stops, exclusive (default: the end).
    #[arg(long, conflicts_with_all = ["from_time", "to_time"])]
    pub to_offset: Option<i64>,
    /// First record timestamp replayed (RFC 3339, inclusive).
    #[arg(long)]
    pub from_time: Option<String>,
    /// Record timestamp where the replay stops (RFC 3339, exclusive).
    #[arg(long)]
    pub to_time: Option<String>,
    /// Decide with this version of the code store (any version still kept).
    #[arg(long, required_unless_present = "codes", conflicts_with = "codes")]
    pub table_version: Option<u64>,
    /// Decide with this codes CSV instead of a store version.
    #[arg(long, value_name = "FILE")]
    pub codes: Option<PathBuf>,
    /// Partners CSV to go with --codes.
    #[arg(long, value_name = "FILE", requires = "codes")]
    pub partners: Option<PathBuf>,
    /// The worker's settings TOML (attribution rules, limits, [store]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Any setting as dotted.key=value; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Redis URL of the code store (store.redis_url).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Key prefix of the code store (store.key_prefix).
    #[arg(long)]
    pub prefix: Option<String>,
    /// Write conversions.jsonl, alerts.jsonl and rejected.jsonl here.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Produce conversions to PREFIX.conversions and alerts to PREFIX.alerts.
    #[arg(long, value_name = "PREFIX")]
    pub to_topic: Option<String>,
    /// The worker's conversions topic: compare what it wrote with the replay.
    #[arg(long, value_name = "TOPIC")]
    pub verify_topic: Option<String>,
    /// The worker's alerts topic, to compare per-order alerts too.
    #[arg(long, value_name = "TOPIC", requires = "verify_topic")]
    pub verify_alerts_topic: Option<String>,
    /// The worker's dead-letter topic, to check the records the replay rejects.
    #[arg(long, value_name = "TOPIC", requires = "verify_topic")]
    pub verify_dlq_topic: Option<String>,
    /// Also list the identical records.
    #[arg(long)]
    pub show_identical: bool,
    /// Give up on a topic that sends nothing more for this long.
    #[arg(long, default_value_t = 30)]
    pub quiet_secs: u64,
}

/// A failure that ends a tool command, with its exit code.
#[derive(Debug)]
pub struct ToolError {
    pub code: u8,
    pub message: String,
}

impl ToolError {
    pub fn usage(message: impl Into<String>) -> ToolError {
        ToolError {
            code: 2,
            message: message.into(),
        }
    }
}

/// Prints the error and turns the outcome into the exit code.
pub fn exit_with(outcome: Result<u8, ToolError>) -> ExitCode {
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("error: {}", err.message);
            ExitCode::from(err.code)
        }
    }
}

pub fn main(args: ReplayArgs) -> ExitCode {
    exit_with(run(&args))
}

fn run(args: &ReplayArgs) -> Result<u8, ToolError> {
    let (mut settings, origins) = settings(args)?;
    // Reproducible decisions only; see the module comment.
    settings.detectors.enabled = false;
    if args.table_version.is_some() {
        eprintln!(
            "{}",
            crate::codes_cli::store_line(&settings.store, origins.of("store.redis_url"))
        );
    }
    settings.reversals.enabled = false;
    let table = table(args, &settings)?;
    let records = read_range(args)?;
    let engine = Engine::new(Arc::new(settings));
    let decided = decide(&engine, &table, &records)?;
    eprintln!(
        "replayed {} records of {} with code table {} (stateful detectors off)",
        decided.replayed.len(),
        args.topic,
        table.version()
    );
    if let Some(dir) = &args.output_dir {
        write_files(dir, &decided)?;
    }
    if let Some(prefix) = &args.to_topic {
        write_topics(&args.brokers, prefix, &decided)?;
    }
    let Some(verify) = &args.verify_topic else {
        return Ok(0);
    };
    let written = read_written(args, verify)?;
    let audit = compare::audit(&args.topic, &decided.replayed, &written);
    print_audit(&audit, args.show_identical)?;
    Ok(if audit.summary.differences() > 0 {
        1
    } else {
        0
    })
}

fn settings(args: &ReplayArgs) -> Result<(Settings, crate::settings::Origins), ToolError> {
    SettingsSources::with_process_env(args.config.clone(), args.set.clone())
        .flag("--redis-url", "store.redis_url", args.redis_url.clone())
        .flag("--prefix", "store.key_prefix", args.prefix.clone())
        .load_with_origins()
        .map_err(|e| ToolError::usage(e.to_string()))
}

fn table(args: &ReplayArgs, settings: &Settings) -> Result<CodeTable, ToolError> {
    let invalid = |message: String| ToolError { code: 1, message };
    if let Some(version) = args.table_version {
        let stored = Store::connect(&settings.store)
            .and_then(|mut store| store.load_version(version))
            .map_err(|e| ToolError::usage(e.to_string()))?;
        let snapshot = stored.snapshot().map_err(|e| invalid(e.to_string()))?;
        return snapshot
            .build_with(
                &stored.table_version(),
                &stored.origin(),
                settings.codes.build_options(),
            )
            .map_err(|problems| invalid(problems.to_string()));
    }
    let codes = args
        .codes
        .as_deref()
        .ok_or_else(|| ToolError::usage("give --table-version N or --codes FILE"))?;
    let table = offline::load_table(
        codes,
        args.partners.as_deref(),
        settings.codes.build_options(),
    )
    .map_err(|e| match e {
        TableError::Invalid(_) => invalid(e.to_string()),
        TableError::Io { .. } => ToolError::usage(e.to_string()),
    })?;
    crate::table_source::with_program_settings_file(table, &settings.codes)
        .map_err(|e| ToolError::usage(format!("codes.program_settings_file: {e}")))
}

/// The selected records, by partition then offset.
fn read_range(args: &ReplayArgs) -> Result<Vec<RawRecord>, ToolError> {
    let kafka = |e: String| ToolError::usage(e);
    let mut partitions = tools::partitions(&args.brokers, &args.topic).map_err(kafka)?;
    if let Some(wanted) = args.partition {
        if !partitions.contains(&wanted) {
            return Err(ToolError::usage(format!(
                "{} has no partition {wanted} (it has {partitions:?})",
                args.topic
            )));
        }
        partitions = vec![wanted];
    }
    let from_time = parse_time(args.from_time.as_deref(), "--from-time")?;
    let to_time = parse_time(args.to_time.as_deref(), "--to-time")?;
    let ranges: Vec<PartitionRange> = partitions
        .into_iter()
        .map(|partition| PartitionRange {
            partition,
            from: args.from_offset.unwrap_or(0),
            to: args.to_offset,
        })
        .collect();
    let quiet = Duration::from_secs(args.quiet_secs);
    let mut records = tools::read_ranges(
        &args.brokers,
        &args.topic,
        &ranges,
        Isolation::ReadCommitted,
        quiet,
    )
    .map_err(kafka)?;
    // Time bounds select by the record's broker timestamp, reading each partition from its
    // start: ListOffsets by time is not trusted on every broker this runs against (see README).
    records.retain(|r| {
        let at = r.timestamp.unwrap_or(i64::MIN);
        from_time.is_none_or(|from| at >= from) && to_time.is_none_or(|to| at < to)
    });
    records.sort_by_key(|r| (r.partition, r.offset));
    Ok(records)
}

fn parse_time(text: Option<&str>, flag: &str) -> Result<Option<i64>, ToolError> {
    text.map(|t| {
        crate::timefmt::parse_cli_instant(t)
            .map(|at| at.timestamp_millis())
            .map_err(|e| ToolError::usage(format!("{flag} {t:?}: {e}; without an offset, UTC")))
    })
    .transpose()
}

/// One output the replay writes, with its key.
struct Keyed {
    key: Vec<u8>,
    value: Vec<u8>,
}

struct Decided {
    replayed: Vec<Replayed>,
    conversions: Vec<Keyed>,
    alerts: Vec<Keyed>,
    /// One JSON line per rejected record.
    rejected: Vec<Vec<u8>>,
}

fn decide(engine: &Engine, table: &CodeTable, records: &[RawRecord]) -> Result<Decided, ToolError> {
    let mut decided = Decided {
        replayed: Vec::with_capacity(records.len()),
        conversions: Vec::new(),
        alerts: Vec::new(),
        rejected: Vec::new(),
    };
    let mut outputs = Outputs::default();
    for record in records {
        let payload = record.payload.as_deref().unwrap_or_default();
        outputs.clear();
        engine
            .run(table, None, &[payload], &mut outputs)
            .map_err(|e| ToolError::usage(e.to_string()))?;
        for outcome in outputs.iter() {
            let event_id = conversion_event_id(payload);
            let result = match outcome.result {
                Ok(_) => {
                    let mut conversion = Vec::new();
                    let mut alerts = Vec::new();
                    for write in outcome.writes() {
                        let keyed = Keyed {
                            key: write.key.to_vec(),
                            value: write.value.to_vec(),
                        };
                        match write.kind {
                            WriteKind::Conversion => conversion = keyed.value.clone(),
                            WriteKind::Alert(_) => alerts.push(keyed.value.clone()),
                            // Reversals are off here, like the detectors.
                            WriteKind::Adjustment => {}
                        }
                        match write.kind {
                            WriteKind::Conversion => decided.conversions.push(keyed),
                            WriteKind::Alert(_) => decided.alerts.push(keyed),
                            WriteKind::Adjustment => {}
                        }
                    }
                    Ok(ReplayedDecision { conversion, alerts })
                }
                Err(rejection) => {
                    decided.rejected.push(
                        serde_json::json!({
                            "partition": record.partition,
                            "offset": record.offset,
                            "reason": rejection.reason,
                            "message": rejection.message,
                        })
                        .to_string()
                        .into_bytes(),
                    );
                    Err(Rejected {
                        reason: rejection.reason.to_string(),
                    })
                }
            };
            decided.replayed.push(Replayed {
                partition: record.partition,
                offset: record.offset,
                event_id,
                outcome: result,
            });
        }
    }
    Ok(decided)
}

fn write_files(dir: &Path, decided: &Decided) -> Result<(), ToolError> {
    let io = |what: &Path, e: std::io::Error| ToolError::usage(format!("{}: {e}", what.display()));
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let files: [(&str, Vec<&[u8]>); 3] = [
        (
            "conversions.jsonl",
            decided
                .conversions
                .iter()
                .map(|k| k.value.as_slice())
                .collect(),
        ),
        (
            "alerts.jsonl",
            decided.alerts.iter().map(|k| k.value.as_slice()).collect(),
        ),
        (
            "rejected.jsonl",
            decided.rejected.iter().map(Vec::as_slice).collect(),
        ),
    ];
    for (name, lines) in files {
        let path = dir.join(name);
        let mut text = Vec::new();
        for line in lines {
            text.extend_from_slice(line);
            text.push(b'\n');
        }
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
    }
    eprintln!("outputs written to {}", dir.display());
    Ok(())
}

fn write_topics(brokers: &str, prefix: &str, decided: &Decided) -> Result<(), ToolError> {
    let conversions = format!("{prefix}.conversions");
    let alerts = format!("{prefix}.alerts");
    let kafka = |e: String| ToolError::usage(e);
    tools::create_topics(brokers, &[&conversions, &alerts], 3).map_err(kafka)?;
    let producer = RecordProducer::new(brokers).map_err(kafka)?;
    for (topic, keyed) in [
        (&conversions, &decided.conversions),
        (&alerts, &decided.alerts),
    ] {
        let raw: Vec<RawRecord> = keyed
            .iter()
            .map(|k| RawRecord {
                partition: -1,
                offset: -1,
                timestamp: None,
                key: Some(k.key.clone()),
                payload: Some(k.value.clone()),
                headers: Vec::new(),
            })
            .collect();
        let sent = producer.send_raw(topic, &raw).map_err(kafka)?;
        eprintln!("produced {sent} records to {topic}");
    }
    Ok(())
}

/// What the worker wrote, read_committed from offset 0 to the end of every partition.
fn read_written(args: &ReplayArgs, conversions: &str) -> Result<Written, ToolError> {
    let quiet = Duration::from_secs(args.quiet_secs);
    let read = |topic: &str| {
        tools::read_all(&args.brokers, topic, Isolation::ReadCommitted, quiet)
            .map_err(ToolError::usage)
    };
    let payloads = |records: Vec<RawRecord>| -> Vec<Vec<u8>> {
        records.into_iter().filter_map(|r| r.payload).collect()
    };
    let conversions = payloads(read(conversions)?);
    let alerts = match &args.verify_alerts_topic {
        Some(topic) => Some(payloads(read(topic)?)),
        None => None,
    };
    let dead_letters = match &args.verify_dlq_topic {
        Some(topic) => Some(read(topic)?.iter().filter_map(dead_letter_ref).collect()),
        None => None,
    };
    Ok(Written {
        conversions,
        alerts,
        dead_letters,
    })
}

fn print_audit(audit: &Audit, show_identical: bool) -> Result<(), ToolError> {
    let mut out = std::io::stdout().lock();
    let shown = audit
        .findings
        .iter()
        .filter(|f| show_identical || f.verdict != compare::Verdict::Identical);
    for finding in shown {
        writeln!(out, "{finding}").map_err(|e| ToolError::usage(format!("stdout: {e}")))?;
    }
    writeln!(out, "summary: {}", audit.summary)
        .map_err(|e| ToolError::usage(format!("stdout: {e}")))
}
