//! The fast reader held to serde_json (`parse_order_reference`): generated, mutated and sample
//! records must read the same, value or error.

use proptest::prelude::*;

use crate::schema::order::{parse_order, parse_order_reference};
use crate::settings::InputLimits;

/// Values a field may hold: the plain ones the fast path reads, and every kind of thing it
/// must leave to serde (escapes, raw control characters, wrong types, deep nesting).
const STRINGS: &[&str] = &[
    r#""A-1""#,
    r#""1001""#,
    r#""sale""#,
    r#""2026-05-10T12:00:00Z""#,
    r#""2026-05-10 12:00:00+02:00""#,
    r#""anna10""#,
    r#""PODCAST15""#,
    r#""größe""#,
    r#""""#,
    r#""  ""#,
    r#""click""#,
    r#""view""#,
    r#""VIEW""#,
    r#""STANDARD""#,
    r#""NON_PREFERRED""#,
    r#""PREFERRED""#,
    r#""USD""#,
    r#""a\"b""#,
    r#""\u0041nna10""#,
    r#""tab\there""#,
    "\"raw\tcontrol\"",
    "\"line\nbreak\"",
];
const OTHERS: &[&str] = &[
    "null",
    "true",
    "false",
    "0",
    "1",
    "-0",
    "01",
    "19.99",
    "100.10",
    "1e2",
    "1E+2",
    "1e400",
    "-",
    "4294967296",
    "1.0",
    "[]",
    "{}",
    r#"["anna10","DEALS20"]"#,
    r#"[null]"#,
    r#"[1,2]"#,
    r#"{"a":[1,{"b":null}],"c":"d"}"#,
    "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
    r#"{"id":"c1","email_sha256":null,"status":"new","extra":[true]}"#,
    r#"{"ip_hash":"ip1","device_hash":"d1"}"#,
    r#"{"id":"c1","id":"c2"}"#,
    r#"[{"partner_id":"3001","click_id":"c1","ts":"2026-05-09T08:00:00Z"}]"#,
    r#"[{"partner_id":"3001","click_id":"c1","ts":"2026-05-09T08:00:00Z","kind":"view","credit_group":"STANDARD","x":{}}]"#,
    r#"[{"partner_id":"3001","click_id":"c1","ts":"2026-05-09T08:00:00Z","kind":null,"credit_group":null}]"#,
    r#"[{"partner_id":"3001","click_id":"c1","ts":"2026-05-09T08:00:00Z","kind":"VIEW"}]"#,
    r#"[{"partner_id":"3001","partner_id":"3002","click_id":"c1","ts":"2026-05-09T08:00:00Z"}]"#,
    r#"[{"click_id":"c1","ts":"2026-05-09T08:00:00Z"}]"#,
];
const FIELDS: &[&str] = &[
    "schema_version",
    "order_id",
    "program_id",
    "event_type",
    "event_time",
    "promo_codes",
    "touchpoints",
    "event_id",
    "customer",
    "risk",
    "amount",
    "discount",
    "currency",
    "extra",
    "order_id\\u0000",
    "Order_id",
];
/// JSON's whitespace.
const SPACES: &[&str] = &["", "", "", " ", "\n", "\t", "\r\n  "];

/// Values of the type field `name` expects, mostly plain.
fn typed(name: &str) -> &'static [&'static str] {
    match name {
        "schema_version" => &["1", "null", "2", "1.0", "-0"],
        "promo_codes" => &[r#"["anna10","DEALS20"]"#, "[]", "null", r#"["\u0041"]"#],
        "touchpoints" => &OTHERS[25..],
        "customer" => &[
            r#"{"id":"c1","email_sha256":null,"status":"new","extra":[true]}"#,
            r#"{"id":"c1","id":"c2"}"#,
            "null",
            "{}",
        ],
        "risk" => &[
            r#"{"ip_hash":"ip1","device_hash":"d1"}"#,
            "null",
            r#"{"ip_hash":null,"device_hash":"d\n"}"#,
        ],
        "amount" | "discount" => &OTHERS[3..15],
        "extra" => OTHERS,
        _ => &STRINGS[..10],
    }
}

/// A plain, valid order: the fast path must read it.
fn plain(rng: &mut Pick) -> String {
    let mut fields = vec![
        r#""order_id":"A-1""#.to_string(),
        r#""program_id":"1001""#.to_string(),
        r#""event_type":"sale""#.to_string(),
        r#""event_time":"2026-05-10T12:00:00Z""#.to_string(),
    ];
    let optional = [
        r#""schema_version":1"#,
        r#""promo_codes":["anna10","DEALS20"]"#,
        r#""touchpoints":[{"partner_id":"3001","click_id":"c1","ts":"2026-05-09T08:00:00Z","kind":"view"}]"#,
        r#""customer":{"id":"c1","status":null}"#,
        r#""risk":{"ip_hash":"i"}"#,
        r#""amount":19.99"#,
        r#""discount":null"#,
        r#""currency":"USD""#,
        r#""channel":{"name":["web",1,true]}"#,
    ];
    for field in optional {
        if rng.below(2) == 0 {
            fields.push(field.to_string());
        }
    }
    let mut text = String::from("{");
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(rng.of(SPACES));
        text.push_str(field);
    }
    text.push('}');
    text
}

/// Any mix of known and unknown fields and values, whitespace, and now and then a byte
/// changed, dropped or added: records the fast path must read right or leave alone. The
/// required fields are mostly there with plain values, so that many records are orders.
fn mixed(rng: &mut Pick) -> String {
    let mut fields: Vec<(&str, &str)> = Vec::new();
    for name in FIELDS {
        let required = matches!(
            *name,
            "order_id" | "program_id" | "event_type" | "event_time"
        );
        let copies = match rng.below(100) {
            0 => 2,
            1..=5 => 0,
            _ if required => 1,
            _ if name.contains('\\') => usize::from(rng.below(8) == 0),
            _ => rng.below(2),
        };
        for _ in 0..copies {
            let value = match rng.below(40) {
                0 => rng.of(STRINGS),
                1 => rng.of(OTHERS),
                _ => rng.of(typed(name)),
            };
            fields.push((name, value));
        }
    }
    for i in (1..fields.len()).rev() {
        fields.swap(i, rng.below(i + 1));
    }
    let mut text = String::new();
    text.push_str(rng.space());
    text.push('{');
    for (i, (name, value)) in fields.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        for piece in [rng.space(), "\"", name, "\"", rng.space(), ":"] {
            text.push_str(piece);
        }
        text.push_str(rng.space());
        text.push_str(value);
        text.push_str(rng.space());
    }
    text.push('}');
    text.push_str(rng.space());
    if rng.below(8) == 0 {
        let mut bytes = text.into_bytes();
        let at = rng.below(bytes.len() + 1);
        match rng.below(3) {
            0 if at < bytes.len() => {
                bytes.remove(at);
            }
            1 if at < bytes.len() => bytes[at] = b"{}[]\",:0a\\ "[rng.below(11)],
            _ => bytes.insert(at, b"{}[]\",:0a\\ "[rng.below(11)]),
        }
        return String::from_utf8_lossy(&bytes).into_owned();
    }
    text
}

struct Pick(u64);

impl Pick {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n.max(1) as u64) as usize
    }

    fn of<'s>(&mut self, items: &[&'s str]) -> &'s str {
        items[self.below(items.len())]
    }

    /// JSON whitespace, and now and then a space JSON does not allow.
    fn space(&mut self) -> &'static str {
        match self.below(300) {
            0 => "\u{a0}",
            1 => "\u{c}",
            _ => self.of(SPACES),
        }
    }
}

fn agree(text: &str) -> Result<(), TestCaseError> {
    let limits = InputLimits::default();
    let fast = format!("{:?}", parse_order(text.as_bytes(), &limits));
    let reference = format!("{:?}", parse_order_reference(text.as_bytes(), &limits));
    prop_assert_eq!(fast, reference, "record: {}", text);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(4000))]

    #[test]
    fn string_scan_finds_the_first_stop_byte(
        bytes in proptest::collection::vec(
            prop_oneof![4 => 0x20u8..0x7f, 1 => Just(b'"'), 1 => Just(b'\\'), 1 => 0u8..0x20, 1 => 0x80u8..=0xff],
            0..40,
        )
    ) {
        let naive = bytes
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
            .filter(|&i| bytes[i] == b'"');
        prop_assert_eq!(super::plain_string_len(&bytes), naive);
    }

    #[test]
    fn plain_orders_take_the_fast_path_and_read_the_same(seed in 1..u64::MAX) {
        let text = plain(&mut Pick(seed));
        prop_assert!(super::parse(&text).is_some(), "not read: {}", text);
        agree(&text)?;
    }

    #[test]
    fn any_record_reads_the_same_as_through_serde(seed in 1..u64::MAX) {
        agree(&mixed(&mut Pick(seed)))?;
    }
}

/// The sample orders a user runs first: the valid ones take the fast path, and every one,
/// the broken ones included, reads the same as through serde.
#[test]
fn the_samples_read_the_same_and_the_valid_ones_fast() {
    let samples = include_str!("../../samples/orders.jsonl");
    let limits = InputLimits::default();
    let mut fast = 0;
    for line in samples.lines().filter(|l| !l.trim().is_empty()) {
        agree(line).unwrap_or_else(|e| panic!("{e}"));
        if parse_order_reference(line.as_bytes(), &limits).is_ok() {
            assert!(super::parse(line).is_some(), "not read: {line}");
            fast += 1;
        }
    }
    assert!(fast >= 5, "only {fast} valid samples");
}

/// The generator is worth its cases only if both paths see many of them.
#[test]
fn mixed_records_exercise_both_paths() {
    let records = 20_000;
    let fast = (1..=records)
        .filter(|&seed| super::parse(&mixed(&mut Pick(seed))).is_some())
        .count();
    assert!(
        (records as usize / 20..records as usize / 2).contains(&fast),
        "{fast} of {records} read by the fast path"
    );
}
