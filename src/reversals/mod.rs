//! Refunds, cancellations and partial returns: adjustment records that follow the original
//! decision.
//!
//! Kafka outputs are immutable, so an order that changes after its conversion gets an
//! adjustment record that references the conversion (Rakuten, Refersion, PartnerStack append
//! offsetting records; impact.com publishes a state plus deltas; CJ never lets a correction
//! change the publisher). The worker keeps a compact [`Summary`] of every decision; an
//! adjustment event is evaluated against its order's summary and the adjustments before it
//! ([`adjust::evaluate`]), and everything but the change is copied from the summary.
//!
//! State, replay safety: the store ([`store::DecisionOp`]) keeps per order the summary (first
//! decision wins) and the log of adjustment requests, each appended once under its
//! `adjustment_id`. Applying an adjustment returns the summary and the log up to and including
//! that adjustment's *first* request, so a replayed batch — or the same `adjustment_id` sent
//! again — is evaluated on the same inputs and gives the same bytes. The evaluation is a pure
//! function of that log, so the store never has to compute money (and Redis never sees a
//! decimal).

pub mod adjust;
pub mod explain;
pub mod output;
pub mod store;

use serde::{Deserialize, Serialize};

use crate::ids::conversion_event_id;
use crate::report::decimal::Decimal;
use crate::schema::adjustment::AdjustmentFields;
use crate::schema::{Basis, Conversion, OrderError, Reason, Status, ValidOrder};

/// What an adjustment needs of the decision it adjusts, as stored (short keys: a summary is
/// kept for every decision, for the whole retention).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(rename = "e")]
    pub event_id: String,
    #[serde(rename = "s")]
    pub status: Status,
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub partner_id: Option<String>,
    #[serde(rename = "b", default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<Basis>,
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub code_id: Option<String>,
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<String>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub discount: Option<String>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(rename = "v")]
    pub code_table_version: String,
    #[serde(rename = "t")]
    pub event_time: String,
    #[serde(rename = "m")]
    pub event_ms: i64,
}

impl Summary {
    pub fn of(order: &ValidOrder<'_>, conversion: &Conversion<'_>) -> Summary {
        Summary {
            event_id: conversion.event_id.to_string(),
            status: conversion.status,
            partner_id: conversion.partner_id.as_deref().map(str::to_owned),
            basis: conversion.basis,
            code_id: conversion.code.as_ref().map(|c| c.code_id.to_string()),
            amount: conversion.amount.as_ref().map(|n| n.as_str().to_owned()),
            discount: conversion.discount.as_ref().map(|n| n.as_str().to_owned()),
            currency: conversion.currency.as_deref().map(str::to_owned),
            code_table_version: conversion.code_table_version.to_string(),
            event_time: conversion.event_time.to_string(),
            event_ms: order.event_time.timestamp_millis(),
        }
    }
}

/// One adjustment event as the log keeps it: the new totals already summed from its items.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    #[serde(rename = "i")]
    pub adjustment_id: String,
    /// Hash of the input record: with the order and adjustment id, the record's `event_id`.
    #[serde(rename = "f")]
    pub fingerprint: String,
    #[serde(rename = "y")]
    pub event_type: String,
    #[serde(rename = "r")]
    pub reason: Reason,
    /// The order's new total; absent (a cancel without amount) means nothing remains.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub new_amount: Option<String>,
    #[serde(rename = "d", default, skip_serializing_if = "Option::is_none")]
    pub new_discount: Option<String>,
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    #[serde(rename = "t")]
    pub event_time: String,
    #[serde(rename = "m")]
    pub event_ms: i64,
}

impl Request {
    /// Reads an adjustment event that parsed as an order and has its adjustment fields. The new
    /// total is `amount` when given, else the sum of the items' new line totals.
    pub fn read(
        record: &[u8],
        order: &ValidOrder<'_>,
        fields: &AdjustmentFields<'_>,
    ) -> Result<Request, OrderError> {
        let o = &order.order;
        let exact = |what: &str, text: &str| {
            Decimal::parse(text).ok_or_else(|| {
                OrderError::SchemaViolation(format!("{what} {text} is not an exact decimal"))
            })
        };
        let new_amount = match (&o.amount, &fields.items) {
            (Some(amount), _) => Some(exact("amount", amount.as_str())?),
            (None, Some(items)) => {
                let mut total = Decimal::ZERO;
                for item in items {
                    let line = match (&item.amount, item.quantity, &item.unit_price) {
                        (Some(amount), _, _) => exact("items amount", amount.as_str())?,
                        (None, Some(quantity), Some(price)) => {
                            exact("items unit_price", price.as_str())?
                                .checked_mul_count(quantity)
                                .ok_or_else(|| overflow("items"))?
                        }
                        _ => return Err(overflow("items")),
                    };
                    total = total.checked_add(line).ok_or_else(|| overflow("items"))?;
                }
                Some(total)
            }
            (None, None) => None,
        };
        if new_amount.is_some() && o.currency.is_none() {
            return Err(OrderError::SchemaViolation(
                "an adjustment with an amount or items needs currency".into(),
            ));
        }
        let new_discount = o
            .discount
            .as_ref()
            .map(|d| exact("discount", d.as_str()))
            .transpose()?;
        Ok(Request {
            adjustment_id: fields
                .adjustment_id
                .as_deref()
                .unwrap_or_default()
                .to_owned(),
            fingerprint: conversion_event_id(record),
            event_type: o.event_type.to_string(),
            reason: fields.reason.unwrap_or(Reason::Other),
            new_amount: new_amount.map(|d| d.to_string()),
            new_discount: new_discount.map(|d| d.to_string()),
            currency: o.currency.as_deref().map(str::to_owned),
            event_time: o.event_time.to_string(),
            event_ms: order.event_time.timestamp_millis(),
        })
    }
}

fn overflow(what: &str) -> OrderError {
    OrderError::SchemaViolation(format!("{what} do not sum to an exact decimal"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::adjustment::parse_adjustment_fields;
    use crate::schema::parse_order;
    use crate::settings::InputLimits;

    fn read(json: &str) -> Result<Request, OrderError> {
        let order = parse_order(json.as_bytes(), &InputLimits::default())?;
        let fields = parse_adjustment_fields(json.as_bytes())?;
        Request::read(json.as_bytes(), &order, &fields)
    }

    const BASE: &str = r#""order_id":"o","program_id":"p","event_type":"refund","event_time":"2026-05-11T00:00:00Z","adjustment_id":"r1","reason":"ITEM_RETURNED""#;

    #[test]
    fn the_new_total_is_the_amount_else_the_items_sum_exactly() {
        let amount = read(&format!(r#"{{{BASE},"amount":60.10,"currency":"EUR"}}"#)).expect("ok");
        assert_eq!(amount.new_amount.as_deref(), Some("60.10"));
        let items = read(&format!(
            r#"{{{BASE},"currency":"EUR","items":[{{"quantity":3,"unit_price":0.1}},{{"amount":19.99}}]}}"#
        ))
        .expect("ok");
        assert_eq!(items.new_amount.as_deref(), Some("20.29"));
        let cancel = read(&format!(r#"{{{BASE}}}"#)).expect("ok");
        assert_eq!(cancel.new_amount, None, "nothing remains");
        let same = read(&format!(r#"{{{BASE}}}"#)).expect("ok");
        assert_eq!(cancel.fingerprint, same.fingerprint);
    }

    #[test]
    fn an_amount_without_currency_is_refused() {
        let err = read(&format!(r#"{{{BASE},"amount":5}}"#)).expect_err("no currency");
        assert_eq!(err.reason(), "schema_violation");
        assert!(err.to_string().contains("currency"), "{err}");
    }
}
