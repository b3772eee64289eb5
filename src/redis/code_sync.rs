//! Keeps the worker's code table in step with the Redis store.
//!
//! At start the current version is loaded before the worker consumes anything (waiting, not
//! ready, while the store is unreachable or empty, unless `require_table_at_start` is off).
//! Then a thread follows the store: a pub/sub subscription (sharded on a cluster) wakes it as soon as a version is
//! announced, and the pointer is read every `poll_interval_ms` as well, because announcements
//! sent while the subscriber reconnects are lost. A new version is read and indexed on this
//! thread, off the hot path, and swapped in whole. While Redis is unreachable the last good
//! table keeps serving; every successful check confirms it, and the pipeline stops crediting
//! once no check has succeeded for `max_staleness_secs` (see [`TableHandle::check_fresh`]).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::admin::{Health, Heartbeat};
use crate::backoff::Backoff;
use crate::codes::CodeTable;
use crate::codes::table::BuildOptions;
use crate::metrics::Metrics;
use crate::metrics::events::{
    CodeStoreCheckFailed, CodeTableApplied, CodeTableRefused, InternalEvent,
};
use crate::redis::store::snapshot::decode_delta;
use crate::redis::store::{Pointer, Store, StoreError, VersionMeta};
use crate::settings::StoreSettings;
use crate::table_source::TableHandle;

/// Longest wait for an announcement before looking at the clock (shutdown, poll interval, the
/// age gauge).
const TICK: Duration = Duration::from_millis(200);
const FIRST_RECONNECT_BACKOFF: Duration = Duration::from_millis(100);
const MAX_RECONNECT_BACKOFF: Duration = Duration::from_secs(5);
/// How long after a full reload the replaced table's memory is handed back.
const TRIM_DELAY: Duration = Duration::from_secs(2);
/// Single-code edits applied over one full build before the next version is loaded whole
/// (each patched row costs a hash lookup on every read of that table).
const MAX_PATCHED_ROWS: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("stopped before a code table was loaded")]
    Shutdown,
    #[error("cannot start the code sync thread: {0}")]
    Thread(std::io::Error),
}

/// The name the follower registers its heartbeat under.
pub const THREAD: &str = "code-sync";

/// Loads the current version (waiting for it as configured), then starts the follower thread.
/// Both beat the heartbeat `code-sync` on every turn, waiting on Redis included; the thread's
/// end (shutdown, or a panic) ends the heartbeat, so the caller must treat an unexpected end of
/// the returned handle as fatal.
pub fn start(
    settings: &StoreSettings,
    options: BuildOptions,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: Arc<AtomicBool>,
) -> Result<(TableHandle, JoinHandle<()>), StartError> {
    let follower = Follower {
        heartbeat: health.register(THREAD),
        settings: settings.clone(),
        options,
        metrics,
        shutdown,
        loaded: None,
        seen: None,
        refused: None,
        published_ms: None,
        trim_at: None,
    };
    follower.start(health)
}

struct Follower {
    heartbeat: Heartbeat,
    settings: StoreSettings,
    /// The matcher budget a version must fit (a version over it is refused like a corrupt one).
    options: BuildOptions,
    metrics: Arc<Metrics>,
    shutdown: Arc<AtomicBool>,
    /// The table in force.
    loaded: Option<Loaded>,
    /// The pointer as last acted on: while it reads the same, nothing is reloaded. Compared
    /// whole rather than with `loaded`, so a pointer whose fingerprint disagrees with its
    /// version's content (moved by hand) is followed once, not reloaded on every check.
    seen: Option<Pointer>,
    /// A version that failed to load; not retried until the pointer moves on.
    refused: Option<Pointer>,
    /// When the version in force was published (Unix ms, Redis's clock).
    published_ms: Option<i64>,
    /// When to hand the memory of a replaced table back to the system (see [`release_memory`]).
    trim_at: Option<Instant>,
}

/// The table in force as the store named it when it was read. The number alone does not name
/// a content (see the store's module docs); the fingerprint does.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Loaded {
    version: u64,
    fingerprint: String,
    generation: Option<String>,
}

impl Follower {
    fn max_staleness(&self) -> Option<Duration> {
        (self.settings.max_staleness_secs > 0)
            .then(|| Duration::from_secs(self.settings.max_staleness_secs))
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    fn start(mut self, health: Arc<Health>) -> Result<(TableHandle, JoinHandle<()>), StartError> {
        let table = self.initial_table()?;
        let handle = TableHandle::with_max_staleness(table, self.max_staleness());
        handle.confirm();
        let aged = handle.clone();
        self.metrics
            .set_code_table_age_source(Box::new(move || aged.age().as_secs_f64()));
        self.publish_metrics(&handle);
        health.set_table_loaded(true);
        let follower_handle = handle.clone();
        let thread = std::thread::Builder::new()
            .name("code-sync".into())
            .spawn(move || self.follow(&follower_handle));
        thread
            .map(|thread| (handle, thread))
            .map_err(StartError::Thread)
    }

    fn initial_table(&mut self) -> Result<CodeTable, StartError> {
        let mut backoff = Backoff::new(FIRST_RECONNECT_BACKOFF, MAX_RECONNECT_BACKOFF);
        let mut last_report = None::<Instant>;
        loop {
            if self.stopping() {
                return Err(StartError::Shutdown);
            }
            self.heartbeat.beat();
            let attempt = Store::connect(&self.settings).and_then(|mut store| {
                let pointer = store.pointer()?;
                self.metrics.set_redis_up(true);
                match pointer {
                    Some(pointer) => self.load(&mut store, &pointer).map(Some),
                    None => Ok(None),
                }
            });
            let waiting_for = match attempt {
                Ok(Some(table)) => return Ok(table),
                Ok(None) if !self.settings.require_table_at_start => {
                    tracing::warn!(
                        "the code store holds no table; starting with an empty one (store.require_table_at_start = false): every code is unknown until a table is published"
                    );
                    return Ok(CodeTable::empty("empty"));
                }
                Ok(None) => {
                    "no code table has been published yet (run `promo-attribution codes import`)"
                        .to_string()
                }
                Err(e) => {
                    if matches!(e, StoreError::Redis { .. }) {
                        self.metrics.set_redis_up(false);
                    }
                    e.to_string()
                }
            };
            if last_report.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(reason = %waiting_for, "waiting for the code table; not ready");
                last_report = Some(Instant::now());
            }
            self.sleep(backoff.next_wait());
        }
    }

    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopping() && Instant::now() < until {
            self.heartbeat.beat();
            std::thread::sleep(TICK.min(until.saturating_duration_since(Instant::now())));
        }
    }

    /// Reads and indexes the version `pointer` names.
    fn load(&mut self, store: &mut Store, pointer: &Pointer) -> Result<CodeTable, StoreError> {
        let started = Instant::now();
        let version = pointer.version;
        let stored = store.load_version(version)?;
        let origin = stored.origin();
        let table_version = stored.table_version();
        let snapshot = stored.snapshot()?;
        let table = snapshot
            .build_with(&table_version, &origin, self.options)
            .map_err(|problems| StoreError::Corrupt {
                version,
                reason: problems.to_string(),
            })?;
        self.loaded = Some(Loaded {
            version,
            fingerprint: stored.fingerprint,
            generation: pointer.generation.clone(),
        });
        self.seen = Some(pointer.clone());
        self.published_ms = stored.meta.published_ms;
        tracing::info!(
            version = %table_version,
            entries = table.len(),
            millis = started.elapsed().as_millis() as u64,
            summary = %stored.meta.summary,
            "code table loaded from the store"
        );
        Ok(table)
    }

    fn publish_metrics(&self, handle: &TableHandle) {
        let table = handle.current();
        self.metrics.set_code_table(table.version(), table.len());
    }

    /// Runs until shutdown: follow the store, and reconnect with backoff whenever it fails.
    fn follow(mut self, handle: &TableHandle) {
        let mut backoff = Backoff::new(FIRST_RECONNECT_BACKOFF, MAX_RECONNECT_BACKOFF);
        while !self.stopping() {
            let mut connected = false;
            match self.follow_connected(handle, &mut connected) {
                Ok(()) => return,
                Err(e) => {
                    // A session that got going proves the trouble was over; start small again.
                    if connected {
                        backoff.reset();
                    }
                    let wait = backoff.next_wait();
                    CodeStoreCheckFailed {
                        error: &e,
                        redis_down: matches!(e, StoreError::Redis { .. }),
                        retry: wait,
                        table_version: handle.current().version(),
                    }
                    .emit(&self.metrics);
                    self.sleep(wait);
                }
            }
        }
    }

    /// One connected session: returns `Ok` on shutdown, `Err` when Redis fails.
    fn follow_connected(
        &mut self,
        handle: &TableHandle,
        connected: &mut bool,
    ) -> Result<(), StoreError> {
        let mut store = Store::connect(&self.settings)?;
        let mut announcements = Store::subscribe(&self.settings, TICK.min(self.poll_interval()))?;
        let url = self.settings.redis_url.redacted();
        let redis_error = |source| StoreError::Redis {
            url: url.clone(),
            source,
        };
        // Anything published before the subscription took effect is caught by this first check.
        self.check(&mut store, handle)?;
        *connected = true;
        let mut last_check = Instant::now();
        while !self.stopping() {
            self.heartbeat.beat();
            let announced = announcements.wait().map_err(redis_error)?;
            if announced || last_check.elapsed() >= self.poll_interval() {
                self.check(&mut store, handle)?;
                last_check = Instant::now();
            }
            if self.trim_at.is_some_and(|at| Instant::now() >= at) {
                self.trim_at = None;
                release_memory();
            }
        }
        Ok(())
    }

    /// Applies a single-code edit made on the version in force without reloading the table; `None`
    /// when the version is not such an edit (or cannot be applied that way), so it is loaded whole.
    fn try_patch(
        &mut self,
        store: &mut Store,
        handle: &TableHandle,
        pointer: &Pointer,
    ) -> Result<Option<CodeTable>, StoreError> {
        let version = pointer.version;
        let meta = store.load_meta(version)?;
        // An edit names its base by number only, so it applies only to a table read in the same
        // generation, and the result is named by the fingerprint the edit was published with.
        let Some(loaded) = &self.loaded else {
            return Ok(None);
        };
        let same_store = loaded.generation.is_some() && meta.generation == loaded.generation;
        let Some(fingerprint) = meta.fingerprint.clone() else {
            return Ok(None);
        };
        if meta.delta.is_empty() || meta.base != Some(loaded.version) || !same_store {
            return Ok(None);
        }
        let current = handle.current();
        if current.patched_rows() + meta.delta.len() > MAX_PATCHED_ROWS {
            return Ok(None);
        }
        let Ok(rows) = decode_delta(&meta.delta, &format!("store version {version} delta")) else {
            return Ok(None);
        };
        let mut patches = Vec::with_capacity(rows.len());
        for mut row in rows {
            match current.find(&row.program_id, &row.code_id()) {
                Some(id) => {
                    // Keep the row's place in the stored table, as a full load would.
                    row.source_line = current.entry(id).source_line;
                    patches.push((id, row));
                }
                None => return Ok(None),
            }
        }
        self.loaded = Some(Loaded {
            version,
            fingerprint: fingerprint.clone(),
            generation: meta.generation.clone(),
        });
        self.seen = Some(pointer.clone());
        self.published_ms = meta.published_ms;
        Ok(Some(current.with_patched_rows(
            VersionMeta::table_version(version, &fingerprint),
            patches,
        )))
    }

    /// Seconds from the publish of the version in force to now: the change-to-effect latency
    /// when called right after the swap. The publish time is Redis's clock, so this is exact
    /// only while Redis's host and this one agree on the time (NTP); a negative difference is
    /// not reported.
    fn since_publish(&self) -> Option<f64> {
        seconds_since(self.published_ms?, chrono::Utc::now().timestamp_millis())
    }

    fn poll_interval(&self) -> Duration {
        Duration::from_millis(self.settings.poll_interval_ms)
    }

    /// Whether a pointer that changed still names the content in force: the same version read
    /// again in a new generation (a store restored, or re-imported with identical content).
    /// The same number with other content (a wiped store re-imported) is not.
    fn same_content(&mut self, store: &mut Store, pointer: &Pointer) -> Result<bool, StoreError> {
        let Some(loaded) = &mut self.loaded else {
            return Ok(false);
        };
        if loaded.version != pointer.version {
            return Ok(false);
        }
        let recorded = match store.load_meta(pointer.version) {
            Ok(meta) => meta.fingerprint,
            Err(StoreError::MissingVersion(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        let same = match recorded {
            Some(fingerprint) => fingerprint == loaded.fingerprint,
            // Published before fingerprints: only an unchanged generation vouches for it.
            None => loaded.generation == pointer.generation,
        };
        if same && loaded.generation != pointer.generation {
            tracing::info!(
                version = pointer.version,
                generation = pointer.generation.as_deref().unwrap_or("none"),
                "the code store's generation changed; the table in force has the same content"
            );
            loaded.generation = pointer.generation.clone();
        }
        if !same {
            tracing::warn!(
                version = pointer.version,
                generation = pointer.generation.as_deref().unwrap_or("none"),
                "store version {} now holds different content (the store was wiped and re-imported, or restored from a backup); reloading",
                pointer.version
            );
        }
        Ok(same)
    }

    /// Reads the pointer; loads a new version, or confirms the one in force.
    fn check(&mut self, store: &mut Store, handle: &TableHandle) -> Result<(), StoreError> {
        let current = store.pointer()?;
        self.metrics.set_redis_up(true);
        let Some(pointer) = current else {
            if self.loaded.is_none() {
                // Started empty on purpose (require_table_at_start = false) and still nothing
                // published: the empty table is the current one.
                handle.confirm();
            } else {
                // The pointer vanished (the store was flushed): keep the table rather than
                // forget every code, but stop confirming it, so staleness pauses the worker.
                tracing::warn!("the code store has no current version; keeping the loaded table");
            }
            return Ok(());
        };
        if self.refused.as_ref() == Some(&pointer) {
            return Ok(());
        }
        if self.seen.as_ref() == Some(&pointer) || self.same_content(store, &pointer)? {
            self.seen = Some(pointer);
            handle.confirm();
            return Ok(());
        }
        crate::faults::code_sync_applying(pointer.version);
        let started = Instant::now();
        let next = match self.try_patch(store, handle, &pointer) {
            Ok(Some(patched)) => Ok(patched),
            Ok(None) => self.load(store, &pointer),
            Err(e) => Err(e),
        };
        match next {
            Ok(table) => {
                if table.patched_rows() == 0 {
                    // Decisions in flight hold the old table for at most a batch; after that
                    // its memory is free.
                    self.trim_at = Some(Instant::now() + TRIM_DELAY);
                }
                CodeTableApplied {
                    version: table.version(),
                    patched_rows: table.patched_rows(),
                    apply: started.elapsed(),
                    since_publish: self.since_publish(),
                }
                .emit(&self.metrics);
                handle.replace(table);
                self.refused = None;
                self.publish_metrics(handle);
                Ok(())
            }
            // Redis trouble is retried by the caller; a broken version is not, and the table in
            // force is not confirmed either, so the worker pauses once it is too old.
            Err(StoreError::Corrupt { version, reason }) => {
                CodeTableRefused {
                    version,
                    reason: &reason,
                }
                .emit(&self.metrics);
                self.refused = Some(pointer);
                // Refusing a table over the matcher budget means building part of it first.
                release_memory();
                Ok(())
            }
            Err(StoreError::MissingVersion(_)) => Ok(()),
            Err(other) => Err(other),
        }
    }
}

/// Seconds from `published_ms` to `now_ms`, both Unix milliseconds; `None` when negative (clock
/// skew) or not representable. `published_ms` comes from the store, so any i64 is possible:
/// a plain subtraction overflowed (and panicked the thread in a debug build) on extreme values.
fn seconds_since(published_ms: i64, now_ms: i64) -> Option<f64> {
    now_ms
        .checked_sub(published_ms)
        .filter(|ms| *ms >= 0)
        .map(|ms| ms as f64 / 1000.0)
}

/// Returns freed heap memory to the system. A replaced table is millions of small blocks freed
/// at once; glibc keeps such memory in its arenas, so without this the resident size of a worker
/// grows by a table's size with every bulk change, up to the peak of two tables plus buffers.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory of the allocator's own arenas to the kernel;
    // it takes the arena locks itself and touches no live allocation.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::seconds_since;

    #[test]
    fn publish_lag_survives_any_stored_time() {
        assert_eq!(seconds_since(1_000, 3_500), Some(2.5));
        assert_eq!(seconds_since(4_000, 3_500), None);
        assert_eq!(seconds_since(i64::MIN, 3_500), None);
        assert_eq!(seconds_since(i64::MAX, -1), None);
        assert_eq!(seconds_since(-5, i64::MAX), None);
    }
}
