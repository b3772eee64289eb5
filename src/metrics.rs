//! Prometheus metrics for the stream worker.
//!
//! Every metric lives in a [`Registry`] owned by [`Metrics`] rather than in the process-wide
//! default registry, so that tests (and several workers in one process) can each have their own
//! without name clashes. The admin server renders it on `GET /metrics`.
//!
//! Label values for statuses, bases, reasons and alert kinds are the same SCREAMING_SNAKE_CASE
//! spellings the output records use, so a dashboard can be checked against the topics directly.
//!
//! Notable events that are logged as well as counted are types in [`events`], whose `emit` does
//! both.
//!
//! Every labelled series whose label values are known in advance exists, at 0, from the start:
//! a panel or an alert over a counter that has not moved yet reads 0, not "no data". Metrics
//! about a code source exist only where the worker has that source (see [`Metrics::for_source`]),
//! so an alert about Redis cannot fire on a worker that never talks to it.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::admin::WorkerState;
use crate::engine::Rejection;
use crate::schema::alert::AlertKind;
use crate::schema::conversion::{Basis, InvalidReason, Status};
use crate::settings::CodeSource;
use labels::{conversion_label_sets, conversion_series_index};

mod labels;
pub use labels::{CommitPhase, ReloadOutcome, StepResult, TxOutcome};

/// The commit the binary was built from (`build.rs`: `PROMO_BUILD_COMMIT`, else git, else
/// `unknown`).
pub const BUILD_COMMIT: &str = env!("PROMO_BUILD_COMMIT");

/// Records per poll batch: a single record when idle up to the largest batch the worker reads.
const BATCH_SIZE_BUCKETS: &[f64] = &[
    1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
];

/// A healthy transactional commit takes milliseconds; the upper buckets exist to show a broker
/// in trouble rather than lumping it all into `+Inf`.
const COMMIT_LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Event time is set by the order system, so after an outage or a replay the lag can be hours;
/// the buckets run from the steady-state milliseconds up to an hour.
const END_TO_END_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 600.0, 1800.0, 3600.0,
];

/// Seconds since the code table in force was last confirmed current.
pub type AgeSource = Box<dyn Fn() -> f64 + Send + Sync>;

pub struct Metrics {
    registry: Registry,
    orders_consumed: IntCounter,
    conversions: IntCounterVec,
    alerts: IntCounterVec,
    /// The series of `conversions` and `alerts` that orders move, resolved once: looking one up
    /// by its label values hashes them and takes the family's lock, and this happens for every
    /// order. In [`conversion_label_sets`] order and [`AlertKind::ALL`] order.
    conversion_series: Vec<IntCounter>,
    alert_series: Vec<IntCounter>,
    /// Adjustment records (refunds, cancels) by kind and reason; `src/reversals`.
    adjustments: IntCounterVec,
    /// Decision summaries newly written to the decision store (`src/reversals`).
    decision_summaries: IntCounter,
    dlq_records: IntCounterVec,
    batch_size: Histogram,
    commit_latency: Histogram,
    commit_phases: HistogramVec,
    end_to_end_latency: Histogram,
    consumer_lag: IntGaugeVec,
    transactions: IntCounterVec,
    code_table_info: IntGaugeVec,
    /// The version currently exported by `code_table_info`, so that a reload can drop the old
    /// label set; a lock rather than an atomic because the old and new set must change together.
    code_table_version: Mutex<Option<String>>,
    code_table_entries: IntGauge,
    /// When the table in force was loaded (Unix seconds); exported for a file source only,
    /// whose table never changes and so has no age to confirm.
    code_table_loaded: Gauge,
    code_table_age: Gauge,
    /// Reads the age at scrape time, so the gauge keeps growing even if the thread that keeps
    /// the table fresh is stuck.
    code_table_age_source: Mutex<Option<AgeSource>>,
    code_table_reloads: IntCounterVec,
    code_table_propagation: Histogram,
    redis_up: IntGauge,
    /// The stateful detectors' Redis step per batch, and its failures (each aborts the batch).
    detector_step: Histogram,
    detector_step_failures: IntCounter,
    assigned_partitions: IntGauge,
    worker_paused: IntGauge,
    worker_state: IntGaugeVec,
}

/// The metric names, in one place: the exposition, the tests and the docs agree on them.
pub mod names {
    pub const ORDERS_CONSUMED: &str = "promo_orders_consumed_total";
    pub const CONVERSIONS: &str = "promo_conversions_total";
    pub const ALERTS: &str = "promo_alerts_total";
    pub const DLQ_RECORDS: &str = "promo_dlq_records_total";
    pub const DECISION_SUMMARIES: &str = "promo_decision_summaries_stored_total";
    /// Renamed from `promo_batch_size` to carry its unit (README, "Metrics and health").
    pub const BATCH_SIZE: &str = "promo_batch_size_records";
    pub const COMMIT_LATENCY: &str = "promo_commit_latency_seconds";
    pub const COMMIT_PHASE: &str = "promo_commit_phase_seconds";
    pub const END_TO_END_LATENCY: &str = "promo_end_to_end_latency_seconds";
    /// Renamed from `promo_consumer_lag` to carry its unit.
    pub const CONSUMER_LAG: &str = "promo_consumer_lag_records";
    pub const TRANSACTIONS: &str = "promo_transactions_total";
    pub const CODE_TABLE_INFO: &str = "promo_code_table_info";
    pub const CODE_TABLE_ENTRIES: &str = "promo_code_table_entries";
    pub const CODE_TABLE_LOADED: &str = "promo_code_table_loaded_timestamp_seconds";
    pub const CODE_TABLE_AGE: &str = "promo_code_table_age_seconds";
    pub const CODE_TABLE_RELOADS: &str = "promo_code_table_reloads_total";
    pub const CODE_TABLE_PROPAGATION: &str = "promo_code_table_propagation_seconds";
    pub const REDIS_UP: &str = "promo_redis_up";
    pub const DETECTOR_STEP: &str = "promo_detector_step_seconds";
    pub const DETECTOR_STEP_FAILURES: &str = "promo_detector_step_failures_total";
    pub const ASSIGNED_PARTITIONS: &str = "promo_assigned_partitions";
    pub const WORKER_PAUSED: &str = "promo_worker_paused";
    pub const WORKER_STATE: &str = "promo_worker_state";
    pub const BUILD_INFO: &str = "promo_build_info";
}

impl Metrics {
    /// The metrics of a worker reading its codes from Redis (the default source).
    pub fn new() -> Result<Metrics, prometheus::Error> {
        Metrics::for_source(CodeSource::Redis)
    }

    /// The metrics of a worker whose code table comes from `source`. With Redis, the registry
    /// exports `promo_redis_up`, the table's age and its propagation; with files it exports the
    /// time the table was loaded instead, since nothing ever confirms or replaces it.
    pub fn for_source(source: CodeSource) -> Result<Metrics, prometheus::Error> {
        use names::*;
        let registry = Registry::new();
        let register =
            |collector: Box<dyn prometheus::core::Collector>| registry.register(collector);

        let orders_consumed =
            IntCounter::new(ORDERS_CONSUMED, "Order records read from the input topic.")?;
        let conversions = IntCounterVec::new(
            Opts::new(
                CONVERSIONS,
                "Conversions produced, by status, basis and invalid reason (empty when absent).",
            ),
            &["status", "basis", "reason"],
        )?;
        let alerts = IntCounterVec::new(
            Opts::new(ALERTS, "Misuse alerts produced, by kind."),
            &["kind"],
        )?;
        let adjustments = IntCounterVec::new(
            Opts::new(
                "promo_adjustments_total",
                "Adjustment events read, by outcome: the record's kind (REVERSAL, PARTIAL) and reason, or kind NONE when no record was written (no stored decision, or after the lock with alert_only).",
            ),
            &["kind", "reason"],
        )?;
        let decision_summaries = IntCounter::new(
            DECISION_SUMMARIES,
            "Decision summaries newly written to the decision store (with reversals on); a replayed batch or a later decision of the same order adds nothing. The store holds what was written within reversals retention_secs.",
        )?;
        let dlq_records = IntCounterVec::new(
            Opts::new(
                DLQ_RECORDS,
                "Input records sent to the dead-letter topic, by reason.",
            ),
            &["reason"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new(BATCH_SIZE, "Records processed per batch.")
                .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )?;
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                COMMIT_LATENCY,
                "Time to commit a Kafka transaction (offsets and output).",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
        )?;
        let commit_phases = HistogramVec::new(
            HistogramOpts::new(
                COMMIT_PHASE,
                "Time of each phase of a batch's commit: held (deciding held records with the detector step), deliveries (the last outputs' acknowledgements), offsets, end (ending the transaction).",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
            &["phase"],
        )?;
        let detector_step = Histogram::with_opts(
            HistogramOpts::new(
                DETECTOR_STEP,
                "Time of a batch's detector step in Redis (one pipelined round trip).",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
        )?;
        let detector_step_failures = IntCounter::new(
            DETECTOR_STEP_FAILURES,
            "Detector steps that failed (Redis down or slow); each batch is aborted and redone.",
        )?;
        let end_to_end_latency = Histogram::with_opts(
            HistogramOpts::new(
                END_TO_END_LATENCY,
                "Time from an order's event time to its conversion being produced.",
            )
            .buckets(END_TO_END_BUCKETS.to_vec()),
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                CONSUMER_LAG,
                "Records between the committed position and the high watermark, per assigned partition (0 until the first statistics).",
            ),
            &["topic", "partition"],
        )?;
        let transactions = IntCounterVec::new(
            Opts::new(
                TRANSACTIONS,
                "Kafka transactions ended, by outcome (committed or aborted).",
            ),
            &["outcome"],
        )?;
        let code_table_info = IntGaugeVec::new(
            Opts::new(
                CODE_TABLE_INFO,
                "Always 1, labelled with the version of the code table in use.",
            ),
            &["version"],
        )?;
        let code_table_entries =
            IntGauge::new(CODE_TABLE_ENTRIES, "Entries in the code table in use.")?;
        let code_table_loaded = Gauge::new(
            CODE_TABLE_LOADED,
            "When the code table in use was read from its files (Unix time); a file table is loaded once and never goes stale.",
        )?;
        let code_table_age = Gauge::new(
            CODE_TABLE_AGE,
            "Seconds since the code table in use was last confirmed current against its source (the code store); the worker stops crediting past store.max_staleness_secs.",
        )?;
        let code_table_reloads = IntCounterVec::new(
            Opts::new(
                CODE_TABLE_RELOADS,
                "New code table versions taken from the store, by outcome (loaded or refused).",
            ),
            &["outcome"],
        )?;
        let code_table_propagation = Histogram::with_opts(
            HistogramOpts::new(
                CODE_TABLE_PROPAGATION,
                "Time from a code table version's publish to its use by this worker.",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
        )?;
        let redis_up = IntGauge::new(
            REDIS_UP,
            "1 when the last Redis operation succeeded, 0 otherwise.",
        )?;
        let assigned_partitions = IntGauge::new(
            ASSIGNED_PARTITIONS,
            "Input partitions currently assigned to this worker.",
        )?;
        let worker_paused = IntGauge::new(
            WORKER_PAUSED,
            "1 while consumption is paused because of a transient error.",
        )?;
        let worker_state = IntGaugeVec::new(
            Opts::new(
                WORKER_STATE,
                "1 for what the worker is doing now (broker_unreachable, starting, unassigned, idle, processing, retrying, paused_stale_table, stalled), 0 for the others; worked out at each scrape.",
            ),
            &["state"],
        )?;
        let build_info = IntGaugeVec::new(
            Opts::new(
                BUILD_INFO,
                "Always 1, labelled with the version and the commit this binary was built from.",
            ),
            &["version", "commit"],
        )?;
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), BUILD_COMMIT])
            .set(1);

        register(Box::new(orders_consumed.clone()))?;
        register(Box::new(conversions.clone()))?;
        register(Box::new(alerts.clone()))?;
        register(Box::new(adjustments.clone()))?;
        register(Box::new(decision_summaries.clone()))?;
        register(Box::new(dlq_records.clone()))?;
        register(Box::new(batch_size.clone()))?;
        register(Box::new(commit_latency.clone()))?;
        register(Box::new(commit_phases.clone()))?;
        register(Box::new(end_to_end_latency.clone()))?;
        register(Box::new(consumer_lag.clone()))?;
        register(Box::new(transactions.clone()))?;
        register(Box::new(code_table_info.clone()))?;
        register(Box::new(code_table_entries.clone()))?;
        register(Box::new(code_table_reloads.clone()))?;
        register(Box::new(detector_step.clone()))?;
        register(Box::new(detector_step_failures.clone()))?;
        register(Box::new(assigned_partitions.clone()))?;
        register(Box::new(worker_paused.clone()))?;
        register(Box::new(worker_state.clone()))?;
        register(Box::new(build_info))?;
        match source {
            CodeSource::Redis => {
                register(Box::new(code_table_age.clone()))?;
                register(Box::new(code_table_propagation.clone()))?;
                register(Box::new(redis_up.clone()))?;
            }
            CodeSource::Files => register(Box::new(code_table_loaded.clone()))?,
        }
        // CPU, memory, open files and start time of this process, under the standard
        // `process_*` names; the collector reads /proc, so Linux only.
        #[cfg(target_os = "linux")]
        register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;

        // Every state exists from the start, so an alert on one reads 0, not "no data".
        for state in WorkerState::ALL {
            worker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == WorkerState::Starting));
        }
        for outcome in TxOutcome::ALL {
            transactions.with_label_values(&[outcome.as_str()]);
        }
        for phase in CommitPhase::ALL {
            commit_phases.with_label_values(&[phase.as_str()]);
        }
        for outcome in ReloadOutcome::ALL {
            code_table_reloads.with_label_values(&[outcome.as_str()]);
        }
        let conversion_series = conversion_label_sets()
            .map(|(status, basis, reason)| conversions.with_label_values(&[status, basis, reason]))
            .collect();
        let alert_series = AlertKind::ALL
            .iter()
            .map(|kind| alerts.with_label_values(&[kind.as_str()]))
            .collect();
        for reason in Rejection::REASONS {
            dlq_records.with_label_values(&[reason]);
        }

        Ok(Metrics {
            registry,
            orders_consumed,
            conversions,
            alerts,
            conversion_series,
            alert_series,
            adjustments,
            decision_summaries,
            dlq_records,
            batch_size,
            commit_latency,
            commit_phases,
            end_to_end_latency,
            consumer_lag,
            transactions,
            code_table_info,
            code_table_version: Mutex::new(None),
            code_table_entries,
            code_table_loaded,
            code_table_age,
            code_table_age_source: Mutex::new(None),
            code_table_reloads,
            code_table_propagation,
            redis_up,
            detector_step,
            detector_step_failures,
            assigned_partitions,
            worker_paused,
            worker_state,
        })
    }

    /// For collectors owned elsewhere (e.g. client statistics) to be exported alongside these.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn inc_orders_consumed(&self, records: u64) {
        self.orders_consumed.inc_by(records);
    }

    pub fn record_conversion(
        &self,
        status: Status,
        basis: Option<Basis>,
        reason: Option<InvalidReason>,
    ) {
        match conversion_series_index(status, basis, reason)
            .and_then(|i| self.conversion_series.get(i))
        {
            Some(series) => series.inc(),
            // A combination the decision core does not produce today: looked up, not lost.
            None => self
                .conversions
                .with_label_values(&[
                    status.as_str(),
                    basis.map_or("", Basis::as_str),
                    reason.map_or("", InvalidReason::as_str),
                ])
                .inc(),
        }
    }

    pub fn record_alert(&self, kind: AlertKind) {
        match AlertKind::ALL
            .iter()
            .position(|k| *k == kind)
            .and_then(|i| self.alert_series.get(i))
        {
            Some(series) => series.inc(),
            None => self.alerts.with_label_values(&[kind.as_str()]).inc(),
        }
    }

    /// An adjustment event's outcome: `None` when it wrote no record.
    pub fn record_adjustment(&self, recorded: Option<(&str, &str)>) {
        let (kind, reason) = recorded.unwrap_or(("NONE", ""));
        self.adjustments.with_label_values(&[kind, reason]).inc();
    }

    /// Summaries a decision-store step wrote for the first time.
    pub fn add_decision_summaries(&self, written: u64) {
        self.decision_summaries.inc_by(written);
    }

    /// `reason` becomes a label value, so it must come from a small fixed set (an error kind),
    /// never from record content.
    pub fn record_dlq(&self, reason: &str) {
        self.dlq_records.with_label_values(&[reason]).inc();
    }

    pub fn observe_batch_size(&self, records: usize) {
        self.batch_size.observe(records as f64);
    }

    pub fn observe_commit_latency(&self, elapsed: Duration) {
        self.commit_latency.observe(elapsed.as_secs_f64());
    }

    pub fn observe_commit_phase(&self, phase: CommitPhase, elapsed: Duration) {
        self.commit_phases
            .with_label_values(&[phase.as_str()])
            .observe(elapsed.as_secs_f64());
    }

    /// One detector step: how long it took, and whether it failed.
    pub fn observe_detector_step(&self, elapsed: Duration, result: StepResult) {
        self.detector_step.observe(elapsed.as_secs_f64());
        if result == StepResult::Failed {
            self.detector_step_failures.inc();
        }
    }

    /// Negative values come from clock skew between the order system and this host; they carry
    /// no latency information and would drag the sum below zero, so they are dropped. NaN is
    /// dropped for the same reason.
    pub fn observe_end_to_end(&self, seconds: f64) {
        if seconds >= 0.0 {
            self.end_to_end_latency.observe(seconds);
        }
    }

    /// A newly assigned partition: its lag series exists (at 0, or as last reported) before the
    /// first statistics arrive, so the partition is visible at once.
    pub fn init_lag(&self, topic: &str, partition: i32) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()]);
    }

    pub fn set_lag(&self, topic: &str, partition: i32, lag: i64) {
        self.consumer_lag
            .with_label_values(&[topic, &partition.to_string()])
            .set(lag);
    }

    /// For revoked partitions: another worker now reports them, and a stale value here would
    /// double-count the lag when summed.
    pub fn clear_lag(&self, topic: &str, partition: i32) {
        // Absent label sets (never reported, or already cleared) are not an error for the caller.
        let _ = self
            .consumer_lag
            .remove_label_values(&[topic, &partition.to_string()]);
    }

    pub fn record_transaction(&self, outcome: TxOutcome) {
        self.transactions
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// Exports `version` as the only `promo_code_table_info` label set, so that
    /// `promo_code_table_info == 1` joins to exactly one version per worker.
    pub fn set_code_table(&self, version: &str, entries: usize) {
        // A poisoned lock only means another thread panicked mid-update; the worst left behind is
        // a stale label set, which this update replaces anyway.
        let mut current = self
            .code_table_version
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // New before old, so a scrape in between sees two versions rather than none.
        self.code_table_info.with_label_values(&[version]).set(1);
        if let Some(old) = current.as_deref()
            && old != version
        {
            let _ = self.code_table_info.remove_label_values(&[old]);
        }
        *current = Some(version.to_owned());
        self.code_table_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }

    /// From now on `promo_code_table_age_seconds` is read from `source` at every scrape.
    pub fn set_code_table_age_source(&self, source: AgeSource) {
        let mut slot = self
            .code_table_age_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *slot = Some(source);
    }

    pub fn record_code_table_reload(&self, outcome: ReloadOutcome) {
        self.code_table_reloads
            .with_label_values(&[outcome.as_str()])
            .inc();
    }

    /// A file table was loaded at `unix_seconds`.
    pub fn set_code_table_loaded_at(&self, unix_seconds: f64) {
        self.code_table_loaded.set(unix_seconds);
    }

    pub fn observe_code_table_propagation(&self, seconds: f64) {
        self.code_table_propagation.observe(seconds);
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn set_assigned_partitions(&self, count: usize) {
        self.assigned_partitions
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    pub fn set_paused(&self, paused: bool) {
        self.worker_paused.set(i64::from(paused));
    }

    /// Makes `state` the one state at 1.
    pub fn set_worker_state(&self, state: WorkerState) {
        for each in WorkerState::ALL {
            self.worker_state
                .with_label_values(&[each.as_str()])
                .set(i64::from(each == state));
        }
    }

    /// The Prometheus text exposition format (`text/plain; version=0.0.4`).
    pub fn render(&self) -> Result<String, prometheus::Error> {
        if let Some(source) = self
            .code_table_age_source
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .as_ref()
        {
            self.code_table_age.set(source());
        }
        let mut out = String::new();
        TextEncoder::new().encode_utf8(&self.registry.gather(), &mut out)?;
        Ok(out)
    }
}

pub mod events;

#[cfg(test)]
mod tests;
