//! The `promo-attribution` command line.
//!
//! Exit codes: 0 success; 1 the code table (or another input that must be valid as a whole) is
//! invalid; 2 usage, configuration or I/O errors; 3 (`attribute`, `explain`) the run completed
//! but at least one order was rejected before any decision (malformed or schema-violating; the
//! rest were decided and written), so a script can tell "all decided" from "some refused".

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::codes::CodeTable;
use crate::offline::{self, Sinks, TableError};
use crate::settings::Settings;

#[derive(Debug, Parser)]
#[command(
    name = "promo-attribution",
    version,
    about = "Credits orders to partners from promo codes and clicks (impact.com rules) and flags code misuse."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Decide orders from a JSON-lines file (or stdin) against CSV code tables, without services.
    Attribute(AttributeArgs),
    /// Show, step by step, how one order is decided.
    Explain(ExplainArgs),
    /// Run the stream worker: orders from Kafka in, conversions, alerts and dead letters out.
    Run(RunArgs),
    /// Manage the code table in the Redis store: import, expire, list, export, history, rollback.
    Codes(crate::codes_cli::CodesArgs),
    /// Performance by promo code (or partner, or invalid reason) from conversions: a file or a topic.
    Report(crate::report::ReportArgs),
    /// Small Kafka tools for demos and checks: create topics, produce a JSON-lines file, read a topic.
    #[command(subcommand)]
    Topics(TopicsCommand),
    /// Re-decide a range of the input topic with a chosen code table, and audit the worker's outputs.
    Replay(crate::replay::ReplayArgs),
    /// Dead letters: send them back once their cause is fixed.
    #[command(subcommand)]
    Dlq(crate::dlq::DlqCommand),
    /// Ask a worker's admin port whether it is ready (exit 0) or not (exit 1); for images
    /// without curl.
    Healthcheck(crate::healthcheck::HealthcheckArgs),
    /// Print a shell completion script (e.g. `completions bash > /etc/bash_completion.d/promo-attribution`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create topics (existing ones are left alone).
    Create {
        /// Kafka bootstrap servers (host:port,...).
        #[arg(long)]
        brokers: String,
        /// Partitions of each new topic.
        #[arg(long, default_value_t = 3)]
        partitions: i32,
        /// Names of the topics to create.
        #[arg(required = true)]
        topics: Vec<String>,
    },
    /// Produce each line of a file (or stdin) as one record, keyed by its order_id.
    Produce {
        /// Kafka bootstrap servers (host:port,...).
        #[arg(long)]
        brokers: String,
        /// Topic to produce to.
        #[arg(long)]
        topic: String,
        /// JSON-lines file to produce; stdin when omitted.
        #[arg(long, value_name = "FILE")]
        file: Option<PathBuf>,
    },
    /// Abort what a worker instance that will not come back left open, and fence it: runs
    /// init_transactions with its transactional id, as its restart would. For a pod lost for
    /// good (docs/operations.md); never for an instance that is still running (it exits 1).
    Fence {
        /// Kafka bootstrap servers (host:port,...).
        #[arg(long)]
        brokers: String,
        /// The lost instance's kafka.transactional_id.
        #[arg(long)]
        transactional_id: String,
        /// Any librdkafka property as key=value (security.protocol, sasl.*, ...); repeatable.
        #[arg(long = "property", value_name = "KEY=VALUE")]
        properties: Vec<String>,
        /// How long to wait for the broker.
        #[arg(long, default_value_t = 60)]
        timeout_secs: u64,
    },
    /// Print the records of a topic (read_committed, from the beginning) as lines.
    Read {
        /// Kafka bootstrap servers (host:port,...).
        #[arg(long)]
        brokers: String,
        /// Topic to read.
        #[arg(long)]
        topic: String,
        /// Stop after this many records [default: every record found before --timeout-secs].
        #[arg(long)]
        count: Option<usize>,
        /// Stop after this long.
        #[arg(long, default_value_t = 10)]
        timeout_secs: u64,
    },
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Settings TOML; `PROMO__SECTION__KEY` environment variables and the flags below override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Any setting as dotted.key=value (e.g. kafka.consumer.fetch.min.bytes=1048576); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Kafka bootstrap servers (kafka.brokers).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Consumer group (kafka.group_id).
    #[arg(long)]
    pub group: Option<String>,
    /// Order topic (kafka.input_topic).
    #[arg(long)]
    pub input_topic: Option<String>,
    /// Stable, unique per instance (kafka.transactional_id).
    #[arg(long)]
    pub transactional_id: Option<String>,
    /// exactly-once or at-least-once (kafka.delivery).
    #[arg(long)]
    pub delivery: Option<String>,
    /// Codes CSV (codes.codes_file).
    #[arg(long, value_name = "FILE")]
    pub codes: Option<PathBuf>,
    /// Partners CSV (codes.partners_file).
    #[arg(long, value_name = "FILE")]
    pub partners: Option<PathBuf>,
    /// Admin address for /metrics, /healthz, /readyz (admin.listen); empty disables it.
    #[arg(long)]
    pub admin_listen: Option<String>,
    /// Validate the configuration, print it as TOML and exit.
    #[arg(long)]
    pub check_config: bool,
    /// Decide into shadow topics with a group of its own and no detector state (kafka.shadow).
    #[arg(long)]
    pub shadow: bool,
}

impl RunArgs {
    /// The settings' sources: file, environment, `--set`, then the dedicated flags.
    fn sources(&self) -> crate::settings::SettingsSources {
        let path = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
        crate::settings::SettingsSources::with_process_env(self.config.clone(), self.set.clone())
            .flag("--brokers", "kafka.brokers", self.brokers.clone())
            .flag("--group", "kafka.group_id", self.group.clone())
            .flag(
                "--input-topic",
                "kafka.input_topic",
                self.input_topic.clone(),
            )
            .flag(
                "--transactional-id",
                "kafka.transactional_id",
                self.transactional_id.clone(),
            )
            .flag("--delivery", "kafka.delivery", self.delivery.clone())
            .flag("--codes", "codes.codes_file", path(&self.codes))
            .flag("--partners", "codes.partners_file", path(&self.partners))
            .flag("--admin-listen", "admin.listen", self.admin_listen.clone())
            .flag(
                "--shadow",
                "kafka.shadow",
                self.shadow.then(|| "true".into()),
            )
    }
}

/// Where the code table and settings come from in the offline modes.
#[derive(Debug, Args)]
pub struct TableArgs {
    /// Codes in impact.com's bulk-upload CSV format.
    #[arg(long, value_name = "FILE")]
    pub codes: PathBuf,
    /// Partners CSV (Partner Id, Status, Contract Start, Contract End, Referral Window Days, Credit Group).
    #[arg(long, value_name = "FILE")]
    pub partners: Option<PathBuf>,
    /// Settings TOML (attribution rules, input limits, detectors); `PROMO__SECTION__KEY`
    /// environment variables and `--set` override it.
    #[arg(long = "config", alias = "settings", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Any setting as dotted.key=value (e.g. attribution.foreign_code=credit_click_winner); repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

#[derive(Debug, Args)]
pub struct AttributeArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// Orders, one JSON object per line; stdin when omitted.
    #[arg(long, value_name = "FILE")]
    pub orders: Option<PathBuf>,
    /// Where conversions go, one per order in input order; stdout when omitted.
    #[arg(long, value_name = "FILE")]
    pub conversions: Option<PathBuf>,
    /// Where alerts go; discarded when omitted.
    #[arg(long, value_name = "FILE")]
    pub alerts: Option<PathBuf>,
    /// Where adjustment records go (refunds, cancels; turns `reversals.enabled` on).
    #[arg(long, value_name = "FILE")]
    pub adjustments: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    #[command(flatten)]
    pub table: TableArgs,
    /// One order as JSON, or JSON lines (each line is explained); `-` reads stdin.
    #[arg(value_name = "ORDER.json")]
    pub order: PathBuf,
    /// Output format: the account as text, or per order its lines as JSON or CSV.
    #[arg(long, value_enum, default_value = "table")]
    pub format: crate::codes_cli::OutputFormat,
    /// The order's earlier events (JSON lines): explains ORDER.json as an adjustment of them
    /// (the stored original, the adjustments before it, the lock, the delta).
    #[arg(long, value_name = "FILE")]
    pub history: Option<PathBuf>,
}

/// `attribute` and `explain`: some orders were rejected (see the module comment).
pub const EXIT_REJECTED: u8 = 3;

/// A failure that ends the command, with the exit code it maps to.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error("{context}: {source}")]
    Io { context: String, source: io::Error },
    #[error("{0}")]
    Kafka(String),
    #[error("{0}")]
    Rejected(String),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Table(TableError::Invalid(_)) => 1,
            CliError::Rejected(_) => EXIT_REJECTED,
            _ => 2,
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Io { context, source }
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Attribute(args) => run_attribute(args),
        Command::Explain(args) => run_explain(args),
        Command::Run(args) => return run_worker(args),
        Command::Codes(args) => return crate::codes_cli::main(args),
        Command::Report(args) => return crate::report::main(args),
        Command::Topics(command) => run_topics(command),
        Command::Replay(args) => return crate::replay::main(args),
        Command::Dlq(command) => return crate::dlq::main(command),
        Command::Healthcheck(args) => return crate::healthcheck::main(&args),
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            // Into memory first: the generator panics on a write error such as a closed pipe.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut command, "promo-attribution", &mut script);
            let _ = io::stdout().lock().write_all(&script);
            return ExitCode::SUCCESS;
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            ExitCode::from(err.exit_code())
        }
    }
}

fn load(args: &TableArgs) -> Result<(CodeTable, Settings), CliError> {
    let settings =
        crate::settings::SettingsSources::with_process_env(args.config.clone(), args.set.clone())
            .load()?;
    let table = offline::load_table(
        &args.codes,
        args.partners.as_deref(),
        settings.codes.build_options(),
    )?;
    let table =
        crate::table_source::with_program_settings_file(table, &settings.codes).map_err(|e| {
            CliError::Io {
                context: "codes.program_settings_file".into(),
                source: io::Error::other(e.to_string()),
            }
        })?;
    Ok((table, settings))
}

fn create(path: &Path) -> Result<BufWriter<File>, CliError> {
    File::create(path)
        .map(BufWriter::new)
        .map_err(CliError::io(format!("cannot create {}", path.display())))
}

fn run_attribute(args: AttributeArgs) -> Result<(), CliError> {
    let (table, mut settings) = load(&args.table)?;
    if args.adjustments.is_some() {
        settings.reversals.enabled = true;
    }
    let (input, origin): (Box<dyn BufRead>, String) = match &args.orders {
        Some(path) => {
            let file = File::open(path)
                .map_err(CliError::io(format!("cannot open {}", path.display())))?;
            (
                Box::new(BufReader::with_capacity(1 << 16, file)),
                path.display().to_string(),
            )
        }
        None => (Box::new(io::stdin().lock()), "stdin".to_string()),
    };
    let mut conversions: Box<dyn Write> = match &args.conversions {
        Some(path) => Box::new(create(path)?),
        None => Box::new(BufWriter::new(io::stdout().lock())),
    };
    let mut alerts: Box<dyn Write> = match &args.alerts {
        Some(path) => Box::new(create(path)?),
        None => Box::new(io::sink()),
    };
    let mut adjustments: Box<dyn Write> = match &args.adjustments {
        Some(path) => Box::new(create(path)?),
        None => Box::new(io::sink()),
    };
    let mut rejects = io::stderr().lock();
    let sinks = Sinks {
        conversions: &mut conversions,
        alerts: &mut alerts,
        adjustments: &mut adjustments,
        rejects: &mut rejects,
    };
    let summary = offline::attribute(input, &origin, &table, &settings, sinks)
        .map_err(CliError::io("attribute"))?;
    eprintln!("{summary} (code table {})", table.version());
    if summary.rejected_lines > 0 {
        return Err(CliError::Rejected(format!(
            "{} of {} order lines rejected (exit {EXIT_REJECTED})",
            summary.rejected_lines,
            summary.rejected_lines + summary.orders
        )));
    }
    Ok(())
}

fn run_worker(args: RunArgs) -> ExitCode {
    let settings = match args.sources().load() {
        Ok(settings) => settings.into_shadow_if_asked(),
        Err(err) => {
            eprintln!("error: {err}");
            return ExitCode::from(crate::run::exit::CONFIG);
        }
    };
    if args.check_config {
        return match toml::to_string_pretty(&settings) {
            Ok(text) => {
                print!("{text}");
                ExitCode::SUCCESS
            }
            Err(err) => {
                eprintln!("error: {err}");
                ExitCode::from(crate::run::exit::CONFIG)
            }
        };
    }
    crate::run::run(settings)
}

fn run_topics(command: TopicsCommand) -> Result<(), CliError> {
    use crate::kafka::tools;
    match command {
        TopicsCommand::Create {
            brokers,
            partitions,
            topics,
        } => {
            let names: Vec<&str> = topics.iter().map(String::as_str).collect();
            tools::create_topics(&brokers, &names, partitions).map_err(CliError::Kafka)
        }
        TopicsCommand::Produce {
            brokers,
            topic,
            file,
        } => {
            let mut text = Vec::new();
            match &file {
                Some(path) => {
                    text = std::fs::read(path)
                        .map_err(CliError::io(format!("cannot read {}", path.display())))?
                }
                None => {
                    io::stdin()
                        .read_to_end(&mut text)
                        .map_err(CliError::io("cannot read stdin"))?;
                }
            }
            let records: Vec<Vec<u8>> = text
                .split(|b| *b == b'\n')
                .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
                .filter(|line| !line.trim_ascii().is_empty())
                .map(<[u8]>::to_vec)
                .collect();
            let produced =
                tools::produce_records(&brokers, &topic, &records).map_err(CliError::Kafka)?;
            eprintln!("produced {produced} records to {topic}");
            Ok(())
        }
        TopicsCommand::Fence {
            brokers,
            transactional_id,
            properties,
            timeout_secs,
        } => {
            let mut pairs = Vec::with_capacity(properties.len());
            for property in &properties {
                let (key, value) = property.split_once('=').ok_or_else(|| {
                    CliError::Kafka(format!("--property {property:?} is not KEY=VALUE"))
                })?;
                pairs.push((key.trim(), value));
            }
            tools::fence(
                &brokers,
                &transactional_id,
                &pairs,
                std::time::Duration::from_secs(timeout_secs),
            )
            .map_err(CliError::Kafka)?;
            eprintln!("fenced {transactional_id}: whatever it left open is aborted");
            Ok(())
        }
        TopicsCommand::Read {
            brokers,
            topic,
            count,
            timeout_secs,
        } => {
            let records = tools::read_topic(
                &brokers,
                &topic,
                count.unwrap_or(usize::MAX),
                std::time::Duration::from_secs(timeout_secs),
            )
            .map_err(CliError::Kafka)?;
            let mut out = io::stdout().lock();
            for record in &records {
                let payload = record.payload.as_deref().unwrap_or_default();
                out.write_all(payload)
                    .and_then(|()| out.write_all(b"\n"))
                    .map_err(CliError::io("stdout"))?;
            }
            eprintln!("read {} records from {topic}", records.len());
            Ok(())
        }
    }
}

fn run_explain(args: ExplainArgs) -> Result<(), CliError> {
    let (table, settings) = load(&args.table)?;
    let mut record = Vec::new();
    if args.order.as_os_str() == "-" {
        io::stdin()
            .read_to_end(&mut record)
            .map_err(CliError::io("cannot read stdin"))?;
    } else {
        record = std::fs::read(&args.order).map_err(CliError::io(format!(
            "cannot read {}",
            args.order.display()
        )))?;
    }
    let record = record.trim_ascii_end();
    if let Some(path) = &args.history {
        let history =
            std::fs::read(path).map_err(CliError::io(format!("cannot read {}", path.display())))?;
        let lines: Vec<&[u8]> = history
            .split(|b| *b == b'\n')
            .map(<[u8]>::trim_ascii)
            .filter(|l| !l.is_empty())
            .collect();
        print!(
            "{}",
            crate::reversals::explain::explain_adjustment(record, &lines, &table, &settings)
        );
        return Ok(());
    }
    let orders = orders_in(record);
    let mut rejected = 0;
    let mut text = String::new();
    let mut json = Vec::new();
    let mut rows = Vec::new();
    for (i, (line, order)) in orders.iter().enumerate() {
        let account = crate::explain::explain(order, &table, &settings);
        let refused = crate::schema::parse_order(order, &settings.limits).is_err();
        rejected += usize::from(refused);
        if orders.len() > 1 {
            if i > 0 {
                text.push('\n');
            }
            text.push_str(&format!("=== line {line} ===\n"));
        }
        text.push_str(&account);
        let lines: Vec<&str> = account.lines().filter(|l| !l.trim().is_empty()).collect();
        rows.extend(
            lines
                .iter()
                .map(|l| vec![line.to_string(), refused.to_string(), l.to_string()]),
        );
        json.push(serde_json::json!({"line": line, "rejected": refused, "explanation": lines}));
    }
    let out = match args.format {
        crate::codes_cli::OutputFormat::Table => text,
        crate::codes_cli::OutputFormat::Json => {
            serde_json::to_string_pretty(&json).unwrap_or_default() + "\n"
        }
        format => crate::codes_cli::format::render(format, &["LINE", "REJECTED", "TEXT"], &rows),
    };
    io::stdout()
        .lock()
        .write_all(out.as_bytes())
        .map_err(CliError::io("stdout"))?;
    if rejected > 0 {
        return Err(CliError::Rejected(format!(
            "{rejected} of {} orders rejected (exit {EXIT_REJECTED})",
            orders.len()
        )));
    }
    Ok(())
}

/// The orders of an `explain` input with their line numbers: one JSON document (however it is
/// laid out), or JSON lines, each explained in turn.
fn orders_in(record: &[u8]) -> Vec<(usize, &[u8])> {
    let single = serde_json::from_slice::<serde::de::IgnoredAny>(record).is_ok();
    let lines: Vec<(usize, &[u8])> = record
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, line)| (i + 1, line.trim_ascii()))
        .filter(|(_, line)| !line.is_empty())
        .collect();
    if single || lines.len() < 2 {
        return vec![(1, record)];
    }
    lines
}
