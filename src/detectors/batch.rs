//! A batch of orders through decide → detectors → outputs, with one state round trip: the
//! shape the worker needs (it holds a batch's records until commit), free of Kafka.

use super::{DetectorState, Detectors, OrderStep, StateError};
use crate::attribution::{Decision, decide};
use crate::codes::CodeTable;
use crate::schema::{OrderError, ValidOrder, parse_order};
use crate::settings::Settings;

/// Why a batch could not be finished.
#[derive(Debug)]
pub enum BatchError<E> {
    /// The state could not be reached or answered nonsense: redo the batch later.
    State(StateError),
    /// The output sink failed; passed through.
    Sink(E),
}

/// What the sink receives per record, in input order.
pub enum Decided<'d, 'a> {
    Decision(&'d Decision<'a>, &'d ValidOrder<'a>),
    /// The record no longer parses (it did when it was held); dead-letter it.
    Rejected(OrderError),
}

/// Decides `records` (raw order bytes that parsed when they were read), runs the detectors over
/// all of them with one call to `state`, and hands each record's outcome to `sink` in order.
/// Nothing reaches the sink unless the state answered, so a failure leaves nothing half-done.
pub fn decide_batch<E>(
    detectors: &Detectors,
    state: &mut dyn DetectorState,
    table: &CodeTable,
    settings: &Settings,
    records: &[&[u8]],
    mut sink: impl FnMut(usize, Decided<'_, '_>) -> Result<(), E>,
) -> Result<(), BatchError<E>> {
    let parsed: Vec<Result<ValidOrder<'_>, OrderError>> = records
        .iter()
        .map(|r| parse_order(r, &settings.limits))
        .collect();
    let mut decisions: Vec<Option<Decision<'_>>> = parsed
        .iter()
        .zip(records)
        .map(|(order, record)| {
            order
                .as_ref()
                .ok()
                .map(|o| decide(record, o, table, &settings.attribution))
        })
        .collect();
    let mut plans = Vec::with_capacity(records.len());
    let mut steps: Vec<OrderStep> = Vec::with_capacity(records.len());
    for (order, decision) in parsed.iter().zip(&decisions) {
        if let (Ok(order), Some(decision)) = (order, decision) {
            let mut plan = detectors.plan(order, decision, table);
            steps.push(std::mem::take(&mut plan.step));
            plans.push(Some(plan));
        } else {
            plans.push(None);
        }
    }
    let mut outcomes = state.apply(&steps).map_err(BatchError::State)?.into_iter();
    if outcomes.len() != steps.len() {
        return Err(BatchError::State(StateError(format!(
            "{} outcomes for {} orders",
            outcomes.len(),
            steps.len()
        ))));
    }
    for (i, ((order, decision), plan)) in parsed.iter().zip(&mut decisions).zip(&plans).enumerate()
    {
        match (order, decision, plan) {
            (Ok(order), Some(decision), Some(plan)) => {
                let outcome = outcomes
                    .next()
                    .ok_or_else(|| BatchError::State(StateError("missing outcome".into())))?;
                detectors.finish(plan, &outcome, order, decision, table);
                sink(i, Decided::Decision(decision, order)).map_err(BatchError::Sink)?;
            }
            (Err(err), _, _) => {
                sink(i, Decided::Rejected(err.clone())).map_err(BatchError::Sink)?
            }
            _ => {
                return Err(BatchError::State(StateError(
                    "a decision without a plan".into(),
                )));
            }
        }
    }
    Ok(())
}
