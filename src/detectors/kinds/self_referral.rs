//! SELF_REFERRAL_SUSPECTED: the credited partner's own identity hashes among the customer's.
//! Stateless: it reads the order and the partner table, nothing counted.

use serde_json::json;

use crate::codes::CodeTable;
use crate::detectors::Detectors;
use crate::detectors::plan::Plan;
use crate::detectors::report::Finding;
use crate::schema::{AlertKind, Conversion, Severity, Status, ValidOrder};

/// One matching signal is worth a look (low), two or more are hard to explain otherwise (high).
pub(in crate::detectors) fn report<'a>(
    detectors: &Detectors,
    plan: &Plan,
    order: &'a ValidOrder<'a>,
    conversion: &Conversion<'a>,
    table: &'a CodeTable,
) -> Option<Finding<'a>> {
    if !plan.thresholds.self_referral || conversion.status != Status::Credited {
        return None;
    }
    let partner = conversion.partner_id.as_deref()?;
    let hashes = &table.partner(partner)?.identity_hashes;
    if hashes.is_empty() {
        return None;
    }
    let o = &order.order;
    let customer = o.customer.as_ref();
    let risk = o.risk.as_ref();
    let candidates = [
        ("customer_id", customer.and_then(|c| c.id.as_deref())),
        ("email", customer.and_then(|c| c.email_sha256.as_deref())),
        ("device", risk.and_then(|r| r.device_hash.as_deref())),
        ("ip", risk.and_then(|r| r.ip_hash.as_deref())),
    ];
    let signals: Vec<&str> = candidates
        .iter()
        .filter(|(_, value)| {
            value.is_some_and(|v| hashes.iter().any(|h| h.eq_ignore_ascii_case(v.trim())))
        })
        .map(|(kind, _)| *kind)
        .collect();
    if signals.is_empty() {
        return None;
    }
    let reference = candidates[..2].iter().find_map(|(kind, value)| {
        value.map(|v| detectors.pseudonym(kind, &v.to_ascii_lowercase()))
    });
    // The decisive code is one the order matched, so it is among the plan's codes.
    let code = conversion.code.as_ref().and_then(|c| {
        plan.codes
            .iter()
            .find(|p| table.code_id(p.entry) == c.code_id)
            .map(|p| p.code_use(order, table))
    });
    let kind = AlertKind::SelfReferralSuspected;
    Some(Finding {
        kind,
        severity: if signals.len() >= 2 {
            Severity::High
        } else {
            kind.severity()
        },
        subject: vec![o.event_type.to_string(), o.order_id.to_string()],
        evidence: vec![o.order_id.to_string()],
        code,
        other_partner: Some(partner.to_string()),
        count: 1,
        detail: json!({
            "signals": signals,
            "customer_ref": reference,
            "key_id": detectors.settings().customer_hmac_key_id,
            "basis": conversion.basis,
        }),
    })
}
