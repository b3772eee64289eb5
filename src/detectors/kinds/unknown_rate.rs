//! UNKNOWN_CODE_RATE: the share of a program's orders with codes whose codes all match nothing,
//! per window (`n:<window>`), with a tally of the unknown codes to name the usual suspects
//! (`nt:<window>`).

use serde_json::{Value, json};

use crate::detectors::plan::{EnteredCodes, Planner};
use crate::detectors::report::{Finding, Reading, count, evidence, instant};
use crate::detectors::state::{CountRef, Evidence, Gate, Op, Range};
use crate::detectors::{secs_ms, window_start};
use crate::schema::AlertKind;

/// Orders are scored 0 when some code matched, 1 when none did.
const ORDERS: Range = Range { min: 0, max: 2 };
const UNKNOWN_ORDERS: Range = Range { min: 1, max: 2 };

#[derive(Debug, Clone, Copy)]
pub struct UnknownCount {
    pub window_ms: i64,
    /// Ranges: 0 orders with codes, 1 of which unknown.
    pub orders_op: usize,
    pub tally_op: usize,
    pub gate: Gate,
}

pub(in crate::detectors) fn plan(
    p: &mut Planner<'_>,
    entered: &EnteredCodes<'_>,
) -> Option<UnknownCount> {
    let t = p.thresholds;
    if !t.unknown_rate || entered.is_empty() {
        return None;
    }
    let width = secs_ms(t.unknown_window_secs);
    let start = window_start(p.event_ms, width);
    let ttl = p.window_ttl(t.unknown_window_secs);
    let all_unknown = entered.known.is_empty();
    let orders_op = p.next_op();
    let gate = Gate::Share {
        part: CountRef {
            op: orders_op,
            range: 1,
        },
        total: CountRef {
            op: orders_op,
            range: 0,
        },
        min_total: t.unknown_min_orders,
        percent: t.unknown_share_percent,
    };
    p.push(Op::Add {
        key: format!("{}n:{start}", p.base),
        merge_from: None,
        ttl_secs: ttl,
        members: vec![(i64::from(all_unknown), p.order_id.to_string())],
        trim_below: None,
        ranges: vec![ORDERS, UNKNOWN_ORDERS],
        evidence: Some(Evidence {
            ranges: vec![UNKNOWN_ORDERS],
            gate,
        }),
    });
    let tally_op = p.push(Op::Tally {
        key: format!("{}nt:{start}", p.base),
        ttl_secs: ttl,
        members: entered.unknown.iter().cloned().collect(),
        top: 5,
        evidence: Some(gate),
    });
    Some(UnknownCount {
        window_ms: start,
        orders_op,
        tally_op,
        gate,
    })
}

pub(in crate::detectors) fn report(
    count_ref: Option<&UnknownCount>,
    reading: &Reading<'_>,
    findings: &mut Vec<Finding<'_>>,
) {
    let Some(part) = count_ref.filter(|part| reading.fires(&part.gate)) else {
        return;
    };
    let t = reading.thresholds;
    let r = reading.result(part.orders_op);
    let (total, unknown) = (count(&r.after, 0), count(&r.after, 1));
    let top: Vec<Value> = evidence(reading.result(part.tally_op), 0)
        .chunks(2)
        .map(|pair| {
            let orders = pair.get(1).and_then(|n| n.parse::<u64>().ok());
            json!({"code": pair[0].strip_prefix('?').unwrap_or(&pair[0]), "orders": orders})
        })
        .collect();
    findings.push(Finding {
        kind: AlertKind::UnknownCodeRate,
        severity: AlertKind::UnknownCodeRate.severity(),
        subject: vec![part.window_ms.to_string()],
        evidence: evidence(r, 0),
        code: None,
        other_partner: None,
        count: unknown,
        detail: json!({
            "window_start": instant(part.window_ms),
            "window_end": instant(part.window_ms + secs_ms(t.unknown_window_secs)),
            "orders_with_codes": total,
            "unknown_orders": unknown,
            "unknown_share_percent": unknown * 100 / total.max(1),
            "threshold_percent": t.unknown_share_percent,
            "min_orders": t.unknown_min_orders,
            "top_unknown_codes": top,
        }),
    });
}
