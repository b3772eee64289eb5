//! The seam between the pipeline and wherever the code table comes from.
//!
//! The pipeline only ever asks a [`TableHandle`] for the current table; a source (CSV files
//! today, the Redis store later) builds each new version off the hot path and swaps it in whole,
//! so a decision sees one complete version or the next, never a mix.

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::codes::CodeTable;
use crate::codes::table::BuildOptions;
use crate::offline::{TableError, load_table};
use crate::settings::CodesSettings;

/// Shared, atomically replaceable reference to the current code table.
#[derive(Clone)]
pub struct TableHandle(Arc<ArcSwap<CodeTable>>);

impl TableHandle {
    pub fn new(table: CodeTable) -> TableHandle {
        TableHandle(Arc::new(ArcSwap::from_pointee(table)))
    }

    /// The table in force now. Cheap (no lock); hold the returned `Arc` for the whole decision.
    pub fn current(&self) -> Arc<CodeTable> {
        self.0.load_full()
    }

    /// Makes `table` the current one for every later `current()` call.
    pub fn replace(&self, table: CodeTable) {
        self.0.store(Arc::new(table));
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "no code table source is configured: set codes.codes_file (and optionally codes.partners_file)"
    )]
    NotConfigured,
    #[error(transparent)]
    Table(#[from] TableError),
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
        BuildOptions::default(),
    )?;
    Ok(TableHandle::new(table))
}
