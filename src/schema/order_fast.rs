//! The common order read in one pass over its bytes, without serde's machinery.
//!
//! serde_json's derive was the largest single cost per order (about 37 % of the instructions of
//! parse, decide and serialize): every field goes through a visitor, every string through the
//! escape-aware reader, every optional field through `Option`'s and the borrowing wrappers'
//! visitors. Most orders are plain: keys and values without escapes, a handful of known
//! fields. This reader handles exactly those and answers `None` ("not sure") for anything else
//! (an escape, a control character, a duplicate field, a type it does not expect, a missing
//! field, deep nesting, trailing bytes, malformed JSON). The caller then reads the record with
//! serde_json, whose answer, value or error, stays the reference: the fast path never rejects
//! a record and never accepts one serde_json would not, and when it accepts it builds the same
//! [`Order`]. `tests` below hold it to that on generated and mutated records, and the `order`
//! fuzz target on arbitrary ones.

use std::borrow::Cow;

use super::json_out::stop_bytes;
use super::number::JsonNumber;
use super::order::{Customer, Order, Risk, Touchpoint, TouchpointKind};
use crate::codes::CreditGroup;

/// Nesting the skipper follows inside an unknown field before it hands the record to serde.
const MAX_SKIP_DEPTH: usize = 32;

/// `Some(order)` when the record is a plain order; `None` when serde_json must decide.
pub(super) fn parse(text: &str) -> Option<Order<'_>> {
    let mut reader = Reader {
        bytes: text.as_bytes(),
        text,
        pos: 0,
    };
    let order = reader.order()?;
    reader.whitespace();
    (reader.pos == reader.bytes.len()).then_some(order)
}

/// The length of a string's content up to its closing quote, when it holds no escape and no
/// control character (`None` otherwise, and when it does not end). Reads eight bytes per step:
/// most of an order's bytes are inside strings.
fn plain_string_len(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    while let Some(chunk) = rest.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let stops = stop_bytes(word);
        if stops != 0 {
            at += (stops.trailing_zeros() / 8) as usize;
            return (*rest.get(at)? == b'"').then_some(at);
        }
        at += 8;
    }
    for (offset, &byte) in rest.get(at..)?.iter().enumerate() {
        match byte {
            b'"' => return Some(at + offset),
            b'\\' | 0..=0x1f => return None,
            _ => {}
        }
    }
    None
}

struct Reader<'a> {
    bytes: &'a [u8],
    text: &'a str,
    pos: usize,
}

/// Which known fields of one object were seen: serde's derive rejects a repeated known field
/// ("duplicate field"), so the fast path must not pick one of the two values.
#[derive(Default)]
struct Seen(u32);

impl Seen {
    /// `None` when field `bit` was already seen.
    fn first(&mut self, bit: u32) -> Option<()> {
        let mask = 1 << bit;
        if self.0 & mask != 0 {
            return None;
        }
        self.0 |= mask;
        Some(())
    }
}

impl<'a> Reader<'a> {
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
    }

    fn peek(&mut self) -> Option<u8> {
        self.whitespace();
        self.bytes.get(self.pos).copied()
    }

    fn eat(&mut self, byte: u8) -> Option<()> {
        (self.peek()? == byte).then(|| self.pos += 1)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        self.whitespace();
        self.bytes.get(self.pos..)?.starts_with(word).then(|| {
            self.pos += word.len();
        })
    }

    /// `null` if the next value is one (consumed), so an optional field can take its default.
    fn null(&mut self) -> bool {
        self.literal(b"null").is_some()
    }

    /// A string without escapes or control characters, borrowed from the record.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.pos;
        let end = start + plain_string_len(self.bytes.get(start..)?)?;
        // Both ends sit next to an ASCII quote, so they are character boundaries.
        let value = self.text.get(start..end)?;
        self.pos = end + 1;
        Some(value)
    }

    fn optional_string(&mut self) -> Option<Option<Cow<'a, str>>> {
        if self.null() {
            return Some(None);
        }
        Some(Some(Cow::Borrowed(self.string()?)))
    }

    /// The text of a JSON number (its grammar checked, not its value).
    fn number_text(&mut self) -> Option<&'a str> {
        self.whitespace();
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        let text = self.text.get(start..self.pos)?;
        super::number::is_json_number(text).then_some(text)
    }

    /// What `Option<JsonNumber>` reads: `null`, or a number within `f64` range.
    fn optional_number(&mut self) -> Option<Option<JsonNumber<'a>>> {
        if self.null() {
            return Some(None);
        }
        Some(Some(JsonNumber::parse(self.number_text()?)?))
    }

    /// What `Option<u32>` reads, for the plain spellings: `null` or digits without a sign,
    /// fraction or exponent.
    fn optional_u32(&mut self) -> Option<Option<u32>> {
        if self.null() {
            return Some(None);
        }
        let text = self.number_text()?;
        if !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(Some(text.parse().ok()?))
    }

    /// Steps over one value of any shape, as serde does for an unknown field.
    fn skip_value(&mut self, depth: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.literal(b"null"),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'-' | b'0'..=b'9' => self.number_text().map(drop),
            b'[' if depth < MAX_SKIP_DEPTH => self.array(|reader| reader.skip_value(depth + 1)),
            b'{' if depth < MAX_SKIP_DEPTH => self.object(|reader, _| reader.skip_value(depth + 1)),
            _ => None,
        }
    }

    /// Reads an array, calling `element` with the reader before each element.
    fn array(&mut self, mut element: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.eat(b'[')?;
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(());
        }
        loop {
            element(self)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// Reads an object, calling `field` with each key and the reader before its value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.eat(b'{')?;
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.eat(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.pos += 1,
                b'}' => {
                    self.pos += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// A list field: `null` or an array.
    fn list<T>(&mut self, mut element: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        let mut items = Vec::new();
        if self.null() {
            return Some(items);
        }
        self.array(|reader| {
            items.push(element(reader)?);
            Some(())
        })?;
        Some(items)
    }

    fn order(&mut self) -> Option<Order<'a>> {
        let mut seen = Seen::default();
        let mut schema_version = None;
        let (mut order_id, mut program_id, mut event_type, mut event_time) =
            (None, None, None, None);
        let mut promo_codes = Vec::new();
        let mut touchpoints = Vec::new();
        let (mut event_id, mut currency) = (None, None);
        let (mut customer, mut risk) = (None, None);
        let (mut amount, mut discount) = (None, None);
        self.object(|reader, key| {
            match key {
                "schema_version" => {
                    seen.first(0)?;
                    schema_version = reader.optional_u32()?;
                }
                "order_id" => {
                    seen.first(1)?;
                    order_id = Some(reader.string()?);
                }
                "program_id" => {
                    seen.first(2)?;
                    program_id = Some(reader.string()?);
                }
                "event_type" => {
                    seen.first(3)?;
                    event_type = Some(reader.string()?);
                }
                "event_time" => {
                    seen.first(4)?;
                    event_time = Some(reader.string()?);
                }
                "promo_codes" => {
                    seen.first(5)?;
                    promo_codes = reader.list(|r| r.string().map(Cow::Borrowed))?;
                }
                "touchpoints" => {
                    seen.first(6)?;
                    touchpoints = reader.list(Reader::touchpoint)?;
                }
                "event_id" => {
                    seen.first(7)?;
                    event_id = reader.optional_string()?;
                }
                "customer" => {
                    seen.first(8)?;
                    customer = reader.customer()?;
                }
                "risk" => {
                    seen.first(9)?;
                    risk = reader.risk()?;
                }
                "amount" => {
                    seen.first(10)?;
                    amount = reader.optional_number()?;
                }
                "discount" => {
                    seen.first(11)?;
                    discount = reader.optional_number()?;
                }
                "currency" => {
                    seen.first(12)?;
                    currency = reader.optional_string()?;
                }
                _ => reader.skip_value(0)?,
            }
            Some(())
        })?;
        Some(Order {
            schema_version,
            order_id: Cow::Borrowed(order_id?),
            program_id: Cow::Borrowed(program_id?),
            event_type: Cow::Borrowed(event_type?),
            event_time: Cow::Borrowed(event_time?),
            promo_codes,
            touchpoints,
            event_id,
            customer,
            risk,
            amount,
            discount,
            currency,
        })
    }

    fn touchpoint(&mut self) -> Option<Touchpoint<'a>> {
        let mut seen = Seen::default();
        let (mut partner_id, mut click_id, mut ts) = (None, None, None);
        let mut kind = TouchpointKind::Click;
        let mut credit_group = None;
        self.object(|reader, key| {
            match key {
                "partner_id" => {
                    seen.first(0)?;
                    partner_id = Some(reader.string()?);
                }
                "click_id" => {
                    seen.first(1)?;
                    click_id = Some(reader.string()?);
                }
                "ts" => {
                    seen.first(2)?;
                    ts = Some(reader.string()?);
                }
                "kind" => {
                    seen.first(3)?;
                    if !reader.null() {
                        kind = match reader.string()? {
                            "click" => TouchpointKind::Click,
                            "view" => TouchpointKind::View,
                            _ => return None,
                        };
                    }
                }
                "credit_group" => {
                    seen.first(4)?;
                    if !reader.null() {
                        credit_group = Some(match reader.string()? {
                            "NON_PREFERRED" => CreditGroup::NonPreferred,
                            "STANDARD" => CreditGroup::Standard,
                            "PREFERRED" => CreditGroup::Preferred,
                            _ => return None,
                        });
                    }
                }
                _ => reader.skip_value(1)?,
            }
            Some(())
        })?;
        Some(Touchpoint {
            partner_id: Cow::Borrowed(partner_id?),
            click_id: Cow::Borrowed(click_id?),
            ts: Cow::Borrowed(ts?),
            kind,
            credit_group,
        })
    }

    fn customer(&mut self) -> Option<Option<Customer<'a>>> {
        let fields = self.string_fields(["id", "email_sha256", "status"])?;
        Some(fields.map(|[id, email_sha256, status]| Customer {
            id,
            email_sha256,
            status,
        }))
    }

    fn risk(&mut self) -> Option<Option<Risk<'a>>> {
        let fields = self.string_fields(["ip_hash", "device_hash"])?;
        Some(fields.map(|[ip_hash, device_hash]| Risk {
            ip_hash,
            device_hash,
        }))
    }

    /// An object of optional strings (`customer`, `risk`): `null`, or the values of `names`, in
    /// that order; other keys are skipped, as serde does.
    fn string_fields<const N: usize>(
        &mut self,
        names: [&str; N],
    ) -> Option<Option<[Option<Cow<'a, str>>; N]>> {
        if self.null() {
            return Some(None);
        }
        let mut seen = Seen::default();
        let mut values = std::array::from_fn(|_| None);
        self.object(|reader, key| {
            match names.iter().position(|name| *name == key) {
                Some(i) => {
                    seen.first(u32::try_from(i).ok()?)?;
                    values[i] = reader.optional_string()?;
                }
                None => reader.skip_value(1)?,
            }
            Some(())
        })?;
        Some(Some(values))
    }
}

#[cfg(test)]
mod tests {
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
}
