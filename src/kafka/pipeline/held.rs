//! The batch's detector step: records are held until commit, then run through the engine
//! together so their state changes take one round trip.

use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, OwnedHeaders};

use super::{Batch, Pipeline, engine_failure};
use crate::detectors::{DetectorState, OrderStep, StateError, StepOutcome};
use crate::kafka::Failure;
use crate::kafka::outputs::Source;
use crate::metrics::{Metrics, StepResult};
use crate::redis::detector_state::RedisState;

/// A record waiting for the batch's detector step.
pub(super) struct Held {
    /// Index into the batch's positions (for the topic).
    position: usize,
    partition: i32,
    offset: i64,
    key: Option<std::ops::Range<usize>>,
    payload: Option<std::ops::Range<usize>>,
    headers: Option<OwnedHeaders>,
}

impl Batch {
    pub(super) fn hold(&mut self, message: &BorrowedMessage<'_>, position: usize) {
        let mut copy = |bytes: &[u8]| {
            let start = self.arena.len();
            self.arena.extend_from_slice(bytes);
            start..self.arena.len()
        };
        let key = message.key().map(&mut copy);
        let payload = message.payload().map(&mut copy);
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
    /// Runs the held records through the engine with the detectors (one state round trip) and
    /// produces their outputs. A state failure is transient: the batch is aborted and redone,
    /// and the replay records make the redo give the same outputs.
    pub(super) fn flush_held(&self, batch: &mut Batch) -> Result<(), Failure> {
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
                let redis = RedisState::from_settings(&self.settings.store)
                    .map_err(|e| Failure::Fatal(e.to_string()))?;
                empty.insert(Box::new(redis))
            }
        };
        let table = self.table.current();
        let Batch {
            held,
            arena,
            outputs,
            positions,
            ..
        } = batch;
        let records: Vec<&[u8]> = held
            .iter()
            .map(|h| h.payload.clone().map_or(&[][..], |r| &arena[r]))
            .collect();
        let mut timed = Timed {
            inner: state.as_mut(),
            metrics: &self.metrics,
        };
        outputs.clear();
        self.engine
            .run(&table, Some(&mut timed), &records, outputs)
            .map_err(engine_failure)?;
        for record in outputs.iter() {
            let h = &held[record.input];
            let source = || Source {
                topic: positions.get(h.position).map_or("", |p| p.topic.as_str()),
                partition: h.partition,
                offset: h.offset,
                key: h.key.clone().map(|r| &arena[r]),
                payload: h.payload.clone().map(|r| &arena[r]),
                headers: h.headers.as_ref(),
            };
            self.produce_outcome(&record, source)?;
        }
        outputs.clear();
        held.clear();
        arena.clear();
        Ok(())
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
            .observe_detector_step(started.elapsed(), StepResult::of(&result));
        result
    }

    fn apply_decisions(
        &mut self,
        ops: &[crate::reversals::store::DecisionOp],
    ) -> Result<Vec<crate::reversals::store::DecisionReply>, StateError> {
        let replies = self.inner.apply_decisions(ops)?;
        let written = replies
            .iter()
            .filter(|r| {
                matches!(
                    r,
                    crate::reversals::store::DecisionReply::Recorded { new: true }
                )
            })
            .count();
        self.metrics.add_decision_summaries(written as u64);
        Ok(replies)
    }
}
