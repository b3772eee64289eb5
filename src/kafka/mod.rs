//! The Kafka edge: client configuration, the consume→decide→produce pipeline with its delivery
//! guarantees, and the poll loop that drives it on its own thread.

mod acks;
pub mod context;
pub mod delivery;
pub mod events;
pub mod failure;
pub mod outputs;
pub mod pipeline;
pub mod tools;
pub mod worker;

use rdkafka::ClientConfig;

use crate::settings::{Delivery, KafkaSettings};

pub use failure::Failure;
pub use worker::{WorkerExit, run_worker};

fn apply(config: &mut ClientConfig, properties: &std::collections::BTreeMap<String, String>) {
    for (key, value) in properties {
        config.set(key, value);
    }
}

/// Consumer properties. Ours first, then the operator's passthrough properties (which cannot
/// touch the reserved ones, see `settings::worker::RESERVED_PROPERTIES`), then the guarantees.
pub fn consumer_config(kafka: &KafkaSettings) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("auto.offset.reset", "earliest")
        .set("partition.assignment.strategy", "cooperative-sticky")
        // Lag per partition arrives with the statistics; 5 s is frequent enough for a gauge and
        // cheap for librdkafka.
        .set("statistics.interval.ms", "5000")
        // How long the broker may hold a fetch while the partition has nothing new: with a
        // worker that commits as soon as nothing is ready, it bounds how late a record that
        // arrives on an idle partition is seen (where the broker does not answer as soon as data
        // arrives), at the cost of more fetch requests while idle.
        .set("fetch.wait.max.ms", "10")
        // Membership changes within seconds: a silent member's partitions move after 10 s
        // (librdkafka's 45 s default kept them idle for most of a minute); heartbeats at a tenth
        // of that leave room for a few lost ones. Real Kafka accepts session timeouts from 6 s
        // (group.min.session.timeout.ms).
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "1000")
        .set("queued.min.messages", "20000");
    apply(&mut config, &kafka.common);
    apply(&mut config, &kafka.consumer);
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("group.id", &kafka.group_id)
        .set("enable.auto.offset.store", "false")
        .set("isolation.level", "read_committed");
    // A restarted instance comes back under the same id and gets its partitions without a
    // rebalance; see `KafkaSettings::static_membership` for what that costs.
    if let Some(instance) = kafka.effective_group_instance_id() {
        config.set("group.instance.id", instance);
    }
    // Exactly-once: offsets travel inside the transaction, an auto-commit would move them outside
    // it. At-least-once: offsets are stored and committed once their batch is acknowledged.
    config.set("enable.auto.commit", "false");
    config
}

/// Producer properties for the given delivery mode.
pub fn producer_config(kafka: &KafkaSettings, transactional_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        // A batch's commit waits for its last outputs to be acknowledged, so every ms of
        // linger is added to each commit; under load batches fill without it.
        .set("linger.ms", "1")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("compression.type", "none")
        // Same key → same partition as Java clients would choose, so conversions of one order
        // land together whichever client wrote them.
        .set("partitioner", "murmur2_random")
        .set(
            "transaction.timeout.ms",
            kafka.transaction_timeout_ms.to_string(),
        );
    apply(&mut config, &kafka.common);
    apply(&mut config, &kafka.producer);
    config
        .set("bootstrap.servers", &kafka.brokers)
        .set("enable.idempotence", "true");
    if kafka.delivery == Delivery::ExactlyOnce {
        config.set("transactional.id", transactional_id);
    }
    config
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guarantees_win_over_passthrough_and_modes_differ() {
        let mut kafka = KafkaSettings::default();
        kafka
            .consumer
            .insert("fetch.min.bytes".into(), "1024".into());
        kafka
            .common
            .insert("security.protocol".into(), "SASL_SSL".into());
        let consumer = consumer_config(&kafka);
        assert_eq!(consumer.get("fetch.min.bytes"), Some("1024"));
        assert_eq!(consumer.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(consumer.get("enable.auto.commit"), Some("false"));
        assert_eq!(consumer.get("isolation.level"), Some("read_committed"));
        assert_eq!(
            consumer.get("group.instance.id"),
            kafka.effective_group_instance_id().as_deref()
        );
        assert_eq!(consumer.get("session.timeout.ms"), Some("10000"));
        let producer = producer_config(&kafka, "tx-1");
        assert_eq!(producer.get("transactional.id"), Some("tx-1"));
        kafka.delivery = Delivery::AtLeastOnce;
        assert_eq!(
            consumer_config(&kafka).get("enable.auto.offset.store"),
            Some("false")
        );
        assert_eq!(
            producer_config(&kafka, "tx-1").get("transactional.id"),
            None
        );
        assert_eq!(
            producer_config(&kafka, "tx-1").get("enable.idempotence"),
            Some("true")
        );
    }
}
