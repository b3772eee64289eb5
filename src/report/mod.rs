//! `promo-attribution report`: performance by promo code (or partner, or invalid reason) from
//! conversion records, for people (`table`, `--chart`) and for pipelines (`csv`, `json`).
//!
//! `aggregate` does the counting and the exact money sums without I/O; this file reads the
//! input (a JSON-lines file, stdin or a topic) and writes the outputs. Exit codes: 0 done; 1 the
//! report was written but the input was not clean (unreadable records, or an `event_id` seen
//! with different bytes), or a sum could not be made exactly (nothing written); 2 usage or I/O.

pub mod aggregate;
mod chart;
pub mod decimal;
pub mod netting;
pub mod output;
pub mod parallel;

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;

pub use aggregate::{AddError, Aggregator, By, Row, Selection, Stats};
pub use output::Format;

use crate::timefmt::Instant;

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Conversions, one JSON object per line; stdin when neither this nor --topic is given.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["brokers", "topic"])]
    pub conversions: Option<PathBuf>,
    /// Kafka bootstrap servers, to read the conversions from --topic instead of a file.
    #[arg(long, requires = "topic")]
    pub brokers: Option<String>,
    /// Conversions topic: read read_committed, every partition from offset 0 to its end (at
    /// least the end it had when the report started).
    #[arg(long, requires = "brokers")]
    pub topic: Option<String>,
    /// Only conversions whose event_time (the order's) is at or after this RFC 3339 instant.
    #[arg(long, value_parser = instant)]
    pub from: Option<Instant>,
    /// Only conversions whose event_time is before this RFC 3339 instant.
    #[arg(long, value_parser = instant)]
    pub to: Option<Instant>,
    /// What to group the conversions by.
    #[arg(long, value_enum, default_value = "code")]
    pub by: By,
    /// Only this program.
    #[arg(long)]
    pub program: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Also draw the top codes by revenue with their invalid share (SVG; with --by code).
    #[arg(long, value_name = "FILE.svg")]
    pub chart: Option<PathBuf>,
    /// Adjustment records (refunds, cancels) to net against the conversions: adds the
    /// reversed, reversed_amount and net_revenue columns (not with --by reason).
    #[arg(long, value_name = "FILE", conflicts_with = "adjustments_topic")]
    pub adjustments: Option<PathBuf>,
    /// Adjustments topic to net, read like --topic (needs --brokers).
    #[arg(long, requires = "brokers")]
    pub adjustments_topic: Option<String>,
    /// With --topic: give up when a partition makes no progress for this long.
    #[arg(long, default_value_t = 30)]
    pub idle_timeout_secs: u64,
}

fn instant(text: &str) -> Result<Instant, String> {
    crate::timefmt::parse_cli_instant(text)
        .map_err(|e| format!("{text:?}: {e}; without an offset, UTC"))
}

#[derive(Debug, thiserror::Error)]
enum ReportError {
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Kafka(String),
    #[error("{origin}: {source}")]
    Money { origin: String, source: AddError },
}

impl From<AddError> for ReportError {
    /// A sum that overflowed while the threads' counts were merged.
    fn from(source: AddError) -> Self {
        ReportError::Money {
            origin: "the report's totals".into(),
            source,
        }
    }
}

impl ReportError {
    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> ReportError {
        let context = context.into();
        move |source| ReportError::Io { context, source }
    }
}

pub fn main(args: ReportArgs) -> ExitCode {
    match run(&args) {
        Ok(stats) => {
            eprintln!("{}", summary(&stats));
            if stats.unreadable > 0 || stats.conflicting > 0 {
                ExitCode::from(1)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(match err {
                ReportError::Money { .. } => 1,
                _ => 2,
            })
        }
    }
}

fn summary(s: &Stats) -> String {
    let mut text = format!(
        "report: {} records; counted {} credited, {} invalid, {} unattributed; {} repeats counted once",
        s.records, s.credited, s.invalid, s.unattributed, s.repeats
    );
    if s.outside > 0 {
        text.push_str(&format!("; {} outside the selection", s.outside));
    }
    if s.conflicting > 0 {
        text.push_str(&format!(
            "; warning: {} records repeat an event_id with different bytes (the first one seen \
             was counted; the producer of these records is not deterministic or they were \
             altered)",
            s.conflicting
        ));
    }
    if s.unreadable > 0 {
        text.push_str(&format!(
            "; warning: {} unreadable records skipped",
            s.unreadable
        ));
    }
    text
}

fn run(args: &ReportArgs) -> Result<Stats, ReportError> {
    if args.chart.is_some() && args.by != By::Code {
        return Err(ReportError::Usage(
            "--chart draws codes: use it with --by code".into(),
        ));
    }
    let selection = Selection {
        program: args.program.clone(),
        from: args.from,
        to: args.to,
    };
    let mut agg = match (&args.brokers, &args.topic) {
        (Some(brokers), Some(topic)) => {
            let mut agg = Aggregator::new(args.by, selection.clone());
            read_topic(&mut agg, brokers, topic, args)?;
            agg
        }
        _ => read_lines(args, &selection)?,
    };
    let netted = args.adjustments.is_some() || args.adjustments_topic.is_some();
    if netted {
        let netting = read_adjustments(args, selection)?;
        eprintln!(
            "report: {} adjustment records; {} repeats counted once",
            netting.records, netting.repeats
        );
        agg.net(netting.reversals);
    }
    let (rows, stats) = agg.finish();
    let mut out = BufWriter::new(io::stdout().lock());
    output::write(&mut out, args.by, netted, args.format, &rows)
        .and_then(|()| out.flush())
        .map_err(ReportError::io("stdout"))?;
    if let Some(path) = &args.chart {
        std::fs::write(path, chart::svg(&rows))
            .map_err(ReportError::io(format!("cannot write {}", path.display())))?;
    }
    Ok(stats)
}

/// Counts one record; an unreadable one is reported with where it was and skipped.
fn add(agg: &mut Aggregator, bytes: &[u8], origin: &dyn Fn() -> String) -> Result<(), ReportError> {
    match agg.add(bytes) {
        Ok(()) => Ok(()),
        Err(AddError::Unreadable(reason)) => {
            eprintln!("{}: {reason}", origin());
            Ok(())
        }
        Err(source) => Err(ReportError::Money {
            origin: origin(),
            source,
        }),
    }
}

/// A file or stdin, counted on as many threads as there are cores: parsing dominates, and
/// `parallel` keeps the result what one thread would give.
fn read_lines(args: &ReportArgs, selection: &Selection) -> Result<Aggregator, ReportError> {
    let (input, origin): (Box<dyn io::Read>, String) = match &args.conversions {
        Some(path) => {
            let file = File::open(path)
                .map_err(ReportError::io(format!("cannot open {}", path.display())))?;
            (Box::new(file), path.display().to_string())
        }
        None => (Box::new(io::stdin().lock()), "stdin".into()),
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().min(8));
    parallel::aggregate(
        args.by,
        selection,
        parallel::blocks(input),
        threads,
        |agg, line, number| add(agg, line, &|| format!("{origin}:{number}")),
        |e| ReportError::Io {
            context: format!("cannot read {origin}"),
            source: e,
        },
    )
}

/// The adjustments of `--adjustments` or `--adjustments-topic`.
fn read_adjustments(
    args: &ReportArgs,
    selection: Selection,
) -> Result<netting::Netting, ReportError> {
    let mut netting = netting::Netting::new(args.by, selection);
    let mut failure = None;
    let mut add = |bytes: &[u8], origin: &dyn Fn() -> String| {
        if failure.is_none() {
            match netting.add(bytes) {
                Err(AddError::Unreadable(reason)) => eprintln!("{}: {reason}", origin()),
                Err(source) => {
                    failure = Some(ReportError::Money {
                        origin: origin(),
                        source,
                    })
                }
                Ok(()) => {}
            }
        }
    };
    match (&args.adjustments, &args.brokers, &args.adjustments_topic) {
        (Some(path), _, _) => {
            let text = std::fs::read(path)
                .map_err(ReportError::io(format!("cannot read {}", path.display())))?;
            for (number, line) in text.split(|b| *b == b'\n').enumerate() {
                if !line.trim_ascii().is_empty() {
                    add(line, &|| format!("{}:{}", path.display(), number + 1));
                }
            }
        }
        (None, Some(brokers), Some(topic)) => {
            each_record(brokers, topic, args, |payload, origin| add(payload, origin))?
        }
        _ => {}
    }
    failure.map_or(Ok(netting), Err)
}

fn read_topic(
    agg: &mut Aggregator,
    brokers: &str,
    topic: &str,
    args: &ReportArgs,
) -> Result<(), ReportError> {
    let mut failure = None;
    each_record(brokers, topic, args, |payload, origin| {
        if failure.is_none()
            && let Err(err) = add(agg, payload, origin)
        {
            failure = Some(err);
        }
    })?;
    failure.map_or(Ok(()), Err)
}

/// Every committed record of `topic`, with where it was for messages.
fn each_record(
    brokers: &str,
    topic: &str,
    args: &ReportArgs,
    mut f: impl FnMut(&[u8], &dyn Fn() -> String),
) -> Result<(), ReportError> {
    use crate::kafka::tools::{Isolation, read_to_end};
    read_to_end(
        brokers,
        topic,
        Isolation::ReadCommitted,
        Duration::from_secs(args.idle_timeout_secs),
        |partition, offset, payload| f(payload, &|| format!("{topic}[{partition}]@{offset}")),
    )
    .map(|_| ())
    .map_err(ReportError::Kafka)
}
