//! Consumer callbacks: rebalances (finish the batch before partitions move), statistics (lag per
//! partition), and librdkafka's own log and error events, handed to [`ClientEvents`].

use std::sync::{Arc, OnceLock};

use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;

use super::events::ClientEvents;
use super::pipeline::Pipeline;
use crate::admin::{Backlog, Health};
use crate::metrics::Metrics;
use crate::metrics::events::{InternalEvent, PartitionsAssigned, PartitionsRevoked};

pub struct WorkerContext {
    /// Set right after the consumer is created: the pipeline owns the producer, which must exist
    /// before the consumer joins the group, and the consumer needs this context to be created.
    pub pipeline: OnceLock<Arc<Pipeline>>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub input_topic: String,
    pub events: Arc<ClientEvents>,
}

impl ClientContext for WorkerContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.events.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.events.error(&error, reason);
    }

    fn stats(&self, statistics: Statistics) {
        self.events.statistics(&statistics);
        let mut backlog = Backlog::default();
        if let Some(topic) = statistics.topics.get(&self.input_topic) {
            for (partition, stats) in &topic.partitions {
                // librdkafka lists an internal partition -1 and reports -1 until it knows.
                if *partition < 0 {
                    continue;
                }
                // An assigned partition still fetching its committed offset has no position:
                // whatever waits there is not being read (a pending transactional offset commit
                // of a dead instance keeps it so until the broker aborts that transaction).
                tracing::debug!(
                    partition,
                    desired = stats.desired,
                    fetch_state = %stats.fetch_state,
                    app_offset = stats.app_offset,
                    committed_offset = stats.committed_offset,
                    ls_offset = stats.ls_offset,
                    hi_offset = stats.hi_offset,
                    "input partition statistics"
                );
                if stats.desired && stats.fetch_state != "active" {
                    backlog.unpositioned += 1;
                }
                let lag = if stats.consumer_lag >= 0 {
                    stats.consumer_lag
                } else if stats.ls_offset >= 0 && stats.app_offset >= 0 {
                    // In exactly-once mode offsets are committed through the producer's
                    // transaction, which the consumer's statistics never see (their lag stays
                    // -1): measure from the read position instead, at most one batch ahead of
                    // the committed offset.
                    (stats.ls_offset - stats.app_offset).max(0)
                } else {
                    continue;
                };
                if stats.desired {
                    backlog.records = backlog.records.saturating_add(lag);
                }
                self.metrics.set_lag(&self.input_topic, *partition, lag);
            }
        }
        self.health.set_backlog(backlog);
    }
}

impl ConsumerContext for WorkerContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(partitions) => {
                PartitionsRevoked {
                    partitions,
                    lost: consumer.assignment_lost(),
                }
                .emit(&self.metrics);
                if let Some(pipeline) = self.pipeline.get() {
                    pipeline.on_revoke(consumer);
                }
            }
            Rebalance::Assign(partitions) => PartitionsAssigned { partitions }.emit(&self.metrics),
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, _: &Rebalance<'_>) {
        let assigned = consumer.assignment().map(|a| a.count()).unwrap_or(0);
        self.metrics.set_assigned_partitions(assigned);
        self.health.set_assigned_partitions(assigned);
    }
}
