//! From a store reply to what is written: the adjustment record and its alerts, or a dead
//! letter. Everything but the change is copied from the stored original.

use std::borrow::Cow;

use serde_json::json;

use super::adjust::{Effect, evaluate};
use super::store::{DecisionOp, DecisionReply};
use super::{Request, Summary};
use crate::ids::alert_id;
use crate::report::decimal::Decimal;
use crate::schema::{
    AdjustmentKind, AdjustmentRecord, Alert, AlertKind, Detail, JsonNumber, Status, ValidOrder,
};
use crate::settings::ReversalSettings;

/// What an adjustment event gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Finished {
    Written {
        record: Option<Box<AdjustmentRecord<'static>>>,
        alerts: Vec<Alert<'static>>,
        /// Set when the adjustment took money back from a credited sale: what
        /// HIGH_REVERSAL_RATE counts.
        reversed: Option<Box<Reversed>>,
    },
    Rejected {
        reason: &'static str,
        message: String,
    },
}

/// An adjustment that took `amount` (positive, or 0 for a cancel of an order without amount)
/// back from the credited sale `original`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversed {
    pub original: Summary,
    pub amount: Decimal,
}

/// The reversal rules of one worker or offline run.
pub struct Reversals {
    settings: ReversalSettings,
    /// `<store.key_prefix>d:`, as the detectors' keys start.
    prefix: String,
}

impl Reversals {
    pub fn new(settings: &ReversalSettings, key_prefix: &str) -> Reversals {
        Reversals {
            settings: settings.clone(),
            prefix: format!("{key_prefix}d:"),
        }
    }

    pub fn settings(&self) -> &ReversalSettings {
        &self.settings
    }

    /// Where a program's keys start: `<prefix>d:{<program>}:`, the program's hash slot (as the
    /// detectors' keys).
    pub fn program_base(&self, program_id: &str) -> String {
        let tag = crate::detectors::program_tag(program_id);
        format!("{}{{{tag}}}:", self.prefix)
    }

    /// The order's key, the order id hashed so any id makes a short, safe key.
    pub fn key(&self, order: &ValidOrder<'_>) -> String {
        let o = &order.order;
        format!(
            "{}v:{}",
            self.program_base(&o.program_id),
            alert_id(&["order", &o.order_id])
        )
    }

    pub fn record_op(&self, order: &ValidOrder<'_>, summary: &Summary) -> DecisionOp {
        DecisionOp::Record {
            group: order.order.program_id.to_string(),
            key: self.key(order),
            summary: serde_json::to_string(summary).unwrap_or_default(),
            ttl_secs: self.settings.retention_secs(),
        }
    }

    pub fn adjust_op(&self, order: &ValidOrder<'_>, request: &Request) -> DecisionOp {
        DecisionOp::Adjust {
            group: order.order.program_id.to_string(),
            key: self.key(order),
            adjustment_id: request.adjustment_id.clone(),
            request: serde_json::to_string(request).unwrap_or_default(),
        }
    }

    /// The outputs of adjustment event `order` from the store's reply to its op.
    pub fn finish(
        &self,
        order: &ValidOrder<'_>,
        request: &Request,
        reply: &DecisionReply,
        table_version: &str,
    ) -> Finished {
        let o = &order.order;
        let (summary, requests) = match reply {
            DecisionReply::Log { summary, requests } => (summary, requests),
            _ => {
                let alert = self.alert(
                    AlertKind::AdjustmentWithoutConversion,
                    order,
                    request,
                    None,
                    table_version,
                    json!({
                        "adjustment_id": request.adjustment_id,
                        "reason": request.reason,
                        "event_type": request.event_type,
                    }),
                );
                return Finished::Written {
                    record: None,
                    alerts: vec![alert],
                    reversed: None,
                };
            }
        };
        let unreadable = |what: &str, e: serde_json::Error| Finished::Rejected {
            reason: "adjustment_state_unreadable",
            message: format!("stored {what}: {e}"),
        };
        let summary: Summary = match serde_json::from_str(summary) {
            Ok(s) => s,
            Err(e) => return unreadable("summary", e),
        };
        let log: Vec<Request> = match requests.iter().map(|r| serde_json::from_str(r)).collect() {
            Ok(log) => log,
            Err(e) => return unreadable("request", e),
        };
        // The first request of this adjustment id, which a repeat is answered with.
        let Some(first) = log.last() else {
            return unreadable(
                "log",
                serde_json::Error::io(std::io::ErrorKind::NotFound.into()),
            );
        };
        let effect = evaluate(&summary, &log, &self.settings);
        if let Some((reason, message)) = effect.rejection() {
            return Finished::Rejected { reason, message };
        }
        let credited = summary.status == Status::Credited;
        let mut alerts = Vec::new();
        let adjusted = match effect {
            Effect::Recorded(adjusted) => adjusted,
            _ => {
                if credited {
                    alerts.push(self.after_lock_alert(order, first, &summary));
                }
                return Finished::Written {
                    record: None,
                    alerts,
                    reversed: None,
                };
            }
        };
        if credited && adjusted.after_lock {
            alerts.push(self.after_lock_alert(order, first, &summary));
        }
        if credited && adjusted.over_reversal {
            alerts.push(self.alert(
                AlertKind::OverReversal,
                order,
                first,
                Some(&summary),
                &summary.code_table_version,
                json!({
                    "adjustment_id": first.adjustment_id,
                    "original_event_id": summary.event_id,
                    "requested_amount": first.new_amount,
                    "amount_delta": adjusted.amount_delta.to_string(),
                }),
            ));
        }
        let numbers = [
            adjusted.amount_delta,
            adjusted.discount_delta,
            adjusted.amount_after,
        ]
        .map(|d| JsonNumber::parse(d.to_string()));
        let [Some(amount_delta), Some(discount_delta), Some(amount_after)] = numbers else {
            return Finished::Rejected {
                reason: "adjustment_amount_overflow",
                message: "an amount is not a JSON number".into(),
            };
        };
        let record = AdjustmentRecord {
            schema_version: crate::schema::adjustment::SCHEMA_VERSION,
            event_id: Cow::Owned(alert_id(&[
                "ADJUSTMENT",
                &o.program_id,
                &o.order_id,
                &first.adjustment_id,
                &first.fingerprint,
            ])),
            original_event_id: Cow::Owned(summary.event_id.clone()),
            order_id: Cow::Owned(o.order_id.to_string()),
            program_id: Cow::Owned(o.program_id.to_string()),
            adjustment_id: Cow::Owned(first.adjustment_id.clone()),
            event_type: Cow::Owned(first.event_type.clone()),
            kind: adjusted.kind,
            reason: first.reason,
            original_status: summary.status,
            partner_id: summary.partner_id.clone().map(Cow::Owned),
            basis: summary.basis,
            code: summary.code_id.clone().map(Cow::Owned),
            amount_delta,
            discount_delta,
            amount_after,
            currency: summary.currency.clone().map(Cow::Owned),
            after_lock: adjusted.after_lock,
            code_table_version: Cow::Owned(summary.code_table_version.clone()),
            event_time: Cow::Owned(first.event_time.clone()),
        };
        let took_back =
            adjusted.amount_delta.signum() < 0 || adjusted.kind == AdjustmentKind::Reversal;
        let reversed = (credited && took_back).then(|| {
            Box::new(Reversed {
                amount: Decimal::ZERO
                    .checked_sub(adjusted.amount_delta)
                    .unwrap_or(Decimal::ZERO),
                original: summary,
            })
        });
        Finished::Written {
            record: Some(Box::new(record)),
            alerts,
            reversed,
        }
    }

    fn after_lock_alert(
        &self,
        order: &ValidOrder<'_>,
        first: &Request,
        summary: &Summary,
    ) -> Alert<'static> {
        self.alert(
            AlertKind::AdjustmentAfterLock,
            order,
            first,
            Some(summary),
            &summary.code_table_version,
            json!({
                "adjustment_id": first.adjustment_id,
                "reason": first.reason,
                "original_event_id": summary.event_id,
                "original_event_time": summary.event_time,
                "lock_secs": self.settings.lock_secs,
                "emitted": self.settings.after_lock == crate::settings::AfterLock::Emit,
            }),
        )
    }

    fn alert(
        &self,
        kind: AlertKind,
        order: &ValidOrder<'_>,
        request: &Request,
        summary: Option<&Summary>,
        table_version: &str,
        detail: serde_json::Value,
    ) -> Alert<'static> {
        let o = &order.order;
        Alert {
            schema_version: crate::schema::alert::SCHEMA_VERSION,
            alert_id: alert_id(&[
                kind.as_str(),
                &o.program_id,
                &o.order_id,
                &request.adjustment_id,
            ]),
            kind,
            severity: kind.severity(),
            program_id: Cow::Owned(o.program_id.to_string()),
            order_ids: vec![Cow::Owned(o.order_id.to_string())],
            code_id: summary.and_then(|s| s.code_id.clone()).map(Cow::Owned),
            code: None,
            owner_partner_id: summary.and_then(|s| s.partner_id.clone()).map(Cow::Owned),
            other_partner_id: None,
            event_time: Cow::Owned(request.event_time.clone()),
            code_table_version: Cow::Owned(table_version.to_string()),
            count: 1,
            detail: Detail::Value(detail),
        }
    }
}
