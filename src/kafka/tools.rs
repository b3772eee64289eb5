//! Small Kafka tools for the demo, tests and benchmarks: create topics, produce a file of JSON
//! lines, read a topic back. Debian's `kcat` is too old to talk to current brokers such as
//! tansu, so the project carries its own, built on the same client as the worker.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;

use super::acks::AckWait;
use super::delivery::DeliveryCounts;

fn client(brokers: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    config
}

/// Creates topics; ones that already exist are left as they are.
pub fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<(), String> {
    let admin: AdminClient<DefaultClientContext> = client(brokers)
        .create()
        .map_err(|e| format!("admin client: {e}"))?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = runtime
        .block_on(admin.create_topics(&new_topics, &options))
        .map_err(|e| format!("create topics: {e}"))?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("create topic {topic}: {code}")),
        }
    }
    Ok(())
}

/// Produces each record, keyed by its `order_id` when it has one (so one order's events share a
/// partition, as a real order stream would), and waits until all are acknowledged.
pub fn produce_records(brokers: &str, topic: &str, records: &[Vec<u8>]) -> Result<usize, String> {
    RecordProducer::new(brokers)?.send_all(topic, records)
}

/// An idempotent producer for tools and tests that send many small batches (a stream paced in
/// chunks): one connection for all of them, and each batch awaited as its acknowledgements
/// arrive rather than through `flush`, whose polls run in whole 100 ms steps. A batch counts as
/// sent only when the broker stored every record of it at an offset ([`DeliveryCounts`]);
/// otherwise the call fails and the caller sends the batch again, accepting repeats, which the
/// worker writes byte-identical.
pub struct RecordProducer {
    /// Declared before `producer`, so it lets go of the producer's queue first.
    acks: AckWait,
    producer: BaseProducer<DeliveryCounts>,
}

impl RecordProducer {
    pub fn new(brokers: &str) -> Result<RecordProducer, String> {
        let producer = client(brokers)
            .set("linger.ms", "5")
            .set("enable.idempotence", "true")
            .create_with_context(DeliveryCounts::default())
            .map_err(|e| format!("producer: {e}"))?;
        Ok(RecordProducer {
            acks: AckWait::new(&producer),
            producer,
        })
    }

    /// Sends `records` to `topic`, keyed by their `order_id` where they have one, and returns
    /// once the broker has acknowledged all of them (or after 30 s with an error).
    pub fn send_all(&self, topic: &str, records: &[Vec<u8>]) -> Result<usize, String> {
        for payload in records {
            let key = serde_json::from_slice::<serde_json::Value>(payload)
                .ok()
                .and_then(|v| {
                    v.get("order_id")
                        .and_then(|id| id.as_str())
                        .map(str::to_string)
                });
            let mut record: BaseRecord<'_, [u8], [u8]> =
                BaseRecord::to(topic).payload(payload.as_slice());
            if let Some(key) = &key {
                record = record.key(key.as_bytes());
            }
            self.enqueue(record)?;
        }
        self.await_acks(topic, records.len())
    }

    /// Sends records exactly as given (key, value and headers, each possibly absent), in order,
    /// and returns once all are acknowledged: for tools that put records back where they came
    /// from, such as `dlq replay`.
    pub fn send_raw(&self, topic: &str, records: &[RawRecord]) -> Result<usize, String> {
        for raw in records {
            let mut record: BaseRecord<'_, [u8], [u8]> = BaseRecord::to(topic);
            if let Some(key) = &raw.key {
                record = record.key(key.as_slice());
            }
            if let Some(payload) = &raw.payload {
                record = record.payload(payload.as_slice());
            }
            if !raw.headers.is_empty() {
                let mut headers = OwnedHeaders::new_with_capacity(raw.headers.len());
                for (key, value) in &raw.headers {
                    headers = headers.insert(Header {
                        key: key.as_str(),
                        value: value.as_deref(),
                    });
                }
                record = record.headers(headers);
            }
            self.enqueue(record)?;
        }
        self.await_acks(topic, records.len())
    }

    /// Enqueues one record, waiting for room when the local queue is full.
    fn enqueue(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), String> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    // Room comes back as deliveries are reported.
                    self.acks.serve(&self.producer, Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
    }

    fn await_acks(&self, topic: &str, sent: usize) -> Result<usize, String> {
        let before = self.producer.context().mark();
        self.acks
            .until_acknowledged(&self.producer, Duration::from_secs(30))
            .map_err(|in_flight| {
                format!("{in_flight} records to {topic} not acknowledged within 30 s")
            })?;
        let answered = self.producer.context().since(before);
        let (failed, unplaced) = (answered.failed, answered.unplaced);
        if failed > 0 {
            let last = self.producer.context().last_error();
            return Err(format!(
                "{failed} of {sent} records to {topic} were not delivered (last error: {last}); send them again"
            ));
        }
        if unplaced > 0 {
            return Err(format!(
                "{unplaced} of {sent} records to {topic} were reported delivered without an offset \
                 (a retried send the broker called a duplicate), so they may not be stored; send them again"
            ));
        }
        Ok(sent)
    }
}

/// Fences the instance with `transactional_id` and aborts the transaction it left open:
/// `init_transactions` under its id, what its own restart would do first. For an instance lost
/// for good, whose open transaction otherwise holds back read_committed readers of its outputs
/// (and, on Kafka, the offsets of its partitions) until the broker times it out.
pub fn fence(
    brokers: &str,
    transactional_id: &str,
    properties: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), String> {
    let mut config = client(brokers);
    for (key, value) in properties {
        config.set(*key, *value);
    }
    let producer: BaseProducer = config
        .set("bootstrap.servers", brokers)
        .set("transactional.id", transactional_id)
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    producer
        .init_transactions(timeout)
        .map_err(|e| format!("init_transactions for {transactional_id}: {e}"))
}

mod read;
pub use read::{
    Isolation, PartitionRange, RawRecord, ReadRecord, TopicReader, end_offsets, partitions,
    read_all, read_ranges, read_to_end, read_topic, read_topic_as,
};
