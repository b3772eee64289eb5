//! Where a given-up batch started, and the seeks back to it; and the retry of resumable
//! transactional calls.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use crate::backoff::Backoff;
use crate::kafka::Failure;
use crate::kafka::context::WorkerContext;

pub(super) fn offsets_list<'a>(
    offsets: impl Iterator<Item = (&'a str, i32, i64)>,
) -> Result<TopicPartitionList, Failure> {
    let mut list = TopicPartitionList::new();
    for (topic, partition, offset) in offsets {
        list.add_partition_offset(topic, partition, Offset::Offset(offset))
            .map_err(|e| Failure::Fatal(format!("offset list: {e}")))?;
    }
    Ok(list)
}

/// Where each partition of an abandoned batch started.
#[derive(Debug, Clone, Default)]
pub struct RewindPoint(pub(super) BTreeMap<(String, i32), i64>);

impl RewindPoint {
    /// Adds a record read after the batch was abandoned, keeping the lowest offset per partition.
    pub fn note(&mut self, topic: &str, partition: i32, offset: i64) {
        let slot = self
            .0
            .entry((topic.to_string(), partition))
            .or_insert(offset);
        *slot = (*slot).min(offset);
    }

    /// Seeks the partitions still assigned back to where the batch started; partitions that
    /// moved away are left to their new owner, who starts from the committed offsets anyway.
    pub fn seek(&self, consumer: &BaseConsumer<WorkerContext>) -> Result<(), Failure> {
        seek_assigned(consumer, &self.0)
    }
}

fn seek_assigned(
    consumer: &BaseConsumer<WorkerContext>,
    rewind: &BTreeMap<(String, i32), i64>,
) -> Result<(), Failure> {
    if rewind.is_empty() {
        return Ok(());
    }
    let assigned = consumer
        .assignment()
        .map_err(|e| Failure::from_client("assignment", &e))?;
    let still_ours: BTreeMap<(String, i32), i64> = rewind
        .iter()
        .filter(|((topic, partition), _)| assigned.find_partition(topic, *partition).is_some())
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    if still_ours.is_empty() {
        return Ok(());
    }
    let seeks = offsets_list(still_ours.iter().map(|((t, p), o)| (t.as_str(), *p, *o)))?;
    let result = consumer
        .seek_partitions(seeks, Duration::from_secs(10))
        .map_err(|e| Failure::Transient(format!("seek: {e}")))?;
    for element in result.elements() {
        if let Err(e) = element.error() {
            return Err(Failure::Transient(format!(
                "seek {}[{}]: {e}",
                element.topic(),
                element.partition()
            )));
        }
    }
    Ok(())
}

/// Repeats a transactional call that librdkafka calls resumable, a bounded number of times.
pub(super) fn retry_resumable(
    mut call: impl FnMut() -> Result<(), Failure>,
) -> Result<(), Failure> {
    const ATTEMPTS: u32 = 10;
    let mut attempt = 0;
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        match call() {
            Err(Failure::Retriable(message)) if attempt + 1 < ATTEMPTS => {
                attempt += 1;
                tracing::warn!(attempt, %message, "retrying a resumable transactional call");
                std::thread::sleep(backoff.next_wait());
            }
            Err(Failure::Retriable(message)) => return Err(Failure::Transient(message)),
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewind_point_keeps_the_lowest_offset_per_partition() {
        let mut rewind = RewindPoint::default();
        rewind.note("orders", 0, 40);
        rewind.note("orders", 0, 12);
        rewind.note("orders", 0, 30);
        rewind.note("orders", 1, 7);
        let offsets: Vec<_> = rewind
            .0
            .iter()
            .map(|((t, p), o)| (t.as_str(), *p, *o))
            .collect();
        assert_eq!(offsets, [("orders", 0, 12), ("orders", 1, 7)]);
    }
}
