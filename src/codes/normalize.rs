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

    proptest::proptest! {
        #[test]
        fn trim_fast_path_is_trim_matches(raw in r"[ \t\u{A0}\u{200B}\u{FEFF}a-zA-Z0-9é!~]{0,8}") {
            proptest::prop_assert_eq!(trim_entered(&raw), raw.trim_matches(is_invisible_padding));
        }

        #[test]
        fn ascii_fast_path_is_the_nfkc_path(raw in r"[ \t\u{A0}\u{3000}\u{200B}a-zA-Z0-9ﬁß_-]{0,14}") {
            let general: String = {
                let composed: String = trim_entered(&raw).nfkc().collect();
                composed.to_uppercase().trim_matches(is_invisible_padding).to_string()
            };
            proptest::prop_assert_eq!(&exact_key(&raw), &general);
        }
    }

    #[test]
    fn regex_input_keeps_case() {
        assert_eq!(trim_entered("\u{200B} Summer10 "), "Summer10");
    }
}
