//! CODE_ENUMERATION_SUSPECTED: the distinct codes, known and unknown, that one actor (customer,
//! device or IP) entered within a window (`a:<actor ref>:<window>`).

use serde_json::json;

use super::customer_limit::IdentityRef;
use crate::detectors::Detectors;
use crate::detectors::plan::{EnteredCodes, Planner};
use crate::detectors::report::{Finding, Reading, count, evidence, instant};
use crate::detectors::state::{CountRef, Evidence, Gate, Op, Range};
use crate::detectors::{secs_ms, window_start};
use crate::schema::{AlertKind, ValidOrder};

/// Codes are scored 0 (known) and 1 (unknown); the actor's orders, which share the set, are
/// scored by event time from 2 up, clear of the codes.
const CODES: Range = Range { min: 0, max: 2 };
const UNKNOWN_CODES: Range = Range { min: 1, max: 2 };
const ORDERS: Range = Range {
    min: 2,
    max: i64::MAX,
};

#[derive(Debug, Clone)]
pub struct ActorCount {
    pub actor: IdentityRef,
    pub window_ms: i64,
    /// Ranges: 0 distinct codes, 1 unknown codes; evidence: the codes, then the orders.
    pub op: usize,
    pub gate: Gate,
}

/// Everyone who could be enumerating codes: the customer (by id, else by email hash), the
/// device and the IP.
fn actor_refs(
    detectors: &Detectors,
    order: &ValidOrder<'_>,
    customers: &[IdentityRef],
) -> Vec<IdentityRef> {
    let mut refs: Vec<IdentityRef> = customers.iter().take(1).cloned().collect();
    if let Some(risk) = &order.order.risk {
        for (kind, value) in [
            ("device", risk.device_hash.as_deref()),
            ("ip", risk.ip_hash.as_deref()),
        ] {
            if let Some(value) = value.filter(|v| !v.trim().is_empty()) {
                refs.push(IdentityRef::new(
                    detectors,
                    kind,
                    &value.to_ascii_lowercase(),
                ));
            }
        }
    }
    refs
}

pub(in crate::detectors) fn plan(
    p: &mut Planner<'_>,
    detectors: &Detectors,
    order: &ValidOrder<'_>,
    customers: &[IdentityRef],
    entered: &EnteredCodes<'_>,
) -> Vec<ActorCount> {
    let t = p.thresholds;
    if !t.enumeration || entered.is_empty() {
        return Vec::new();
    }
    // Known codes by code_id, unknown ones by their normalised text, marked so that no text
    // can pass for a code_id.
    let codes: Vec<(i64, String)> = entered
        .known
        .iter()
        .map(|id| (0, id.to_string()))
        .chain(entered.unknown.iter().map(|k| (1, format!("?{k}"))))
        .collect();
    let width = secs_ms(t.enumeration_window_secs);
    let start = window_start(p.event_ms, width);
    let mut actors = Vec::new();
    for actor in actor_refs(detectors, order, customers) {
        let op = p.next_op();
        let gate = Gate::Either {
            distinct: CountRef { op, range: 0 },
            unknown: CountRef { op, range: 1 },
            min_distinct: t.enumeration_distinct_codes,
            min_unknown: t.enumeration_unknown_codes,
        };
        // One set per actor and window for both codes and orders: one operation per actor and
        // order.
        let mut members = codes.clone();
        members.push((p.event_ms.max(ORDERS.min), p.order_id.to_string()));
        let key = |reference: &str| format!("{}a:{reference}:{start}", p.base);
        p.push(Op::Add {
            key: key(&actor.reference),
            merge_from: actor.previous.as_deref().map(key),
            ttl_secs: p.window_ttl(t.enumeration_window_secs),
            members,
            trim_below: None,
            ranges: vec![CODES, UNKNOWN_CODES],
            evidence: Some(Evidence {
                ranges: vec![CODES, ORDERS],
                gate,
            }),
        });
        actors.push(ActorCount {
            actor,
            window_ms: start,
            op,
            gate,
        });
    }
    actors
}

pub(in crate::detectors) fn report(
    actors: &[ActorCount],
    reading: &Reading<'_>,
    findings: &mut Vec<Finding<'_>>,
) {
    let t = reading.thresholds;
    for ActorCount {
        actor,
        window_ms,
        op,
        gate,
    } in actors
    {
        if !reading.fires(gate) {
            continue;
        }
        let r = reading.result(*op);
        let (distinct, unknown) = (count(&r.after, 0), count(&r.after, 1));
        findings.push(Finding {
            kind: AlertKind::CodeEnumerationSuspected,
            severity: AlertKind::CodeEnumerationSuspected.severity(),
            subject: vec![
                actor.kind.to_string(),
                actor.reference.clone(),
                window_ms.to_string(),
            ],
            evidence: evidence(r, 1),
            code: None,
            other_partner: None,
            count: distinct,
            detail: json!({
                "actor_kind": actor.kind,
                "actor_ref": actor.reference,
                "key_id": reading.key_id,
                "window_start": instant(*window_ms),
                "window_end": instant(window_ms + secs_ms(t.enumeration_window_secs)),
                "distinct_codes": distinct,
                "unknown_codes": unknown,
                "codes": evidence(r, 0),
                "min_distinct_codes": t.enumeration_distinct_codes,
                "min_unknown_codes": t.enumeration_unknown_codes,
            }),
        });
    }
}
