//! Small Kafka tools for the demo, tests and benchmarks: create topics, produce a file of JSON
//! lines, read a topic back. Debian's `kcat` is too old to talk to current brokers such as
//! tansu, so the project carries its own, built on the same client as the worker.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

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
    let producer: BaseProducer = client(brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()
        .map_err(|e| format!("producer: {e}"))?;
    for payload in records {
        let key = serde_json::from_slice::<serde_json::Value>(payload)
            .ok()
            .and_then(|v| {
                v.get("order_id")
                    .and_then(|id| id.as_str())
                    .map(str::to_string)
            });
        let mut record: BaseRecord<'_, str, [u8]> =
            BaseRecord::to(topic).payload(payload.as_slice());
        if let Some(key) = &key {
            record = record.key(key.as_str());
        }
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((
                    rdkafka::error::KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull),
                    back,
                )) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
                Err((e, _)) => return Err(format!("produce: {e}")),
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .map_err(|e| format!("flush: {e}"))?;
    Ok(records.len())
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: BTreeMap<String, Vec<u8>>,
}

/// What a reader sees of transactional records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isolation {
    /// Committed records only, up to the last stable offset (what downstream readers use).
    ReadCommitted,
    /// Everything written, open transactions included: shows whether a record a committed
    /// reader misses was written at all.
    ReadUncommitted,
}

impl Isolation {
    fn property(self) -> &'static str {
        match self {
            Isolation::ReadCommitted => "read_committed",
            Isolation::ReadUncommitted => "read_uncommitted",
        }
    }
}

/// Reads a topic from the beginning of every partition, without a consumer group, until
/// `expected` records arrived or `timeout` passed, whichever is first.
pub fn read_topic(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
) -> Result<Vec<ReadRecord>, String> {
    read_topic_as(brokers, topic, expected, timeout, Isolation::ReadCommitted)
}

/// Per partition of `topic`: (partition, low, high) as a reader of the given isolation sees
/// them; for read_committed the high mark is the last stable offset, so a transaction left
/// open shows as a high mark below the read_uncommitted one. Only on brokers that answer
/// ListOffsets by offset: tansu picks batches by modification time (low: the batch written
/// longest ago; high: one past the base offset of the newest batch).
pub fn end_offsets(
    brokers: &str,
    topic: &str,
    isolation: Isolation,
) -> Result<Vec<(i32, i64, i64)>, String> {
    let (consumer, partitions) = reader(brokers, topic, isolation)?;
    let mut offsets = Vec::new();
    for partition in partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, Duration::from_secs(10))
            .map_err(|e| format!("watermarks of {topic}[{partition}]: {e}"))?;
        offsets.push((partition, low, high));
    }
    offsets.sort_unstable();
    Ok(offsets)
}

/// A group-less consumer for reading `topic` at `isolation`, and the topic's partitions.
fn reader(
    brokers: &str,
    topic: &str,
    isolation: Isolation,
) -> Result<(BaseConsumer, Vec<i32>), String> {
    reader_with(brokers, topic, isolation, false)
}

/// [`reader`], optionally told by the client when it reaches a partition's end.
fn reader_with(
    brokers: &str,
    topic: &str,
    isolation: Isolation,
    partition_eof: bool,
) -> Result<(BaseConsumer, Vec<i32>), String> {
    let consumer: BaseConsumer = client(brokers)
        .set("group.id", "promo-attribution-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", partition_eof.to_string())
        .set("isolation.level", isolation.property())
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .map_err(|e| format!("metadata of {topic}: {e}"))?;
    let partitions = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    Ok((consumer, partitions))
}

/// Assigns every partition at offset 0, not `Offset::Beginning`: tansu answers
/// ListOffsets(EARLIEST) with the batch written longest ago, which is not the first one when two
/// producers' puts finish out of order, and the reader would silently skip the batches before
/// it. Where offset 0 is gone (retention), `auto.offset.reset` falls back to the earliest.
fn assign_from_zero(
    consumer: &BaseConsumer,
    topic: &str,
    partitions: &[i32],
) -> Result<(), String> {
    let mut assignment = TopicPartitionList::new();
    for &partition in partitions {
        assignment
            .add_partition_offset(topic, partition, Offset::Offset(0))
            .map_err(|e| format!("assign: {e}"))?;
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assign {topic}: {e}"))
}

/// [`read_topic`] with a chosen isolation level.
pub fn read_topic_as(
    brokers: &str,
    topic: &str,
    expected: usize,
    timeout: Duration,
    isolation: Isolation,
) -> Result<Vec<ReadRecord>, String> {
    let (consumer, partitions) = reader(brokers, topic, isolation)?;
    assign_from_zero(&consumer, topic, &partitions)?;
    let deadline = Instant::now() + timeout;
    let mut records = Vec::new();
    while records.len() < expected && Instant::now() < deadline {
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = result.map_err(|e| format!("read {topic}: {e}"))?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(ReadRecord {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
    Ok(records)
}

/// Reads every partition of `topic` from offset 0 to its end, handing each record to `each`
/// as (partition, offset, payload); returns the number of records read. A partition is done
/// when the broker reports its end to this reader (partition EOF) and the reader's position is
/// at least the partition's end offset when the call began (for read_committed, the last stable
/// offset): everything committed before the call is read, and records committed while it reads
/// may be read too. A partition that makes no progress for `idle_timeout` is an error naming it.
///
/// Offset 0 rather than `Offset::Beginning` for the reason in [`assign_from_zero`]. The end offsets
/// alone cannot say when to stop: tansu answers ListOffsets(LATEST) with one past the base offset
/// of the newest batch, below the true end when that batch holds several records (see
/// [`end_offsets`]), while the end a fetch reports, which EOF is based on, is exact.
pub fn read_to_end(
    brokers: &str,
    topic: &str,
    isolation: Isolation,
    idle_timeout: Duration,
    mut each: impl FnMut(i32, i64, &[u8]),
) -> Result<u64, String> {
    let ends = end_offsets(brokers, topic, isolation)?;
    if ends.is_empty() {
        return Err(format!("topic {topic} has no partitions (does it exist?)"));
    }
    let (consumer, _) = reader_with(brokers, topic, isolation, true)?;
    let mut pending: BTreeMap<i32, i64> = ends.iter().map(|&(p, _, end)| (p, end)).collect();
    let partitions: Vec<i32> = pending.keys().copied().collect();
    assign_from_zero(&consumer, topic, &partitions)?;
    let mut read = 0u64;
    let mut last_progress = Instant::now();
    while !pending.is_empty() {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(message)) => {
                last_progress = Instant::now();
                if pending.contains_key(&message.partition()) {
                    let payload = message.payload().unwrap_or_default();
                    each(message.partition(), message.offset(), payload);
                    read += 1;
                }
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(partition))) => {
                last_progress = Instant::now();
                let end = pending.get(&partition).copied().unwrap_or(0);
                if position(&consumer, topic, partition)? >= end {
                    pending.remove(&partition);
                }
            }
            Some(Err(e)) => return Err(format!("read {topic}: {e}")),
            None if last_progress.elapsed() > idle_timeout => {
                let mut stuck = Vec::new();
                for (&partition, end) in &pending {
                    let at = position(&consumer, topic, partition)?;
                    stuck.push(format!("{topic}[{partition}] at offset {at}, end {end}"));
                }
                return Err(format!(
                    "no progress for {} s: {}",
                    idle_timeout.as_secs(),
                    stuck.join("; ")
                ));
            }
            None => {}
        }
    }
    Ok(read)
}

/// The reader's next offset in `partition` (0 before it has read anything).
fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<i64, String> {
    let positions = consumer
        .position()
        .map_err(|e| format!("position in {topic}: {e}"))?;
    Ok(positions
        .find_partition(topic, partition)
        .and_then(|p| match p.offset() {
            Offset::Offset(at) => Some(at),
            _ => None,
        })
        .unwrap_or(0))
}
