//! Building blocks for writing the output records straight into the caller's buffer.
//!
//! The output bytes are a contract (the reporting pipelines and the golden examples in
//! `schema/` compare them), so every piece here produces exactly what `serde_json`'s compact
//! serializer produces for the same value; strings that need escaping are handed to
//! `serde_json` itself, so its escaping rules are never re-implemented. The point is to skip
//! serde's per-field machinery and the byte-by-byte escape scan of strings that have nothing to
//! escape, which is nearly all of them (ids, codes, timestamps).

use super::number::JsonNumber;

/// A JSON object being written: `{"key":value,...}` with the separators placed for the caller.
pub(crate) struct ObjectWriter<'b> {
    out: &'b mut Vec<u8>,
    first: bool,
}

impl<'b> ObjectWriter<'b> {
    pub(crate) fn open(out: &'b mut Vec<u8>) -> Self {
        out.push(b'{');
        ObjectWriter { out, first: true }
    }

    /// Writes `"key":` (keys are fixed field names with nothing to escape) and returns the buffer
    /// for the value.
    pub(crate) fn key(&mut self, key: &str) -> &mut Vec<u8> {
        if !self.first {
            self.out.push(b',');
        }
        self.first = false;
        self.out.push(b'"');
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
        self.out
    }

    pub(crate) fn str(&mut self, key: &str, value: &str) -> serde_json::Result<()> {
        write_str(self.key(key), value)
    }

    pub(crate) fn null(&mut self, key: &str) {
        self.key(key).extend_from_slice(b"null");
    }

    pub(crate) fn opt_str(&mut self, key: &str, value: Option<&str>) -> serde_json::Result<()> {
        match value {
            Some(value) => self.str(key, value),
            None => {
                self.null(key);
                Ok(())
            }
        }
    }

    /// A number as its exact JSON text (already checked by `JsonNumber::parse`), as serde_json
    /// writes a `RawValue`.
    pub(crate) fn opt_number(&mut self, key: &str, value: Option<&JsonNumber<'_>>) {
        match value {
            Some(n) => self.key(key).extend_from_slice(n.as_str().as_bytes()),
            None => self.null(key),
        }
    }

    pub(crate) fn u64(&mut self, key: &str, value: u64) {
        write_u64(self.key(key), value);
    }

    pub(crate) fn str_array<'s>(
        &mut self,
        key: &str,
        values: impl IntoIterator<Item = &'s str>,
    ) -> serde_json::Result<()> {
        let out = self.key(key);
        out.push(b'[');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_str(out, value)?;
        }
        out.push(b']');
        Ok(())
    }

    pub(crate) fn close(self) {
        self.out.push(b'}');
    }
}

/// Whether `serde_json` writes this string verbatim between quotes: it escapes only `"`, `\`
/// and the control characters below U+0020. Checked eight bytes at a time, because this scan
/// runs over every byte of every output record.
fn needs_no_escape(value: &str) -> bool {
    let mut chunks = value.as_bytes().chunks_exact(8);
    let words_safe = chunks.by_ref().all(|chunk| {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(chunk);
        stop_bytes(u64::from_le_bytes(bytes)) == 0
    });
    words_safe && !chunks.remainder().iter().any(|&b| is_stop_byte(b))
}

/// One byte of what [`stop_bytes`] flags eight at a time.
pub(super) fn is_stop_byte(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// The high bit set in each byte of `word` (little-endian order) that JSON does not allow
/// unescaped in a string: a quote, a backslash, or below 0x20. Exact for the lowest such byte
/// (and so for whether there is one): the borrows that can flag a later byte wrongly start only
/// at a true match below it. Bytes of 0x80 and above are never flagged.
pub(super) const fn stop_bytes(word: u64) -> u64 {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let quote = word ^ (ONES * b'"' as u64);
    let backslash = word ^ (ONES * b'\\' as u64);
    let zero = quote.wrapping_sub(ONES) & !quote | backslash.wrapping_sub(ONES) & !backslash;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    (zero | control) & HIGH
}

/// A JSON string, byte for byte as `serde_json` writes it.
pub(crate) fn write_str(out: &mut Vec<u8>, value: &str) -> serde_json::Result<()> {
    if needs_no_escape(value) {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        Ok(())
    } else {
        serde_json::to_writer(out, value)
    }
}

/// A decimal integer, as `serde_json` (itoa) writes it.
pub(crate) fn write_u64(out: &mut Vec<u8>, mut value: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    proptest! {
        #[test]
        fn strings_match_serde_json(value in any::<String>()) {
            let mut ours = Vec::new();
            write_str(&mut ours, &value).expect("writes to a Vec");
            prop_assert_eq!(ours, serde_json::to_vec(&value).expect("serializes"));
        }

        #[test]
        fn integers_match_serde_json(value in any::<u64>()) {
            let mut ours = Vec::new();
            write_u64(&mut ours, value);
            prop_assert_eq!(ours, serde_json::to_vec(&value).expect("serializes"));
        }
    }

    proptest! {
        #[test]
        fn word_scan_is_the_byte_scan(value in r#"[ -~\x00-\x1f"\\\x7fé✓]{0,40}"#) {
            let bytewise = value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\');
            prop_assert_eq!(needs_no_escape(&value), bytewise);
        }
    }

    #[test]
    fn escapes_are_delegated() {
        for value in ["a\"b", "back\\slash", "tab\there", "\u{1}", "\u{7f}", "é✓"] {
            let mut ours = Vec::new();
            write_str(&mut ours, value).expect("writes to a Vec");
            assert_eq!(ours, serde_json::to_vec(value).expect("serializes"));
        }
    }
}
