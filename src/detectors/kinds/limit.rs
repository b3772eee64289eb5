//! What the usage limit and the customer limit share: a lifetime set of uses with a limit, and
//! the invalidation a breach may bring.

use crate::detectors::plan::Planner;
use crate::detectors::report::{Reading, count};
use crate::detectors::state::{CountRef, Evidence, Gate, Op, OpResult, Range};
use crate::schema::{Conversion, InvalidReason, Status};

const ALL: Range = Range {
    min: i64::MIN,
    max: i64::MAX,
};

/// Where a lifetime count of uses is, the limit it is held to, and when its alert is written.
#[derive(Debug, Clone, Copy)]
pub struct LimitCount {
    pub op: usize,
    pub limit: u64,
    pub gate: Gate,
}

/// What the state answered for a [`LimitCount`].
pub(in crate::detectors) struct LimitUses<'r> {
    pub(in crate::detectors) result: &'r OpResult,
    /// Uses including this order.
    pub(in crate::detectors) uses: u64,
    /// This order is a use beyond the limit (an order already in the set added nothing).
    pub(in crate::detectors) breached: bool,
    pub(in crate::detectors) fires: bool,
}

impl LimitCount {
    /// Adds the order to the lifetime set at `key` (merging `merge_from` into it first: the
    /// same set under a rotated-out key), with the gate of an excess over `limit` (evidence:
    /// the first uses by event time).
    pub(in crate::detectors) fn plan(
        p: &mut Planner<'_>,
        key: String,
        merge_from: Option<String>,
        limit: u64,
    ) -> LimitCount {
        let op = p.next_op();
        let gate = Gate::Excess {
            count: CountRef { op, range: 0 },
            limit,
        };
        p.push(Op::Add {
            key,
            merge_from,
            ttl_secs: p.settings.limit_ttl_secs,
            members: vec![p.this_order()],
            trim_below: None,
            ranges: vec![ALL],
            evidence: Some(Evidence {
                ranges: vec![ALL],
                gate,
            }),
        });
        LimitCount { op, limit, gate }
    }

    pub(in crate::detectors) fn read<'r>(&self, reading: &Reading<'r>) -> LimitUses<'r> {
        let result = reading.result(self.op);
        let (before, after) = (count(&result.before, 0), count(&result.after, 0));
        LimitUses {
            result,
            uses: after,
            breached: after > self.limit && after > before,
            fires: reading.fires(&self.gate),
        }
    }
}

/// A breach takes the credit away only from a conversion this very code decided.
pub(in crate::detectors) fn invalidate_if_decided_by(
    conversion: &mut Conversion<'_>,
    code_id: &str,
    reason: InvalidReason,
) {
    let decided_by_code = conversion
        .code
        .as_ref()
        .is_some_and(|c| c.code_id == code_id);
    if conversion.status == Status::Credited && decided_by_code {
        conversion.status = Status::Invalid;
        conversion.basis = None;
        conversion.invalid_reason = Some(reason);
        conversion.invalid_partner_id = conversion.partner_id.take();
        conversion.overridden_partner_id = None;
    }
}
