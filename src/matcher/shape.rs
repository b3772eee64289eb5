//! Patterns that are literal text, then at most one repeated character class, then the end:
//! `^WIN[0-9]{2,4}$`, `^(SPRING)\d+$`, `^VIP[A-Z0-9]{6}$`. They are the common shape of a
//! promo-code pattern after the prefix-only one, and checking one directly (a prefix compare and
//! a loop over a few characters) costs a fraction of a regex search's set-up. Nothing is compiled
//! for them, so they also take no regex memory.

use regex_syntax::hir::{Class, Hir, HirKind, Look};

use super::regex_index::literal_bytes;

#[derive(Debug)]
pub(crate) struct Shape {
    literal: Box<str>,
    /// The class's ASCII members, one bit each.
    ascii: u128,
    /// The class's members above ASCII, as sorted, non-overlapping inclusive ranges.
    wide: Box<[(char, char)]>,
    min: u32,
    max: Option<u32>,
}

impl Shape {
    /// `None` unless the pattern is `^`, non-empty literal text, an optional repeated class,
    /// `$` (the regex crate's `$`: the very end, never before a final newline).
    pub(crate) fn of(hir: &Hir) -> Option<Shape> {
        let HirKind::Concat(items) = hir.kind() else {
            return None;
        };
        let [first, middle @ .., last] = items.as_slice() else {
            return None;
        };
        if !matches!(first.kind(), HirKind::Look(Look::Start))
            || !matches!(last.kind(), HirKind::Look(Look::End))
        {
            return None;
        }
        let mut literal = Vec::new();
        let mut rest = middle;
        while let Some((item, tail)) = rest.split_first() {
            let Some(bytes) = literal_bytes(item) else {
                break;
            };
            literal.extend(bytes);
            rest = tail;
        }
        let literal = String::from_utf8(literal).ok().filter(|l| !l.is_empty())?;
        let (ranges, min, max) = match rest {
            [] => (Vec::new(), 0, Some(0)),
            [one] => match one.kind() {
                HirKind::Repetition(repetition) => (
                    class_ranges(&repetition.sub)?,
                    repetition.min,
                    repetition.max,
                ),
                _ => (class_ranges(one)?, 1, Some(1)),
            },
            _ => return None,
        };
        let mut shape = Shape {
            literal: literal.into_boxed_str(),
            ascii: 0,
            wide: Box::default(),
            min,
            max,
        };
        let mut wide = Vec::new();
        for (start, end) in ranges {
            for ascii in u32::from(start)..=u32::from(end).min(127) {
                shape.ascii |= 1 << ascii;
            }
            let start = start.max('\u{80}');
            if start <= end {
                wide.push((start, end));
            }
        }
        shape.wide = wide.into_boxed_slice();
        Some(shape)
    }

    /// The literal every match starts with, which the prefix index files the pattern under.
    pub(crate) fn literal(&self) -> &[u8] {
        self.literal.as_bytes()
    }

    pub(crate) fn memory_usage(&self) -> usize {
        std::mem::size_of::<Shape>()
            + self.literal.len()
            + std::mem::size_of_val::<[(char, char)]>(&self.wide)
    }

    fn contains(&self, c: char) -> bool {
        if c.is_ascii() {
            return self.ascii & (1 << u32::from(c)) != 0;
        }
        self.wide
            .binary_search_by(|&(start, end)| {
                if end < c {
                    std::cmp::Ordering::Less
                } else if start > c {
                    std::cmp::Ordering::Greater
                } else {
                    std::cmp::Ordering::Equal
                }
            })
            .is_ok()
    }

    /// What the regex's `is_match` answers for `code`.
    pub(crate) fn is_match(&self, code: &str) -> bool {
        let Some(rest) = code.strip_prefix(&*self.literal) else {
            return false;
        };
        let mut count = 0u32;
        for c in rest.chars() {
            count += 1;
            if !self.contains(c) || self.max.is_some_and(|max| count > max) {
                return false;
            }
        }
        count >= self.min
    }
}

/// The ranges of a character class, or of a single character written as a literal (`0+`).
fn class_ranges(hir: &Hir) -> Option<Vec<(char, char)>> {
    match hir.kind() {
        HirKind::Class(Class::Unicode(class)) => Some(
            class
                .ranges()
                .iter()
                .map(|range| (range.start(), range.end()))
                .collect(),
        ),
        HirKind::Literal(literal) => {
            let text = std::str::from_utf8(&literal.0).ok()?;
            let mut chars = text.chars();
            let only = chars.next()?;
            chars.next().is_none().then(|| vec![(only, only)])
        }
        HirKind::Capture(capture) => class_ranges(&capture.sub),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use regex::Regex;

    use super::*;

    /// Patterns of the shape, each with something the others lack.
    const SHAPES: [&str; 8] = [
        "^WIN[0-9]{2,4}$",
        "^(WIN)\\d+$",
        "^VIP[A-Z0-9]{6}$",
        "^WIN0*$",
        "^WIN$",
        "^WIN.$",
        "^(W)(IN)[ä-ü]{1,}$",
        "^W[^0-9]{0,3}$",
    ];

    fn shape(pattern: &str) -> Option<Shape> {
        Shape::of(&regex_syntax::Parser::new().parse(pattern).expect("valid"))
    }

    #[test]
    fn recognises_only_the_literal_class_end_shape() {
        for pattern in SHAPES {
            assert!(shape(pattern).is_some(), "{pattern}");
        }
        for pattern in [
            "^(SUMMER).*",
            "WIN[0-9]$",
            "^WIN[0-9]",
            "^[0-9]{4}$",
            "^(?i)WIN[0-9]$",
            "^WIN[0-9][A-Z]$",
            "^(?m)WIN[0-9]$",
            "^WIN(ab)+$",
        ] {
            assert!(shape(pattern).is_none(), "{pattern}");
        }
    }

    proptest::proptest! {
        /// A shape answers what the compiled regex answers, on codes built from the patterns'
        /// own characters, lengths and neighbours (newline, other scripts, digits of other
        /// scripts that `\d` also takes).
        #[test]
        fn agrees_with_the_regex(code in "(WIN|VIP|W|)[0-9A-Za-z\u{e4}\u{fc}\u{661}\n ]{0,8}") {
            for pattern in SHAPES {
                let regex = Regex::new(pattern).expect("valid");
                let ours = shape(pattern).expect("a shape");
                proptest::prop_assert_eq!(ours.is_match(&code), regex.is_match(&code), "{}", pattern);
            }
        }
    }
}
