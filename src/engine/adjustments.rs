//! The batch's reversal step: adjustment events read apart from orders, every decision's
//! summary and every adjustment applied to the decision store in one call, in input order (so
//! a sale and its refund in one batch see each other), then each adjustment finished from its
//! reply.

use super::Rejection;
use crate::attribution::Decision;
use crate::codes::CodeTable;
use crate::detectors::kinds::reversal_rate::{self, Raised, RateCounter, Sale};
use crate::detectors::{DetectorState, Detectors, StateError, Thresholds};
use crate::report::decimal::Decimal;
use crate::reversals::output::{Finished, Reversals};
use crate::reversals::store::{DecisionOp, DecisionReply};
use crate::reversals::{Request, Summary};
use crate::schema::adjustment::parse_adjustment_fields;
use crate::schema::{Status, ValidOrder};

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
///
/// With HIGH_REVERSAL_RATE on, counting takes a second call: what an adjustment takes back is
/// known only once its log came back. Counts must follow input order (a sale after a refund in
/// the batch must not be in the counts the refund sees, or the alerts would depend on where
/// batches end), so a sale's credit goes with its summary in the first call while no adjustment
/// came before it, and otherwise into the second call, in input order with the reversals.
pub(super) fn step(
    reversals: &Reversals,
    detectors: Option<&Detectors>,
    state: &mut dyn DetectorState,
    table: &CodeTable,
    parsed: &[Result<ValidOrder<'_>, Rejection>],
    decisions: &[Option<Decision<'_>>],
    requests: &[Option<Result<Request, Rejection>>],
) -> Result<Vec<Option<Finished>>, StateError> {
    let rates = detectors.map(|d| Rates {
        reversals,
        detectors: d,
        table,
    });
    let mut ops = Vec::new();
    let mut later: Vec<Option<DecisionOp>> = vec![None; parsed.len()];
    let mut adjusted = false;
    for (input, ((order, decision), request)) in
        parsed.iter().zip(decisions).zip(requests).enumerate()
    {
        let Ok(order) = order else { continue };
        match (decision, request) {
            (Some(decision), _) => {
                let summary = Summary::of(order, &decision.conversion);
                ops.push(reversals.record_op(order, &summary));
                if let Some(credit) = rates.as_ref().and_then(|r| r.credit(order, &summary)) {
                    if adjusted {
                        later[input] = Some(credit);
                    } else {
                        ops.push(credit);
                    }
                }
            }
            (None, Some(Ok(request))) => {
                ops.push(reversals.adjust_op(order, request));
                adjusted = true;
            }
            _ => {}
        }
    }
    let replies = apply(state, &ops)?;
    let mut replies = replies
        .iter()
        .filter(|r| !matches!(r, DecisionReply::Recorded { .. } | DecisionReply::Credited));
    let mut finished = Vec::with_capacity(parsed.len());
    for ((order, decision), request) in parsed.iter().zip(decisions).zip(requests) {
        let outcome = match (order, decision, request) {
            (Ok(order), None, Some(Ok(request))) => {
                let reply = replies
                    .next()
                    .ok_or_else(|| StateError("fewer replies than adjustments".into()))?;
                Some(reversals.finish(order, request, reply, table.version()))
            }
            _ => None,
        };
        finished.push(outcome);
    }
    if let Some(rates) = rates {
        rates.count_reversals(state, parsed, requests, later, &mut finished)?;
    }
    Ok(finished)
}

fn apply(
    state: &mut dyn DetectorState,
    ops: &[DecisionOp],
) -> Result<Vec<DecisionReply>, StateError> {
    if ops.is_empty() {
        return Ok(Vec::new());
    }
    let replies = state.apply_decisions(ops)?;
    if replies.len() != ops.len() {
        return Err(StateError(format!(
            "{} decision replies for {} operations",
            replies.len(),
            ops.len()
        )));
    }
    Ok(replies)
}

/// HIGH_REVERSAL_RATE's side of the step.
struct Rates<'a> {
    reversals: &'a Reversals,
    detectors: &'a Detectors,
    table: &'a CodeTable,
}

impl Rates<'_> {
    fn thresholds(&self, program_id: &str) -> Thresholds {
        self.detectors.thresholds(self.table, program_id)
    }

    fn counter(
        &self,
        t: &Thresholds,
        summary: &Summary,
        program_id: &str,
        amount: Decimal,
    ) -> Option<RateCounter> {
        reversal_rate::counter(
            &self.reversals.program_base(program_id),
            t,
            self.reversals.settings().retention_secs(),
            &sale(summary, program_id),
            amount,
        )
    }

    /// The credit of a credited sale with an amount.
    fn credit(&self, order: &ValidOrder<'_>, summary: &Summary) -> Option<DecisionOp> {
        if summary.status != Status::Credited {
            return None;
        }
        let program_id = &order.order.program_id;
        let amount = Decimal::parse(summary.amount.as_deref().unwrap_or("0"))?;
        let t = self.thresholds(program_id);
        Some(DecisionOp::Credit {
            group: program_id.to_string(),
            key: self.reversals.key(order),
            summary: serde_json::to_string(summary).ok()?,
            counter: self.counter(&t, summary, program_id, amount)?,
        })
    }

    /// The second call: the deferred credits and the reversals, in input order; each
    /// reversal's alerts join its adjustment's.
    fn count_reversals(
        &self,
        state: &mut dyn DetectorState,
        parsed: &[Result<ValidOrder<'_>, Rejection>],
        requests: &[Option<Result<Request, Rejection>>],
        later: Vec<Option<DecisionOp>>,
        finished: &mut [Option<Finished>],
    ) -> Result<(), StateError> {
        let mut ops = Vec::new();
        let mut counted = Vec::new();
        for (input, (order, credit)) in parsed.iter().zip(later).enumerate() {
            ops.extend(credit);
            let (
                Ok(order),
                Some(Some(Finished::Written {
                    reversed: Some(r), ..
                })),
            ) = (order, finished.get(input))
            else {
                continue;
            };
            let program_id = &order.order.program_id;
            let t = self.thresholds(program_id);
            let Some(counter) = self.counter(&t, &r.original, program_id, r.amount) else {
                continue;
            };
            let Some(Some(Ok(request))) = requests.get(input) else {
                continue;
            };
            ops.push(DecisionOp::Reverse {
                group: program_id.to_string(),
                key: self.reversals.key(order),
                adjustment_id: request.adjustment_id.clone(),
                order_id: order.order.order_id.to_string(),
                counter,
            });
            counted.push((input, ops.len() - 1, t));
        }
        let replies = apply(state, &ops)?;
        for (input, at, t) in counted {
            let (Some(DecisionReply::Rates(counts)), Some(Some(done))) =
                (replies.get(at), finished.get_mut(input))
            else {
                return Err(StateError("a reversal count without its reply".into()));
            };
            let Finished::Written {
                alerts,
                reversed: Some(r),
                ..
            } = done
            else {
                continue;
            };
            let Ok(order) = &parsed[input] else { continue };
            let o = &order.order;
            let raised = Raised {
                event_time: &o.event_time,
                code_table_version: self.table.version(),
                order_id: &o.order_id,
            };
            let sale = sale(&r.original, &o.program_id);
            alerts.extend(reversal_rate::alerts(&t, &sale, counts, &raised));
        }
        Ok(())
    }
}

fn sale<'s>(summary: &'s Summary, program_id: &'s str) -> Sale<'s> {
    Sale {
        program_id,
        code_id: summary.code_id.as_deref(),
        partner_id: summary.partner_id.as_deref(),
        currency: summary.currency.as_deref(),
        sale_ms: summary.event_ms,
    }
}
