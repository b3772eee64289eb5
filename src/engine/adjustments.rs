//! The batch's reversal step: adjustment events read apart from orders, every decision's
//! summary and every adjustment applied to the decision store in one call, in input order (so
//! a sale and its refund in one batch see each other), then each adjustment finished from its
//! reply.

use super::Rejection;
use crate::attribution::Decision;
use crate::detectors::{DetectorState, StateError};
use crate::reversals::output::{Finished, Reversals};
use crate::reversals::{Request, Summary};
use crate::schema::ValidOrder;
use crate::schema::adjustment::parse_adjustment_fields;

/// Per record of the batch: `None` for an order (or a rejected record), else the adjustment
/// event read, or why it cannot be.
pub(super) fn read_requests(
    reversals: Option<&Reversals>,
    records: &[&[u8]],
    parsed: &[Result<ValidOrder<'_>, Rejection>],
) -> Vec<Option<Result<Request, Rejection>>> {
    parsed
        .iter()
        .zip(records)
        .map(|(order, record)| {
            let order = order.as_ref().ok()?;
            let reversals = reversals?;
            if !reversals.settings().is_adjustment(&order.order.event_type) {
                return None;
            }
            Some(
                parse_adjustment_fields(record)
                    .and_then(|fields| Request::read(record, order, &fields))
                    .map_err(|e| Rejection::from(&e)),
            )
        })
        .collect()
}

/// Applies the batch's summaries and adjustments; one [`Finished`] per adjustment event read.
pub(super) fn step(
    reversals: &Reversals,
    state: &mut dyn DetectorState,
    table_version: &str,
    parsed: &[Result<ValidOrder<'_>, Rejection>],
    decisions: &[Option<Decision<'_>>],
    requests: &[Option<Result<Request, Rejection>>],
) -> Result<Vec<Option<Finished>>, StateError> {
    let mut ops = Vec::new();
    for ((order, decision), request) in parsed.iter().zip(decisions).zip(requests) {
        let Ok(order) = order else { continue };
        match (decision, request) {
            (Some(decision), _) => {
                let summary = Summary::of(order, &decision.conversion);
                ops.push(reversals.record_op(order, &summary));
            }
            (None, Some(Ok(request))) => ops.push(reversals.adjust_op(order, request)),
            _ => {}
        }
    }
    let replies = state.apply_decisions(&ops)?;
    if replies.len() != ops.len() {
        return Err(StateError(format!(
            "{} decision replies for {} operations",
            replies.len(),
            ops.len()
        )));
    }
    let mut replies = replies.iter();
    let mut finished = Vec::with_capacity(parsed.len());
    for ((order, decision), request) in parsed.iter().zip(decisions).zip(requests) {
        let outcome = match (order, decision, request) {
            (Ok(_), Some(_), _) => {
                replies.next();
                None
            }
            (Ok(order), None, Some(Ok(request))) => {
                let reply = replies
                    .next()
                    .ok_or_else(|| StateError("fewer replies than adjustments".into()))?;
                Some(reversals.finish(order, request, reply, table_version))
            }
            _ => None,
        };
        finished.push(outcome);
    }
    Ok(finished)
}
