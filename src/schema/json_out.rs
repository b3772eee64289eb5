//! Building blocks for writing the output records straight into the caller's buffer.
//!
//! The output bytes are a contract (the reporting pipelines and the golden examples in
//! `schema/` compare them), so every piece here produces exactly what `serde_json`'s compact
//! serializer produces for the same value; strings that need escaping are handed to
//! `serde_json` itself, so its escaping rules are never re-implemented. The point is to skip
//! serde's per-field machinery and the byte-by-byte escape scan of strings that have nothing to
//! escape, which is nearly all of them (ids, codes, timestamps).

use super::number::JsonNumber;

/// A field name as it is written before its value, `,"name":`, made by [`field!`] at compile
/// time: every record writes some twenty of them, and one copy of a constant costs a fraction of
/// writing the comma, the quotes, the name and the colon one by one.
#[derive(Clone, Copy)]
pub(crate) struct Field(&'static str);

impl Field {
    /// Only for [`field!`], which builds the text from a literal name.
    pub(crate) const fn new(token: &'static str) -> Field {
        Field(token)
    }

    /// The token, without its leading comma for an object's first field.
    fn bytes(self, first: bool) -> &'static [u8] {
        let token = self.0.as_bytes();
        token.get(usize::from(first)..).unwrap_or(token)
    }
}

/// The [`Field`] of a name with nothing to escape (the records' fixed field names).
macro_rules! field {
    ($name:literal) => {
        $crate::schema::json_out::Field::new(concat!(",\"", $name, "\":"))
    };
}
pub(crate) use field;

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

    /// Writes `"key":` and returns the buffer for the value.
    pub(crate) fn key(&mut self, field: Field) -> &mut Vec<u8> {
        self.out.extend_from_slice(field.bytes(self.first));
        self.first = false;
        self.out
    }

    pub(crate) fn str(&mut self, field: Field, value: &str) -> serde_json::Result<()> {
        write_str(self.key(field), value)
    }

    /// A string known to need no escaping (an enum's spelling), written without the scan.
    pub(crate) fn word(&mut self, field: Field, value: &'static str) {
        debug_assert!(needs_no_escape(value), "{value:?} needs escaping");
        write_verbatim(self.key(field), value);
    }

    pub(crate) fn null(&mut self, field: Field) {
        self.key(field).extend_from_slice(b"null");
    }

    pub(crate) fn opt_str(&mut self, field: Field, value: Option<&str>) -> serde_json::Result<()> {
        match value {
            Some(value) => self.str(field, value),
            None => {
                self.null(field);
                Ok(())
            }
        }
    }

    /// [`Self::word`] or `null`.
    pub(crate) fn opt_word(&mut self, field: Field, value: Option<&'static str>) {
        match value {
            Some(value) => self.word(field, value),
            None => self.null(field),
        }
    }

    /// A number as its exact JSON text (already checked by `JsonNumber::parse`), as serde_json
    /// writes a `RawValue`.
    pub(crate) fn opt_number(&mut self, field: Field, value: Option<&JsonNumber<'_>>) {
        match value {
            Some(n) => self.key(field).extend_from_slice(n.as_str().as_bytes()),
            None => self.null(field),
        }
    }

    pub(crate) fn u64(&mut self, field: Field, value: u64) {
        write_u64(self.key(field), value);
    }

    pub(crate) fn str_array<'s>(
        &mut self,
        field: Field,
        values: impl IntoIterator<Item = &'s str>,
    ) -> serde_json::Result<()> {
        let out = self.key(field);
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
/// and the control characters below U+0020. Checked sixteen bytes at a time with SSE2 (eight
/// without), because this scan runs over every byte of every output record; a string of at
/// least one chunk ends with one more chunk read over its last bytes (overlapping what was
/// read), not a byte loop.
fn needs_no_escape(value: &str) -> bool {
    let bytes = value.as_bytes();
    #[cfg(target_arch = "x86_64")]
    if let Some(last) = bytes.len().checked_sub(16) {
        let clean = |chunk: &[u8]| {
            <&[u8; 16]>::try_from(chunk).is_ok_and(|chunk| stop_bytes_16(chunk) == 0)
        };
        return bytes.chunks_exact(16).all(clean) && bytes.get(last..).is_some_and(clean);
    }
    let word = |chunk: &[u8]| {
        <[u8; 8]>::try_from(chunk).map_or(u64::MAX, |w| stop_bytes(u64::from_le_bytes(w)))
    };
    match bytes.len().checked_sub(8) {
        Some(last) => {
            bytes.chunks_exact(8).all(|chunk| word(chunk) == 0)
                && bytes.get(last..).is_some_and(|tail| word(tail) == 0)
        }
        None => !bytes.iter().any(|&b| is_stop_byte(b)),
    }
}

/// One byte of what [`stop_bytes`] flags eight at a time.
pub(super) fn is_stop_byte(byte: u8) -> bool {
    byte < 0x20 || byte == b'"' || byte == b'\\'
}

/// Bit `i` set for each byte `chunk[i]` that [`is_stop_byte`] flags: sixteen bytes in a few
/// SSE2 instructions, where [`stop_bytes`] takes about as many for eight.
#[cfg(target_arch = "x86_64")]
pub(super) fn stop_bytes_16(chunk: &[u8; 16]) -> u32 {
    use std::arch::x86_64::{
        _mm_cmpeq_epi8, _mm_loadu_si128, _mm_max_epu8, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    // SAFETY: SSE2 is part of every x86_64 target, and the unaligned load reads exactly the 16
    // bytes `chunk` borrows.
    unsafe {
        let bytes = _mm_loadu_si128(chunk.as_ptr().cast());
        let quote = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'"' as i8));
        let backslash = _mm_cmpeq_epi8(bytes, _mm_set1_epi8(b'\\' as i8));
        // Unsigned `byte <= 0x1F`: the larger of the two is 0x1F only then.
        let below = _mm_set1_epi8(0x1F);
        let control = _mm_cmpeq_epi8(_mm_max_epu8(bytes, below), below);
        _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), control)) as u32
    }
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
        write_verbatim(out, value);
        Ok(())
    } else {
        serde_json::to_writer(out, value)
    }
}

/// A string between quotes as it is, for one that needs no escaping.
fn write_verbatim(out: &mut Vec<u8>, value: &str) {
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// A decimal integer, through the same `itoa` that `serde_json` writes integers with.
pub(crate) fn write_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
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

    #[cfg(target_arch = "x86_64")]
    proptest! {
        /// Every byte value, at every position, is flagged exactly when the byte test flags it.
        #[test]
        fn sixteen_byte_scan_is_the_byte_scan(
            chunk in proptest::array::uniform16(prop_oneof![
                any::<u8>(),
                Just(b'"'),
                Just(b'\\'),
                Just(0x1F),
                Just(0x20),
                Just(0x7F),
                Just(0x80),
            ])
        ) {
            let expected = chunk
                .iter()
                .enumerate()
                .fold(0u32, |mask, (i, &b)| mask | u32::from(is_stop_byte(b)) << i);
            prop_assert_eq!(stop_bytes_16(&chunk), expected);
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
