//! Internal events: each notable thing that happens to the worker is a type whose
//! [`InternalEvent::emit`] writes its log line and moves its metrics together, so the two cannot
//! drift apart (a counter without its log line, a warning nobody can graph). The pattern is
//! Vector's `internal_events`; the names are past-tense facts.
//!
//! Per-record counts without a log line of their own (conversions, alerts) stay plain
//! [`Metrics`] calls: an event is for what an operator reads in the log as well.

use std::fmt::Display;
use std::time::Duration;

use rdkafka::TopicPartitionList;

use super::{Metrics, ReloadOutcome};

pub trait InternalEvent {
    fn emit(self, metrics: &Metrics);
}

/// A check of the code store failed; the last good table keeps serving meanwhile.
pub struct CodeStoreCheckFailed<'a> {
    pub error: &'a dyn Display,
    /// Redis itself failed (rather than, say, a version vanishing mid-read): `promo_redis_up`
    /// drops to 0.
    pub redis_down: bool,
    pub retry: Duration,
    pub table_version: &'a str,
}

impl InternalEvent for CodeStoreCheckFailed<'_> {
    fn emit(self, metrics: &Metrics) {
        if self.redis_down {
            metrics.set_redis_up(false);
        }
        tracing::warn!(
            error = %self.error,
            retry_ms = self.retry.as_millis() as u64,
            table_version = self.table_version,
            "code store check failed; serving the last good table"
        );
    }
}

/// A new code table version is in force.
pub struct CodeTableApplied<'a> {
    pub version: &'a str,
    pub patched_rows: usize,
    pub apply: Duration,
    /// Seconds since the version was published, when the store says when (Redis's clock).
    pub since_publish: Option<f64>,
}

impl InternalEvent for CodeTableApplied<'_> {
    fn emit(self, metrics: &Metrics) {
        if let Some(seconds) = self.since_publish {
            metrics.observe_code_table_propagation(seconds);
        }
        metrics.record_code_table_reload(ReloadOutcome::Loaded);
        tracing::info!(
            version = %self.version,
            patched_rows = self.patched_rows,
            apply_ms = self.apply.as_secs_f64() * 1000.0,
            since_publish_ms = self.since_publish.map(|s| s * 1000.0),
            "code table version in force"
        );
    }
}

/// The current version in the store cannot be used; the previous table stays in force,
/// unconfirmed.
pub struct CodeTableRefused<'a> {
    pub version: u64,
    pub reason: &'a str,
}

impl InternalEvent for CodeTableRefused<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.record_code_table_reload(ReloadOutcome::Refused);
        tracing::error!(version = self.version, reason = %self.reason, "cannot use the current code table version; keeping the previous one");
    }
}

/// A batch failed transiently: it is given up and redone after `wait`; the worker counts as
/// paused until then.
pub struct BatchRetrying<'a> {
    pub error: &'a dyn Display,
    pub wait: Duration,
}

impl InternalEvent for BatchRetrying<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.set_paused(true);
        tracing::warn!(error = %self.error, wait_ms = self.wait.as_millis() as u64, "aborting the batch and retrying");
    }
}

/// The wait after a failed batch is over; the batch is redone.
pub struct BatchResumed;

impl InternalEvent for BatchResumed {
    fn emit(self, metrics: &Metrics) {
        metrics.set_paused(false);
    }
}

/// The group gave this worker partitions: their lag series exist from now on.
pub struct PartitionsAssigned<'a> {
    pub partitions: &'a TopicPartitionList,
}

impl InternalEvent for PartitionsAssigned<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(partitions = %partition_ids(self.partitions), "partitions assigned");
        for element in self.partitions.elements() {
            metrics.init_lag(element.topic(), element.partition());
        }
    }
}

/// The group took partitions away: another worker reports their lag now, and a stale value
/// here would double-count it when summed.
pub struct PartitionsRevoked<'a> {
    pub partitions: &'a TopicPartitionList,
    pub lost: bool,
}

impl InternalEvent for PartitionsRevoked<'_> {
    fn emit(self, metrics: &Metrics) {
        tracing::info!(
            partitions = %partition_ids(self.partitions),
            lost = self.lost,
            "partitions revoked"
        );
        for element in self.partitions.elements() {
            metrics.clear_lag(element.topic(), element.partition());
        }
    }
}

/// An input record went to the dead-letter topic. Per record, so the log line is at debug.
pub struct DeadLettered<'a> {
    /// One of [`crate::engine::Rejection::REASONS`]: it becomes a label value.
    pub reason: &'a str,
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
}

impl InternalEvent for DeadLettered<'_> {
    fn emit(self, metrics: &Metrics) {
        metrics.record_dlq(self.reason);
        tracing::debug!(
            reason = self.reason,
            topic = self.topic,
            partition = self.partition,
            offset = self.offset,
            "record dead-lettered"
        );
    }
}

/// "2,5" for the log: which partitions moved, not only how many.
fn partition_ids(partitions: &TopicPartitionList) -> String {
    partitions
        .elements()
        .iter()
        .map(|e| e.partition().to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests {
    use rdkafka::Offset;

    use super::*;
    use crate::settings::LogFormat;

    /// The JSON log lines `emit` writes, as the worker would write them.
    fn logged(emit: impl FnOnce()) -> Vec<serde_json::Value> {
        crate::telemetry::capture::logged(LogFormat::Json, "debug", false, emit)
            .lines()
            .map(|l| serde_json::from_str(l).expect("JSON line"))
            .collect()
    }

    fn sample(m: &Metrics, line: &str) -> bool {
        m.render().expect("render").lines().any(|l| l == line)
    }

    #[test]
    fn a_refused_table_is_logged_and_counted_together() {
        let m = Metrics::new().expect("metrics");
        let lines = logged(|| {
            CodeTableRefused {
                version: 7,
                reason: "bad row",
            }
            .emit(&m)
        });
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["level"], "ERROR");
        assert_eq!(lines[0]["version"], 7);
        assert_eq!(lines[0]["reason"], "bad row");
        assert!(sample(
            &m,
            r#"promo_code_table_reloads_total{outcome="refused"} 1"#
        ));
    }

    #[test]
    fn an_applied_table_is_logged_counted_and_timed() {
        let m = Metrics::new().expect("metrics");
        let lines = logged(|| {
            CodeTableApplied {
                version: "v2",
                patched_rows: 3,
                apply: Duration::from_millis(4),
                since_publish: Some(0.5),
            }
            .emit(&m)
        });
        assert_eq!(lines[0]["message"], "code table version in force");
        assert_eq!(lines[0]["since_publish_ms"], 500.0);
        assert!(sample(
            &m,
            r#"promo_code_table_reloads_total{outcome="loaded"} 1"#
        ));
        assert!(sample(&m, "promo_code_table_propagation_seconds_count 1"));
    }

    #[test]
    fn a_failed_store_check_marks_redis_down_only_when_redis_failed() {
        let m = Metrics::new().expect("metrics");
        m.set_redis_up(true);
        let check = |redis_down| CodeStoreCheckFailed {
            error: &"version 3 vanished",
            redis_down,
            retry: Duration::from_millis(150),
            table_version: "v1",
        };
        let lines = logged(|| check(false).emit(&m));
        assert_eq!(lines[0]["retry_ms"], 150);
        assert!(sample(&m, "promo_redis_up 1"));
        check(true).emit(&m);
        assert!(sample(&m, "promo_redis_up 0"));
    }

    #[test]
    fn a_retried_batch_pauses_until_resumed() {
        let m = Metrics::new().expect("metrics");
        let lines = logged(|| {
            BatchRetrying {
                error: &"transient: broker down",
                wait: Duration::from_millis(80),
            }
            .emit(&m)
        });
        assert_eq!(lines[0]["message"], "aborting the batch and retrying");
        assert_eq!(lines[0]["wait_ms"], 80);
        assert!(sample(&m, "promo_worker_paused 1"));
        BatchResumed.emit(&m);
        assert!(sample(&m, "promo_worker_paused 0"));
    }

    #[test]
    fn partitions_moving_log_their_ids_and_move_their_lag_series() {
        let m = Metrics::new().expect("metrics");
        let mut partitions = TopicPartitionList::new();
        for p in [2, 5] {
            partitions
                .add_partition_offset("orders", p, Offset::Invalid)
                .expect("add");
        }
        let lines = logged(|| {
            PartitionsAssigned {
                partitions: &partitions,
            }
            .emit(&m)
        });
        assert_eq!(lines[0]["partitions"], "2,5");
        assert!(sample(
            &m,
            r#"promo_consumer_lag_records{partition="5",topic="orders"} 0"#
        ));
        PartitionsRevoked {
            partitions: &partitions,
            lost: false,
        }
        .emit(&m);
        assert!(
            !m.render()
                .expect("render")
                .contains("promo_consumer_lag_records{")
        );
    }

    #[test]
    fn a_dead_letter_is_counted_by_reason_and_logged_at_debug() {
        let m = Metrics::new().expect("metrics");
        let lines = logged(|| {
            DeadLettered {
                reason: "malformed_json",
                topic: "orders",
                partition: 1,
                offset: 9,
            }
            .emit(&m)
        });
        assert_eq!(lines[0]["level"], "DEBUG");
        assert_eq!(lines[0]["offset"], 9);
        assert!(sample(
            &m,
            r#"promo_dlq_records_total{reason="malformed_json"} 1"#
        ));
    }
}
