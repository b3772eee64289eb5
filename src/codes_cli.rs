//! `promo-attribution codes …`: the admin commands over the Redis code store.
//!
//! Every change is validated with the same loader the offline mode uses, reported in full
//! before anything is written, and published as one new version (see [`crate::redis::store`]).
//! Exit codes: 0 done; 1 the input or the request is invalid (nothing written); 2 usage,
//! configuration, I/O or Redis errors.

mod commands;
pub mod format;
mod progress;
mod report;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Subcommand};

use crate::codes::LoadProblems;
use crate::codes::edit::EditError;
use crate::redis::store::StoreError;
use crate::settings::{Settings, SettingsSources, StoreSettings};
pub use format::OutputFormat;

#[derive(Debug, Args)]
pub struct CodesArgs {
    /// Settings TOML (its [store] section says where the store is).
    #[arg(long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// Any setting as dotted.key=value; repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE", global = true)]
    pub set: Vec<String>,
    /// Redis URL (store.redis_url; also PROMO__STORE__REDIS_URL).
    #[arg(long, global = true)]
    pub redis_url: Option<String>,
    /// Key prefix (store.key_prefix).
    #[arg(long, global = true)]
    pub prefix: Option<String>,
    /// Who makes the change, recorded in `codes history` (default: $USER@host).
    #[arg(long, global = true, env = "PROMO_AUTHOR")]
    pub author: Option<String>,
    /// Why the change is made, recorded in `codes history` (a ticket, a sentence).
    #[arg(long, global = true)]
    pub reason: Option<String>,
    #[command(subcommand)]
    pub command: CodesCommand,
}

#[derive(Debug, Subcommand)]
pub enum CodesCommand {
    /// Validate a bulk-upload CSV and publish it as one new version.
    Import(ImportArgs),
    /// Expire a code now (impact's Expire): orders using it are credited to nobody.
    Expire(CodeArgs),
    /// Reactivate an expired code.
    Reactivate(CodeArgs),
    /// Change a code's schedule; times are read in the code's own time zone, "" clears a bound.
    #[command(group(clap::ArgGroup::new("dates").required(true).multiple(true).args(["start", "end"])))]
    SetDates {
        #[command(flatten)]
        code: CodeArgs,
        /// New start (inclusive), e.g. 2026-05-01 or 2026-05-01T09:00; "" removes it.
        #[arg(long)]
        start: Option<String>,
        /// New end (exclusive), e.g. 2026-06-01 or 2026-06-01T00:00; "" removes it.
        #[arg(long)]
        end: Option<String>,
    },
    /// Give a code to another partner.
    Assign {
        #[command(flatten)]
        code: CodeArgs,
        /// The partner id that gets the code.
        #[arg(long)]
        partner: String,
    },
    /// List codes with their state at a moment (now by default).
    List(ListArgs),
    /// Write the table as CSV that `codes import` reads back unchanged.
    Export {
        /// Only this program's codes.
        #[arg(long)]
        program: Option<String>,
        /// Codes CSV destination (stdout when absent).
        #[arg(long, value_name = "FILE")]
        output: Option<PathBuf>,
        /// Also write the partners CSV here.
        #[arg(long, value_name = "FILE")]
        partners_output: Option<PathBuf>,
    },
    /// Which entry a code as a customer typed it matches, and why.
    Show {
        /// The code as a customer typed it (case, spaces and all).
        raw: String,
        /// Only this program's codes.
        #[arg(long)]
        program: Option<String>,
        /// Moment to judge the schedule at (default: now): 2026-05-01 (start of day, UTC),
        /// 2026-05-01T09:00 (UTC) or with an offset.
        #[arg(long)]
        at: Option<String>,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Published versions, newest first, with a one-line summary each.
    History {
        /// Versions to show.
        #[arg(long, default_value_t = 20)]
        limit: usize,
        /// Output format.
        #[arg(long, value_enum, default_value = "table")]
        format: OutputFormat,
    },
    /// Publish the content of an earlier version as a new version.
    Rollback {
        /// The version whose content to publish again (see `codes history`).
        version: u64,
    },
    /// Per-program settings (detector thresholds) published with the table.
    #[command(subcommand)]
    ProgramSettings(ProgramSettingsCommand),
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// Codes in impact.com's bulk-upload CSV format.
    pub file: PathBuf,
    /// Partners CSV to publish with the codes.
    #[arg(long, value_name = "FILE")]
    pub partners: Option<PathBuf>,
    /// Only this program's codes: rows of other programs are refused.
    #[arg(long)]
    pub program: Option<String>,
    /// The file becomes the whole set of codes of the programs it covers (partners are only ever
    /// added or updated: they may own codes of other programs).
    #[arg(long, conflicts_with = "merge")]
    pub replace: bool,
    /// The file's rows add or change codes; others stay (the default).
    #[arg(long)]
    pub merge: bool,
    /// Validate and report what would change; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Write every problem found to FILE (the terminal shows at most 20 per column).
    #[arg(long, value_name = "FILE")]
    pub problems: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CodeArgs {
    /// The code as written in the table (any case for exact codes; the pattern for regex codes).
    pub code: String,
    /// Needed when the same code exists in several programs.
    #[arg(long)]
    pub program: Option<String>,
    /// Needed when a program has an exact and a regex code with the same text.
    #[arg(long, value_enum)]
    pub match_mode: Option<MatchMode>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum MatchMode {
    /// `LI`: an exact code.
    Exact,
    /// `RE`: a regex code.
    Regex,
}

impl MatchMode {
    pub fn match_type(self) -> crate::codes::MatchType {
        match self {
            MatchMode::Exact => crate::codes::MatchType::Exact,
            MatchMode::Regex => crate::codes::MatchType::Regex,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum StateFilter {
    Pending,
    Active,
    Expired,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Only this program's codes.
    #[arg(long)]
    pub program: Option<String>,
    /// Only codes in this state at --at.
    #[arg(long, value_enum)]
    pub state: Option<StateFilter>,
    /// Only this partner's codes.
    #[arg(long)]
    pub partner: Option<String>,
    /// Moment the state is judged at (default: now): 2026-05-01 (start of day, UTC),
    /// 2026-05-01T09:00 (UTC) or with an offset.
    #[arg(long)]
    pub at: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum ProgramSettingsCommand {
    /// Publish a program's settings from a JSON file.
    Set {
        /// The program id.
        program: String,
        /// JSON object of detector thresholds (see docs).
        file: PathBuf,
    },
    /// Remove a program's settings (the worker-wide defaults apply again).
    Clear {
        /// The program id.
        program: String,
    },
    /// Print every program's settings as JSON.
    Show,
}

/// A failure of a `codes` command, with its exit code.
#[derive(Debug, thiserror::Error)]
pub enum CodesError {
    #[error("{0}")]
    Invalid(LoadProblems),
    #[error(transparent)]
    Edit(#[from] EditError),
    #[error("{0}")]
    Request(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Settings(#[from] crate::settings::SettingsError),
    #[error("{0}")]
    Io(String),
    #[error("{0}")]
    Usage(String),
}

impl CodesError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CodesError::Invalid(_) | CodesError::Edit(_) | CodesError::Request(_) => 1,
            _ => 2,
        }
    }
}

impl CodesArgs {
    fn settings(&self) -> Result<Settings, CodesError> {
        let (settings, origins) =
            SettingsSources::with_process_env(self.config.clone(), self.set.clone())
                .flag("--redis-url", "store.redis_url", self.redis_url.clone())
                .flag("--prefix", "store.key_prefix", self.prefix.clone())
                .load_with_origins()?;
        let url_origin = origins.of("store.redis_url");
        eprintln!("{}", store_line(&settings.store, url_origin));
        if url_origin.is_none() && self.command.writes() {
            return Err(CodesError::Usage(format!(
                "no code store configured, and this command writes: name the Redis it should change with \
                 --redis-url redis://HOST:6379 (or the PROMO__STORE__REDIS_URL environment variable, or \
                 redis_url in the [store] section of --config FILE); only read-only commands fall back to \
                 the default {}",
                settings.store.redis_url
            )));
        }
        Ok(settings)
    }
}

/// The store a command uses, for stderr: URL without password, prefix, and whether it was
/// configured or is the default.
pub fn store_line(store: &StoreSettings, url_origin: Option<&crate::settings::Origin>) -> String {
    let source = match url_origin {
        Some(origin) => format!("from {origin}"),
        None => "the default: no store configured".to_string(),
    };
    format!(
        "code store: {} prefix {:?} ({source})",
        store.redis_url, store.key_prefix
    )
}

impl CodesCommand {
    /// Whether the command changes the store (a forgotten setting must not make it change
    /// whatever Redis happens to listen on the default address).
    fn writes(&self) -> bool {
        match self {
            CodesCommand::Import(args) => !args.dry_run,
            CodesCommand::Expire(_)
            | CodesCommand::Reactivate(_)
            | CodesCommand::SetDates { .. }
            | CodesCommand::Assign { .. }
            | CodesCommand::Rollback { .. } => true,
            CodesCommand::ProgramSettings(command) => {
                !matches!(command, ProgramSettingsCommand::Show)
            }
            CodesCommand::List(_)
            | CodesCommand::Export { .. }
            | CodesCommand::Show { .. }
            | CodesCommand::History { .. } => false,
        }
    }
}

pub fn main(args: CodesArgs) -> ExitCode {
    commands::sign(args.author.clone(), args.reason.clone().unwrap_or_default());
    let problems_file = match &args.command {
        CodesCommand::Import(import) => import.problems.clone(),
        _ => None,
    };
    let outcome = args
        .settings()
        .and_then(|settings| commands::run(&settings, args.command));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            if let CodesError::Invalid(problems) = &err {
                report_all(problems, problems_file.as_deref());
            }
            ExitCode::from(err.exit_code())
        }
    }
}

/// Writes every problem to `--problems FILE`, or says how to get the ones left out.
fn report_all(problems: &LoadProblems, file: Option<&std::path::Path>) {
    match file {
        Some(path) => match std::fs::write(path, problems.full()) {
            Ok(()) => eprintln!(
                "all {} problems written to {}",
                problems.0.len(),
                path.display()
            ),
            Err(e) => eprintln!("cannot write {}: {e}", path.display()),
        },
        None if problems.truncated() => eprintln!(
            "({} problems in all; `codes import --problems FILE` writes every one)",
            problems.0.len()
        ),
        None => {}
    }
}
