//! The poll loop. It runs on its own OS thread, not on an async runtime: librdkafka's
//! transactional calls block, and a `StreamConsumer` has known stalls (see the reliability notes),
//! so one plain `BaseConsumer::poll` loop owns consumption, batching, commits and backoff.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::util::Timeout;

use super::context::WorkerContext;
use super::events::ClientEvents;
use super::pipeline::{BatchFill, DeliveryTracker, Pipeline};
use super::{Failure, consumer_config, producer_config};
use crate::admin::{Health, Heartbeat, POLL_LOOP};
use crate::backoff::Backoff;
use crate::metrics::Metrics;
use crate::metrics::events::{BatchResumed, BatchRetrying, InternalEvent};
use crate::settings::{Delivery, Settings};
use crate::table_source::TableHandle;

/// Everything the loop needs, handed over explicitly.
pub struct WorkerDeps {
    pub settings: Arc<Settings>,
    pub table: TableHandle,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Set by SIGTERM/SIGINT: finish the open batch, commit, leave the group.
    pub shutdown: Arc<AtomicBool>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WorkerExit {
    /// Stopped on request after committing everything it had read.
    Drained,
}

/// Longest single poll, so shutdown requests and batch deadlines are noticed promptly.
const POLL_SLICE: Duration = Duration::from_millis(100);
/// The first wait after a failed batch; it doubles up to `worker.max_backoff_ms`.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

pub fn run_worker(deps: WorkerDeps) -> Result<WorkerExit, Failure> {
    // Registered before the clients are created: from here on a hang (in init_transactions as
    // much as in the loop) fails liveness, after the startup grace for the first beat.
    let heartbeat = deps.health.register(POLL_LOOP);
    let settings = deps.settings.clone();
    let kafka = &settings.kafka;
    let transactional_id = kafka.effective_transactional_id();
    let events = Arc::new(ClientEvents::new(
        deps.health.clone(),
        &kafka.brokers,
        Duration::from_secs(settings.worker.repeated_warning_secs),
    ));
    let producer: BaseProducer<DeliveryTracker> = producer_config(kafka, &transactional_id)
        .create_with_context(DeliveryTracker::new(events.clone()))
        .map_err(|e| Failure::Fatal(format!("cannot create the producer: {e}")))?;
    if !wait_for_broker(&producer, &events, &deps, &heartbeat)? {
        // Asked to stop before any broker answered: nothing was read, so nothing to drain.
        tracing::info!("stopped before any broker answered");
        return Ok(WorkerExit::Drained);
    }
    if kafka.delivery == Delivery::ExactlyOnce {
        // Completes or aborts whatever a previous incarnation with this id left open, and fences it.
        let timeout = Duration::from_millis(kafka.transaction_timeout_ms.saturating_mul(2));
        producer.init_transactions(timeout).map_err(|e| {
            Failure::Fatal(format!("init_transactions for {transactional_id}: {e}"))
        })?;
    }
    let pipeline = Arc::new(Pipeline::new(
        producer,
        settings.clone(),
        deps.table.clone(),
        deps.metrics.clone(),
    ));
    let context = WorkerContext {
        pipeline: OnceLock::new(),
        metrics: deps.metrics.clone(),
        health: deps.health.clone(),
        input_topic: kafka.input_topic.clone(),
        events: events.clone(),
    };
    let consumer: BaseConsumer<WorkerContext> = consumer_config(kafka)
        .create_with_context(context)
        .map_err(|e| Failure::Fatal(format!("cannot create the consumer: {e}")))?;
    let _ = consumer.context().pipeline.set(pipeline.clone());
    consumer
        .subscribe(&[&kafka.input_topic])
        .map_err(|e| Failure::Fatal(format!("cannot subscribe to {}: {e}", kafka.input_topic)))?;
    tracing::info!(
        topic = %kafka.input_topic,
        group = %kafka.group_id,
        delivery = ?kafka.delivery,
        transactional_id = %transactional_id,
        "worker started"
    );

    let outcome = poll_loop(&consumer, &pipeline, &deps, &heartbeat, &events)
        .and_then(|()| drain(&consumer, &pipeline, &settings));
    if outcome.is_err() {
        // Dropping the consumer runs the revoke callback, which would otherwise commit whatever
        // the failed batch holds, including a record whose outputs were only partly produced.
        pipeline.abandon();
    }
    outcome.map(|()| WorkerExit::Drained)
}

/// Before `init_transactions`, which blocks for up to twice the transaction timeout and cannot be
/// interrupted, waits until a broker answers: until then the health says the broker is
/// unreachable, the log says so (rate-limited), and a stop request ends the wait at once —
/// nothing has been read, so nothing is at stake. Returns false when asked to stop; a refusal
/// that waiting cannot cure (authentication, authorization) is fatal, as it was from
/// `init_transactions`.
fn wait_for_broker(
    producer: &BaseProducer<DeliveryTracker>,
    events: &ClientEvents,
    deps: &WorkerDeps,
    heartbeat: &Heartbeat,
) -> Result<bool, Failure> {
    let started = Instant::now();
    while !deps.shutdown.load(Ordering::SeqCst) {
        heartbeat.beat();
        match producer.client().fetch_metadata(None, BROKER_PROBE) {
            Ok(_) => {
                events.broker_answered();
                return Ok(true);
            }
            Err(e) => {
                if let Failure::Fatal(message) = Failure::from_client("metadata request", &e) {
                    return Err(Failure::Fatal(message));
                }
                // Hands librdkafka's error events (all brokers down, with the reason) to the
                // events; a broker that accepts connections but never answers sends none.
                producer.poll(Duration::ZERO);
                if started.elapsed() >= BROKER_PROBE.saturating_mul(3) {
                    events.no_broker(&format!(
                        "no answer to a metadata request for {:.0?}: {e}",
                        started.elapsed()
                    ));
                }
            }
        }
    }
    Ok(false)
}

/// How long one metadata request at start may take; also how often a stop request is checked.
const BROKER_PROBE: Duration = Duration::from_millis(500);

/// What one pass of the loop did.
enum Pass {
    Committed,
    /// Nothing was ready and no batch is open.
    Idle,
    Busy,
}

fn poll_loop(
    consumer: &BaseConsumer<WorkerContext>,
    pipeline: &Pipeline,
    deps: &WorkerDeps,
    heartbeat: &Heartbeat,
    events: &ClientEvents,
) -> Result<(), Failure> {
    let mut backoff = Backoff::new(
        FIRST_BACKOFF,
        Duration::from_millis(deps.settings.worker.max_backoff_ms),
    );
    while !deps.shutdown.load(Ordering::SeqCst) {
        // A turn of the loop proves it is alive, not that it does anything useful: that is
        // reported separately (committed, idle, failing) for readiness.
        heartbeat.beat();
        if let Some(failure) = pipeline.take_deferred() {
            recover(consumer, pipeline, deps, failure, &mut backoff, heartbeat)?;
            continue;
        }
        let step = poll_burst(consumer, pipeline, events).and_then(|idle| {
            // A rebalance during the burst may have left a failure (its batch could not be
            // finished or given up): handle it before committing anything read after it.
            if let Some(failure) = pipeline.take_deferred() {
                return Err(failure);
            }
            if pipeline.is_due(idle)? {
                pipeline.commit(consumer).map(|()| Pass::Committed)
            } else if idle && !pipeline.is_open() {
                Ok(Pass::Idle)
            } else {
                Ok(Pass::Busy)
            }
        });
        match step {
            // Only a batch that made it all the way through proves the trouble is over; an idle
            // poll right after a rewind proves nothing.
            Ok(Pass::Committed) => {
                backoff.reset();
                deps.health.batch_committed();
            }
            Ok(Pass::Idle) => deps.health.pass(true),
            Ok(Pass::Busy) => deps.health.pass(false),
            Err(failure) => recover(consumer, pipeline, deps, failure, &mut backoff, heartbeat)?,
        }
    }
    Ok(())
}

/// Most records one pass of the loop takes from the consumer. The pass's own bookkeeping (the
/// heartbeat, the deferred-failure check, the due checks: a clock read or a lock each) is paid
/// once per burst instead of once per record; the cap keeps a pass short, so a batch overshoots
/// `batch_max_ms` by at most one burst's processing time (well under a millisecond).
const BURST: usize = 64;

/// The wait for a consumer poll. rust-rdkafka 0.39's `poll(t)` polls until `t` has passed, but
/// hands librdkafka the time left rounded down to whole milliseconds, so it spins through the
/// last fraction of a millisecond (the cause `acks.rs` works around for the producer). Waiting a
/// whole millisecond instead sleeps through it, and notices a due batch (or the end of a
/// backoff) at most that much later.
fn whole_millis_up(wait: Duration) -> Duration {
    let millis = wait.as_nanos().div_ceil(1_000_000);
    Duration::from_millis(u64::try_from(millis).unwrap_or(u64::MAX))
}

/// Polls until nothing is ready, the batch is full, or `BURST` records were taken; only the
/// first poll waits. Returns whether the consumer had nothing more ready.
fn poll_burst(
    consumer: &BaseConsumer<WorkerContext>,
    pipeline: &Pipeline,
    events: &ClientEvents,
) -> Result<bool, Failure> {
    let mut timeout = whole_millis_up(pipeline.time_to_due().min(POLL_SLICE));
    for _ in 0..BURST {
        match consumer.poll(timeout) {
            None | Some(Err(KafkaError::PartitionEOF(_))) => return Ok(true),
            Some(Ok(message)) => {
                // Recorded even after a failed rebalance, so that the rewind covers it.
                let fill = pipeline.process(&message)?;
                if fill == BatchFill::Full || pipeline.has_deferred() {
                    return Ok(false);
                }
            }
            Some(Err(err)) => {
                return match Failure::from_client("consume", &err) {
                    Failure::Fatal(message) => Err(Failure::Fatal(message)),
                    // librdkafka recovers from broker-side consume errors by itself; they are
                    // reported so operators see them, not because the batch is wrong.
                    _ => {
                        events.error(&err, &format!("consume: {err}"));
                        Ok(false)
                    }
                };
            }
        }
        timeout = Duration::ZERO;
    }
    Ok(false)
}

/// A transient failure: give up the batch, wait (still polling, so the group keeps this member
/// and rebalances are served), then redo from the rewind point. A fatal one ends the loop.
///
/// Partitions are not paused: a partition assigned during the wait would not be covered by the
/// pause, and a paused partition that moves away and comes back stays paused. Instead every
/// record polled during the wait is added to the rewind point, and the consumer seeks back to it
/// afterwards, so nothing read while waiting is skipped.
fn recover(
    consumer: &BaseConsumer<WorkerContext>,
    pipeline: &Pipeline,
    deps: &WorkerDeps,
    failure: Failure,
    backoff: &mut Backoff,
    heartbeat: &Heartbeat,
) -> Result<(), Failure> {
    if let Failure::Fatal(_) = failure {
        tracing::error!(error = %failure, "fatal failure; exiting so the supervisor restarts the worker");
        return Err(failure);
    }
    deps.health.batch_failed(&failure.to_string());
    let wait = backoff.next_wait();
    BatchRetrying {
        error: &failure,
        wait,
    }
    .emit(&deps.metrics);
    let mut rewind = pipeline.abort_and_rewind(consumer)?;
    let until = Instant::now() + wait;
    while Instant::now() < until && !deps.shutdown.load(Ordering::SeqCst) {
        heartbeat.beat();
        let left = until.saturating_duration_since(Instant::now());
        match consumer.poll(whole_millis_up(POLL_SLICE.min(left))) {
            Some(Ok(message)) => {
                rewind.note(message.topic(), message.partition(), message.offset())
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(err)) => {
                if let Failure::Fatal(message) = Failure::from_client("consume", &err) {
                    return Err(Failure::Fatal(message));
                }
            }
        }
    }
    rewind.seek(consumer)?;
    BatchResumed.emit(&deps.metrics);
    Ok(())
}

/// Commits what was read, then leaves the group so partitions move at once.
fn drain(
    consumer: &BaseConsumer<WorkerContext>,
    pipeline: &Pipeline,
    settings: &Settings,
) -> Result<(), Failure> {
    tracing::info!("shutting down: committing the open batch");
    if let Err(failure) = pipeline.commit(consumer) {
        // Nothing is lost (the group's committed offsets still point before the batch, so the
        // next owner reads it again), but this was not a clean drain and the exit code says so.
        tracing::warn!(error = %failure, "final commit failed; aborting so the records are read again");
        pipeline.abort_and_rewind(consumer)?;
        consumer.unsubscribe();
        return Err(Failure::Fatal(format!("final commit failed: {failure}")));
    }
    if settings.kafka.delivery == Delivery::AtLeastOnce
        && let Err(err) = consumer.commit_consumer_state(CommitMode::Sync)
    {
        // Nothing stored yet is the common benign case.
        tracing::debug!(error = %err, "final offset commit");
    }
    consumer.unsubscribe();
    let _ = pipeline
        .producer()
        .flush(Timeout::After(Duration::from_secs(5)));
    tracing::info!("worker stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poll_waits_are_whole_milliseconds_never_shorter_than_asked() {
        let ms = Duration::from_millis;
        assert_eq!(whole_millis_up(Duration::ZERO), Duration::ZERO);
        assert_eq!(whole_millis_up(Duration::from_nanos(1)), ms(1));
        assert_eq!(whole_millis_up(Duration::from_micros(2_400)), ms(3));
        assert_eq!(whole_millis_up(ms(3)), ms(3));
        assert_eq!(whole_millis_up(POLL_SLICE), POLL_SLICE);
    }
}
