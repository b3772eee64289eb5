//! Prometheus metrics for the stream worker.
//!
//! Every metric lives in a [`Registry`] owned by [`Metrics`] rather than in the process-wide
//! default registry, so that tests (and several workers in one process) can each have their own
//! without name clashes. The admin server renders it on `GET /metrics`.
//!
//! Label values for statuses, bases, reasons and alert kinds are the same SCREAMING_SNAKE_CASE
//! spellings the output records use, so a dashboard can be checked against the topics directly.

use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::admin::WorkerState;
use crate::schema::alert::AlertKind;
use crate::schema::conversion::{Basis, InvalidReason, Status};

/// How a Kafka transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxOutcome {
    Committed,
    Aborted,
}

impl TxOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            TxOutcome::Committed => "committed",
            TxOutcome::Aborted => "aborted",
        }
    }
}

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
    /// Adjustment records (refunds, cancels) by kind and reason; `src/reversals`.
    adjustments: IntCounterVec,
    dlq_records: IntCounterVec,
    batch_size: Histogram,
    commit_latency: Histogram,
    end_to_end_latency: Histogram,
    consumer_lag: IntGaugeVec,
    transactions: IntCounterVec,
    code_table_info: IntGaugeVec,
    /// The version currently exported by `code_table_info`, so that a reload can drop the old
    /// label set; a lock rather than an atomic because the old and new set must change together.
    code_table_version: Mutex<Option<String>>,
    code_table_entries: IntGauge,
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

impl Metrics {
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();

        let orders_consumed = IntCounter::new(
            "promo_orders_consumed_total",
            "Order records read from the input topic.",
        )?;
        let conversions = IntCounterVec::new(
            Opts::new(
                "promo_conversions_total",
                "Conversions produced, by status, basis and invalid reason (empty when absent).",
            ),
            &["status", "basis", "reason"],
        )?;
        let alerts = IntCounterVec::new(
            Opts::new("promo_alerts_total", "Misuse alerts produced, by kind."),
            &["kind"],
        )?;
        let adjustments = IntCounterVec::new(
            Opts::new(
                "promo_adjustments_total",
                "Adjustment events read, by outcome: the record's kind (REVERSAL, PARTIAL) and reason, or kind NONE when no record was written (no stored decision, or after the lock with alert_only).",
            ),
            &["kind", "reason"],
        )?;
        let dlq_records = IntCounterVec::new(
            Opts::new(
                "promo_dlq_records_total",
                "Input records sent to the dead-letter topic, by reason.",
            ),
            &["reason"],
        )?;
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("promo_batch_size", "Records processed per batch.")
                .buckets(BATCH_SIZE_BUCKETS.to_vec()),
        )?;
        let commit_latency = Histogram::with_opts(
            HistogramOpts::new(
                "promo_commit_latency_seconds",
                "Time to commit a Kafka transaction (offsets and output).",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
        )?;
        let detector_step = Histogram::with_opts(
            HistogramOpts::new(
                "promo_detector_step_seconds",
                "Time of a batch's detector step in Redis (one pipelined round trip).",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
        )?;
        let detector_step_failures = IntCounter::new(
            "promo_detector_step_failures_total",
            "Detector steps that failed (Redis down or slow); each batch is aborted and redone.",
        )?;
        let end_to_end_latency = Histogram::with_opts(
            HistogramOpts::new(
                "promo_end_to_end_latency_seconds",
                "Time from an order's event time to its conversion being produced.",
            )
            .buckets(END_TO_END_BUCKETS.to_vec()),
        )?;
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "promo_consumer_lag",
                "Records between the committed position and the high watermark, per partition.",
            ),
            &["topic", "partition"],
        )?;
        let transactions = IntCounterVec::new(
            Opts::new(
                "promo_transactions_total",
                "Kafka transactions ended, by outcome (committed or aborted).",
            ),
            &["outcome"],
        )?;
        let code_table_info = IntGaugeVec::new(
            Opts::new(
                "promo_code_table_info",
                "Always 1, labelled with the version of the code table in use.",
            ),
            &["version"],
        )?;
        let code_table_entries = IntGauge::new(
            "promo_code_table_entries",
            "Entries in the code table in use.",
        )?;
        let code_table_age = Gauge::new(
            "promo_code_table_age_seconds",
            "Seconds since the code table in use was last confirmed current against its source (the code store); the worker stops crediting past store.max_staleness_secs.",
        )?;
        let code_table_reloads = IntCounterVec::new(
            Opts::new(
                "promo_code_table_reloads_total",
                "New code table versions taken from the store, by outcome (loaded or refused).",
            ),
            &["outcome"],
        )?;
        let code_table_propagation = Histogram::with_opts(
            HistogramOpts::new(
                "promo_code_table_propagation_seconds",
                "Time from a code table version's publish to its use by this worker.",
            )
            .buckets(COMMIT_LATENCY_BUCKETS.to_vec()),
        )?;
        let redis_up = IntGauge::new(
            "promo_redis_up",
            "1 when the last Redis operation succeeded, 0 otherwise.",
        )?;
        let assigned_partitions = IntGauge::new(
            "promo_assigned_partitions",
            "Input partitions currently assigned to this worker.",
        )?;
        let worker_paused = IntGauge::new(
            "promo_worker_paused",
            "1 while consumption is paused because of a transient error.",
        )?;

        registry.register(Box::new(orders_consumed.clone()))?;
        registry.register(Box::new(conversions.clone()))?;
        registry.register(Box::new(alerts.clone()))?;
        registry.register(Box::new(adjustments.clone()))?;
        registry.register(Box::new(dlq_records.clone()))?;
        registry.register(Box::new(batch_size.clone()))?;
        registry.register(Box::new(commit_latency.clone()))?;
        registry.register(Box::new(end_to_end_latency.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        registry.register(Box::new(transactions.clone()))?;
        registry.register(Box::new(code_table_info.clone()))?;
        registry.register(Box::new(code_table_entries.clone()))?;
        registry.register(Box::new(code_table_age.clone()))?;
        registry.register(Box::new(code_table_reloads.clone()))?;
        registry.register(Box::new(code_table_propagation.clone()))?;
        registry.register(Box::new(redis_up.clone()))?;
        registry.register(Box::new(detector_step.clone()))?;
        registry.register(Box::new(detector_step_failures.clone()))?;
        registry.register(Box::new(assigned_partitions.clone()))?;
        let worker_state = IntGaugeVec::new(
            Opts::new(
                "promo_worker_state",
                "1 for what the worker is doing now (starting, unassigned, idle, processing, retrying, paused_stale_table, stalled), 0 for the others; worked out at each scrape.",
            ),
            &["state"],
        )?;
        registry.register(Box::new(worker_paused.clone()))?;
        registry.register(Box::new(worker_state.clone()))?;
        // Every state exists from the start, so an alert on one reads 0, not "no data".
        for state in WorkerState::ALL {
            worker_state
                .with_label_values(&[state.as_str()])
                .set(i64::from(state == WorkerState::Starting));
        }

        // Both outcomes exist from the start so that `rate()` over aborts reads 0, not "no data",
        // until the first abort.
        for outcome in [TxOutcome::Committed, TxOutcome::Aborted] {
            transactions.with_label_values(&[outcome.as_str()]);
        }
        for outcome in ["loaded", "refused"] {
            code_table_reloads.with_label_values(&[outcome]);
        }

        Ok(Metrics {
            registry,
            orders_consumed,
            conversions,
            alerts,
            adjustments,
            dlq_records,
            batch_size,
            commit_latency,
            end_to_end_latency,
            consumer_lag,
            transactions,
            code_table_info,
            code_table_version: Mutex::new(None),
            code_table_entries,
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
        self.conversions
            .with_label_values(&[
                status_label(status),
                basis.map_or("", basis_label),
                reason.map_or("", InvalidReason::as_str),
            ])
            .inc();
    }

    pub fn record_alert(&self, kind: AlertKind) {
        self.alerts.with_label_values(&[kind.as_str()]).inc();
    }

    /// An adjustment event's outcome: `None` when it wrote no record.
    pub fn record_adjustment(&self, recorded: Option<(&str, &str)>) {
        let (kind, reason) = recorded.unwrap_or(("NONE", ""));
        self.adjustments.with_label_values(&[kind, reason]).inc();
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

    /// One detector step: how long it took, and whether it failed.
    pub fn observe_detector_step(&self, elapsed: Duration, failed: bool) {
        self.detector_step.observe(elapsed.as_secs_f64());
        if failed {
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

    pub fn record_code_table_reload(&self, loaded: bool) {
        let outcome = if loaded { "loaded" } else { "refused" };
        self.code_table_reloads.with_label_values(&[outcome]).inc();
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

/// Kept beside the enum's serde spelling (checked in tests) because `Status` has no `as_str`.
fn status_label(status: Status) -> &'static str {
    match status {
        Status::Credited => "CREDITED",
        Status::Invalid => "INVALID",
        Status::Unattributed => "UNATTRIBUTED",
    }
}

fn basis_label(basis: Basis) -> &'static str {
    match basis {
        Basis::CodeAlways => "CODE_ALWAYS",
        Basis::CodeInvolved => "CODE_INVOLVED",
        Basis::CodeWinner => "CODE_WINNER",
        Basis::Click => "CLICK",
    }
}

#[cfg(test)]
mod tests;
