//! The engine over files: a code table from CSV, orders from JSON lines, conversions and alerts
//! to JSON lines, in input order. Used to try the rules without services, for backfills, and as
//! the reference the streaming worker is tested against. With `detectors.enabled` the stateful
//! detectors run too, their state in memory: the same orders in the same order give the same
//! alerts as the stream.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::codes::load::{read_codes_lenient, read_partners};
use crate::codes::table::BuildOptions;
use crate::codes::{CodeTable, LoadProblems};
use crate::detectors::MemoryState;
use crate::engine::{Engine, Outputs, WriteKind};
use crate::ids::content_version;
use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum TableError {
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("the code table is invalid:\n{0}")]
    Invalid(LoadProblems),
}

/// Reads and validates a codes file and an optional partners file, reporting the problems of
/// both at once. The version is a fingerprint of the two files, so the same files always give
/// the same `code_table_version`.
pub fn load_table(
    codes: &Path,
    partners: Option<&Path>,
    options: BuildOptions,
) -> Result<CodeTable, TableError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TableError::Io {
            path: path.to_path_buf(),
            source,
        })
    };
    let codes_bytes = read(codes)?;
    let partners_bytes = partners.map(read).transpose()?;
    let codes_origin = codes.display().to_string();
    let (entries, mut problems) = read_codes_lenient(codes_bytes.as_slice(), &codes_origin);
    let partner_rows = match (partners, &partners_bytes) {
        (Some(path), Some(bytes)) => read_partners(bytes.as_slice(), &path.display().to_string()),
        _ => Ok(Vec::new()),
    };
    let partner_rows = partner_rows.unwrap_or_else(|invalid| {
        problems.extend(invalid.0);
        Vec::new()
    });
    let version = content_version(&[&codes_bytes, partners_bytes.as_deref().unwrap_or_default()]);
    let built = CodeTable::build(entries, partner_rows, version, &codes_origin, options);
    match built {
        Ok(table) if problems.is_empty() => Ok(table),
        Ok(_) => Err(TableError::Invalid(LoadProblems(problems))),
        Err(more) => {
            problems.extend(more.0);
            problems.sort_by(|a, b| (&a.origin, a.line).cmp(&(&b.origin, b.line)));
            Err(TableError::Invalid(LoadProblems(problems)))
        }
    }
}

/// Counts of one run, printed at the end of `attribute`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSummary {
    pub orders: u64,
    pub rejected_lines: u64,
    pub by_status: BTreeMap<&'static str, u64>,
    pub alerts: u64,
    pub rejected_by_reason: BTreeMap<&'static str, u64>,
    /// Adjustment events read (refunds, cancels), and the adjustment records they gave.
    pub adjustment_events: u64,
    pub adjustment_records: u64,
}

impl std::fmt::Display for RunSummary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} orders decided", self.orders)?;
        for (status, n) in &self.by_status {
            write!(f, ", {n} {status}")?;
        }
        write!(
            f,
            "; {} alerts; {} rejected lines",
            self.alerts, self.rejected_lines
        )?;
        for (reason, n) in &self.rejected_by_reason {
            write!(f, ", {n} {reason}")?;
        }
        if self.adjustment_events > 0 {
            write!(
                f,
                "; {} adjustment events, {} adjustment records",
                self.adjustment_events, self.adjustment_records
            )?;
        }
        Ok(())
    }
}

/// Output sinks of a run.
pub struct Sinks<'w> {
    pub conversions: &'w mut dyn Write,
    pub alerts: &'w mut dyn Write,
    /// Adjustment records (with `reversals.enabled`), one per line in input order.
    pub adjustments: &'w mut dyn Write,
    /// Receives one line per rejected input line: `ORIGIN:LINE: reason`.
    pub rejects: &'w mut dyn Write,
}

/// Lines decided per call of the engine: large enough that the detectors' state is asked once
/// for many orders, small enough to keep a chunk's copies in cache.
const CHUNK_LINES: usize = 512;

/// Decides every order line of `input`. A bad line is reported and counted, never fatal; only
/// failing to read the input or write an output stops the run.
pub fn attribute<R: BufRead>(
    mut input: R,
    origin: &str,
    table: &CodeTable,
    settings: &Settings,
    mut sinks: Sinks<'_>,
) -> io::Result<RunSummary> {
    let engine = Engine::new(Arc::new(settings.clone()));
    // The same detectors as the stream, with their state in memory for the length of the run.
    let mut state = MemoryState::new();
    let mut chunk = Chunk::default();
    let mut outputs = Outputs::default();
    let mut summary = RunSummary::default();
    let mut line = Vec::with_capacity(1024);
    let mut line_number = 0u64;
    loop {
        line.clear();
        let end = input.read_until(b'\n', &mut line)? == 0;
        if !end {
            line_number += 1;
            let record = trim_line_end(&line);
            if !record.iter().all(u8::is_ascii_whitespace) {
                chunk.push(record, line_number);
            }
        }
        if chunk.lines.len() >= CHUNK_LINES || (end && !chunk.lines.is_empty()) {
            outputs.clear();
            engine
                .run(table, Some(&mut state), &chunk.records(), &mut outputs)
                .map_err(|e| io::Error::other(e.to_string()))?;
            write_outputs(&outputs, &chunk, origin, &mut sinks, &mut summary)?;
            chunk.clear();
        }
        if end {
            break;
        }
    }
    sinks.conversions.flush()?;
    sinks.alerts.flush()?;
    Ok(summary)
}

/// Lines waiting for the engine, back to back, with their line numbers.
#[derive(Default)]
struct Chunk {
    bytes: Vec<u8>,
    lines: Vec<(std::ops::Range<usize>, u64)>,
}

impl Chunk {
    fn push(&mut self, record: &[u8], line_number: u64) {
        let start = self.bytes.len();
        self.bytes.extend_from_slice(record);
        self.lines.push((start..self.bytes.len(), line_number));
    }

    fn records(&self) -> Vec<&[u8]> {
        self.lines
            .iter()
            .map(|(range, _)| &self.bytes[range.clone()])
            .collect()
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.lines.clear();
    }
}

fn write_outputs(
    outputs: &Outputs,
    chunk: &Chunk,
    origin: &str,
    sinks: &mut Sinks<'_>,
    summary: &mut RunSummary,
) -> io::Result<()> {
    for record in outputs.iter() {
        match record.result {
            Ok(decided) if decided.adjustment.is_some() => {
                summary.adjustment_events += 1;
            }
            Ok(decided) => {
                summary.orders += 1;
                *summary
                    .by_status
                    .entry(decided.status.as_str())
                    .or_default() += 1;
            }
            Err(rejection) => {
                let line_number = chunk.lines.get(record.input).map_or(0, |(_, n)| *n);
                summary.rejected_lines += 1;
                *summary
                    .rejected_by_reason
                    .entry(rejection.reason)
                    .or_default() += 1;
                writeln!(
                    sinks.rejects,
                    "{origin}:{line_number}: {}",
                    rejection.message
                )?;
            }
        }
        for write in record.writes() {
            let sink: &mut dyn Write = match write.kind {
                WriteKind::Conversion => sinks.conversions,
                WriteKind::Adjustment => {
                    summary.adjustment_records += 1;
                    sinks.adjustments
                }
                WriteKind::Alert(_) => {
                    summary.alerts += 1;
                    sinks.alerts
                }
            };
            sink.write_all(write.value)?;
            sink.write_all(b"\n")?;
        }
    }
    Ok(())
}

/// The outputs of a run over an in-memory input, for tests and tools that compare runs.
#[derive(Debug, Clone, Default)]
pub struct Captured {
    pub summary: RunSummary,
    pub conversions: Vec<u8>,
    pub alerts: Vec<u8>,
    pub adjustments: Vec<u8>,
    pub rejects: Vec<u8>,
}

/// [`attribute`] over bytes in memory, capturing every output.
pub fn attribute_captured(
    input: &[u8],
    origin: &str,
    table: &CodeTable,
    settings: &Settings,
) -> io::Result<Captured> {
    let mut captured = Captured::default();
    let sinks = Sinks {
        conversions: &mut captured.conversions,
        alerts: &mut captured.alerts,
        adjustments: &mut captured.adjustments,
        rejects: &mut captured.rejects,
    };
    captured.summary = attribute(input, origin, table, settings, sinks)?;
    Ok(captured)
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
