//! The seam between the pipeline and wherever the code table comes from.
//!
//! The pipeline only ever asks a [`TableHandle`] for the current table; a source (CSV files
//! today, the Redis store later) builds each new version off the hot path and swaps it in whole,
//! so a decision sees one complete version or the next, never a mix.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;

use crate::codes::CodeTable;
use crate::offline::{TableError, load_table};
use crate::settings::CodesSettings;

/// Shared, atomically replaceable reference to the current code table, with how recently its
/// source confirmed that it is still the current version.
#[derive(Clone)]
pub struct TableHandle {
    table: Arc<ArcSwap<CodeTable>>,
    freshness: Arc<Freshness>,
}

struct Freshness {
    epoch: Instant,
    /// Milliseconds after `epoch` of the last confirmation.
    confirmed_ms: AtomicU64,
    /// `None`: the table never goes stale (files loaded once).
    max_staleness: Option<Duration>,
}

/// The table has not been confirmed current for longer than allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "code table {version} is stale: not confirmed against the store for {age_ms} ms (max_staleness {max_ms} ms)"
)]
pub struct StaleTable {
    pub version: String,
    pub age_ms: u64,
    pub max_ms: u64,
}

impl TableHandle {
    /// A table that never goes stale.
    pub fn new(table: CodeTable) -> TableHandle {
        TableHandle::with_max_staleness(table, None)
    }

    /// A table whose source must call [`TableHandle::confirm`] at least every `max_staleness`.
    pub fn with_max_staleness(table: CodeTable, max_staleness: Option<Duration>) -> TableHandle {
        TableHandle {
            table: Arc::new(ArcSwap::from_pointee(table)),
            freshness: Arc::new(Freshness {
                epoch: Instant::now(),
                confirmed_ms: AtomicU64::new(0),
                max_staleness,
            }),
        }
    }

    /// The table in force now. Cheap (no lock); hold the returned `Arc` for the whole decision.
    pub fn current(&self) -> Arc<CodeTable> {
        self.table.load_full()
    }

    /// Makes `table` the current one for every later `current()` call, and confirms it.
    pub fn replace(&self, table: CodeTable) {
        self.table.store(Arc::new(table));
        self.confirm();
    }

    /// The source has just checked that the table in force is the current version.
    pub fn confirm(&self) {
        let now = self.freshness.epoch.elapsed().as_millis() as u64;
        self.freshness
            .confirmed_ms
            .fetch_max(now, Ordering::Release);
    }

    /// Time since the last confirmation.
    pub fn age(&self) -> Duration {
        let confirmed = self.freshness.confirmed_ms.load(Ordering::Acquire);
        let now = self.freshness.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(confirmed))
    }

    /// Whether decisions may still be made with the table in force.
    pub fn check_fresh(&self) -> Result<(), StaleTable> {
        let Some(max) = self.freshness.max_staleness else {
            return Ok(());
        };
        let age = self.age();
        if age <= max {
            return Ok(());
        }
        Err(StaleTable {
            version: self.current().version().to_string(),
            age_ms: age.as_millis() as u64,
            max_ms: max.as_millis() as u64,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("codes.source = \"files\" needs codes.codes_file (and optionally codes.partners_file)")]
    NotConfigured,
    #[error(transparent)]
    Table(#[from] TableError),
    #[error("cannot read {path}: {reason}")]
    ProgramSettings { path: String, reason: String },
}

/// Loads the table from the CSV files named in the settings.
pub fn load_from_files(settings: &CodesSettings) -> Result<TableHandle, SourceError> {
    let codes = settings
        .codes_file
        .as_deref()
        .ok_or(SourceError::NotConfigured)?;
    let table = load_table(
        codes,
        settings.partners_file.as_deref(),
        settings.build_options(),
    )?;
    Ok(TableHandle::new(with_program_settings_file(
        table, settings,
    )?))
}

/// Adds the per-program settings of `codes.program_settings_file`, if one is configured: the
/// files' counterpart of what `codes program-settings` publishes to the store.
pub fn with_program_settings_file(
    table: CodeTable,
    settings: &CodesSettings,
) -> Result<CodeTable, SourceError> {
    let Some(path) = settings.program_settings_file.as_deref() else {
        return Ok(table);
    };
    let problem = |reason: String| SourceError::ProgramSettings {
        path: path.display().to_string(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|e| problem(e.to_string()))?;
    let programs =
        crate::redis::store::snapshot::parse_programs(&bytes, &path.display().to_string())
            .map_err(|p| problem(p.reason))?;
    Ok(table.with_program_settings(programs))
}
