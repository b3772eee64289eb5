//! The engine: input records in, the records to write out, with no Kafka, files or clock.
//!
//! It owns the whole way from bytes to bytes — parse, decide, the stateful detectors (plan, one
//! state step for the batch, finish), serialize, size check — so the worker, the offline mode and
//! the benches cannot disagree: they all call [`Engine::run`]. The detector state is handed in
//! (Redis for the worker, memory for the offline mode and tests), which is what makes "the
//! stream gives the same bytes as the offline mode" hold by construction.
//!
//! Each record is parsed once and its codes matched once: the decision carries the matched
//! codes on to the detectors.

mod outputs;

use std::sync::Arc;

use crate::attribution::{Decision, decide};
use crate::codes::CodeTable;
use crate::detectors::{DetectorState, Detectors, StateError};
use crate::schema::{ValidOrder, parse_order};
use crate::settings::Settings;

pub use outputs::{Decided, Outputs, RecordOutcome, Rejection, Write, WriteKind};

/// Why a batch could not be finished. Nothing of the batch is in the outputs then.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The detector state could not be reached or answered nonsense: redo the batch later.
    #[error("detector state: {0}")]
    State(#[from] StateError),
    /// A conversion or alert could not be serialized; a bug, not a property of the input.
    #[error("serialize {what}: {message}")]
    Serialize { what: &'static str, message: String },
}

/// The rules, the detectors and the output limits of one worker or offline run.
pub struct Engine {
    settings: Arc<Settings>,
    /// `None` when `detectors.enabled` is off.
    detectors: Option<Detectors>,
    max_output_bytes: usize,
}

impl Engine {
    pub fn new(settings: Arc<Settings>) -> Engine {
        let detectors = settings
            .detectors
            .enabled
            .then(|| Detectors::new(&settings.detectors, &settings.store.key_prefix));
        let max_output_bytes = max_output_bytes(&settings);
        Engine {
            settings,
            detectors,
            max_output_bytes,
        }
    }

    /// Whether [`Engine::run`] needs a detector state: with the detectors on, records are best
    /// run in batches, so the state is asked once per batch.
    pub fn uses_state(&self) -> bool {
        self.detectors.is_some()
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The largest output value that is written rather than dead-lettered.
    pub fn max_output_bytes(&self) -> usize {
        self.max_output_bytes
    }

    /// Decides `records` in order and appends one [`RecordOutcome`] per record to `out`. With
    /// the detectors on, their state is asked once, for the whole batch, before anything is
    /// appended: on failure `out` is left as it was, so a batch is never half decided.
    pub fn run(
        &self,
        table: &CodeTable,
        state: Option<&mut dyn DetectorState>,
        records: &[&[u8]],
        out: &mut Outputs,
    ) -> Result<(), EngineError> {
        let parsed: Vec<Result<ValidOrder<'_>, Rejection>> = records
            .iter()
            .map(|record| parse_record(record, &self.settings))
            .collect();
        let mut decisions: Vec<Option<Decision<'_>>> = parsed
            .iter()
            .zip(records)
            .map(|(order, record)| {
                order
                    .as_ref()
                    .ok()
                    .map(|o| decide(record, o, table, &self.settings.attribution))
            })
            .collect();
        if let Some(detectors) = &self.detectors {
            let state = state.ok_or_else(|| {
                StateError("the detectors are on but no detector state was given".into())
            })?;
            detect(detectors, state, table, &parsed, &mut decisions)?;
        }
        let mark = out.mark();
        for (input, (order, decision)) in parsed.iter().zip(&decisions).enumerate() {
            let appended = match (order, decision) {
                (Ok(order), Some(decision)) => {
                    out.push_decision(input, order, decision, self.max_output_bytes)
                }
                (Err(rejection), _) => {
                    out.push_rejection(input, rejection.clone());
                    Ok(())
                }
                (Ok(_), None) => Err(EngineError::Serialize {
                    what: "decision",
                    message: "a parsed order without a decision".into(),
                }),
            };
            if let Err(err) = appended {
                out.truncate(mark);
                return Err(err);
            }
        }
        Ok(())
    }
}

/// An empty record is refused before parsing, with its own reason: producers send them by
/// mistake (tombstones, a lost value) and the dead letter should say so plainly.
fn parse_record<'a>(record: &'a [u8], settings: &Settings) -> Result<ValidOrder<'a>, Rejection> {
    if record.is_empty() {
        return Err(Rejection {
            reason: "empty_record",
            message: "record has no value".into(),
        });
    }
    parse_order(record, &settings.limits).map_err(|err| Rejection::from(&err))
}

/// Plans every decided order, applies all their steps with one call to the state, then turns
/// the counts into alerts (and invalidations) on the decisions, in input order.
fn detect<'a>(
    detectors: &Detectors,
    state: &mut dyn DetectorState,
    table: &'a CodeTable,
    parsed: &'a [Result<ValidOrder<'a>, Rejection>],
    decisions: &mut [Option<Decision<'a>>],
) -> Result<(), StateError> {
    let mut plans = Vec::with_capacity(decisions.len());
    let mut steps = Vec::with_capacity(decisions.len());
    for (order, decision) in parsed.iter().zip(decisions.iter()) {
        if let (Ok(order), Some(decision)) = (order, decision) {
            let mut plan = detectors.plan(order, decision, table);
            steps.push(std::mem::take(&mut plan.step));
            plans.push(plan);
        }
    }
    let outcomes = state.apply(&steps)?;
    if outcomes.len() != steps.len() {
        return Err(StateError(format!(
            "{} outcomes for {} orders",
            outcomes.len(),
            steps.len()
        )));
    }
    let mut planned = plans.iter().zip(&outcomes);
    for (order, decision) in parsed.iter().zip(decisions.iter_mut()) {
        if let (Ok(order), Some(decision)) = (order, decision) {
            let (plan, outcome) = planned
                .next()
                .ok_or_else(|| StateError("fewer plans than decisions".into()))?;
            detectors.finish(plan, outcome, order, decision, table);
        }
    }
    Ok(())
}

/// The largest record the producer accepts (librdkafka's `message.max.bytes`, 1,000,000 unless
/// configured), less room for key and headers. The offline mode applies the same limit, so a
/// record the worker would dead-letter is rejected there too.
fn max_output_bytes(settings: &Settings) -> usize {
    const HEADROOM: usize = 16 * 1024;
    let kafka = &settings.kafka;
    kafka
        .producer
        .get("message.max.bytes")
        .or_else(|| kafka.common.get("message.max.bytes"))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(1_000_000)
        .saturating_sub(HEADROOM)
}
