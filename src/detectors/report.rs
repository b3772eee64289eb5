//! From the counts a step returned to alerts, and to INVALID conversions where a program asks.
//!
//! Every decision here is a function of the plan and the returned counts only, so a replay,
//! which returns the recorded counts, writes the same bytes.

use std::borrow::Cow;

use serde_json::{Value, json};

use super::Detectors;
use super::plan::{CodePart, Plan};
use super::state::{OpResult, StepOutcome};
use super::{Thresholds, secs_ms};
use crate::attribution::Decision;
use crate::codes::{CodeTable, EntryId};
use crate::ids::alert_id;
use crate::schema::alert::{MAX_EVIDENCE_ORDERS, SCHEMA_VERSION};
use crate::schema::{Alert, AlertKind, Conversion, InvalidReason, Severity, Status, ValidOrder};
use crate::timefmt::format_instant;

/// One detector finding, before it is dressed as an alert.
struct Finding<'a> {
    kind: AlertKind,
    severity: Severity,
    /// With the kind and program, what makes the alert's id: the subject and the window.
    subject: Vec<String>,
    evidence: Vec<String>,
    code: Option<(EntryId, &'a str)>,
    other_partner: Option<String>,
    count: u64,
    detail: Value,
}

pub(super) fn finish<'a>(
    detectors: &Detectors,
    plan: &Plan,
    outcome: &StepOutcome,
    order: &'a ValidOrder<'a>,
    decision: &mut Decision<'a>,
    table: &'a CodeTable,
) {
    let results = match outcome {
        StepOutcome::Duplicate => {
            duplicate(order, decision, table);
            return;
        }
        StepOutcome::Applied(results) => results.as_slice(),
    };
    let empty = OpResult::default();
    let result = |op: usize| results.get(op).unwrap_or(&empty);
    let t = &plan.thresholds;
    let key_id = detectors.settings().customer_hmac_key_id.as_str();
    let mut findings = Vec::new();
    if t.self_referral
        && let Some(finding) = self_referral(detectors, plan, order, &decision.conversion, table)
    {
        findings.push(finding);
    }
    for part in &plan.codes {
        let entered = order.order.promo_codes[part.position].as_ref();
        let code = Some((part.entry, entered));
        let code_id = table.code_id(part.entry);
        let mut breached = None;
        if let Some((op, limit, gate)) = part.usage {
            let r = result(op);
            let (before, after) = (count(&r.before, 0), count(&r.after, 0));
            if after > limit && after > before {
                breached = Some(InvalidReason::UsageLimitExceeded);
            }
            if gate.fires(results) {
                let kind = if limit == 1 {
                    AlertKind::SingleUseCodeReused
                } else {
                    AlertKind::UsageLimitExceeded
                };
                let evidence = evidence(r, 0);
                let first_redeemer = evidence.first().cloned();
                findings.push(Finding {
                    kind,
                    severity: kind.severity(),
                    subject: vec![code_id.to_string()],
                    evidence,
                    code,
                    other_partner: None,
                    count: after - limit,
                    detail: json!({
                        "usage_limit": limit,
                        "uses": after,
                        "first_redeemer_order_id": first_redeemer,
                        "invalidates": t.invalidate_on_limit_breach,
                    }),
                });
            }
        }
        for (op, limit, gate, ref_kind, reference) in &part.customers {
            let r = result(*op);
            let (before, after) = (count(&r.before, 0), count(&r.after, 0));
            if after > *limit && after > before && breached.is_none() {
                breached = Some(InvalidReason::CustomerLimitExceeded);
            }
            if gate.fires(results) {
                findings.push(Finding {
                    kind: AlertKind::CustomerLimitExceeded,
                    severity: AlertKind::CustomerLimitExceeded.severity(),
                    subject: vec![code_id.to_string(), reference.clone()],
                    evidence: evidence(r, 0),
                    code,
                    other_partner: None,
                    count: after - limit,
                    detail: json!({
                        "customer_limit": limit,
                        "uses": after,
                        "customer_ref": reference,
                        "customer_ref_kind": ref_kind,
                        "key_id": key_id,
                        "invalidates": t.invalidate_on_limit_breach,
                    }),
                });
            }
        }
        if let Some(reason) = breached.filter(|_| t.invalidate_on_limit_breach) {
            invalidate_if_decided_by(&mut decision.conversion, code_id, reason);
        }
        recent_findings(part, t, code, code_id, results, &mut findings);
    }
    for actor in &plan.actors {
        if !actor.gate.fires(results) {
            continue;
        }
        let r = result(actor.op);
        let (distinct, unknown) = (count(&r.after, 0), count(&r.after, 1));
        let width = t.enumeration_window_secs;
        findings.push(Finding {
            kind: AlertKind::CodeEnumerationSuspected,
            severity: AlertKind::CodeEnumerationSuspected.severity(),
            subject: vec![
                actor.kind.to_string(),
                actor.reference.clone(),
                actor.window_ms.to_string(),
            ],
            evidence: evidence(r, 1),
            code: None,
            other_partner: None,
            count: distinct,
            detail: json!({
                "actor_kind": actor.kind,
                "actor_ref": actor.reference,
                "key_id": key_id,
                "window_start": instant(actor.window_ms),
                "window_end": instant(actor.window_ms + secs_ms(width)),
                "distinct_codes": distinct,
                "unknown_codes": unknown,
                "codes": evidence(r, 0),
                "min_distinct_codes": t.enumeration_distinct_codes,
                "min_unknown_codes": t.enumeration_unknown_codes,
            }),
        });
    }
    if let Some(part) = plan.unknown
        && part.gate.fires(results)
    {
        let r = result(part.orders_op);
        let (total, unknown) = (count(&r.after, 0), count(&r.after, 1));
        let top: Vec<Value> = evidence(result(part.tally_op), 0)
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
    for finding in findings {
        let alert = dress(order, table, finding);
        if !decision.alerts.iter().any(|a| a.alert_id == alert.alert_id) {
            decision.alerts.push(alert);
        }
    }
}

/// Velocity and cold share, which read the same recent-uses set.
fn recent_findings<'a>(
    part: &CodePart,
    t: &Thresholds,
    code: Option<(EntryId, &'a str)>,
    code_id: &str,
    results: &[OpResult],
    findings: &mut Vec<Finding<'a>>,
) {
    let Some(recent) = part.recent else { return };
    let empty = OpResult::default();
    let r = results.get(recent.op).unwrap_or(&empty);
    if let (Some(gate), Some((bucket, start)), Some(baseline)) =
        (recent.spike, recent.bucket, recent.baseline)
        && gate.fires(results)
    {
        let (uses, base) = (count(&r.after, bucket), count(&r.after, baseline));
        let b = t.velocity_baseline_buckets;
        let twice_over = uses * b > 2 * t.velocity_factor * base && uses >= 2 * t.velocity_floor;
        let kind = AlertKind::CodeVelocitySpike;
        findings.push(Finding {
            kind,
            severity: if twice_over {
                Severity::High
            } else {
                kind.severity()
            },
            subject: vec![code_id.to_string(), start.to_string()],
            evidence: evidence(r, 0),
            code,
            other_partner: None,
            count: uses,
            detail: json!({
                "window_start": instant(start),
                "window_end": instant(start + secs_ms(t.velocity_bucket_secs)),
                "uses": uses,
                "baseline_uses": base,
                "baseline_windows": b,
                "factor": t.velocity_factor,
                "floor": t.velocity_floor,
            }),
        });
    }
    if let (Some((window, start)), Some((cold_op, gate))) = (recent.cold_window, part.cold)
        && gate.fires(results)
    {
        let cold = results.get(cold_op).unwrap_or(&empty);
        let (uses, cold_uses) = (count(&r.after, window), count(&cold.after, 0));
        findings.push(Finding {
            kind: AlertKind::ColdCodeUseRate,
            severity: AlertKind::ColdCodeUseRate.severity(),
            subject: vec![code_id.to_string(), start.to_string()],
            evidence: evidence(cold, 0),
            code,
            other_partner: None,
            count: cold_uses,
            detail: json!({
                "window_start": instant(start),
                "window_end": instant(start + secs_ms(t.cold_window_secs)),
                "uses": uses,
                "cold_uses": cold_uses,
                "cold_share_percent": cold_uses * 100 / uses.max(1),
                "threshold_percent": t.cold_share_percent,
                "min_uses": t.cold_min_uses,
            }),
        });
    }
}

/// The credited partner's own identity hashes among the customer's: one matching signal is
/// worth a look (low), two or more are hard to explain otherwise (high).
fn self_referral<'a>(
    detectors: &Detectors,
    plan: &Plan,
    order: &'a ValidOrder<'a>,
    conversion: &Conversion<'a>,
    table: &'a CodeTable,
) -> Option<Finding<'a>> {
    if conversion.status != Status::Credited {
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
            .map(|p| (p.entry, o.promo_codes[p.position].as_ref()))
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

/// The same order again with other content: nobody is credited a second time, and the order's
/// own alerts, raised by the first record, are not repeated.
fn duplicate<'a>(order: &'a ValidOrder<'a>, decision: &mut Decision<'a>, table: &'a CodeTable) {
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

fn invalidate_if_decided_by(conversion: &mut Conversion<'_>, code_id: &str, reason: InvalidReason) {
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

fn dress<'a>(order: &'a ValidOrder<'a>, table: &'a CodeTable, finding: Finding<'a>) -> Alert<'a> {
    let o = &order.order;
    let mut id_parts: Vec<&str> = vec![finding.kind.as_str(), &o.program_id];
    id_parts.extend(finding.subject.iter().map(String::as_str));
    let mut order_ids: Vec<Cow<'a, str>> = finding
        .evidence
        .into_iter()
        .take(MAX_EVIDENCE_ORDERS)
        .map(Cow::Owned)
        .collect();
    if order_ids.is_empty() {
        order_ids.push(Cow::Borrowed(o.order_id.as_ref()));
    }
    let entry = finding.code.map(|(id, _)| table.entry(id));
    Alert {
        schema_version: SCHEMA_VERSION,
        alert_id: alert_id(&id_parts),
        kind: finding.kind,
        severity: finding.severity,
        program_id: Cow::Borrowed(&o.program_id),
        order_ids,
        code_id: finding.code.map(|(id, _)| Cow::Borrowed(table.code_id(id))),
        code: finding.code.map(|(_, entered)| Cow::Borrowed(entered)),
        owner_partner_id: entry
            .and_then(|e| e.owner_partner_id.as_deref())
            .map(Cow::Borrowed),
        other_partner_id: finding.other_partner.map(Cow::Owned),
        event_time: Cow::Borrowed(&o.event_time),
        code_table_version: Cow::Borrowed(table.version()),
        count: finding.count,
        detail: finding.detail,
    }
}

fn count(counts: &[u64], range: usize) -> u64 {
    counts.get(range).copied().unwrap_or(0)
}

/// The members the state returned for the operation's `list`-th evidence range.
fn evidence(result: &OpResult, list: usize) -> Vec<String> {
    result.evidence.get(list).cloned().unwrap_or_default()
}

fn instant(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| format_instant(&t))
}
