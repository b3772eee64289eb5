//! What the Kafka clients report on their own — librdkafka's log lines and error events, from
//! the producer and the consumer alike — routed to `tracing` with repeats rate-limited, and an
//! unreachable broker reported to the health so `/readyz` and `promo_worker_state` name it.
//!
//! A broker that does not answer makes librdkafka report the same failure for every connection
//! attempt of every client, dozens of times a second; each kind is logged the first time, then
//! once per `worker.repeated_warning_secs` with the number of repeats in between.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaErrorCode;

use crate::admin::Health;
use crate::repeated::RepeatedByKey;

/// The message of the warning about an unreachable broker; tests and operators search for it.
pub const NO_BROKER: &str =
    "no Kafka broker reachable; nothing is read or committed until one answers";

pub struct ClientEvents {
    health: Arc<Health>,
    /// `kafka.brokers`, named in the warnings and the readiness reason.
    brokers: String,
    repeated: RepeatedByKey,
}

impl ClientEvents {
    pub fn new(health: Arc<Health>, brokers: &str, every: Duration) -> ClientEvents {
        ClientEvents {
            health,
            brokers: brokers.to_owned(),
            repeated: RepeatedByKey::new(every),
        }
    }

    pub fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        if matches!(level, RDKafkaLogLevel::Debug) {
            tracing::debug!(target: "librdkafka", facility, message);
            return;
        }
        let Some(repeats) = self.repeated.occurred(&format!("log {level:?} {facility}")) else {
            return;
        };
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", facility, message, repeats)
            }
            RDKafkaLogLevel::Warning => {
                tracing::warn!(target: "librdkafka", facility, message, repeats)
            }
            _ => tracing::info!(target: "librdkafka", facility, message, repeats),
        }
    }

    /// An error event of either client (`ClientContext::error`), or a consume error.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            self.no_broker(reason);
            return;
        }
        if let Some(repeats) = self.repeated.occurred(&format!("error {code:?}")) {
            tracing::warn!(target: "librdkafka", %error, reason, repeats, "Kafka client error");
        }
    }

    /// No broker answers: librdkafka says all are down, or none answered in time.
    pub fn no_broker(&self, reason: &str) {
        self.health
            .broker_unreachable(&format!("{reason} (kafka.brokers = {})", self.brokers));
        if let Some(repeats) = self.repeated.occurred("no broker") {
            tracing::warn!(brokers = %self.brokers, reason, repeats, "{NO_BROKER}");
        }
    }

    /// A broker answered.
    pub fn broker_answered(&self) {
        self.health.broker_reachable();
    }

    /// The statistics list each broker's connection state; one that is up is an answer.
    pub fn statistics(&self, statistics: &Statistics) {
        if statistics.brokers.values().any(|b| b.state == "UP") {
            self.broker_answered();
        }
    }
}
