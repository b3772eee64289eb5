//! A JSON number carried as the exact text the producer wrote.
//!
//! Money goes from the order to the conversion and on to the payout pipelines. Read into an
//! `f64` and written back, `19.99` could come out as `19.989999999999998` and `100.10` as
//! `100.1`; kept as text it comes out byte for byte as it came in, and costs no number parsing
//! beyond one range check.

use std::borrow::Cow;

use serde::de::{self, Deserialize, Deserializer};
use serde::ser::{self, Serialize, Serializer};
use serde_json::value::RawValue;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonNumber<'a>(Cow<'a, str>);

impl<'a> JsonNumber<'a> {
    /// `text` if it is one JSON number (RFC 8259 grammar, no surrounding whitespace) within the
    /// range of an `f64`. The range check keeps what orders have always been held to: they were
    /// read as `f64` before, and `1e400` was a schema violation.
    pub fn parse(text: impl Into<Cow<'a, str>>) -> Option<Self> {
        let text = text.into();
        (is_json_number(&text) && in_f64_range(&text)).then_some(JsonNumber(text))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The same text, borrowed: how a conversion carries its order's numbers.
    pub fn borrowed(&self) -> JsonNumber<'_> {
        JsonNumber(Cow::Borrowed(&self.0))
    }

    pub fn into_owned(self) -> JsonNumber<'static> {
        JsonNumber(Cow::Owned(self.0.into_owned()))
    }
}

/// Whether a JSON number's value is a finite `f64`. Without an exponent and with fewer than 300
/// characters it always is (`f64::MAX` has 309 integer digits), which spares the common case a
/// float parse on the per-order path.
fn in_f64_range(text: &str) -> bool {
    (text.len() < 300 && !text.bytes().any(|b| b == b'e' || b == b'E'))
        || text.parse::<f64>().is_ok_and(f64::is_finite)
}

/// RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`.
pub fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let mut i = usize::from(b.first() == Some(&b'-'));
    let digits = |i: &mut usize| {
        let start = *i;
        while b.get(*i).is_some_and(u8::is_ascii_digit) {
            *i += 1;
        }
        *i - start
    };
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            digits(&mut i);
        }
        _ => return false,
    }
    if b.get(i) == Some(&b'.') {
        i += 1;
        if digits(&mut i) == 0 {
            return false;
        }
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        if digits(&mut i) == 0 {
            return false;
        }
    }
    i == b.len()
}

impl<'de: 'a, 'a> Deserialize<'de> for JsonNumber<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        // serde_json hands out the value's text only through RawValue; borrowing it needs an
        // in-memory input, which is how records are read (`from_slice` / `from_str`).
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        // serde_json has checked that the text is one JSON value; of those, only numbers start
        // with a digit or a minus sign, so the grammar need not be walked again.
        let number = text.starts_with(|c: char| c == '-' || c.is_ascii_digit());
        if number && in_f64_range(text) {
            return Ok(JsonNumber(Cow::Borrowed(text)));
        }
        // The kind of value, never the value: this message ends up in DLQ headers.
        let unexpected = match text.as_bytes().first() {
            _ if number => "a number out of range",
            Some(b'"') => "a string",
            Some(b't' | b'f') => "a boolean",
            Some(b'n') => "null",
            Some(b'{') => "an object",
            Some(b'[') => "an array",
            _ => "not a number",
        };
        Err(de::Error::custom(format_args!(
            "{unexpected}, expected a JSON number"
        )))
    }
}

impl Serialize for JsonNumber<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // Only serde_json knows how to write raw text; the hot path writes through `json_out`.
        let raw = RawValue::from_string(self.0.to_string()).map_err(ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grammar() {
        for ok in [
            "0",
            "-0",
            "19.99",
            "0.1",
            "1e2",
            "1E+2",
            "1e-7",
            "100.10",
            "-5",
            "123456789012345678901234567890.12",
        ] {
            assert!(JsonNumber::parse(ok).is_some(), "{ok}");
        }
        for bad in [
            "", "-", "01", "1.", ".5", "+1", "1e", "1e+", " 1", "1 ", "0x10", "NaN", "\"1\"",
            "1e400", "null",
        ] {
            assert!(JsonNumber::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn deserializing_borrows_the_exact_text() {
        let n: Vec<JsonNumber> = serde_json::from_str("[ 19.99 ,0.1,1e2,100.10]").expect("numbers");
        let texts: Vec<&str> = n.iter().map(JsonNumber::as_str).collect();
        assert_eq!(texts, ["19.99", "0.1", "1e2", "100.10"]);
        assert!(matches!(n[0].0, Cow::Borrowed(_)));
        for bad in [r#""12.50""#, "true", "{}", "1e400"] {
            let err = serde_json::from_str::<JsonNumber>(bad).expect_err(bad);
            assert!(err.is_data(), "{bad}: {err}");
        }
    }

    proptest! {
        #[test]
        fn serde_json_numbers_are_accepted_and_written_back_unchanged(x in any::<f64>()) {
            prop_assume!(x.is_finite());
            let text = serde_json::to_string(&x).expect("finite");
            let n = JsonNumber::parse(text.as_str()).expect("serde_json writes JSON numbers");
            prop_assert_eq!(serde_json::to_string(&n).expect("serializes"), text);
        }
    }
}
