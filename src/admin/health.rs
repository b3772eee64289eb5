//! What `/healthz`, `/readyz` and `promo_worker_state` report, from what the worker's threads
//! tell it.
//!
//! Two questions with different answers:
//!
//! - **Alive** (`/healthz`): every thread the worker needs is there and turning — the poll loop,
//!   the code-sync follower when the table comes from Redis — each proving it with a heartbeat
//!   at least every twice `admin.stall_after_secs`. A heartbeat is a pass of the thread's loop,
//!   not work done: a worker that waits for Redis or for records is alive. The admin server
//!   itself proves it by answering.
//! - **Ready** (`/readyz`): the worker is making progress now. Progress is a committed batch, or
//!   a pass with nothing to do (nothing read, nothing waiting on the assigned partitions). It is
//!   not ready while its table is stale (crediting paused), while batches fail and are retried,
//!   or while records wait and nothing was committed for `stall_after_secs` — an idle worker
//!   with nothing waiting stays ready.
//!
//! Times are milliseconds on a monotonic clock, so wall-clock steps can neither fake progress nor
//! fake a stall; tests drive a manual clock instead. Each field is updated on its own, so a probe
//! that sees one update slightly before another only delays the answer by one probe.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Long enough for a poll with a generous timeout plus a transaction commit, so that a slow
/// broker round trip is not mistaken for a hang.
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(60);

/// A thread may take this long from registering to its first heartbeat (creating the clients,
/// `init_transactions`), when that is longer than twice the stall threshold.
pub const DEFAULT_STARTUP_GRACE: Duration = Duration::from_secs(120);

/// librdkafka reports all brokers down for a moment when idle connections are closed by the
/// broker and reopened on demand; a report is believed once it has held this long, which is
/// more than the statistics interval (5 s) whose next report of a connected broker clears it.
pub const BROKER_DOWN_GRACE: Duration = Duration::from_secs(10);

/// The name the poll loop registers under; readiness needs it, not only liveness.
pub const POLL_LOOP: &str = "poll loop";

/// Marks "not yet" in the millisecond fields.
const NEVER: u64 = u64::MAX;

/// What the worker is doing, exported one-hot as `promo_worker_state{state}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// No broker answers (librdkafka reports all brokers down, or none answered at start);
    /// nothing can be read or committed until one does.
    BrokerUnreachable,
    /// Loading the code table or creating the clients; the poll loop has not turned yet.
    Starting,
    /// Running, but the group gave it no partition.
    Unassigned,
    /// Nothing to do: nothing read, nothing waiting.
    Idle,
    /// Reading and committing batches.
    Processing,
    /// A batch failed (Redis, the broker) and is being redone after a backoff.
    Retrying,
    /// The code table was not confirmed for `store.max_staleness_secs`: crediting stops.
    PausedStaleTable,
    /// Records wait and nothing was committed for `stall_after_secs`, or the poll loop stopped
    /// turning.
    Stalled,
}

impl WorkerState {
    pub const ALL: [WorkerState; 8] = [
        WorkerState::BrokerUnreachable,
        WorkerState::Starting,
        WorkerState::Unassigned,
        WorkerState::Idle,
        WorkerState::Processing,
        WorkerState::Retrying,
        WorkerState::PausedStaleTable,
        WorkerState::Stalled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::BrokerUnreachable => "broker_unreachable",
            WorkerState::Starting => "starting",
            WorkerState::Unassigned => "unassigned",
            WorkerState::Idle => "idle",
            WorkerState::Processing => "processing",
            WorkerState::Retrying => "retrying",
            WorkerState::PausedStaleTable => "paused_stale_table",
            WorkerState::Stalled => "stalled",
        }
    }
}

/// What the consumer's statistics say waits on the assigned partitions.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Backlog {
    /// Records between the read (or committed) position and the last stable offset.
    pub records: i64,
    /// Assigned partitions that have no position yet (their committed offset is still being
    /// fetched): records may wait there that nobody reads.
    pub unpositioned: usize,
}

impl Backlog {
    fn is_clear(self) -> bool {
        self.records <= 0 && self.unpositioned == 0
    }
}

/// Where the milliseconds come from.
#[derive(Clone)]
enum Clock {
    Monotonic(Instant),
    /// Set by hand; for tests of the rules at chosen instants.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn now_ms(&self) -> u64 {
        match self {
            Clock::Monotonic(base) => duration_ms(base.elapsed()),
            Clock::Manual(now) => now.load(Ordering::Relaxed),
        }
    }
}

struct Beat {
    name: &'static str,
    registered_ms: u64,
    last_ms: AtomicU64,
    ended: AtomicBool,
}

/// A registered thread's proof of life. Dropping it (the thread ends, or unwinds from a panic)
/// marks the thread ended, which fails liveness.
pub struct Heartbeat {
    clock: Clock,
    beat: Arc<Beat>,
}

impl Heartbeat {
    /// One pass of the thread's loop.
    pub fn beat(&self) {
        self.beat
            .last_ms
            .store(self.clock.now_ms(), Ordering::Relaxed);
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.beat.ended.store(true, Ordering::Relaxed);
    }
}

type TableProbe = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// A batch failure not yet followed by a committed batch.
struct Failing {
    reason: String,
    since_ms: u64,
}

/// Worker state shared between the worker's threads (writers) and the admin server (reader).
pub struct Health {
    clock: Clock,
    stall_after_ms: AtomicU64,
    startup_grace_ms: AtomicU64,
    assigned_partitions: AtomicUsize,
    table_loaded: AtomicBool,
    /// Why the table in force may not be used (stale), if it may not.
    table_probe: OnceLock<TableProbe>,
    threads: Mutex<Vec<Arc<Beat>>>,
    /// The last committed batch or pass with nothing to do.
    progress_ms: AtomicU64,
    last_commit_ms: AtomicU64,
    /// Start of the current run of idle passes.
    idle_since_ms: AtomicU64,
    failing: Mutex<Option<Failing>>,
    /// No broker answers: why, and since when.
    broker_down: Mutex<Option<Failing>>,
    backlog_records: AtomicI64,
    backlog_unpositioned: AtomicUsize,
}

/// The answers at one instant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub state: WorkerState,
    /// Why the worker is not ready; empty when it is.
    pub not_ready: Vec<String>,
    /// Why the worker is not alive; empty when it is.
    pub not_alive: Vec<String>,
}

impl Default for Health {
    fn default() -> Self {
        Health::new()
    }
}

impl Health {
    pub fn new() -> Health {
        Health::with_clock(Clock::Monotonic(Instant::now()))
    }

    /// A health whose clock only moves when the returned cell is set (milliseconds).
    pub fn with_manual_clock() -> (Health, Arc<AtomicU64>) {
        let now = Arc::new(AtomicU64::new(0));
        (Health::with_clock(Clock::Manual(now.clone())), now)
    }

    fn with_clock(clock: Clock) -> Health {
        Health {
            clock,
            stall_after_ms: AtomicU64::new(duration_ms(DEFAULT_STALL_AFTER)),
            startup_grace_ms: AtomicU64::new(duration_ms(DEFAULT_STARTUP_GRACE)),
            assigned_partitions: AtomicUsize::new(0),
            table_loaded: AtomicBool::new(false),
            table_probe: OnceLock::new(),
            threads: Mutex::new(Vec::new()),
            progress_ms: AtomicU64::new(NEVER),
            last_commit_ms: AtomicU64::new(NEVER),
            idle_since_ms: AtomicU64::new(NEVER),
            failing: Mutex::new(None),
            broker_down: Mutex::new(None),
            backlog_records: AtomicI64::new(0),
            backlog_unpositioned: AtomicUsize::new(0),
        }
    }

    /// Readiness fails after this long without progress; liveness after twice as long without a
    /// heartbeat.
    pub fn set_stall_after(&self, stall_after: Duration) {
        self.stall_after_ms
            .store(duration_ms(stall_after), Ordering::Relaxed);
    }

    /// How long a registered thread may take to its first heartbeat.
    pub fn set_startup_grace(&self, grace: Duration) {
        self.startup_grace_ms
            .store(duration_ms(grace), Ordering::Relaxed);
    }

    /// Shorthand for callers that only know whether they hold any partition.
    pub fn set_assigned(&self, assigned: bool) {
        self.set_assigned_partitions(usize::from(assigned));
    }

    pub fn set_assigned_partitions(&self, count: usize) {
        self.assigned_partitions.store(count, Ordering::Relaxed);
    }

    pub fn assigned_partitions(&self) -> usize {
        self.assigned_partitions.load(Ordering::Relaxed)
    }

    pub fn set_table_loaded(&self, loaded: bool) {
        self.table_loaded.store(loaded, Ordering::Relaxed);
    }

    /// `probe` says why the table in force may not be used, if it may not (a stale table);
    /// asked at every probe. Set once; later calls are ignored.
    pub fn watch_table(&self, probe: impl Fn() -> Option<String> + Send + Sync + 'static) {
        let _ = self.table_probe.set(Box::new(probe));
    }

    /// Registers a thread the worker needs; it must call [`Heartbeat::beat`] at least every
    /// twice the stall threshold from now on (its first beat may take the startup grace).
    pub fn register(&self, name: &'static str) -> Heartbeat {
        let beat = Arc::new(Beat {
            name,
            registered_ms: self.clock.now_ms(),
            last_ms: AtomicU64::new(NEVER),
            ended: AtomicBool::new(false),
        });
        let mut threads = lock(&self.threads);
        // A thread registered again (a worker restarted in the same process) replaces its
        // ended predecessor.
        threads.retain(|b| b.name != name);
        threads.push(beat.clone());
        Heartbeat {
            clock: self.clock.clone(),
            beat,
        }
    }

    /// A batch was committed: progress, and whatever failed before is over.
    pub fn batch_committed(&self) {
        let now = self.clock.now_ms();
        self.progress_ms.store(now, Ordering::Relaxed);
        self.last_commit_ms.store(now, Ordering::Relaxed);
        self.idle_since_ms.store(NEVER, Ordering::Relaxed);
        *lock(&self.failing) = None;
    }

    /// No broker answers; `reason` is librdkafka's (or ours) and names the brokers.
    pub fn broker_unreachable(&self, reason: &str) {
        let now = self.clock.now_ms();
        let mut down = lock(&self.broker_down);
        let since_ms = down.as_ref().map_or(now, |d| d.since_ms);
        *down = Some(Failing {
            reason: reason.to_owned(),
            since_ms,
        });
    }

    /// A broker answered.
    pub fn broker_reachable(&self) {
        *lock(&self.broker_down) = None;
    }

    /// A batch failed and will be redone.
    pub fn batch_failed(&self, reason: &str) {
        let now = self.clock.now_ms();
        self.idle_since_ms.store(NEVER, Ordering::Relaxed);
        let mut failing = lock(&self.failing);
        let since_ms = failing.as_ref().map_or(now, |f| f.since_ms);
        *failing = Some(Failing {
            reason: reason.to_owned(),
            since_ms,
        });
    }

    /// A pass of the poll loop that neither committed nor failed; `idle` when nothing was read
    /// and no batch is open.
    pub fn pass(&self, idle: bool) {
        let now = self.clock.now_ms();
        if !idle {
            self.idle_since_ms.store(NEVER, Ordering::Relaxed);
            return;
        }
        let idle_since = match self.idle_since_ms.load(Ordering::Relaxed) {
            NEVER => {
                self.idle_since_ms.store(now, Ordering::Relaxed);
                now
            }
            since => since,
        };
        if self.backlog().is_clear() {
            // Nothing to do is progress too: an idle worker is not stalled.
            self.progress_ms.store(now, Ordering::Relaxed);
        }
        // A failed batch is normally cleared by the commit of its redo. When its partitions
        // moved away meanwhile there is nothing to redo; idle for a whole stall threshold
        // since the failure shows that (records left behind would have been read by then).
        let stall_after = self.stall_after_ms.load(Ordering::Relaxed);
        if now.saturating_sub(idle_since) >= stall_after {
            *lock(&self.failing) = None;
        }
    }

    /// From the consumer's statistics.
    pub fn set_backlog(&self, backlog: Backlog) {
        self.backlog_records
            .store(backlog.records, Ordering::Relaxed);
        self.backlog_unpositioned
            .store(backlog.unpositioned, Ordering::Relaxed);
    }

    fn backlog(&self) -> Backlog {
        Backlog {
            records: self.backlog_records.load(Ordering::Relaxed),
            unpositioned: self.backlog_unpositioned.load(Ordering::Relaxed),
        }
    }

    /// Ready, or every reason why not (joined for the probe's body).
    pub fn is_ready(&self) -> Result<(), String> {
        as_result(self.verdict().not_ready)
    }

    /// Alive, or every reason why not.
    pub fn is_alive(&self) -> Result<(), String> {
        as_result(self.verdict().not_alive)
    }

    pub fn state(&self) -> WorkerState {
        self.verdict().state
    }

    /// Both answers and the state, from one reading of the fields.
    pub fn verdict(&self) -> Verdict {
        let now = self.clock.now_ms();
        let stall_after = self.stall_after_ms.load(Ordering::Relaxed);
        let limit = stall_after.saturating_mul(2);
        let grace = self.startup_grace_ms.load(Ordering::Relaxed);
        let mut not_ready = Vec::new();
        let mut not_alive = Vec::new();
        // In order of precedence; the first that holds is the state.
        let mut states = Vec::new();

        let threads: Vec<Arc<Beat>> = lock(&self.threads).clone();
        let mut poll_loop = None;
        for beat in &threads {
            let last = beat.last_ms.load(Ordering::Relaxed);
            if beat.name == POLL_LOOP {
                poll_loop = Some((beat.registered_ms, last));
            }
            if beat.ended.load(Ordering::Relaxed) {
                not_alive.push(format!("{} thread has ended", beat.name));
                continue;
            }
            let (since, allowed) = match last {
                NEVER => (now.saturating_sub(beat.registered_ms), limit.max(grace)),
                last => (now.saturating_sub(last), limit),
            };
            if since > allowed {
                not_alive.push(format!(
                    "{} thread not turning: no heartbeat for {} (limit {})",
                    beat.name,
                    fmt_ms(since),
                    fmt_ms(allowed)
                ));
            }
        }

        if let Some(down) = lock(&self.broker_down).as_ref()
            && now.saturating_sub(down.since_ms) >= duration_ms(BROKER_DOWN_GRACE)
        {
            not_ready.push(format!(
                "broker unreachable for {}: {}",
                fmt_ms(now.saturating_sub(down.since_ms)),
                down.reason
            ));
            states.push(WorkerState::BrokerUnreachable);
        }
        if !self.table_loaded.load(Ordering::Relaxed) {
            not_ready.push("code table not loaded".to_owned());
            states.push(WorkerState::Starting);
        }
        let loop_started_ms = match poll_loop {
            None => {
                not_ready.push("poll loop not started".to_owned());
                states.push(WorkerState::Starting);
                None
            }
            Some((registered, NEVER)) => {
                not_ready.push("poll loop starting".to_owned());
                states.push(WorkerState::Starting);
                Some(registered)
            }
            Some((registered, last)) => {
                let since = now.saturating_sub(last);
                if since > stall_after {
                    not_ready.push(format!(
                        "poll loop not turning: last pass {} ago (threshold {})",
                        fmt_ms(since),
                        fmt_ms(stall_after)
                    ));
                    states.push(WorkerState::Stalled);
                }
                Some(registered)
            }
        };
        if let Some(reason) = self.table_probe.get().and_then(|probe| probe()) {
            not_ready.push(format!("crediting paused: {reason}"));
            states.push(WorkerState::PausedStaleTable);
        }
        let failing = lock(&self.failing)
            .as_ref()
            .map(|f| (f.reason.clone(), f.since_ms));
        if let Some((reason, since)) = &failing {
            not_ready.push(format!(
                "batches failing and retried for {}: {reason}",
                fmt_ms(now.saturating_sub(*since))
            ));
            states.push(WorkerState::Retrying);
        }
        let assigned = self.assigned_partitions.load(Ordering::Relaxed);
        let backlog = self.backlog();
        let waiting = !backlog.is_clear() || failing.is_some();
        if assigned > 0
            && waiting
            && let Some(started) = loop_started_ms
        {
            let progress = match self.progress_ms.load(Ordering::Relaxed) {
                NEVER => started,
                at => at.max(started),
            };
            let since = now.saturating_sub(progress);
            if since > stall_after {
                let last_commit = match self.last_commit_ms.load(Ordering::Relaxed) {
                    NEVER => "never".to_owned(),
                    at => format!("{} ago", fmt_ms(now.saturating_sub(at))),
                };
                not_ready.push(format!(
                    "stalled: no progress for {} (threshold {}; last commit {last_commit}) while {} records wait and {} assigned partitions have no position",
                    fmt_ms(since),
                    fmt_ms(stall_after),
                    backlog.records.max(0),
                    backlog.unpositioned
                ));
                states.push(WorkerState::Stalled);
            }
        }
        if assigned == 0 {
            not_ready.push("no partitions assigned".to_owned());
            states.push(WorkerState::Unassigned);
        }
        let idle = self.idle_since_ms.load(Ordering::Relaxed) != NEVER;
        states.push(if waiting || !idle {
            WorkerState::Processing
        } else {
            WorkerState::Idle
        });
        Verdict {
            state: states.first().copied().unwrap_or(WorkerState::Idle),
            not_ready,
            not_alive,
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain values written whole; a panic elsewhere cannot leave it half-updated.
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn as_result(reasons: Vec<String>) -> Result<(), String> {
    if reasons.is_empty() {
        Ok(())
    } else {
        Err(reasons.join("; "))
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn fmt_ms(ms: u64) -> String {
    format!("{:.3}s", Duration::from_millis(ms).as_secs_f64())
}

#[cfg(test)]
#[path = "health_tests.rs"]
mod tests;
