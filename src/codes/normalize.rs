//! How an entered promo code is turned into the keys the matcher looks up.
//!
//! Exact codes are case-insensitive (impact.com: "exact codes are not case-sensitive"), so both
//! the table and the entered value are reduced to one canonical key: Unicode NFKC, trimmed, upper
//! case. Regex codes are case-sensitive and see the entered value only trimmed, because a pattern's
//! author decides about case with `(?i)`.

use unicode_normalization::UnicodeNormalization;

/// Characters that checkout forms and copy-paste from social media leave around a code and that
/// `char::is_whitespace` does not cover (zero-width space, joiners, word joiner, BOM).
fn is_invisible_padding(c: char) -> bool {
    c.is_whitespace()
        || matches!(
            c,
            '\u{200B}' | '\u{200C}' | '\u{200D}' | '\u{2060}' | '\u{FEFF}'
        )
}

/// The entered value with surrounding whitespace and invisible padding removed; what regex codes
/// are matched against.
pub fn trim_entered(raw: &str) -> &str {
    // A printable ASCII character at each end (nearly every code) is neither whitespace nor
    // invisible padding, so there is nothing to trim and no need to decode characters.
    let printable = |b: Option<&u8>| b.is_some_and(|b| b.is_ascii_graphic());
    let bytes = raw.as_bytes();
    if printable(bytes.first()) && printable(bytes.last()) {
        return raw;
    }
    raw.trim_matches(is_invisible_padding)
}

/// Canonical key of an exact code: trimmed, NFKC, upper case.
///
/// ASCII input (nearly every real code) takes a copy-free fast path; the result is identical to
/// the general path because NFKC maps ASCII to itself.
pub fn exact_key(raw: &str) -> String {
    let trimmed = trim_entered(raw);
    if trimmed.is_ascii() {
        return trimmed.to_ascii_uppercase();
    }
    let composed: String = trimmed.nfkc().collect();
    // NFKC can turn compatibility spaces (e.g. U+3000) at the ends into plain spaces, and upper
    // casing can expand characters (ß → SS), so trim once more after both.
    composed
        .to_uppercase()
        .trim_matches(is_invisible_padding)
        .to_string()
}

/// Writes the canonical key of an ASCII code into `buf` without allocating and returns it, or
/// `None` when the code needs the general Unicode path (or does not fit).
pub fn exact_key_ascii_inline<'b>(raw: &str, buf: &'b mut [u8]) -> Option<&'b [u8]> {
    let trimmed = trim_entered(raw);
    let bytes = trimmed.as_bytes();
    if !trimmed.is_ascii() || bytes.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..bytes.len()];
    for (dst, src) in out.iter_mut().zip(bytes) {
        *dst = src.to_ascii_uppercase();
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_unicode_padding_and_folds_case() {
        assert_eq!(exact_key("  summer10 "), "SUMMER10");
        assert_eq!(exact_key("\u{00A0}Summer10\u{200B}"), "SUMMER10");
        assert_eq!(exact_key("\u{FEFF}\tsummer10\u{2060}\n"), "SUMMER10");
    }

    #[test]
    fn nfkc_folds_compatibility_forms() {
        // Full-width letters and digits, as typed on a Japanese keyboard.
        assert_eq!(exact_key("ＳＵＭＭＥＲ１０"), "SUMMER10");
        // The "ﬁ" ligature decomposes to "fi".
        assert_eq!(exact_key("ﬁve"), "FIVE");
        assert_eq!(exact_key("straße"), "STRASSE");
    }

    #[test]
    fn inner_whitespace_is_kept() {
        assert_eq!(exact_key(" a b "), "A B");
    }

    #[test]
    fn inline_fast_path_agrees_with_general_path() {
        let mut buf = [0u8; 64];
        for raw in ["summer10", "  Mixed-Case_99 ", "X"] {
            let inline = exact_key_ascii_inline(raw, &mut buf).map(|b| b.to_vec());
            assert_eq!(inline, Some(exact_key(raw).into_bytes()));
        }
        assert_eq!(exact_key_ascii_inline("ＳＵＭ", &mut buf), None);
        assert_eq!(exact_key_ascii_inline(&"A".repeat(65), &mut buf), None);
    }

    proptest::proptest! {
        #[test]
        fn trim_fast_path_is_trim_matches(raw in r"[ \t\u{A0}\u{200B}\u{FEFF}a-zA-Z0-9é!~]{0,8}") {
            proptest::prop_assert_eq!(trim_entered(&raw), raw.trim_matches(is_invisible_padding));
        }

        #[test]
        fn ascii_fast_paths_are_the_nfkc_path(raw in r"[ \t\u{A0}\u{3000}\u{200B}a-zA-Z0-9ﬁß_-]{0,14}") {
            let general: String = {
                let composed: String = trim_entered(&raw).nfkc().collect();
                composed.to_uppercase().trim_matches(is_invisible_padding).to_string()
            };
            proptest::prop_assert_eq!(&exact_key(&raw), &general);
            let mut buf = [0u8; 64];
            if let Some(inline) = exact_key_ascii_inline(&raw, &mut buf) {
                proptest::prop_assert_eq!(inline, general.as_bytes());
            }
        }
    }

    #[test]
    fn regex_input_keeps_case() {
        assert_eq!(trim_entered("\u{200B} Summer10 "), "Summer10");
    }
}
