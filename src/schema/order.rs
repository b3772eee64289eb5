//! The order event that comes in (`schema/order.schema.json`).
//!
//! Strings borrow from the input buffer wherever JSON escapes allow, because an order is parsed
//! once and dropped right after its decision is serialized.

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};

use super::number::JsonNumber;
use crate::settings::InputLimits;
use crate::timefmt::{Instant, parse_rfc3339, with_t_separator};

pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Deserialize)]
pub struct Order<'a> {
    #[serde(default)]
    pub schema_version: Option<u32>,
    #[serde(borrow)]
    pub order_id: Cow<'a, str>,
    #[serde(borrow)]
    pub program_id: Cow<'a, str>,
    #[serde(borrow)]
    pub event_type: Cow<'a, str>,
    #[serde(borrow)]
    pub event_time: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "borrowed_strings")]
    pub promo_codes: Vec<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "null_as_empty")]
    pub touchpoints: Vec<Touchpoint<'a>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    pub customer: Option<Customer<'a>>,
    #[serde(default, borrow)]
    pub risk: Option<Risk<'a>>,
    /// Kept as the producer's exact number text, for the conversion (see `number.rs`).
    #[serde(default, borrow)]
    pub amount: Option<JsonNumber<'a>>,
    #[serde(default, borrow)]
    pub discount: Option<JsonNumber<'a>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub currency: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Touchpoint<'a> {
    #[serde(borrow)]
    pub partner_id: Cow<'a, str>,
    #[serde(borrow)]
    pub click_id: Cow<'a, str>,
    #[serde(borrow)]
    pub ts: Cow<'a, str>,
    /// Absent or `null` means a click.
    #[serde(default, deserialize_with = "null_as_default")]
    pub kind: TouchpointKind,
    #[serde(default)]
    pub credit_group: Option<crate::codes::CreditGroup>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TouchpointKind {
    #[default]
    Click,
    View,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Customer<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub email_sha256: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub status: Option<Cow<'a, str>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Risk<'a> {
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub ip_hash: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "borrowed_opt")]
    pub device_hash: Option<Cow<'a, str>>,
}

/// JSON `null` for a list means the same as a missing list: producers differ on which they send.
fn null_as_empty<'de, D, T>(deserializer: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::<Vec<T>>::deserialize(deserializer)?.unwrap_or_default())
}

/// A string that borrows from the input unless it has escapes. serde applies `borrow` only to a
/// field's own `Cow`, so a `Cow` inside a `Vec` or an `Option` would otherwise always be copied.
#[derive(Deserialize)]
struct Borrowed<'a>(#[serde(borrow)] Cow<'a, str>);

fn borrowed_strings<'de: 'a, 'a, D>(deserializer: D) -> Result<Vec<Cow<'a, str>>, D::Error>
where
    D: Deserializer<'de>,
{
    let list: Vec<Borrowed<'a>> = null_as_empty(deserializer)?;
    // Same layout, so the list is converted in place, without a second allocation.
    Ok(list.into_iter().map(|s| s.0).collect())
}

pub(crate) fn borrowed_opt<'de: 'a, 'a, D>(
    deserializer: D,
) -> Result<Option<Cow<'a, str>>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Option::<Borrowed<'a>>::deserialize(deserializer)?.map(|s| s.0))
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// An order whose timestamps have been read and whose size is within limits: what the decision
/// core accepts.
#[derive(Debug, Clone)]
pub struct ValidOrder<'a> {
    pub order: Order<'a>,
    pub event_time: Instant,
    /// Parsed `ts` of each touchpoint, index-aligned with `order.touchpoints`.
    pub touchpoint_times: Vec<Instant>,
}

/// Why an input record cannot be decided. The `reason` string is stable: it labels DLQ records
/// and metrics. Messages name the field and the rule but never carry the field's value: they go
/// into DLQ headers and logs, and values are customer data or attacker-sized.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrderError {
    #[error("record of {size} bytes exceeds the limit of {limit} bytes")]
    Oversize { size: usize, limit: usize },
    #[error("not valid UTF-8 at byte {0}")]
    InvalidUtf8(usize),
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("does not match the order schema: {0}")]
    SchemaViolation(String),
    #[error("unsupported schema_version {0} (this worker reads version {SCHEMA_VERSION})")]
    UnsupportedSchemaVersion(u32),
    #[error("field {field} is not an RFC 3339 date-time with offset (like 2026-05-10T12:00:00Z)")]
    BadTimestamp { field: String },
    #[error("field {field} is {length} bytes, over the limit of {limit} ({setting})")]
    FieldTooLong {
        field: String,
        length: usize,
        limit: usize,
        setting: &'static str,
    },
    #[error("{count} promo codes exceed the limit of {limit} per order")]
    TooManyCodes { count: usize, limit: usize },
    #[error("{count} touchpoints exceed the limit of {limit} per order")]
    TooManyTouchpoints { count: usize, limit: usize },
    #[error("promo code #{index} is {length} bytes, over the limit of {limit}")]
    CodeTooLong {
        index: usize,
        length: usize,
        limit: usize,
    },
    #[error("required field {0} is empty")]
    EmptyField(String),
}

impl OrderError {
    /// Short machine-readable class, used as the DLQ reason and a metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            OrderError::Oversize { .. } => "oversize",
            OrderError::InvalidUtf8(_) => "invalid_utf8",
            OrderError::MalformedJson(_) => "malformed_json",
            OrderError::SchemaViolation(_) | OrderError::EmptyField(_) => "schema_violation",
            OrderError::UnsupportedSchemaVersion(_) => "unsupported_schema_version",
            OrderError::BadTimestamp { .. } => "bad_timestamp",
            OrderError::TooManyCodes { .. } => "too_many_codes",
            OrderError::TooManyTouchpoints { .. } => "too_many_touchpoints",
            OrderError::CodeTooLong { .. } => "code_too_long",
            OrderError::FieldTooLong { .. } => "field_too_long",
        }
    }
}

/// Reads one order from the bytes of one record, enforcing the input limits.
pub fn parse_order<'a>(
    bytes: &'a [u8],
    limits: &InputLimits,
) -> Result<ValidOrder<'a>, OrderError> {
    parse_with(bytes, limits, super::order_fast::parse)
}

/// [`parse_order`] through serde_json alone: the reference its fast path is held to by the
/// tests and the `order_engine` fuzz target. Same results, same errors, only slower.
pub fn parse_order_reference<'a>(
    bytes: &'a [u8],
    limits: &InputLimits,
) -> Result<ValidOrder<'a>, OrderError> {
    parse_with(bytes, limits, |_| None)
}

/// `fast` reads the plain orders it recognises; whatever it leaves (`None`), serde_json reads
/// and, if it must, rejects with the message a producer needs.
fn parse_with<'a>(
    bytes: &'a [u8],
    limits: &InputLimits,
    fast: fn(&'a str) -> Option<Order<'a>>,
) -> Result<ValidOrder<'a>, OrderError> {
    if bytes.len() > limits.max_message_bytes {
        return Err(OrderError::Oversize {
            size: bytes.len(),
            limit: limits.max_message_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|e| OrderError::InvalidUtf8(e.valid_up_to()))?;
    let order = match fast(text) {
        Some(order) => order,
        None => serde_json::from_str(text).map_err(|e| match e.classify() {
            serde_json::error::Category::Data => {
                OrderError::SchemaViolation(schema_problem(text, &e))
            }
            _ => OrderError::MalformedJson(e.to_string()),
        })?,
    };
    validate(order, limits)
}

/// What is wrong with a record that is JSON but not an order, as "field: rule". The record is
/// read again with path tracking, only on this (rare) path so that the hot path pays nothing.
fn schema_problem(text: &str, error: &serde_json::Error) -> String {
    let mut deserializer = serde_json::Deserializer::from_str(text);
    match serde_path_to_error::deserialize::<_, Order<'_>>(&mut deserializer) {
        Err(tracked) if tracked.path().iter().next().is_some() => {
            format!(
                "{}: {}",
                tracked.path(),
                without_values(&tracked.inner().to_string())
            )
        }
        _ => without_values(&error.to_string()),
    }
}

/// serde's messages quote the offending value ("invalid type: integer `4111111111`, expected a
/// string"); keep its kind and the expectation, drop the value.
fn without_values(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((unexpected, expected)) = rest.split_once(", expected ")
        {
            let kind = unexpected
                .split([' ', '`', '"'])
                .take_while(|word| !word.is_empty())
                .collect::<Vec<_>>()
                .join(" ");
            return format!("{prefix}{kind}, expected {expected}");
        }
    }
    if let Some(rest) = message.strip_prefix("unknown variant ")
        && let Some((_, expected)) = rest.split_once(", expected ")
    {
        return format!("unknown variant, expected {expected}");
    }
    message.to_string()
}

/// An identifier field's name, spelled out only when it is too long: an order that passes
/// (nearly all of them) builds no strings.
#[derive(Debug, Clone, Copy)]
enum FieldName {
    Top(&'static str),
    Touchpoint(usize, &'static str),
}

impl FieldName {
    fn spelled(self) -> String {
        match self {
            FieldName::Top(name) => name.to_string(),
            FieldName::Touchpoint(i, field) => format!("touchpoints[{i}].{field}"),
        }
    }
}

/// The identifier fields of an order and their byte lengths, for the length limits.
fn identifiers<'o>(order: &'o Order<'_>) -> impl Iterator<Item = (FieldName, usize)> + 'o {
    let top = [
        ("order_id", Some(&order.order_id)),
        ("program_id", Some(&order.program_id)),
        ("event_type", Some(&order.event_type)),
        ("event_id", order.event_id.as_ref()),
    ];
    let customer = order.customer.iter().flat_map(|c| {
        [
            ("customer.id", c.id.as_ref()),
            ("customer.email_sha256", c.email_sha256.as_ref()),
            ("customer.status", c.status.as_ref()),
        ]
    });
    let risk = order.risk.iter().flat_map(|r| {
        [
            ("risk.ip_hash", r.ip_hash.as_ref()),
            ("risk.device_hash", r.device_hash.as_ref()),
        ]
    });
    let named = top
        .into_iter()
        .chain(customer)
        .chain(risk)
        .filter_map(|(name, value)| Some((FieldName::Top(name), value?.len())));
    let touchpoints = order.touchpoints.iter().enumerate().flat_map(|(i, tp)| {
        [
            (FieldName::Touchpoint(i, "partner_id"), tp.partner_id.len()),
            (FieldName::Touchpoint(i, "click_id"), tp.click_id.len()),
        ]
    });
    named.chain(touchpoints)
}

fn check_lengths(order: &Order<'_>, limits: &InputLimits) -> Result<(), OrderError> {
    let too_long = |field: FieldName, length: usize, limit: usize, setting| {
        (length > limit).then(|| OrderError::FieldTooLong {
            field: field.spelled(),
            length,
            limit,
            setting,
        })
    };
    let currency = order.currency.as_ref().and_then(|c| {
        too_long(
            FieldName::Top("currency"),
            c.len(),
            limits.max_currency_bytes,
            "limits.max_currency_bytes",
        )
    });
    let id = identifiers(order).find_map(|(field, length)| {
        too_long(field, length, limits.max_id_bytes, "limits.max_id_bytes")
    });
    match id.or(currency) {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

fn validate<'a>(mut order: Order<'a>, limits: &InputLimits) -> Result<ValidOrder<'a>, OrderError> {
    if let Some(version) = order.schema_version
        && version != SCHEMA_VERSION
    {
        return Err(OrderError::UnsupportedSchemaVersion(version));
    }
    for (field, value) in [
        ("order_id", &order.order_id),
        ("program_id", &order.program_id),
        ("event_type", &order.event_type),
    ] {
        if value.trim().is_empty() {
            return Err(OrderError::EmptyField(field.to_string()));
        }
    }
    for (i, touchpoint) in order.touchpoints.iter().enumerate() {
        for (field, value) in [
            ("partner_id", &touchpoint.partner_id),
            ("click_id", &touchpoint.click_id),
        ] {
            if value.trim().is_empty() {
                return Err(OrderError::EmptyField(format!("touchpoints[{i}].{field}")));
            }
        }
    }
    check_lengths(&order, limits)?;
    if order.promo_codes.len() > limits.max_codes_per_order {
        return Err(OrderError::TooManyCodes {
            count: order.promo_codes.len(),
            limit: limits.max_codes_per_order,
        });
    }
    if order.touchpoints.len() > limits.max_touchpoints_per_order {
        return Err(OrderError::TooManyTouchpoints {
            count: order.touchpoints.len(),
            limit: limits.max_touchpoints_per_order,
        });
    }
    if let Some((index, code)) = order
        .promo_codes
        .iter()
        .enumerate()
        .find(|(_, code)| code.len() > limits.max_code_bytes)
    {
        return Err(OrderError::CodeTooLong {
            index,
            length: code.len(),
            limit: limits.max_code_bytes,
        });
    }
    let event_time = parse_rfc3339(&order.event_time).ok_or_else(|| OrderError::BadTimestamp {
        field: "event_time".into(),
    })?;
    let touchpoint_times = order
        .touchpoints
        .iter()
        .enumerate()
        .map(|(i, tp)| {
            parse_rfc3339(&tp.ts).ok_or_else(|| OrderError::BadTimestamp {
                field: format!("touchpoints[{i}].ts"),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    // Outputs echo these texts; a space separator is written as `T` (see timefmt).
    if let Some(text) = with_t_separator(&order.event_time) {
        order.event_time = Cow::Owned(text);
    }
    for touchpoint in &mut order.touchpoints {
        if let Some(text) = with_t_separator(&touchpoint.ts) {
            touchpoint.ts = Cow::Owned(text);
        }
    }
    Ok(ValidOrder {
        order,
        event_time,
        touchpoint_times,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> InputLimits {
        InputLimits::default()
    }

    #[test]
    fn minimal_order_has_empty_lists() {
        let raw = br#"{"order_id":"o1","program_id":"p","event_type":"sale","event_time":"2026-01-01T00:00:00Z"}"#;
        let order = parse_order(raw, &limits()).expect("valid");
        assert!(order.order.promo_codes.is_empty());
        assert!(order.order.touchpoints.is_empty());
    }

    #[test]
    fn null_kind_is_a_click_and_blank_touchpoint_ids_are_rejected() {
        let tp = |partner: &str, kind: &str| {
            format!(
                r#"{{"order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z","touchpoints":[{{"partner_id":"{partner}","click_id":"c","ts":"2026-01-01T00:00:00Z","kind":{kind}}}]}}"#
            )
        };
        let record = tp("a", "null");
        let order = parse_order(record.as_bytes(), &limits()).expect("null kind");
        assert_eq!(order.order.touchpoints[0].kind, TouchpointKind::Click);
        let err =
            parse_order(tp(" ", "\"click\"").as_bytes(), &limits()).expect_err("blank partner");
        assert_eq!(
            err.to_string(),
            "required field touchpoints[0].partner_id is empty"
        );
    }

    #[test]
    fn null_lists_and_unknown_fields_are_accepted() {
        let raw = br#"{"order_id":"o1","program_id":"p","event_type":"sale","event_time":"2026-01-01T00:00:00+02:00","promo_codes":null,"touchpoints":null,"extra":{"x":1},"items":[{"sku":"a"}]}"#;
        let order = parse_order(raw, &limits()).expect("valid");
        assert_eq!(order.event_time.to_rfc3339(), "2025-12-31T22:00:00+00:00");
    }

    #[test]
    fn each_bad_input_class_has_its_reason() {
        let cases: [(&[u8], &str); 9] = [
            (b"{not json", "malformed_json"),
            (b"\xff\xfe", "invalid_utf8"),
            (br#"{"order_id":1,"program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z"}"#, "schema_violation"),
            (br#"{"program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z"}"#, "schema_violation"),
            (br#"{"order_id":" ","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z"}"#, "schema_violation"),
            (br#"{"order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01"}"#, "bad_timestamp"),
            (br#"{"order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z","touchpoints":[{"partner_id":"a","click_id":"c","ts":"yesterday"}]}"#, "bad_timestamp"),
            (br#"{"schema_version":2,"order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z"}"#, "unsupported_schema_version"),
            (br#"{"order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z","touchpoints":[{"partner_id":"a","click_id":"c","ts":"2026-01-01T00:00:00Z","kind":"hover"}]}"#, "schema_violation"),
        ];
        for (raw, reason) in cases {
            let err = parse_order(raw, &limits()).expect_err("must be rejected");
            assert_eq!(err.reason(), reason, "{}", String::from_utf8_lossy(raw));
            // The metrics start every known reason's dead-letter counter at 0.
            assert!(crate::engine::Rejection::REASONS.contains(&reason));
        }
    }

    #[test]
    fn money_keeps_its_text_and_non_numbers_are_rejected_as_before() {
        let base = r#""order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z""#;
        let raw = format!(r#"{{{base},"amount":100.10,"discount":1e-7,"currency":"EUR"}}"#);
        let order = parse_order(raw.as_bytes(), &limits()).expect("valid").order;
        assert_eq!(
            order.amount.as_ref().map(JsonNumber::as_str),
            Some("100.10")
        );
        assert_eq!(
            order.discount.as_ref().map(JsonNumber::as_str),
            Some("1e-7")
        );
        // What an f64 field rejected before is still a schema violation.
        for money in [
            r#""amount":"12.50""#,
            r#""amount":1e400"#,
            r#""discount":true"#,
        ] {
            let raw = format!("{{{base},{money}}}");
            let err = parse_order(raw.as_bytes(), &limits()).expect_err(money);
            assert_eq!(err.reason(), "schema_violation", "{money}: {err}");
        }
    }

    #[test]
    fn strings_borrow_from_the_record_unless_escaped() {
        let raw = br#"{"order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z","promo_codes":["SAVE10","A\"B"],"event_id":"e","customer":{"id":"c"}}"#;
        let order = parse_order(raw, &limits()).expect("valid").order;
        assert!(matches!(order.promo_codes[0], Cow::Borrowed("SAVE10")));
        assert_eq!(order.promo_codes[1], "A\"B");
        assert!(matches!(order.event_id, Some(Cow::Borrowed("e"))));
        let customer = order.customer.expect("customer");
        assert!(matches!(customer.id, Some(Cow::Borrowed("c"))));
    }

    #[test]
    fn wrong_types_in_lists_keep_their_messages() {
        let base = r#""order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z""#;
        for (field, message) in [
            (
                r#""promo_codes":[1]"#,
                "promo_codes[0]: invalid type: integer, expected a string",
            ),
            (
                r#""promo_codes":"A""#,
                "promo_codes: invalid type: string, expected a sequence",
            ),
            (
                r#""event_id":2"#,
                "event_id: invalid type: integer, expected a string",
            ),
        ] {
            let raw = format!("{{{base},{field}}}");
            let err = parse_order(raw.as_bytes(), &limits()).expect_err("wrong type");
            assert!(err.to_string().contains(message), "{err}");
        }
    }

    #[test]
    fn limits_are_enforced() {
        let small = InputLimits {
            max_message_bytes: 400,
            max_codes_per_order: 2,
            max_code_bytes: 8,
            max_touchpoints_per_order: 1,
            ..InputLimits::default()
        };
        let base = r#""order_id":"o","program_id":"p","event_type":"s","event_time":"2026-01-01T00:00:00Z""#;
        let too_many = format!(r#"{{{base},"promo_codes":["A","B","C"]}}"#);
        let too_long = format!(r#"{{{base},"promo_codes":["A","ABCDEFGHIJ"]}}"#);
        let tp = r#"{"partner_id":"a","click_id":"c","ts":"2026-01-01T00:00:00Z"}"#;
        let too_many_tps = format!(r#"{{{base},"touchpoints":[{tp},{tp}]}}"#);
        let oversize = format!(r#"{{{base},"pad":"{}"}}"#, "x".repeat(400));
        for (raw, reason) in [
            (too_many, "too_many_codes"),
            (too_long, "code_too_long"),
            (too_many_tps, "too_many_touchpoints"),
            (oversize, "oversize"),
        ] {
            let err = parse_order(raw.as_bytes(), &small).expect_err("must be rejected");
            assert_eq!(err.reason(), reason);
            assert!(crate::engine::Rejection::REASONS.contains(&reason));
        }
    }
}

#[cfg(test)]
#[path = "order_limits_tests.rs"]
mod limits_tests;
