//! One batch at a time: decide each record, produce its outputs, then commit outputs and input
//! offsets together (exactly-once) or store the offsets once every output is acknowledged
//! (at-least-once).
//!
//! The state lives behind a mutex because two callers touch it: the poll loop, and the rebalance
//! callback, which librdkafka runs from inside that same loop's `poll` when partitions move, and
//! which must finish the open batch before they do. The lock is therefore never held across
//! `poll`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Header, Headers, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::util::Timeout;
use rdkafka::{ClientContext, Message};

mod held;
mod rewind;

use held::Held;
pub use rewind::RewindPoint;
use rewind::{offsets_list, retry_resumable};

use super::Failure;
use super::acks::AckWait;
use super::context::WorkerContext;
use super::delivery::{DeliveryCounts, DeliveryMark};
use super::events::ClientEvents;
use super::outputs::{DlqWriter, Source, dlq_headers};
use crate::detectors::DetectorState;
use crate::engine::{Adjusted, Engine, EngineError, Outputs, RecordOutcome, Rejection, WriteKind};
use crate::metrics::events::{DeadLettered, InternalEvent};
use crate::metrics::{CommitPhase, Metrics, TxOutcome};
use crate::settings::{Delivery, Settings};
use crate::table_source::TableHandle;

/// The producer's context: librdkafka's logs and errors go to the worker's events, delivery
/// reports to [`DeliveryCounts`]. At-least-once mode must not store offsets past a record whose
/// output was lost, and no mode may take a delivery without an offset as written.
pub struct DeliveryTracker {
    counts: DeliveryCounts,
    events: Arc<ClientEvents>,
}

impl DeliveryTracker {
    pub fn new(events: Arc<ClientEvents>) -> DeliveryTracker {
        DeliveryTracker {
            counts: DeliveryCounts::default(),
            events,
        }
    }
}

impl ClientContext for DeliveryTracker {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        self.events.log(level, facility, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.events.error(&error, reason);
    }
}

impl ProducerContext for DeliveryTracker {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        self.counts.record(result);
    }
}

/// Where one partition's part of the batch starts and where it has got to.
struct Position {
    topic: String,
    partition: i32,
    first: i64,
    next: i64,
}

#[derive(Default)]
struct Batch {
    open: bool,
    started: Option<Instant>,
    records: usize,
    /// Per partition read in this batch: where to rewind and what to commit.
    positions: Vec<Position>,
    /// The producer's delivery counts when the batch opened.
    deliveries_at_start: DeliveryMark,
    /// The engine's outputs for the records being produced, reused from record to record.
    outputs: Outputs,
    /// With the detectors on, records are decided at commit, all together, so that the batch's
    /// state changes take one round trip: until then they wait here.
    held: Vec<Held>,
    /// The held records' keys and values, back to back.
    arena: Vec<u8>,
}

impl Batch {
    /// Back to "no batch open", keeping the buffers' allocations.
    fn reset(&mut self) {
        let mut outputs = std::mem::take(&mut self.outputs);
        let mut held = std::mem::take(&mut self.held);
        let mut arena = std::mem::take(&mut self.arena);
        outputs.clear();
        held.clear();
        arena.clear();
        *self = Batch {
            outputs,
            held,
            arena,
            ..Batch::default()
        };
    }

    /// Notes that `offset` was read and returns the partition's index in `positions`. A batch
    /// touches a handful of partitions, so a scan beats a map and allocates the topic name only
    /// once per partition.
    fn advance(&mut self, topic: &str, partition: i32, offset: i64) -> usize {
        match self
            .positions
            .iter_mut()
            .position(|p| p.partition == partition && p.topic == topic)
        {
            Some(index) => {
                self.positions[index].next = offset + 1;
                index
            }
            None => {
                self.positions.push(Position {
                    topic: topic.to_string(),
                    partition,
                    first: offset,
                    next: offset + 1,
                });
                self.positions.len() - 1
            }
        }
    }
}

/// Whether the open batch can take more records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchFill {
    Room,
    Full,
}

pub struct Pipeline {
    /// Declared before `producer`, so it lets go of the producer's queue first.
    acks: AckWait,
    producer: BaseProducer<DeliveryTracker>,
    settings: Arc<Settings>,
    table: TableHandle,
    metrics: Arc<Metrics>,
    batch: Mutex<Batch>,
    /// A failure seen inside a rebalance callback, which cannot return it; the loop picks it up.
    deferred: Mutex<Option<Failure>>,
    /// Whether `deferred` holds a failure: read after every record of a burst, so it is an
    /// atomic rather than the mutex.
    has_deferred: AtomicBool,
    engine: Engine,
    /// Connected on first use, so a worker with the detectors on starts even while Redis is
    /// down (its batches then fail and are retried).
    state: Mutex<Option<Box<dyn DetectorState + Send>>>,
    /// This instance's id, the task a dead letter names (worked out once: it may read the host
    /// name).
    transactional_id: String,
}

impl Pipeline {
    pub fn new(
        producer: BaseProducer<DeliveryTracker>,
        settings: Arc<Settings>,
        table: TableHandle,
        metrics: Arc<Metrics>,
    ) -> Pipeline {
        Pipeline {
            acks: AckWait::new(&producer),
            producer,
            transactional_id: settings.kafka.effective_transactional_id(),
            engine: Engine::new(settings.clone()),
            settings,
            table,
            metrics,
            batch: Mutex::default(),
            deferred: Mutex::default(),
            has_deferred: AtomicBool::new(false),
            state: Mutex::default(),
        }
    }

    pub fn producer(&self) -> &BaseProducer<DeliveryTracker> {
        &self.producer
    }

    fn exactly_once(&self) -> bool {
        self.settings.kafka.delivery == Delivery::ExactlyOnce
    }

    fn lock(&self) -> Result<MutexGuard<'_, Batch>, Failure> {
        self.batch
            .lock()
            .map_err(|_| Failure::Fatal("batch state poisoned by an earlier panic".into()))
    }

    pub fn defer(&self, failure: Failure) {
        if let Ok(mut slot) = self.deferred.lock()
            && slot
                .as_ref()
                .is_none_or(|f| !matches!(f, Failure::Fatal(_)))
        {
            *slot = Some(failure);
            self.has_deferred.store(true, Ordering::Release);
        }
    }

    pub fn take_deferred(&self) -> Option<Failure> {
        if !self.has_deferred.swap(false, Ordering::Acquire) {
            return None;
        }
        self.deferred.lock().ok().and_then(|mut slot| slot.take())
    }

    /// Whether a rebalance callback left a failure for the loop.
    pub fn has_deferred(&self) -> bool {
        self.has_deferred.load(Ordering::Acquire)
    }

    /// Whether a batch is open (records read and not yet committed).
    pub fn is_open(&self) -> bool {
        self.batch.lock().is_ok_and(|batch| batch.open)
    }

    /// Whether the open batch should be committed now: it is full, or as old as
    /// `batch_max_ms`, or the consumer had nothing more ready (`idle`) and it is at least
    /// `batch_min_ms` old.
    pub fn is_due(&self, idle: bool) -> Result<bool, Failure> {
        let batch = self.lock()?;
        let kafka = &self.settings.kafka;
        let age = batch.started.map(|s| s.elapsed()).unwrap_or_default();
        Ok(batch.records > 0
            && (batch.records >= kafka.batch_max_records
                || age >= Duration::from_millis(kafka.batch_max_ms)
                || (idle && age >= Duration::from_millis(kafka.batch_min_ms))))
    }

    /// How long the next poll may wait for a record: with a batch open, until it may be committed
    /// for lack of more records (then not at all, so an empty poll means nothing is ready).
    pub fn time_to_due(&self) -> Duration {
        let kafka = &self.settings.kafka;
        match self.batch.lock().ok().and_then(|b| b.started) {
            Some(started) => {
                Duration::from_millis(kafka.batch_min_ms).saturating_sub(started.elapsed())
            }
            None => Duration::from_millis(kafka.batch_max_ms),
        }
    }

    /// Decides one record and produces its outputs into the open batch; says whether the batch
    /// has reached `batch_max_records`.
    pub fn process(&self, message: &BorrowedMessage<'_>) -> Result<BatchFill, Failure> {
        let mut batch = self.lock()?;
        // Recorded before anything can fail, so that a rewind also covers this record.
        let position = batch.advance(message.topic(), message.partition(), message.offset());
        if !batch.open {
            // Checked per batch (a batch lasts at most batch_max_ms): crediting from a table the
            // store has not confirmed for longer than allowed could pay for an expired code.
            self.table
                .check_fresh()
                .map_err(|stale| Failure::Transient(stale.to_string()))?;
            if self.exactly_once() {
                self.producer
                    .begin_transaction()
                    .map_err(|e| Failure::from_transactional("begin_transaction", &e))?;
            }
            batch.open = true;
            batch.started = Some(Instant::now());
            batch.deliveries_at_start = self.producer.context().counts.mark();
        }
        self.metrics.inc_orders_consumed(1);
        batch.records += 1;
        let fill = if batch.records >= self.settings.kafka.batch_max_records {
            BatchFill::Full
        } else {
            BatchFill::Room
        };
        if self.engine.uses_state() {
            // With the detectors on, records are decided at commit, all together, so that the
            // batch's state changes take one round trip.
            batch.hold(message, position);
            return Ok(fill);
        }
        let payload = message.payload().unwrap_or_default();
        let table = self.table.current();
        let Batch { outputs, .. } = &mut *batch;
        outputs.clear();
        self.engine
            .run(&table, None, &[payload], outputs)
            .map_err(engine_failure)?;
        for record in outputs.iter() {
            // Only a dead letter needs the record's coordinates and headers, and librdkafka
            // parses headers on request: asking for them per record cost a parse per order.
            self.produce_outcome(&record, || Source::of(message))?;
        }
        Ok(fill)
    }

    /// Produces one record's outcome into the open batch: its conversion and alerts, or its
    /// dead letter.
    fn produce_outcome<'m, H: Headers + 'm>(
        &self,
        record: &RecordOutcome<'_>,
        source: impl FnOnce() -> Source<'m, H>,
    ) -> Result<(), Failure> {
        let decided = match record.result {
            Ok(decided) => decided,
            Err(rejection) => return self.dead_letter(&source(), rejection),
        };
        let kafka = &self.settings.kafka;
        for write in record.writes() {
            let topic = match write.kind {
                WriteKind::Conversion => &kafka.conversions_topic,
                WriteKind::Alert(_) => &kafka.alerts_topic,
                WriteKind::Adjustment => &self.settings.reversals.topic,
            };
            self.send(BaseRecord::to(topic).key(write.key).payload(write.value))?;
            match write.kind {
                WriteKind::Conversion => self.metrics.record_conversion(
                    decided.status,
                    decided.basis,
                    decided.invalid_reason,
                ),
                WriteKind::Alert(kind) => self.metrics.record_alert(kind),
                WriteKind::Adjustment => {}
            }
        }
        if let Some(adjusted) = decided.adjustment {
            self.metrics.record_adjustment(match adjusted {
                Adjusted::Recorded(kind, reason) => Some((kind.as_str(), reason.as_str())),
                Adjusted::NotRecorded => None,
            });
        }
        let lag = chrono::Utc::now() - decided.event_time;
        self.metrics.observe_end_to_end(lag.as_seconds_f64());
        Ok(())
    }

    fn dead_letter<H: Headers>(
        &self,
        source: &Source<'_, H>,
        rejection: &Rejection,
    ) -> Result<(), Failure> {
        // A value too large to produce again (an oversize input near the broker's limit) is
        // left out rather than retried forever; the headers say so and keep its coordinates, so
        // it can still be fetched from the input topic while retention allows.
        let payload = source.payload;
        let too_large = payload
            .map(<[u8]>::len)
            .filter(|&len| len > self.engine.max_output_bytes());
        let writer = DlqWriter {
            connector: &self.settings.kafka.group_id,
            task: &self.transactional_id,
        };
        let mut headers: OwnedHeaders = dlq_headers(source, rejection, writer);
        if let Some(len) = too_large {
            headers = headers.insert(Header {
                key: super::outputs::dlq_header::PAYLOAD_OMITTED,
                value: Some(len.to_string().as_str()),
            });
        }
        let mut record: BaseRecord<'_, [u8], [u8]> =
            BaseRecord::to(&self.settings.kafka.dlq_topic).headers(headers);
        if let Some(key) = source.key {
            record = record.key(key);
        }
        if let Some(payload) = payload.filter(|_| too_large.is_none()) {
            record = record.payload(payload);
        }
        self.send(record)?;
        DeadLettered {
            reason: rejection.reason,
            topic: source.topic,
            partition: source.partition,
            offset: source.offset,
        }
        .emit(&self.metrics);
        Ok(())
    }

    /// Enqueues a record, waiting for room when the local queue is full rather than dropping it.
    fn send(&self, mut record: BaseRecord<'_, [u8], [u8]>) -> Result<(), Failure> {
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), returned)) => {
                    record = returned;
                    // Room comes back as deliveries are reported.
                    self.acks.serve(&self.producer, Duration::from_millis(5));
                }
                Err((err, _)) => return Err(Failure::from_client("produce", &err)),
            }
        }
    }

    /// Commits the open batch; a no-op without one.
    pub fn commit(&self, consumer: &BaseConsumer<WorkerContext>) -> Result<(), Failure> {
        let mut batch = self.lock()?;
        if !batch.open {
            return Ok(());
        }
        let started = Instant::now();
        let mut phase_started = started;
        let mut phase_done = |phase: CommitPhase| {
            let now = Instant::now();
            self.metrics
                .observe_commit_phase(phase, now.duration_since(phase_started));
            phase_started = now;
        };
        if !batch.held.is_empty() {
            self.flush_held(&mut batch)?;
            phase_done(CommitPhase::Held);
        }
        let offsets = offsets_list(
            batch
                .positions
                .iter()
                .map(|p| (p.topic.as_str(), p.partition, p.next)),
        )?;
        if self.exactly_once() {
            // Offsets sent to the transaction are only committed by `commit_transaction`, which
            // is not reached unless every output is trusted below, and an abort drops them. So
            // they go to the coordinator while the outputs' acknowledgements are on their way,
            // instead of one round trip after the other.
            let group = consumer
                .group_metadata()
                .ok_or_else(|| Failure::Fatal("consumer has no group metadata".into()))?;
            self.transactional("send_offsets_to_transaction", |p| {
                p.send_offsets_to_transaction(&offsets, &group, Timeout::Never)
            })?;
            phase_done(CommitPhase::Offsets);
        }
        self.await_deliveries()?;
        phase_done(CommitPhase::Deliveries);
        let deliveries = self
            .producer
            .context()
            .counts
            .since(batch.deliveries_at_start);
        let unconfirmed = deliveries.unplaced;
        if unconfirmed > 0 {
            // Redone, not committed: on Apache Kafka the outputs were stored and the abort hides
            // them; on a broker that lost them the redo writes them.
            return Err(Failure::Transient(format!(
                "{unconfirmed} outputs were reported delivered without an offset (a retried send the broker called a duplicate); not trusted as written"
            )));
        }
        if self.exactly_once() {
            self.transactional("commit_transaction", |p| {
                p.commit_transaction(Timeout::Never)
            })?;
            phase_done(CommitPhase::End);
            self.metrics.record_transaction(TxOutcome::Committed);
        } else {
            if deliveries.failed > 0 {
                let last = self.producer.context().counts.last_error();
                return Err(Failure::Transient(format!(
                    "an output was not delivered: {last}"
                )));
            }
            consumer
                .store_offsets(&offsets)
                .map_err(|e| Failure::from_client("store_offsets", &e))?;
            // Asynchronous: a lost commit only means a few records are decided again, which this
            // mode allows; waiting for it would halve throughput.
            consumer
                .commit(&offsets, CommitMode::Async)
                .map_err(|e| Failure::from_client("commit", &e))?;
            phase_done(CommitPhase::Offsets);
        }
        self.metrics.observe_batch_size(batch.records);
        self.metrics.observe_commit_latency(started.elapsed());
        batch.reset();
        Ok(())
    }

    /// Waits until every output produced so far is acknowledged and its delivery report served.
    /// rust-rdkafka 0.39's `flush` (which `commit_transaction` calls) polls in 100 ms steps that
    /// always run to the end, so a batch the broker acknowledges in a millisecond would still
    /// wait 100 ms; waking on each report ends the wait as soon as the last one is in, and
    /// leaves `flush` nothing to wait for.
    fn await_deliveries(&self) -> Result<(), Failure> {
        let limit = Duration::from_millis(self.settings.kafka.transaction_timeout_ms);
        self.acks
            .until_acknowledged(&self.producer, limit)
            .map_err(|in_flight| {
                Failure::Transient(format!(
                    "{in_flight} outputs not acknowledged within {limit:?}"
                ))
            })
    }

    /// Gives up the open batch: aborts its transaction and moves the consumer back to the batch's
    /// first offsets, so the same records are decided again (with the same outputs). Returns
    /// those offsets, so records read while backing off can join them before the final seek.
    pub fn abort_and_rewind(
        &self,
        consumer: &BaseConsumer<WorkerContext>,
    ) -> Result<RewindPoint, Failure> {
        let mut batch = self.lock()?;
        if batch.open && self.exactly_once() {
            self.transactional("abort_transaction", |p| p.abort_transaction(Timeout::Never))?;
            self.metrics.record_transaction(TxOutcome::Aborted);
        }
        let rewind = RewindPoint(
            batch
                .positions
                .iter()
                .map(|p| ((p.topic.clone(), p.partition), p.first))
                .collect(),
        );
        batch.reset();
        drop(batch);
        rewind.seek(consumer)?;
        Ok(rewind)
    }

    /// Runs a transactional producer call, repeating it while librdkafka calls it resumable.
    fn transactional(
        &self,
        what: &str,
        call: impl Fn(&BaseProducer<DeliveryTracker>) -> rdkafka::error::KafkaResult<()>,
    ) -> Result<(), Failure> {
        retry_resumable(|| call(&self.producer).map_err(|e| Failure::from_transactional(what, &e)))
    }

    /// Drops the open batch without committing it, before the worker exits on a fatal failure:
    /// its transaction is aborted where possible, and nothing of it is stored, so the next owner
    /// of the partitions reads the batch again from the committed offsets.
    pub fn abandon(&self) {
        if let Ok(mut batch) = self.batch.lock() {
            if batch.open && self.exactly_once() {
                let _ = self.producer.abort_transaction(Duration::from_secs(10));
            }
            batch.reset();
        }
    }

    /// Partitions are about to move: finish the open batch, or abort it when the assignment is
    /// already lost (another member may own the partitions by now).
    pub fn on_revoke(&self, consumer: &BaseConsumer<WorkerContext>) {
        // Inside the callback a failed abort or seek cannot be retried later: the batch is
        // already reset, so the loop would carry on past records it never decided. Exiting is
        // the safe answer; the next owner reads from the committed offsets.
        let give_up = || {
            self.abort_and_rewind(consumer).map(drop).map_err(|f| {
                Failure::Fatal(format!("abandoning the batch during a rebalance: {f}"))
            })
        };
        let result = if consumer.assignment_lost() {
            give_up()
        } else {
            self.commit(consumer).or_else(|failure| match failure {
                Failure::Fatal(_) => Err(failure),
                _ => give_up(),
            })
        };
        if let Err(failure) = result {
            self.defer(failure);
        }
    }
}

/// A state failure is worth retrying (the batch is redone and the detectors' replay records make
/// the redo give the same outputs); a serialization failure is a bug that retrying cannot fix.
fn engine_failure(err: EngineError) -> Failure {
    match err {
        EngineError::State(_) => Failure::Transient(err.to_string()),
        EngineError::Serialize { .. } => Failure::Fatal(err.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_positions_start_at_the_first_offset_and_advance() {
        let mut batch = Batch::default();
        batch.advance("orders", 2, 100);
        batch.advance("orders", 2, 101);
        batch.advance("orders", 0, 5);
        let seen: Vec<_> = batch
            .positions
            .iter()
            .map(|p| (p.partition, p.first, p.next))
            .collect();
        assert_eq!(seen, [(2, 100, 102), (0, 5, 6)]);
    }
}
