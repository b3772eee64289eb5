//! Exact decimal sums of money: an `i128` count of units of 10^-scale.
//!
//! Partners are paid from these sums, so they never go through `f64`. An `i128` holds 38
//! significant digits, far beyond any real revenue total; a sum that would not fit is an error
//! the report names, never a rounded number.

use std::fmt;

/// `units / 10^scale`. The scale of a sum is the largest scale of its terms, so `19.99 + 0.1`
/// is `20.09` and `100.10 + 1` is `101.10`: the precision the producer wrote is kept.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decimal {
    units: i128,
    scale: u32,
}

/// The largest scale kept, and the most digits a value may have: 10^38 is the largest power of
/// ten an `i128` holds, so every 38-digit value (of either sign) fits.
const MAX_SCALE: u32 = 38;
const LIMIT: i128 = 10i128.pow(MAX_SCALE);

impl Decimal {
    pub const ZERO: Decimal = Decimal { units: 0, scale: 0 };

    /// Reads a JSON number's text (`19.99`, `-5`, `1e2`, `1.5E-3`) exactly; `None` when it is
    /// not a JSON number or needs more than 38 significant digits (or places) to hold.
    pub fn parse(text: &str) -> Option<Decimal> {
        if !crate::schema::number::is_json_number(text) {
            return None;
        }
        let (negative, rest) = match text.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], rest[at + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut units: i128 = 0;
        for digit in int.bytes().chain(frac.bytes()) {
            units = units
                .checked_mul(10)?
                .checked_add(i128::from(digit - b'0'))?;
        }
        let scale = i64::try_from(frac.len()).ok()?.checked_sub(exponent)?;
        let (units, scale) = if scale < 0 {
            (units.checked_mul(pow10(u32::try_from(-scale).ok()?)?)?, 0)
        } else {
            (units, u32::try_from(scale).ok()?)
        };
        if scale > MAX_SCALE || units >= LIMIT {
            return None;
        }
        Some(Decimal {
            units: if negative { -units } else { units },
            scale,
        })
    }

    /// The exact sum, or `None` when it does not fit in 38 digits.
    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        let scale = self.scale.max(other.scale);
        let a = self.rescaled(scale)?;
        let b = other.rescaled(scale)?;
        let units = a.checked_add(b)?;
        (units.unsigned_abs() < LIMIT.unsigned_abs()).then_some(Decimal { units, scale })
    }

    /// The exact difference, or `None` when it does not fit in 38 digits.
    pub fn checked_sub(self, other: Decimal) -> Option<Decimal> {
        self.checked_add(Decimal {
            units: other.units.checked_neg()?,
            scale: other.scale,
        })
    }

    /// The exact product with a whole count (a line's quantity), or `None` when it does not fit.
    pub fn checked_mul_count(self, count: u64) -> Option<Decimal> {
        let units = self.units.checked_mul(i128::from(count))?;
        (units.unsigned_abs() < LIMIT.unsigned_abs()).then_some(Decimal {
            units,
            scale: self.scale,
        })
    }

    /// -1, 0 or 1, as the value is below, at or above zero.
    pub fn signum(self) -> i32 {
        self.units.signum() as i32
    }

    /// The value in whole units of 10^-`scale`, cut toward zero (`19.999` at scale 2 is 1999),
    /// for counters that only hold integers (Redis); `None` when it does not fit an `i128`.
    pub fn truncated_units(self, scale: u32) -> Option<i128> {
        if self.scale <= scale {
            self.rescaled(scale)
        } else {
            Some(self.units / pow10(self.scale - scale)?)
        }
    }

    fn rescaled(self, scale: u32) -> Option<i128> {
        self.units.checked_mul(pow10(scale - self.scale)?)
    }

    /// An approximation for drawing a chart bar; never for arithmetic.
    pub fn to_f64_lossy(self) -> f64 {
        // i128 -> f64 rounds to the nearest; the text round trip gets the scale exactly right.
        self.to_string().parse().unwrap_or(0.0)
    }
}

fn pow10(exponent: u32) -> Option<i128> {
    10i128.checked_pow(exponent)
}

impl fmt::Display for Decimal {
    /// Plain decimal notation with exactly `scale` places: `-0.50`, `20.09`, `100`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digits = self.units.unsigned_abs().to_string();
        let scale = self.scale as usize;
        let sign = if self.units < 0 { "-" } else { "" };
        if scale == 0 {
            return write!(f, "{sign}{digits}");
        }
        let padded = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = padded.split_at(padded.len() - scale);
        write!(f, "{sign}{int}.{frac}")
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn d(text: &str) -> Decimal {
        Decimal::parse(text).unwrap_or_else(|| panic!("{text} parses"))
    }

    fn sum(texts: &[&str]) -> String {
        texts
            .iter()
            .try_fold(Decimal::ZERO, |acc, t| acc.checked_add(d(t)))
            .expect("fits")
            .to_string()
    }

    #[test]
    fn truncated_units_cut_toward_zero() {
        assert_eq!(d("19.999").truncated_units(2), Some(1999));
        assert_eq!(d("-0.015").truncated_units(2), Some(-1));
        assert_eq!(d("7").truncated_units(2), Some(700));
        assert_eq!(d("0.009").truncated_units(2), Some(0));
    }

    #[test]
    fn parses_every_spelling_exactly() {
        for (text, shown) in [
            ("19.99", "19.99"),
            ("0.1", "0.1"),
            ("1e2", "100"),
            ("1E+2", "100"),
            ("100.10", "100.10"),
            ("1e-7", "0.0000001"),
            ("-0.5", "-0.5"),
            ("-0", "0"),
            ("12.5e1", "125"),
            ("12.345e1", "123.45"),
            (
                "123456789012345678901234567890.12",
                "123456789012345678901234567890.12",
            ),
        ] {
            assert_eq!(d(text).to_string(), shown, "{text}");
        }
        for bad in [
            "",
            "abc",
            "1.",
            "1e400",
            "1e-39",
            "123456789012345678901234567890123456789",
        ] {
            assert_eq!(Decimal::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn sums_are_exact_where_floats_are_not() {
        assert_eq!(sum(&["0.1", "0.2"]), "0.3");
        assert_eq!(sum(&["19.99", "0.1"]), "20.09");
        assert_eq!(sum(&["100.10", "1"]), "101.10");
        assert_eq!(sum(&["1e-7", "1e2"]), "100.0000001");
        assert_eq!(sum(&["5", "-7.25"]), "-2.25");
        let ten_thousand_cents: Vec<&str> = vec!["0.01"; 10_000];
        assert_eq!(sum(&ten_thousand_cents), "100.00");
        assert_eq!(
            sum(&[
                "123456789012345678901234567890.12",
                "123456789012345678901234567890.12"
            ]),
            "246913578024691357802469135780.24"
        );
    }

    #[test]
    fn overflow_is_reported_not_rounded() {
        let big = d("99999999999999999999999999999999999999");
        assert_eq!(big.checked_add(d("1")), None);
        assert_eq!(big.checked_add(d("0.1")), None);
    }

    proptest! {
        #[test]
        fn cents_sum_like_integers(cents in proptest::collection::vec(-10_000_000i64..10_000_000, 0..50)) {
            let total: i64 = cents.iter().sum();
            let texts: Vec<String> = cents
                .iter()
                .map(|c| format!("{}{}.{:02}", if *c < 0 { "-" } else { "" }, c.abs() / 100, c.abs() % 100))
                .collect();
            let ours = texts
                .iter()
                .try_fold(d("0.00"), |acc, t| acc.checked_add(d(t)))
                .expect("fits");
            let expected = d(&format!(
                "{}{}.{:02}",
                if total < 0 { "-" } else { "" },
                total.abs() / 100,
                total.abs() % 100
            ));
            prop_assert_eq!(ours, expected);
        }
    }
}
