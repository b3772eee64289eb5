//! An alert's kind-specific facts (`detail`; the keys of each kind are listed in the README).
//!
//! The alerts that follow from a single order are raised for a large share of orders (an
//! expired code, two partners' codes on one order), and building their detail as a
//! `serde_json::Value` (a map with an allocated key per field, each value converted through
//! serde), writing it through serde's generic serializer and dropping it cost more than the
//! rest of the alert. So those details are held typed, borrowing what they can, and written
//! straight into the output. The stateful detectors and the reversals raise alerts rarely and
//! in many shapes; theirs stay values.
//!
//! The written bytes are what `serde_json` writes for [`Detail::to_value`]: keys in sorted order
//! (serde_json's map is ordered by key), compact. `tests` below and the alert writer's own
//! test hold every variant to that.

use serde::de::{Deserialize, Deserializer};
use serde::ser::{Serialize, Serializer};
use serde_json::{Value, json};

use super::conversion::Status;
use super::json_out::{ObjectWriter, field};
use crate::codes::{CodeType, CreditPolicy};
use crate::settings::ForeignCodeRule;
use crate::timefmt::{Instant, format_instant};

#[derive(Debug, Clone)]
pub enum Detail<'a> {
    /// Any other detail, as a JSON object.
    Value(Value),
    /// A code that matched but may not credit now (expired, inactive, restricted, ...).
    CodeValidity {
        reason: &'static str,
        active_start: Option<Instant>,
        active_end: Option<Instant>,
        code_type: CodeType,
        conversion_status: Status,
    },
    /// Codes of more than one partner on one order.
    PartnerCodes {
        owners: Vec<&'a str>,
        code_ids: Vec<&'a str>,
    },
    /// The decisive code belongs to a partner other than the click winner.
    UnauthorizedPartner {
        credit_policy: Option<CreditPolicy>,
        foreign_code: ForeignCodeRule,
        conversion_status: Status,
    },
}

impl Detail<'_> {
    /// The detail as the JSON value it is written as.
    pub fn to_value(&self) -> Value {
        match self {
            Detail::Value(value) => value.clone(),
            Detail::CodeValidity {
                reason,
                active_start,
                active_end,
                code_type,
                conversion_status,
            } => json!({
                "reason": reason,
                "active_start": active_start.as_ref().map(format_instant),
                "active_end": active_end.as_ref().map(format_instant),
                "code_type": code_type,
                "conversion_status": conversion_status,
            }),
            Detail::PartnerCodes { owners, code_ids } => {
                json!({ "owners": owners, "code_ids": code_ids })
            }
            Detail::UnauthorizedPartner {
                credit_policy,
                foreign_code,
                conversion_status,
            } => json!({
                "credit_policy": credit_policy,
                "foreign_code": foreign_code,
                "conversion_status": conversion_status,
            }),
        }
    }

    /// Appends the detail's JSON, byte for byte what `serde_json` writes for [`Self::to_value`].
    pub(crate) fn write_json(&self, out: &mut Vec<u8>) -> serde_json::Result<()> {
        // Keys in sorted order, as serde_json's map writes them.
        match self {
            Detail::Value(value) => serde_json::to_writer(out, value)?,
            Detail::CodeValidity {
                reason,
                active_start,
                active_end,
                code_type,
                conversion_status,
            } => {
                let mut o = ObjectWriter::open(out);
                o.opt_str(
                    field!("active_end"),
                    active_end.map(|t| format_instant(&t)).as_deref(),
                )?;
                o.opt_str(
                    field!("active_start"),
                    active_start.map(|t| format_instant(&t)).as_deref(),
                )?;
                o.word(field!("code_type"), code_type.as_str());
                o.word(field!("conversion_status"), conversion_status.as_str());
                o.str(field!("reason"), reason)?;
                o.close();
            }
            Detail::PartnerCodes { owners, code_ids } => {
                let mut o = ObjectWriter::open(out);
                o.str_array(field!("code_ids"), code_ids.iter().copied())?;
                o.str_array(field!("owners"), owners.iter().copied())?;
                o.close();
            }
            Detail::UnauthorizedPartner {
                credit_policy,
                foreign_code,
                conversion_status,
            } => {
                let mut o = ObjectWriter::open(out);
                o.word(field!("conversion_status"), conversion_status.as_str());
                o.opt_word(
                    field!("credit_policy"),
                    credit_policy.map(CreditPolicy::as_str),
                );
                o.word(field!("foreign_code"), foreign_code.as_str());
                o.close();
            }
        }
        Ok(())
    }
}

/// Two details are equal when they write the same JSON, whichever form holds them.
impl PartialEq for Detail<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.to_value() == other.to_value()
    }
}

impl Serialize for Detail<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.to_value().serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Detail<'_> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        Value::deserialize(deserializer).map(Detail::Value)
    }
}

impl From<Value> for Detail<'_> {
    fn from(value: Value) -> Self {
        Detail::Value(value)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use proptest::prelude::*;

    use super::*;

    fn any_detail() -> impl Strategy<Value = Detail<'static>> {
        let instant =
            proptest::option::of((0i64..4_000_000_000, 0u32..1_000_000_000).prop_map(
                |(secs, nanos)| Utc.timestamp_opt(secs, nanos).single().unwrap_or_default(),
            ));
        let status = proptest::sample::select(Status::ALL.to_vec());
        let id = proptest::sample::select(vec!["A", "3001", "LI:BBB", "quote\"d", "ü", ""]);
        prop_oneof![
            (
                proptest::sample::select(vec!["CODE_EXPIRED", "CODE_INACTIVE"]),
                instant.clone(),
                instant,
                proptest::sample::select(vec![CodeType::Tracking, CodeType::Restricted]),
                status.clone(),
            )
                .prop_map(
                    |(reason, active_start, active_end, code_type, conversion_status)| {
                        Detail::CodeValidity {
                            reason,
                            active_start,
                            active_end,
                            code_type,
                            conversion_status,
                        }
                    }
                ),
            (
                proptest::collection::vec(id.clone(), 0..4),
                proptest::collection::vec(id, 0..4)
            )
                .prop_map(|(owners, code_ids)| Detail::PartnerCodes { owners, code_ids }),
            (
                proptest::sample::select(vec![
                    None,
                    Some(CreditPolicy::Always),
                    Some(CreditPolicy::Involved),
                    Some(CreditPolicy::Winner)
                ]),
                proptest::sample::select(vec![
                    ForeignCodeRule::Invalidate,
                    ForeignCodeRule::CreditClickWinner
                ]),
                status,
            )
                .prop_map(|(credit_policy, foreign_code, conversion_status)| {
                    Detail::UnauthorizedPartner {
                        credit_policy,
                        foreign_code,
                        conversion_status,
                    }
                }),
            any::<String>().prop_map(|s| Detail::Value(json!({ "reason": s, "n": [1, 2.5] }))),
        ]
    }

    proptest! {
        #[test]
        fn written_as_serde_json_writes_its_value(detail in any_detail()) {
            let mut ours = Vec::new();
            detail.write_json(&mut ours).expect("writes to a Vec");
            let expected = serde_json::to_vec(&detail.to_value()).expect("serializes");
            prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&expected));
        }
    }
}
