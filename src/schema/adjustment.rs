//! Refunds, cancellations and partial returns: the adjustment fields an order event of an
//! adjustment type carries (`schema/order.schema.json`), and the adjustment record that goes out
//! (`schema/adjustment.schema.json`).
//!
//! An adjustment is read in two passes: as an order first (so it meets the same limits and
//! required fields), then for its own fields below, only when its `event_type` is one of
//! `reversals.adjustment_types`; the orders that make up nearly all traffic pay nothing for it.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use super::json_out::{ObjectWriter, field};
use super::number::JsonNumber;
use super::order::{OrderError, borrowed_opt};
use super::{Basis, Status};

pub const SCHEMA_VERSION: u32 = 1;

/// Why an order changed, as impact.com's action modification reason codes spell it (the
/// `DispositionCode`/reason of a reversed or modified action), plus `OTHER`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum Reason {
    ItemReturned,
    ItemOutOfStock,
    OrderError,
    OrderUpdate,
    ConsFraud,
    TestAction,
    Other,
}

impl Reason {
    pub const ALL: [Reason; 7] = [
        Reason::ItemReturned,
        Reason::ItemOutOfStock,
        Reason::OrderError,
        Reason::OrderUpdate,
        Reason::ConsFraud,
        Reason::TestAction,
        Reason::Other,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::ItemReturned => "ITEM_RETURNED",
            Reason::ItemOutOfStock => "ITEM_OUT_OF_STOCK",
            Reason::OrderError => "ORDER_ERROR",
            Reason::OrderUpdate => "ORDER_UPDATE",
            Reason::ConsFraud => "CONS_FRAUD",
            Reason::TestAction => "TEST_ACTION",
            Reason::Other => "OTHER",
        }
    }
}

/// `REVERSAL` when nothing payable remains of the order after the adjustment, else `PARTIAL`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AdjustmentKind {
    Reversal,
    Partial,
}

impl AdjustmentKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AdjustmentKind::Reversal => "REVERSAL",
            AdjustmentKind::Partial => "PARTIAL",
        }
    }
}

/// One line of an adjustment: its new line total, or its new quantity at a unit price.
#[derive(Debug, Clone, Deserialize)]
pub struct AdjustedItem<'a> {
    #[serde(default)]
    pub quantity: Option<u64>,
    #[serde(default, borrow)]
    pub unit_price: Option<JsonNumber<'a>>,
    #[serde(default, borrow)]
    pub amount: Option<JsonNumber<'a>>,
}

/// The fields only an adjustment carries; everything else is read as for any order.
#[derive(Debug, Clone, Deserialize)]
pub struct AdjustmentFields<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub adjustment_id: Option<Cow<'a, str>>,
    #[serde(default)]
    pub reason: Option<Reason>,
    #[serde(default, borrow)]
    pub items: Option<Vec<AdjustedItem<'a>>>,
}

/// Reads the adjustment fields of a record that already parsed as an order.
pub fn parse_adjustment_fields(bytes: &[u8]) -> Result<AdjustmentFields<'_>, OrderError> {
    let fields: AdjustmentFields<'_> =
        serde_json::from_slice(bytes).map_err(|e| OrderError::SchemaViolation(e.to_string()))?;
    match &fields.adjustment_id {
        Some(id) if !id.trim().is_empty() => {}
        _ => return Err(OrderError::EmptyField("adjustment_id".into())),
    }
    if fields.reason.is_none() {
        return Err(OrderError::SchemaViolation(
            "an adjustment needs a reason".into(),
        ));
    }
    if let Some(i) = fields
        .items
        .iter()
        .flatten()
        .position(|i| i.amount.is_none() && (i.quantity.is_none() || i.unit_price.is_none()))
    {
        return Err(OrderError::SchemaViolation(format!(
            "items[{i}] needs amount, or quantity and unit_price"
        )));
    }
    Ok(fields)
}

/// The adjustment record: the change to an earlier decision, everything but the change copied
/// from that decision (never re-attributed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdjustmentRecord<'a> {
    pub schema_version: u32,
    #[serde(borrow)]
    pub event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub original_event_id: Cow<'a, str>,
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub program_id: Cow<'a, str>,
    #[serde(borrow)]
    pub adjustment_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    pub kind: AdjustmentKind,
    pub reason: Reason,
    pub original_status: Status,
    #[serde(borrow)]
    pub partner_id: Option<Cow<'a, str>>,
    pub basis: Option<Basis>,
    #[serde(borrow)]
    pub code: Option<Cow<'a, str>>,
    /// Exact decimal numbers (`-40.10`), never through a float.
    #[serde(borrow)]
    pub amount_delta: JsonNumber<'a>,
    #[serde(borrow)]
    pub discount_delta: JsonNumber<'a>,
    #[serde(borrow)]
    pub amount_after: JsonNumber<'a>,
    #[serde(borrow)]
    pub currency: Option<Cow<'a, str>>,
    pub after_lock: bool,
    #[serde(borrow)]
    pub code_table_version: Cow<'a, str>,
    #[serde(borrow)]
    pub event_time: Cow<'a, str>,
}

impl AdjustmentRecord<'_> {
    /// Appends the record's JSON, byte for byte what `serde_json::to_writer` writes for it.
    pub fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        let mut o = ObjectWriter::open(out);
        o.u64(field!("schema_version"), u64::from(self.schema_version));
        o.str(field!("event_id"), &self.event_id)?;
        o.str(field!("original_event_id"), &self.original_event_id)?;
        o.str(field!("order_id"), &self.order_id)?;
        o.str(field!("program_id"), &self.program_id)?;
        o.str(field!("adjustment_id"), &self.adjustment_id)?;
        o.str(field!("event_type"), &self.event_type)?;
        o.word(field!("kind"), self.kind.as_str());
        o.word(field!("reason"), self.reason.as_str());
        o.word(field!("original_status"), self.original_status.as_str());
        o.opt_str(field!("partner_id"), self.partner_id.as_deref())?;
        o.opt_word(field!("basis"), self.basis.map(Basis::as_str));
        o.opt_str(field!("code"), self.code.as_deref())?;
        o.opt_number(field!("amount_delta"), Some(&self.amount_delta));
        o.opt_number(field!("discount_delta"), Some(&self.discount_delta));
        o.opt_number(field!("amount_after"), Some(&self.amount_after));
        o.opt_str(field!("currency"), self.currency.as_deref())?;
        o.key(field!("after_lock"))
            .extend_from_slice(if self.after_lock { b"true" } else { b"false" });
        o.str(field!("code_table_version"), &self.code_table_version)?;
        o.str(field!("event_time"), &self.event_time)?;
        o.close();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn adjustment_fields_are_required_and_items_need_a_value() {
        let ok = br#"{"adjustment_id":"r1","reason":"ITEM_RETURNED","items":[{"sku":"a","amount":5},{"quantity":2,"unit_price":1.5}]}"#;
        let fields = parse_adjustment_fields(ok).expect("valid");
        assert_eq!(fields.reason, Some(Reason::ItemReturned));
        assert_eq!(fields.items.map(|i| i.len()), Some(2));
        for (raw, message) in [
            (&br#"{"reason":"OTHER"}"#[..], "adjustment_id"),
            (
                br#"{"adjustment_id":" ","reason":"OTHER"}"#,
                "adjustment_id",
            ),
            (br#"{"adjustment_id":"r"}"#, "reason"),
            (
                br#"{"adjustment_id":"r","reason":"LOST"}"#,
                "unknown variant",
            ),
            (
                br#"{"adjustment_id":"r","reason":"OTHER","items":[{"quantity":1}]}"#,
                "items[0]",
            ),
        ] {
            let err = parse_adjustment_fields(raw).expect_err("rejected");
            assert_eq!(err.reason(), "schema_violation");
            assert!(err.to_string().contains(message), "{err}");
        }
    }

    #[test]
    fn reason_spelling_is_the_serde_spelling() {
        for reason in Reason::ALL {
            let name = serde_json::to_string(&reason).expect("serializes");
            assert_eq!(format!("\"{}\"", reason.as_str()), name);
        }
    }

    fn text() -> impl Strategy<Value = Cow<'static, str>> {
        prop_oneof!["[a-zA-Z0-9_-]{0,12}", any::<String>()].prop_map(Cow::Owned)
    }

    prop_compose! {
        fn record()(
            strings in proptest::collection::vec(text(), 8),
            optional in proptest::collection::vec(proptest::option::of(text()), 3),
            numbers in proptest::collection::vec(-100_000i64..100_000, 3),
            flags in proptest::collection::vec(any::<bool>(), 3),
            reason in 0..Reason::ALL.len(),
        ) -> AdjustmentRecord<'static> {
            let number = |n: i64| JsonNumber::parse(format!("{}.{:02}", n / 100, (n % 100).abs()))
                .expect("a number");
            AdjustmentRecord {
                schema_version: 1,
                event_id: strings[0].clone(),
                original_event_id: strings[1].clone(),
                order_id: strings[2].clone(),
                program_id: strings[3].clone(),
                adjustment_id: strings[4].clone(),
                event_type: strings[5].clone(),
                kind: if flags[0] { AdjustmentKind::Reversal } else { AdjustmentKind::Partial },
                reason: Reason::ALL[reason],
                original_status: if flags[1] { Status::Credited } else { Status::Invalid },
                partner_id: optional[0].clone(),
                basis: flags[2].then_some(Basis::CodeAlways),
                code: optional[1].clone(),
                amount_delta: number(numbers[0]),
                discount_delta: number(numbers[1]),
                amount_after: number(numbers[2]),
                currency: optional[2].clone(),
                after_lock: flags[2],
                code_table_version: strings[6].clone(),
                event_time: strings[7].clone(),
            }
        }
    }

    proptest! {
        #[test]
        fn write_json_is_serde_json_byte_for_byte(record in record()) {
            let mut ours = Vec::new();
            record.write_json(&mut ours).expect("writes to a Vec");
            let expected = serde_json::to_vec(&record).expect("serializes");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&expected));
        }
    }
}
