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
//! [`Order`]. Its tests (`order_fast_tests.rs`) hold it to that on generated and mutated
//! records, and the `order_engine` fuzz target on arbitrary ones.

use std::borrow::Cow;

#[cfg(target_arch = "x86_64")]
use super::json_out::stop_bytes_16;
use super::json_out::{is_stop_byte, stop_bytes};
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
/// control character (`None` otherwise, and when it does not end). Reads sixteen bytes per step
/// (eight where SSE2 is not at hand, and near the record's end): most of an order's bytes are
/// inside strings.
fn plain_string_len(rest: &[u8]) -> Option<usize> {
    let mut at = 0;
    #[cfg(target_arch = "x86_64")]
    while let Some(chunk) = rest
        .get(at..at + 16)
        .and_then(|c| <&[u8; 16]>::try_from(c).ok())
    {
        let stops = stop_bytes_16(chunk);
        if stops != 0 {
            at += stops.trailing_zeros() as usize;
            return (*rest.get(at)? == b'"').then_some(at);
        }
        at += 16;
    }
    while let Some(chunk) = rest.get(at..at + 8) {
        let word = u64::from_le_bytes(chunk.try_into().ok()?);
        let stops = stop_bytes(word);
        if stops != 0 {
            at += (stops.trailing_zeros() / 8) as usize;
            return (*rest.get(at)? == b'"').then_some(at);
        }
        at += 8;
    }
    let offset = rest.get(at..)?.iter().position(|&b| is_stop_byte(b))?;
    (rest.get(at + offset) == Some(&b'"')).then_some(at + offset)
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

    /// The characters a JSON number can hold, unchecked.
    fn number_span(&mut self) -> Option<&'a str> {
        self.whitespace();
        let start = self.pos;
        while let Some(b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E') = self.bytes.get(self.pos) {
            self.pos += 1;
        }
        self.text.get(start..self.pos)
    }

    /// The text of a JSON number (its grammar checked, not its value).
    fn number_text(&mut self) -> Option<&'a str> {
        let text = self.number_span()?;
        super::number::is_json_number(text).then_some(text)
    }

    /// What `Option<JsonNumber>` reads: `null`, or a number within `f64` range.
    fn optional_number(&mut self) -> Option<Option<JsonNumber<'a>>> {
        if self.null() {
            return Some(None);
        }
        // `parse` checks the grammar itself, and the range.
        Some(Some(JsonNumber::parse(self.number_span()?)?))
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
#[path = "order_fast_tests.rs"]
mod tests;
