//! What `replay --verify-topic` concludes, per input record, from what the replay decided and
//! what the worker wrote. Pure: no Kafka, no files, so every rule is unit-tested.
//!
//! Records are matched by `event_id` (a hash of the exact input bytes, so the same record has
//! the same id in the worker and the replay), dead letters by the input coordinates in their
//! `__connect.errors.*` headers, per-order alerts by `alert_id`.
//!
//! What is reproducible: the replay decides without the stateful detectors, because their
//! outcome depends on every order the worker saw before (duplicate order ids, usage and
//! customer limits, rates) and on state the replay must not write. So a worker conversion the
//! detectors invalidated, and the detectors' alerts, are reported as *not comparable* (counted),
//! never compared as equal; everything else depends only on the order and the table and must
//! match byte for byte. A conversion whose bytes differ only in `code_table_version` is
//! reported as *same decision, other table*, apart from a decision that changed.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde_json::Value;

use crate::schema::{AlertKind, InvalidReason};

/// What the replay made of one input record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub partition: i32,
    pub offset: i64,
    /// The conversion's `event_id`, or for a rejected record the id it would have had.
    pub event_id: String,
    pub outcome: Result<ReplayedDecision, Rejected>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedDecision {
    pub conversion: Vec<u8>,
    pub alerts: Vec<Vec<u8>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub reason: String,
}

/// A dead letter's coordinates and reason, from its headers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct DeadLetterRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub reason: String,
}

/// What the worker wrote; `None` for the topics that were not read.
#[derive(Debug, Clone, Default)]
pub struct Written {
    pub conversions: Vec<Vec<u8>>,
    pub alerts: Option<Vec<Vec<u8>>>,
    pub dead_letters: Option<Vec<DeadLetterRef>>,
}

/// The conclusion for one input record. Ordered from best to worst, so several observations
/// of one record combine as the worst of them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Identical,
    /// Not checked, and why (a topic that was not read).
    Unchecked(String),
    /// Touched by the stateful detectors; not reproducible by a replay.
    NotComparable(String),
    /// Every field equal but `code_table_version`: (worker's, replay's).
    OtherTable(String, String),
    /// What differs, worker's value → replay's.
    Changed(Vec<String>),
    /// The replay has an output the worker did not write.
    Missing(String),
    /// The worker wrote an output the replay does not produce.
    Extra(String),
}

impl Verdict {
    pub fn label(&self) -> &'static str {
        match self {
            Verdict::Identical => "identical",
            Verdict::Unchecked(_) => "unchecked",
            Verdict::NotComparable(_) => "not comparable",
            Verdict::OtherTable(..) => "same decision, other table",
            Verdict::Changed(_) => "decision changed",
            Verdict::Missing(_) => "missing",
            Verdict::Extra(_) => "extra",
        }
    }

    /// Whether this verdict makes the audit fail: a changed, missing or extra output.
    pub fn is_difference(&self) -> bool {
        matches!(
            self,
            Verdict::Changed(_) | Verdict::Missing(_) | Verdict::Extra(_)
        )
    }
}

/// One input record's verdict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub partition: i32,
    pub offset: i64,
    pub order_id: Option<String>,
    pub event_id: String,
    pub verdict: Verdict,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}]@{}", self.partition, self.offset)?;
        if let Some(order) = &self.order_id {
            write!(f, " order {order}")?;
        }
        write!(f, " event {}: {}", self.event_id, self.verdict.label())?;
        match &self.verdict {
            Verdict::Identical => Ok(()),
            Verdict::OtherTable(worker, replay) => write!(f, " ({worker} → {replay})"),
            Verdict::Changed(changes) => write!(f, ": {}", changes.join("; ")),
            Verdict::Unchecked(why)
            | Verdict::NotComparable(why)
            | Verdict::Missing(why)
            | Verdict::Extra(why) => write!(f, ": {why}"),
        }
    }
}

/// Counts over all findings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    pub records: usize,
    pub identical: usize,
    pub other_table: usize,
    pub changed: usize,
    pub missing: usize,
    pub extra: usize,
    pub not_comparable: usize,
    pub unchecked: usize,
    /// Detector alerts the worker wrote for the replayed orders: never compared.
    pub detector_alerts: usize,
    /// Records on the verify topics that are not readable JSON with the fields matched on.
    pub unreadable: usize,
}

impl Summary {
    pub fn differences(&self) -> usize {
        self.changed + self.missing + self.extra
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} records: {} identical, {} same decision with another table, {} decision changed, \
             {} missing, {} extra, {} not comparable (stateful detectors), {} unchecked; \
             {} detector alerts not compared",
            self.records,
            self.identical,
            self.other_table,
            self.changed,
            self.missing,
            self.extra,
            self.not_comparable,
            self.unchecked,
            self.detector_alerts
        )?;
        if self.unreadable > 0 {
            write!(
                f,
                "; {} unreadable records on the verify topics",
                self.unreadable
            )?;
        }
        Ok(())
    }
}

/// The audit: one finding per replayed record, in the order given, and the counts.
#[derive(Debug, Clone, Default)]
pub struct Audit {
    pub findings: Vec<Finding>,
    pub summary: Summary,
}

/// Per-order alert kinds: raised from the order and the table alone, so reproducible.
const PER_ORDER_ALERTS: [AlertKind; 8] = [
    AlertKind::ExpiredCodeUsed,
    AlertKind::NotYetActiveCodeUsed,
    AlertKind::InactiveCodeUsed,
    AlertKind::RestrictedCodeUsed,
    AlertKind::CodeOwnerContractInactive,
    AlertKind::CodeUsedByUnauthorizedPartner,
    AlertKind::MultiplePartnerCodes,
    AlertKind::AmbiguousCodeMatch,
];

/// Reasons only the stateful detectors give a conversion.
const DETECTOR_REASONS: [InvalidReason; 3] = [
    InvalidReason::UsageLimitExceeded,
    InvalidReason::CustomerLimitExceeded,
    InvalidReason::DuplicateOrderId,
];

fn is_per_order_kind(kind: &str) -> bool {
    PER_ORDER_ALERTS.iter().any(|k| k.as_str() == kind)
}

fn text_field<'v>(value: &'v Value, name: &str) -> Option<&'v str> {
    value.get(name).and_then(Value::as_str)
}

/// The worker's outputs, indexed for matching.
struct Index<'w> {
    /// event_id → distinct conversion payloads.
    conversions: BTreeMap<String, BTreeSet<&'w [u8]>>,
    /// alert_id → distinct alert payloads.
    alerts: BTreeMap<String, BTreeSet<&'w [u8]>>,
    /// (program, order) → (alert_id, kind) of the alerts naming that order.
    alerts_by_order: BTreeMap<(String, String), BTreeSet<(String, String)>>,
    dead_letters: BTreeMap<(&'w str, i32, i64), BTreeSet<&'w str>>,
    alerts_read: bool,
    dead_letters_read: bool,
    unreadable: usize,
}

impl<'w> Index<'w> {
    fn new(written: &'w Written) -> Index<'w> {
        let mut index = Index {
            conversions: BTreeMap::new(),
            alerts: BTreeMap::new(),
            alerts_by_order: BTreeMap::new(),
            dead_letters: BTreeMap::new(),
            alerts_read: written.alerts.is_some(),
            dead_letters_read: written.dead_letters.is_some(),
            unreadable: 0,
        };
        for payload in &written.conversions {
            let value = serde_json::from_slice::<Value>(payload).ok();
            match value.as_ref().and_then(|v| text_field(v, "event_id")) {
                Some(id) => {
                    index
                        .conversions
                        .entry(id.to_string())
                        .or_default()
                        .insert(payload.as_slice());
                }
                None => index.unreadable += 1,
            }
        }
        for payload in written.alerts.iter().flatten() {
            let Some(alert) = serde_json::from_slice::<Value>(payload).ok() else {
                index.unreadable += 1;
                continue;
            };
            let (Some(id), Some(kind), Some(program)) = (
                text_field(&alert, "alert_id"),
                text_field(&alert, "kind"),
                text_field(&alert, "program_id"),
            ) else {
                index.unreadable += 1;
                continue;
            };
            index
                .alerts
                .entry(id.to_string())
                .or_default()
                .insert(payload.as_slice());
            let orders = alert.get("order_ids").and_then(Value::as_array);
            for order in orders.into_iter().flatten().filter_map(Value::as_str) {
                index
                    .alerts_by_order
                    .entry((program.to_string(), order.to_string()))
                    .or_default()
                    .insert((id.to_string(), kind.to_string()));
            }
        }
        for letter in written.dead_letters.iter().flatten() {
            index
                .dead_letters
                .entry((letter.topic.as_str(), letter.partition, letter.offset))
                .or_default()
                .insert(letter.reason.as_str());
        }
        index
    }
}

/// Compares the replay of `topic`'s records with what the worker wrote.
pub fn audit(topic: &str, replayed: &[Replayed], written: &Written) -> Audit {
    let index = Index::new(written);
    let mut audit = Audit::default();
    audit.summary.unreadable = index.unreadable;
    // Distinct ids: one detector alert can name many orders of the range.
    let mut detector_alerts = BTreeSet::new();
    for record in replayed {
        let (verdict, order_id) = match &record.outcome {
            Ok(decision) => judge_decision(topic, record, decision, &index, &mut detector_alerts),
            Err(rejected) => (judge_rejection(topic, record, rejected, &index), None),
        };
        let summary = &mut audit.summary;
        summary.records += 1;
        *match verdict {
            Verdict::Identical => &mut summary.identical,
            Verdict::Unchecked(_) => &mut summary.unchecked,
            Verdict::NotComparable(_) => &mut summary.not_comparable,
            Verdict::OtherTable(..) => &mut summary.other_table,
            Verdict::Changed(_) => &mut summary.changed,
            Verdict::Missing(_) => &mut summary.missing,
            Verdict::Extra(_) => &mut summary.extra,
        } += 1;
        audit.findings.push(Finding {
            partition: record.partition,
            offset: record.offset,
            order_id,
            event_id: record.event_id.clone(),
            verdict,
        });
    }
    audit.summary.detector_alerts = detector_alerts.len();
    audit
}

fn judge_decision(
    topic: &str,
    record: &Replayed,
    decision: &ReplayedDecision,
    index: &Index<'_>,
    detector_alerts: &mut BTreeSet<String>,
) -> (Verdict, Option<String>) {
    let ours: Value = serde_json::from_slice(&decision.conversion).unwrap_or(Value::Null);
    let order_id = text_field(&ours, "order_id").map(str::to_string);
    let program = text_field(&ours, "program_id")
        .unwrap_or_default()
        .to_string();
    let Some(theirs) = index
        .conversions
        .get(&record.event_id)
        .filter(|c| !c.is_empty())
    else {
        let why = match index
            .dead_letters
            .get(&(topic, record.partition, record.offset))
        {
            Some(reasons) => format!(
                "the worker dead-lettered it ({})",
                reasons.iter().copied().collect::<Vec<_>>().join(",")
            ),
            None => "the worker wrote no conversion".into(),
        };
        return (Verdict::Missing(why), order_id);
    };
    // The detectors' alerts naming this order are counted, whatever the verdict.
    let order_alerts = order_id
        .as_ref()
        .and_then(|o| index.alerts_by_order.get(&(program.clone(), o.clone())));
    detector_alerts.extend(
        order_alerts
            .into_iter()
            .flatten()
            .filter(|(_, kind)| !is_per_order_kind(kind))
            .map(|(id, _)| id.clone()),
    );
    for payload in theirs {
        let value: Value = serde_json::from_slice(payload).unwrap_or(Value::Null);
        let reason = text_field(&value, "invalid_reason").unwrap_or_default();
        if DETECTOR_REASONS.iter().any(|r| r.as_str() == reason) {
            return (
                Verdict::NotComparable(format!(
                    "the worker's conversion is {reason}, a stateful detector's decision"
                )),
                order_id,
            );
        }
    }
    let mut verdict = Verdict::Identical;
    let mut changes = Vec::new();
    for payload in theirs {
        note(
            &mut verdict,
            &mut changes,
            "",
            classify(payload, &decision.conversion),
        );
    }
    if let (true, Some(order)) = (index.alerts_read, &order_id) {
        compare_alerts(decision, index, &program, order, &mut verdict, &mut changes);
    }
    if !changes.is_empty() {
        verdict = Verdict::Changed(changes);
    }
    (verdict, order_id)
}

/// Compares the per-order alerts both sides raised for one order.
fn compare_alerts(
    decision: &ReplayedDecision,
    index: &Index<'_>,
    program: &str,
    order: &str,
    verdict: &mut Verdict,
    changes: &mut Vec<String>,
) {
    let mut ours = BTreeSet::new();
    for alert in &decision.alerts {
        let value: Value = serde_json::from_slice(alert).unwrap_or(Value::Null);
        let id = text_field(&value, "alert_id").unwrap_or_default();
        let kind = text_field(&value, "kind").unwrap_or_default();
        ours.insert(id.to_string());
        match index.alerts.get(id) {
            None => changes.push(format!("alert {kind} not written by the worker")),
            Some(theirs) => {
                for payload in theirs {
                    let what = format!("alert {kind}: ");
                    note(verdict, changes, &what, classify(payload, alert));
                }
            }
        }
    }
    let key = (program.to_string(), order.to_string());
    for (id, kind) in index.alerts_by_order.get(&key).into_iter().flatten() {
        if is_per_order_kind(kind) && !ours.contains(id) {
            changes.push(format!(
                "alert {kind} written by the worker, not raised now"
            ));
        }
    }
}

/// Folds one comparison into the record's verdict and list of changes.
fn note(verdict: &mut Verdict, changes: &mut Vec<String>, what: &str, seen: Verdict) {
    match seen {
        Verdict::Changed(fields) => {
            changes.extend(fields.into_iter().map(|f| format!("{what}{f}")));
        }
        other => {
            if other > *verdict {
                *verdict = other;
            }
        }
    }
}

/// Compares one output the worker wrote with the replay's: byte for byte, then field by field.
pub fn classify(worker: &[u8], replay: &[u8]) -> Verdict {
    if worker == replay {
        return Verdict::Identical;
    }
    let (Ok(Value::Object(theirs)), Ok(Value::Object(ours))) = (
        serde_json::from_slice::<Value>(worker),
        serde_json::from_slice::<Value>(replay),
    ) else {
        return Verdict::Changed(vec![
            "the outputs differ and are not both JSON objects".into(),
        ]);
    };
    const VERSION: &str = "code_table_version";
    let names: BTreeSet<&String> = theirs.keys().chain(ours.keys()).collect();
    let mut fields = Vec::new();
    for name in names {
        let (a, b) = (theirs.get(name), ours.get(name));
        if name != VERSION && a != b {
            fields.push(format!("{name} {} → {}", show(a), show(b)));
        }
    }
    let (a, b) = (theirs.get(VERSION), ours.get(VERSION));
    if fields.is_empty() {
        return if a == b {
            // Same content, other bytes (key order, spacing): not what the worker writes.
            Verdict::Changed(vec!["same fields, other bytes".into()])
        } else {
            Verdict::OtherTable(show(a), show(b))
        };
    }
    if a != b {
        fields.push(format!("table {} → {}", show(a), show(b)));
    }
    Verdict::Changed(fields)
}

fn show(value: Option<&Value>) -> String {
    value.map_or_else(|| "absent".into(), Value::to_string)
}

fn judge_rejection(
    topic: &str,
    record: &Replayed,
    rejected: &Rejected,
    index: &Index<'_>,
) -> Verdict {
    if index.conversions.contains_key(&record.event_id) {
        return Verdict::Extra(format!(
            "the worker wrote a conversion; the replay rejects the record ({})",
            rejected.reason
        ));
    }
    if !index.dead_letters_read {
        return Verdict::Unchecked(format!(
            "rejected ({}); dead letters not read (no --verify-dlq-topic)",
            rejected.reason
        ));
    }
    match index
        .dead_letters
        .get(&(topic, record.partition, record.offset))
    {
        None => Verdict::Missing(format!(
            "no dead letter; the replay rejects it ({})",
            rejected.reason
        )),
        Some(reasons) if reasons.contains(rejected.reason.as_str()) && reasons.len() == 1 => {
            Verdict::Identical
        }
        Some(reasons) => Verdict::Changed(vec![format!(
            "dead-letter reason {} → {}",
            reasons.iter().copied().collect::<Vec<_>>().join(","),
            rejected.reason
        )]),
    }
}

#[cfg(test)]
#[path = "compare_tests.rs"]
mod tests;
