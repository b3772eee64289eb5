//! From the counts a step returned to alerts, and to INVALID conversions where a program asks.
//!
//! Every decision here is a function of the plan and the returned counts only, so a replay,
//! which returns the recorded counts, writes the same bytes. Each detector reads its own counts
//! ([`super::kinds`]); `finish` walks them in a fixed order, which is the order of the
//! alerts: self-referral; per matched code usage limit, customer limit, velocity, cold share;
//! enumeration; unknown rate.

use std::borrow::Cow;

use serde_json::Value;

use super::Detectors;
use super::Thresholds;
use super::kinds::{
    customer_limit, duplicate_order, enumeration, limit, recent_uses, self_referral, unknown_rate,
    usage_limit,
};
use super::plan::{CodePart, Plan};
use super::state::{Gate, OpResult, StepOutcome};
use crate::attribution::Decision;
use crate::codes::{CodeTable, EntryId};
use crate::ids::alert_id;
use crate::schema::alert::{MAX_EVIDENCE_ORDERS, SCHEMA_VERSION};
use crate::schema::{Alert, AlertKind, Detail, Severity, ValidOrder};
use crate::timefmt::format_instant;

/// One detector finding, before it is dressed as an alert.
pub(super) struct Finding<'a> {
    pub(super) kind: AlertKind,
    pub(super) severity: Severity,
    /// With the kind and program, what makes the alert's id: the subject and the window.
    pub(super) subject: Vec<String>,
    pub(super) evidence: Vec<String>,
    pub(super) code: Option<CodeUse<'a>>,
    pub(super) other_partner: Option<String>,
    pub(super) count: u64,
    pub(super) detail: Value,
}

/// A matched code as an alert names it.
#[derive(Debug, Clone, Copy)]
pub(super) struct CodeUse<'a> {
    pub(super) entry: EntryId,
    pub(super) code_id: &'a str,
    /// As the order entered it.
    pub(super) entered: &'a str,
}

impl CodePart {
    pub(super) fn code_use<'a>(
        &self,
        order: &'a ValidOrder<'a>,
        table: &'a CodeTable,
    ) -> CodeUse<'a> {
        CodeUse {
            entry: self.entry,
            code_id: table.code_id(self.entry),
            entered: order.order.promo_codes[self.position].as_ref(),
        }
    }
}

/// The results of one applied step, as the detectors read them.
pub(super) struct Reading<'r> {
    results: &'r [OpResult],
    pub(super) thresholds: &'r Thresholds,
    /// Names the HMAC key behind the pseudonyms an alert shows.
    pub(super) key_id: &'r str,
}

/// What an operation missing from the results counts: nothing.
static NO_RESULT: OpResult = OpResult {
    before: Vec::new(),
    after: Vec::new(),
    evidence: Vec::new(),
};

impl<'r> Reading<'r> {
    pub(super) fn result(&self, op: usize) -> &'r OpResult {
        self.results.get(op).unwrap_or(&NO_RESULT)
    }

    pub(super) fn fires(&self, gate: &Gate) -> bool {
        gate.fires(self.results)
    }
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
            duplicate_order::report(order, decision, table);
            return;
        }
        StepOutcome::Applied(results) => results.as_slice(),
    };
    let t = &plan.thresholds;
    let reading = Reading {
        results,
        thresholds: t,
        key_id: detectors.settings().customer_hmac_key_id.as_str(),
    };
    let mut findings = Vec::new();
    findings.extend(self_referral::report(
        detectors,
        plan,
        order,
        &decision.conversion,
        table,
    ));
    for part in &plan.codes {
        let code = part.code_use(order, table);
        let usage = usage_limit::report(part, code, &reading, &mut findings);
        let customer = customer_limit::report(part, code, &reading, &mut findings);
        if let Some(reason) = usage.or(customer).filter(|_| t.invalidate_on_limit_breach) {
            limit::invalidate_if_decided_by(&mut decision.conversion, code.code_id, reason);
        }
        recent_uses::report(part, code, &reading, &mut findings);
    }
    enumeration::report(&plan.actors, &reading, &mut findings);
    unknown_rate::report(plan.unknown.as_ref(), &reading, &mut findings);
    for finding in findings {
        let alert = dress(order, table, finding);
        if !decision.alerts.iter().any(|a| a.alert_id == alert.alert_id) {
            decision.alerts.push(alert);
        }
    }
}

pub(super) fn dress<'a>(
    order: &'a ValidOrder<'a>,
    table: &'a CodeTable,
    finding: Finding<'a>,
) -> Alert<'a> {
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
    let entry = finding.code.map(|c| table.entry(c.entry));
    Alert {
        schema_version: SCHEMA_VERSION,
        alert_id: alert_id(&id_parts),
        kind: finding.kind,
        severity: finding.severity,
        program_id: Cow::Borrowed(&o.program_id),
        order_ids,
        code_id: finding.code.map(|c| Cow::Borrowed(c.code_id)),
        code: finding.code.map(|c| Cow::Borrowed(c.entered)),
        owner_partner_id: entry
            .and_then(|e| e.owner_partner_id.as_deref())
            .map(Cow::Borrowed),
        other_partner_id: finding.other_partner.map(Cow::Owned),
        event_time: Cow::Borrowed(&o.event_time),
        code_table_version: Cow::Borrowed(table.version()),
        count: finding.count,
        detail: Detail::Value(finding.detail),
    }
}

pub(super) fn count(counts: &[u64], range: usize) -> u64 {
    counts.get(range).copied().unwrap_or(0)
}

/// The members the state returned for the operation's `list`-th evidence range.
pub(super) fn evidence(result: &OpResult, list: usize) -> Vec<String> {
    result.evidence.get(list).cloned().unwrap_or_default()
}

pub(super) fn instant(ms: i64) -> Option<String> {
    chrono::DateTime::from_timestamp_millis(ms).map(|t| format_instant(&t))
}
