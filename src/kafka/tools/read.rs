//! Reading topics back without a consumer group: whole topics, ranges, or on from where the
//! last read stopped. Every reader starts at offset 0, never `Offset::Beginning`; see
//! [`assign_from_zero`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::client;

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

/// A consumer that reads without a group (it never commits, assigns partitions itself).
fn reader_config(brokers: &str, isolation: Isolation) -> ClientConfig {
    let mut config = client(brokers);
    config
        .set("group.id", "promo-attribution-reader")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", isolation.property());
    config
}

/// A group-less consumer for reading `topic` at `isolation`, and the topic's partitions.
fn reader(
    brokers: &str,
    topic: &str,
    isolation: Isolation,
) -> Result<(BaseConsumer, Vec<i32>), String> {
    let consumer: BaseConsumer = reader_config(brokers, isolation)
        // tansu on S3 storage answers a fetch empty when its wait runs out while it lists the
        // partition's stored batches, and the next fetch starts the listing again: with
        // librdkafka's 500 ms a loaded local S3 server left a reader with a few hundred of
        // 3,000 records for minutes (docs/dev-notes/2026-12-06-durable-broker-fetch-livelock.md).
        // These reads wait for a count or a deadline, not for the partition's end, so a longer
        // wait costs nothing on a broker that answers at once.
        .set("fetch.wait.max.ms", "2000")
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
    let mut reader = TopicReader::open(brokers, topic, isolation)?;
    reader.read_until(Instant::now() + timeout, |records| {
        records.len() >= expected
    })?;
    Ok(reader.into_records())
}

/// A group-less reader of every partition of a topic from offset 0 that keeps its place: each
/// [`TopicReader::read_until`] goes on from where the last one stopped. A caller that waits for
/// records and looks at what it has between waits re-reads nothing, which matters on the
/// durable broker, where reading a topic of a few thousand small transactions from the start
/// takes about a minute.
pub struct TopicReader {
    consumer: BaseConsumer,
    topic: String,
    records: Vec<ReadRecord>,
}

impl TopicReader {
    pub fn open(brokers: &str, topic: &str, isolation: Isolation) -> Result<TopicReader, String> {
        let (consumer, partitions) = reader(brokers, topic, isolation)?;
        assign_from_zero(&consumer, topic, &partitions)?;
        Ok(TopicReader {
            consumer,
            topic: topic.to_string(),
            records: Vec::new(),
        })
    }

    /// Reads until `done` holds for the records read so far (asked after each record, so it
    /// should look only at the ones it has not seen) or `deadline` passes; returns whether
    /// `done` held.
    pub fn read_until(
        &mut self,
        deadline: Instant,
        mut done: impl FnMut(&[ReadRecord]) -> bool,
    ) -> Result<bool, String> {
        loop {
            if done(&self.records) {
                return Ok(true);
            }
            if Instant::now() >= deadline {
                return Ok(false);
            }
            let Some(result) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            let message = result.map_err(|e| format!("read {}: {e}", self.topic))?;
            let headers = message
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            self.records.push(ReadRecord {
                partition: message.partition(),
                offset: message.offset(),
                key: message.key().map(<[u8]>::to_vec),
                payload: message.payload().map(<[u8]>::to_vec),
                headers,
            });
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Every record read so far, in the order read.
    pub fn records(&self) -> &[ReadRecord] {
        &self.records
    }

    pub fn into_records(self) -> Vec<ReadRecord> {
        self.records
    }
}

/// One record read with everything a tool may need to send it again or place it in time: its
/// headers in their order (repeats kept, a null value distinct from an empty one) and its
/// timestamp (ms since the epoch; `None` when the broker gave none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawRecord {
    pub partition: i32,
    pub offset: i64,
    pub timestamp: Option<i64>,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// Where to read one partition: from `from` (inclusive) to `to` (exclusive), or to the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionRange {
    pub partition: i32,
    pub from: i64,
    pub to: Option<i64>,
}

/// The partitions of `topic`, sorted.
pub fn partitions(brokers: &str, topic: &str) -> Result<Vec<i32>, String> {
    let (_, mut partitions) = reader(brokers, topic, Isolation::ReadCommitted)?;
    partitions.sort_unstable();
    if partitions.is_empty() {
        return Err(format!("topic {topic} does not exist or has no partitions"));
    }
    Ok(partitions)
}

/// Reads each range of `topic` at explicit offsets (never `Offset::Beginning`: see
/// [`read_topic_as`]) until its `to` offset, or, without one, until the partition's end as the
/// reader sees it (librdkafka's end-of-partition event; for read_committed, the last stable
/// offset). `quiet` bounds the wait for a partition that sends neither records nor an end event;
/// a range that stops that way short of its `to` is an error, not a silently short read.
pub fn read_ranges(
    brokers: &str,
    topic: &str,
    ranges: &[PartitionRange],
    isolation: Isolation,
    quiet: Duration,
) -> Result<Vec<RawRecord>, String> {
    let consumer: BaseConsumer = reader_config(brokers, isolation)
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
    let mut assignment = TopicPartitionList::new();
    let mut open: BTreeMap<i32, Option<i64>> = BTreeMap::new();
    for range in ranges {
        if range.to.is_some_and(|to| to <= range.from) {
            continue;
        }
        assignment
            .add_partition_offset(topic, range.partition, Offset::Offset(range.from))
            .map_err(|e| format!("assign: {e}"))?;
        open.insert(range.partition, range.to);
    }
    let mut records = Vec::new();
    if open.is_empty() {
        return Ok(records);
    }
    consumer
        .assign(&assignment)
        .map_err(|e| format!("assign {topic}: {e}"))?;
    let mut last_news = Instant::now();
    while !open.is_empty() {
        if last_news.elapsed() >= quiet {
            let waiting: Vec<String> = open
                .iter()
                .map(|(p, to)| match to {
                    Some(to) => format!("{topic}[{p}] before offset {to}"),
                    None => format!("{topic}[{p}] (no end-of-partition event)"),
                })
                .collect();
            return Err(format!(
                "nothing more arrived within {quiet:?} for {}",
                waiting.join(", ")
            ));
        }
        let Some(result) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        last_news = Instant::now();
        let message = match result {
            Ok(message) => message,
            Err(rdkafka::error::KafkaError::PartitionEOF(partition)) => {
                // At the end before the `to` offset, the range asks for records that do not
                // exist (yet): say so. The position, not the last record read, decides, since a
                // transaction marker can take the offset just before `to`.
                if let Some(Some(to)) = open.get(&partition) {
                    let at = position(&consumer, topic, partition)?;
                    if at < *to {
                        return Err(format!(
                            "{topic}[{partition}] ends at offset {at}, before {to} (range past the end)"
                        ));
                    }
                }
                open.remove(&partition);
                continue;
            }
            Err(e) => return Err(format!("read {topic}: {e}")),
        };
        let partition = message.partition();
        let Some(to) = open.get(&partition).copied() else {
            continue;
        };
        if to.is_some_and(|to| message.offset() >= to) {
            open.remove(&partition);
            continue;
        }
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_string(), h.value.map(<[u8]>::to_vec)))
                    .collect()
            })
            .unwrap_or_default();
        records.push(RawRecord {
            partition,
            offset: message.offset(),
            timestamp: message.timestamp().to_millis(),
            key: message.key().map(<[u8]>::to_vec),
            payload: message.payload().map(<[u8]>::to_vec),
            headers,
        });
        if to.is_some_and(|to| message.offset() + 1 >= to) {
            open.remove(&partition);
        }
    }
    Ok(records)
}

/// Where `consumer` will read `topic[partition]` next.
fn position(consumer: &BaseConsumer, topic: &str, partition: i32) -> Result<i64, String> {
    let positions = consumer
        .position()
        .map_err(|e| format!("position in {topic}[{partition}]: {e}"))?;
    match positions
        .find_partition(topic, partition)
        .map(|p| p.offset())
    {
        Some(Offset::Offset(at)) => Ok(at),
        other => Err(format!("no position in {topic}[{partition}]: {other:?}")),
    }
}

/// Every record of `topic` a reader of `isolation` sees now, from offset 0 of every partition
/// to its end.
pub fn read_all(
    brokers: &str,
    topic: &str,
    isolation: Isolation,
    quiet: Duration,
) -> Result<Vec<RawRecord>, String> {
    let ranges: Vec<PartitionRange> = partitions(brokers, topic)?
        .into_iter()
        .map(|partition| PartitionRange {
            partition,
            from: 0,
            to: None,
        })
        .collect();
    read_ranges(brokers, topic, &ranges, isolation, quiet)
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
    let consumer: BaseConsumer = reader_config(brokers, isolation)
        .set("enable.partition.eof", "true")
        .create()
        .map_err(|e| format!("consumer: {e}"))?;
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
                // An empty partition reports its end before the reader has a position.
                let at = position(&consumer, topic, partition).unwrap_or(0);
                if at >= end {
                    pending.remove(&partition);
                }
            }
            Some(Err(e)) => return Err(format!("read {topic}: {e}")),
            None if last_progress.elapsed() > idle_timeout => {
                let mut stuck = Vec::new();
                for (&partition, end) in &pending {
                    let at = position(&consumer, topic, partition)
                        .map_or_else(|e| e, |at| format!("at offset {at}"));
                    stuck.push(format!("{topic}[{partition}] {at}, end {end}"));
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
