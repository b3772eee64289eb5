//! Reading the detector script's replies: per order `D` (a duplicate), or `N`/`R` (applied now,
//! or a replay) followed by the results as JSON, `[{"b":[..],"a":[..],"e":[[..],..]},..]`.
//!
//! A batch's replies are a few hundred kilobytes of this JSON, so the shape the current script
//! writes (keys in that order, plain digits, strings without escapes) is read in one pass, and
//! anything else goes to serde, which reads every form a replay record may hold and decides
//! what is an error. The fast reader never answers differently from serde: it answers only for
//! text it fully understands, and the property tests below hold it to that.

use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use crate::detectors::state::{OpResult, StateError, StepOutcome};

pub(super) fn parse_outcome(text: &str) -> Result<StepOutcome, StateError> {
    match text.split_at_checked(1) {
        Some(("D", _)) => Ok(StepOutcome::Duplicate),
        Some(("N" | "R", json)) => parse_results(json).map(StepOutcome::Applied),
        _ => Err(StateError(format!("unexpected script reply {text:?}"))),
    }
}

/// A list as cjson writes it: an empty Lua table comes out as `{}`, so an empty list may
/// arrive as an empty object.
struct Lenient<T>(Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit<T>(std::marker::PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for Visit<T> {
            type Value = Lenient<T>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list, or an empty object for an empty list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(Lenient(items))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Lenient(Vec::new()))
            }
        }
        deserializer.deserialize_any(Visit(std::marker::PhantomData))
    }
}

#[derive(Deserialize)]
struct RawResult {
    b: Lenient<u64>,
    a: Lenient<u64>,
    e: Lenient<Lenient<String>>,
}

/// The results as the script wrote them: read in one pass when they have the shape the current
/// script writes, by serde otherwise (which decides what is an error).
fn parse_results(json: &str) -> Result<Vec<OpResult>, StateError> {
    match read_plain(json) {
        Some(results) => Ok(results),
        None => parse_results_reference(json),
    }
}

/// The serde reading of the results: the reference [`read_plain`] is tested against, and the
/// reader of replay records written by the previous script (`{}` for empty lists, any key
/// order, escaped strings).
fn parse_results_reference(json: &str) -> Result<Vec<OpResult>, StateError> {
    let raw: Lenient<RawResult> = serde_json::from_str(json)
        .map_err(|e| StateError(format!("unreadable script result: {e}")))?;
    Ok(raw
        .0
        .into_iter()
        .map(|r| OpResult {
            before: r.b.0,
            after: r.a.0,
            evidence: r.e.0.into_iter().map(|l| l.0).collect(),
        })
        .collect())
}

/// A cursor over the reply's bytes; every method answers `None` for anything unexpected.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn eat(&mut self, expected: &[u8]) -> Option<()> {
        let rest = self.bytes.get(self.pos..)?;
        rest.starts_with(expected)
            .then(|| self.pos += expected.len())
    }

    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    /// `[`, then items read by `item` separated by commas, then `]`.
    fn list<T>(&mut self, mut item: impl FnMut(&mut Self) -> Option<T>) -> Option<Vec<T>> {
        self.eat(b"[")?;
        let mut items = Vec::new();
        if self.peek()? == b']' {
            self.pos += 1;
            return Some(items);
        }
        loop {
            items.push(item(self)?);
            match self.peek()? {
                b',' => self.pos += 1,
                b']' => {
                    self.pos += 1;
                    return Some(items);
                }
                _ => return None,
            }
        }
    }

    /// Plain digits that fit a `u64`; no sign, fraction, exponent or leading zero.
    fn count(&mut self) -> Option<u64> {
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        let digits = self.bytes.get(start..self.pos)?;
        if digits.is_empty() || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        std::str::from_utf8(digits).ok()?.parse().ok()
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<String> {
        self.eat(b"\"")?;
        let rest = self.bytes.get(self.pos..)?;
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        let text = std::str::from_utf8(rest.get(..len)?).ok()?.to_owned();
        self.pos += len + 1;
        Some(text)
    }

    fn result(&mut self) -> Option<OpResult> {
        self.eat(b"{\"b\":")?;
        let before = self.list(Cursor::count)?;
        self.eat(b",\"a\":")?;
        let after = self.list(Cursor::count)?;
        self.eat(b",\"e\":")?;
        let evidence = self.list(|c| c.list(Cursor::string))?;
        self.eat(b"}")?;
        Some(OpResult {
            before,
            after,
            evidence,
        })
    }
}

/// The results in the exact shape the current script writes, or `None`.
fn read_plain(json: &str) -> Option<Vec<OpResult>> {
    let mut cursor = Cursor {
        bytes: json.as_bytes(),
        pos: 0,
    };
    let results = cursor.list(Cursor::result)?;
    (cursor.pos == json.len()).then_some(results)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn results_read_empty_objects_as_empty_lists() {
        let parsed =
            parse_outcome(r#"N[{"b":{},"a":[3],"e":[["o1","o2"],{}]},{"b":[1],"a":[2],"e":{}}]"#)
                .expect("parses");
        let StepOutcome::Applied(results) = parsed else {
            panic!("applied")
        };
        assert_eq!(results[0].after, [3]);
        assert!(results[0].before.is_empty());
        assert_eq!(results[0].evidence, [vec!["o1", "o2"], vec![]]);
        assert!(results[1].evidence.is_empty());
        assert_eq!(
            parse_outcome("R{}").expect("parses"),
            StepOutcome::Applied(Vec::new())
        );
        assert_eq!(parse_outcome("D").expect("parses"), StepOutcome::Duplicate);
        assert!(parse_outcome("x").is_err());
    }

    /// The results as the current script writes them (counts as digits, evidence through
    /// cjson, which escapes `/` as well as what JSON requires).
    fn script_text(results: &[OpResult]) -> String {
        let list = |v: &[u64]| {
            let items: Vec<String> = v.iter().map(u64::to_string).collect();
            format!("[{}]", items.join(","))
        };
        let items: Vec<String> = results
            .iter()
            .map(|r| {
                let evidence: Vec<String> = r
                    .evidence
                    .iter()
                    .map(|l| {
                        serde_json::to_string(l)
                            .expect("serializes")
                            .replace('/', "\\/")
                    })
                    .collect();
                format!(
                    "{{\"b\":{},\"a\":{},\"e\":[{}]}}",
                    list(&r.before),
                    list(&r.after),
                    evidence.join(",")
                )
            })
            .collect();
        format!("[{}]", items.join(","))
    }

    fn results() -> impl Strategy<Value = Vec<OpResult>> {
        let member = prop_oneof!["[a-zA-Z0-9:_-]{0,12}", r#"[a-z/"\\\x00-\x1fé]{0,4}"#,];
        let result = (
            prop::collection::vec(any::<u64>(), 0..4),
            prop::collection::vec(0u64..1000, 0..4),
            prop::collection::vec(prop::collection::vec(member, 0..4), 0..3),
        )
            .prop_map(|(before, after, evidence)| OpResult {
                before,
                after,
                evidence,
            });
        prop::collection::vec(result, 0..6)
    }

    fn reference(json: &str) -> Result<Vec<OpResult>, String> {
        parse_results_reference(json).map_err(|e| e.to_string())
    }

    proptest! {
        #[test]
        fn the_script_text_reads_as_serde_reads_it(results in results()) {
            let text = script_text(&results);
            prop_assert_eq!(parse_results(&text).map_err(|e| e.to_string()), reference(&text));
            prop_assert_eq!(reference(&text), Ok(results));
        }

        #[test]
        fn altered_text_never_reads_differently(
            results in results(),
            at in any::<prop::sample::Index>(),
            byte in prop_oneof![Just(b'{'), Just(b'}'), Just(b'['), Just(b']'), Just(b','),
                Just(b'"'), Just(b'0'), Just(b'-'), Just(b' '), Just(b'e'), any::<u8>()],
            delete in any::<bool>(),
        ) {
            let mut bytes = script_text(&results).into_bytes();
            let i = at.index(bytes.len() + 1);
            if delete && i < bytes.len() {
                bytes.remove(i);
            } else {
                bytes.insert(i, byte);
            }
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let fast = read_plain(text);
                if let Some(fast) = fast {
                    prop_assert_eq!(Ok(fast), reference(text));
                }
            }
        }
    }

    #[test]
    fn the_fast_reader_takes_the_current_scripts_shape() {
        let text = r#"[{"b":[0,7],"a":[1,8],"e":[["o1","o2"],[]]},{"b":[],"a":[],"e":[]}]"#;
        let read = read_plain(text).expect("the current shape");
        assert_eq!(read[0].after, [1, 8]);
        assert_eq!(read[0].evidence, [vec!["o1", "o2"], vec![]]);
        for other in [
            r#"[{"a":[1],"b":[0],"e":[]}]"#,
            r#"[{"b":{},"a":[1],"e":[]}]"#,
            r#"[{"b":[01],"a":[1],"e":[]}]"#,
            r#"[{"b":[0],"a":[1],"e":[["a\/b"]]}]"#,
            r#"[{"b":[0],"a":[1],"e":[]}] "#,
        ] {
            assert!(read_plain(other).is_none(), "{other}");
        }
    }
}
