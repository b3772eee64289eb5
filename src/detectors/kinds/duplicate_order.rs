//! DUPLICATE_ORDER_ID: the replay record of an order (`o:<hash(event type, order id)>`) holds
//! the fingerprint of its first content; the state answers a duplicate when another content
//! comes with the same key.

use serde_json::json;

use crate::attribution::Decision;
use crate::codes::CodeTable;
use crate::detectors::Thresholds;
use crate::detectors::report::{Finding, dress};
use crate::ids::alert_id;
use crate::schema::{AlertKind, InvalidReason, Status, ValidOrder};

/// The replay record's key: by (event type, order id), or with the fingerprint when duplicate
/// detection is off.
pub(in crate::detectors) fn memo_key(
    base: &str,
    order: &ValidOrder<'_>,
    fingerprint: &str,
    thresholds: &Thresholds,
) -> String {
    let o = &order.order;
    if thresholds.duplicate_order_id {
        format!(
            "{base}o:{}",
            alert_id(&["order", &o.event_type, &o.order_id])
        )
    } else {
        // Each distinct content is its own order: nothing is ever called a duplicate.
        format!(
            "{base}o:{}",
            alert_id(&["order", &o.event_type, &o.order_id, fingerprint])
        )
    }
}

/// The same order again with other content: nobody is credited a second time, and the order's
/// own alerts, raised by the first record, are not repeated.
pub(in crate::detectors) fn report<'a>(
    order: &'a ValidOrder<'a>,
    decision: &mut Decision<'a>,
    table: &'a CodeTable,
) {
    let conversion = &mut decision.conversion;
    let decided = conversion.status;
    let partner = conversion
        .partner_id
        .take()
        .or_else(|| conversion.invalid_partner_id.take());
    conversion.status = Status::Invalid;
    conversion.basis = None;
    conversion.invalid_reason = Some(InvalidReason::DuplicateOrderId);
    conversion.invalid_partner_id = partner;
    conversion.overridden_partner_id = None;
    let event_id = conversion.event_id.to_string();
    let o = &order.order;
    let kind = AlertKind::DuplicateOrderId;
    decision.alerts.clear();
    decision.alerts.push(dress(
        order,
        table,
        Finding {
            kind,
            severity: kind.severity(),
            subject: vec![
                o.event_type.to_string(),
                o.order_id.to_string(),
                event_id.clone(),
            ],
            evidence: vec![o.order_id.to_string()],
            code: None,
            other_partner: None,
            count: 1,
            detail: json!({
                "event_type": o.event_type,
                "event_id": event_id,
                "decided_status": decided,
            }),
        },
    ));
}
