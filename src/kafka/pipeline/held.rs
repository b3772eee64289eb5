//! The batch's detector step: records are held until commit, then decided together so their
//! state changes take one round trip.

use std::time::Duration;

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};

use super::{Batch, Pipeline};
use crate::detectors::batch::{BatchError, Decided, decide_batch};
use crate::detectors::redis_state::RedisState;
use crate::detectors::{DetectorState, OrderStep, StateError, StepOutcome};
use crate::kafka::Failure;
use crate::kafka::outputs::{Rejection, Source};
use crate::metrics::Metrics;

/// A record waiting for the batch's detector step.
pub(super) struct Held {
    /// Index into the batch's positions (for the topic).
    position: usize,
    partition: i32,
    offset: i64,
    key: Option<std::ops::Range<usize>>,
    payload: std::ops::Range<usize>,
    headers: Option<OwnedHeaders>,
}

impl Batch {
    pub(super) fn hold(&mut self, message: &BorrowedMessage<'_>, position: usize, payload: &[u8]) {
        let mut copy = |bytes: &[u8]| {
            let start = self.arena.len();
            self.arena.extend_from_slice(bytes);
            start..self.arena.len()
        };
        let key = message.key().map(&mut copy);
        let payload = copy(payload);
        self.held.push(Held {
            position,
            partition: message.partition(),
            offset: message.offset(),
            key,
            payload,
            headers: message.headers().map(|h| h.detach()),
        });
    }
}

impl Pipeline {
    /// Decides the held records with the detectors (one state round trip) and produces their
    /// outputs. A state failure is transient: the batch is aborted and redone, and the replay
    /// records make the redo give the same outputs.
    pub(super) fn flush_held(&self, batch: &mut Batch) -> Result<(), Failure> {
        let Some(detectors) = &self.detectors else {
            return Ok(());
        };
        if batch.held.is_empty() {
            return Ok(());
        }
        let mut slot = self
            .state
            .lock()
            .map_err(|_| Failure::Fatal("detector state poisoned by an earlier panic".into()))?;
        let state = match &mut *slot {
            Some(state) => state,
            empty => {
                let store = &self.settings.store;
                let redis = RedisState::new(
                    &store.redis_url,
                    Duration::from_millis(store.connect_timeout_ms),
                    Duration::from_millis(store.io_timeout_ms),
                )
                .map_err(|e| Failure::Fatal(e.to_string()))?;
                empty.insert(Box::new(redis))
            }
        };
        let table = self.table.current();
        let Batch {
            held,
            arena,
            buffer,
            positions,
            ..
        } = batch;
        let records: Vec<&[u8]> = held.iter().map(|h| &arena[h.payload.clone()]).collect();
        let mut timed = Timed {
            inner: state.as_mut(),
            metrics: &self.metrics,
        };
        let result = decide_batch(
            detectors,
            &mut timed,
            &table,
            &self.settings,
            &records,
            |i, decided| {
                let h = &held[i];
                let source = Source {
                    topic: positions.get(h.position).map_or("", |p| p.topic.as_str()),
                    partition: h.partition,
                    offset: h.offset,
                    key: h.key.clone().map(|r| &arena[r]),
                    payload: Some(records[i]),
                    headers: h.headers.as_ref(),
                };
                match decided {
                    Decided::Decision(decision, order) => {
                        self.produce_decision(decision, order, buffer, &source)
                    }
                    Decided::Rejected(err) => {
                        let rejection = Rejection {
                            reason: err.reason(),
                            message: err.to_string(),
                        };
                        self.dead_letter(&source, &rejection)
                    }
                }
            },
        );
        match result {
            Ok(()) => {
                held.clear();
                arena.clear();
                Ok(())
            }
            Err(BatchError::State(err)) => Err(Failure::Transient(err.to_string())),
            Err(BatchError::Sink(failure)) => Err(failure),
        }
    }
}

/// The state step, timed for `promo_detector_step_seconds`.
struct Timed<'s> {
    inner: &'s mut (dyn DetectorState + Send),
    metrics: &'s Metrics,
}

impl DetectorState for Timed<'_> {
    fn apply(&mut self, steps: &[OrderStep]) -> Result<Vec<StepOutcome>, StateError> {
        let started = std::time::Instant::now();
        let result = self.inner.apply(steps);
        self.metrics
            .observe_detector_step(started.elapsed(), result.is_err());
        result
    }
}
