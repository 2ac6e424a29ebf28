//! Exact arithmetic on Kubernetes resource quantities (`10Gi`, `500M`, `250m`, `1.5e3`).
//!
//! A quantity is held as a whole number of nano-units in an `i128`, the finest precision the API
//! server keeps (it rounds anything finer up to the next nano-unit, and so do we). That makes
//! sums exact: adding a thousand `1.1Gi` claims gives exactly `1100Gi`, never a float that is
//! off by a byte.

use std::fmt;
use std::str::FromStr;

const NANO: i128 = 1_000_000_000;

/// A parsed quantity, in nano-units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Quantity {
    nanos: i128,
}

/// Why a string is not a quantity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuantityError {
    /// The string is empty.
    #[error("empty quantity")]
    Empty,
    /// The number part is not a decimal number.
    #[error("malformed number in quantity {0:?}")]
    Number(String),
    /// The suffix is not one Kubernetes knows.
    #[error("unknown suffix {suffix:?} in quantity {text:?}")]
    Suffix {
        /// The whole quantity.
        text: String,
        /// The suffix that was not recognised.
        suffix: String,
    },
    /// The value does not fit the range the API server accepts.
    #[error("quantity {0:?} is out of range")]
    Range(String),
}

impl Quantity {
    /// The quantity in bytes (or base units), rounded up.
    pub fn units_ceil(&self) -> i128 {
        self.nanos.div_euclid(NANO) + i128::from(self.nanos.rem_euclid(NANO) != 0)
    }

    /// The raw value in nano-units.
    pub fn nanos(&self) -> i128 {
        self.nanos
    }

    /// This quantity as a fraction of `other`, in percent (0 when `other` is zero).
    pub fn percent_of(&self, other: &Quantity) -> f64 {
        if other.nanos == 0 {
            return 0.0;
        }
        self.nanos as f64 * 100.0 / other.nanos as f64
    }

    /// The sum, or `None` on overflow.
    pub fn checked_add(self, other: Quantity) -> Option<Quantity> {
        self.nanos
            .checked_add(other.nanos)
            .map(|nanos| Quantity { nanos })
    }

    /// The difference, or `None` on overflow.
    pub fn checked_sub(self, other: Quantity) -> Option<Quantity> {
        self.nanos
            .checked_sub(other.nanos)
            .map(|nanos| Quantity { nanos })
    }
}

/// Multiplier of a suffix as (power of two, power of ten).
fn suffix_scale(suffix: &str) -> Option<(u32, i32)> {
    Some(match suffix {
        "" => (0, 0),
        "Ki" => (10, 0),
        "Mi" => (20, 0),
        "Gi" => (30, 0),
        "Ti" => (40, 0),
        "Pi" => (50, 0),
        "Ei" => (60, 0),
        "n" => (0, -9),
        "u" => (0, -6),
        "m" => (0, -3),
        "k" => (0, 3),
        "M" => (0, 6),
        "G" => (0, 9),
        "T" => (0, 12),
        "P" => (0, 15),
        "E" => (0, 18),
        _ => return None,
    })
}

impl FromStr for Quantity {
    type Err = QuantityError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let s = text.trim();
        if s.is_empty() {
            return Err(QuantityError::Empty);
        }
        let (negative, body) = match s.as_bytes()[0] {
            b'-' => (true, &s[1..]),
            b'+' => (false, &s[1..]),
            _ => (false, s),
        };
        // The number: digits with at most one decimal point.
        let num_end = body
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(body.len());
        let (number, rest) = body.split_at(num_end);
        let (int_part, frac_part) = number.split_once('.').unwrap_or((number, ""));
        if (int_part.is_empty() && frac_part.is_empty()) || frac_part.contains('.') {
            return Err(QuantityError::Number(text.to_owned()));
        }
        // The suffix: a binary or decimal SI suffix, or a decimal exponent (e3, E-2).
        let (pow2, mut pow10) = if let Some(exp) = rest
            .strip_prefix('e')
            .or_else(|| rest.strip_prefix('E').filter(|e| !e.is_empty()))
        {
            let exp: i32 = exp.parse().map_err(|_| QuantityError::Suffix {
                text: text.to_owned(),
                suffix: rest.to_owned(),
            })?;
            (0, exp)
        } else {
            suffix_scale(rest).ok_or_else(|| QuantityError::Suffix {
                text: text.to_owned(),
                suffix: rest.to_owned(),
            })?
        };
        let range = || QuantityError::Range(text.to_owned());
        // mantissa = int_part.frac_part as an integer with pow10 adjusted by the fraction length.
        let digits = format!("{int_part}{frac_part}");
        let digits = digits.trim_start_matches('0');
        if digits.len() > 36 {
            return Err(range());
        }
        let mut mantissa: i128 = if digits.is_empty() {
            0
        } else {
            digits.parse().map_err(|_| range())?
        };
        pow10 -= i32::try_from(frac_part.len()).map_err(|_| range())?;
        // Value in nanos = mantissa * 2^pow2 * 10^(pow10 + 9), rounded up.
        mantissa = mantissa.checked_mul(1i128 << pow2).ok_or_else(range)?;
        let shift = pow10 + 9;
        let nanos = if shift >= 0 {
            let factor = 10i128.checked_pow(shift as u32).ok_or_else(range)?;
            mantissa.checked_mul(factor).ok_or_else(range)?
        } else if mantissa == 0 {
            0
        } else {
            let divisor = 10i128.checked_pow(shift.unsigned_abs());
            match divisor {
                // Finer than a nano-unit: round up, as the API server does.
                Some(d) => mantissa / d + i128::from(mantissa % d != 0),
                None => 1,
            }
        };
        Ok(Quantity {
            nanos: if negative { -nanos } else { nanos },
        })
    }
}

impl fmt::Display for Quantity {
    /// Human form: the largest binary suffix that divides the value exactly, else bytes, else
    /// a decimal with milli precision.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.nanos % NANO == 0 {
            let units = self.nanos / NANO;
            for (suffix, shift) in [
                ("Ei", 60),
                ("Pi", 50),
                ("Ti", 40),
                ("Gi", 30),
                ("Mi", 20),
                ("Ki", 10),
            ] {
                let unit = 1i128 << shift;
                if units != 0 && units % unit == 0 {
                    return write!(f, "{}{suffix}", units / unit);
                }
            }
            return write!(f, "{units}");
        }
        if self.nanos % 1_000_000 == 0 {
            return write!(f, "{}m", self.nanos / 1_000_000);
        }
        write!(f, "{}n", self.nanos)
    }
}

impl std::iter::Sum for Quantity {
    fn sum<I: Iterator<Item = Quantity>>(iter: I) -> Self {
        iter.fold(Quantity::default(), |a, b| Quantity {
            nanos: a.nanos.saturating_add(b.nanos),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        s.parse().unwrap()
    }

    #[test]
    fn parses_every_suffix_family_exactly() {
        let gi = 1i128 << 30;
        let cases: &[(&str, i128)] = &[
            ("10Gi", 10 * gi * NANO),
            ("1.5Gi", 3 * (gi / 2) * NANO),
            ("500M", 500_000_000 * NANO),
            ("250m", 250_000_000),
            ("1", NANO),
            ("1e3", 1000 * NANO),
            ("1E3", 1000 * NANO),
            ("2.5e-3", 2_500_000),
            ("1Ki", 1024 * NANO),
            ("0.1Ki", 102_400_000_000),
            ("1n", 1),
            ("0.5n", 1),
            ("-1Mi", -(1 << 20) * NANO),
            ("+3k", 3000 * NANO),
            (".5", NANO / 2),
            ("1E", 1_000_000_000_000_000_000 * NANO),
        ];
        for (text, nanos) in cases {
            assert_eq!(q(text).nanos(), *nanos, "{text}");
        }
    }

    #[test]
    fn malformed_quantities_are_typed_errors() {
        type Check = fn(&QuantityError) -> bool;
        let cases: &[(&str, Check)] = &[
            ("", |e| matches!(e, QuantityError::Empty)),
            ("Gi", |e| matches!(e, QuantityError::Number(_))),
            ("1.2.3Gi", |e| matches!(e, QuantityError::Number(_))),
            ("10GB", |e| matches!(e, QuantityError::Suffix { .. })),
            ("10 Gi", |e| matches!(e, QuantityError::Suffix { .. })),
            ("1e", |e| matches!(e, QuantityError::Suffix { .. })),
            ("1e400", |e| matches!(e, QuantityError::Range(_))),
            ("99999999999999999999999999999999999999999", |e| {
                matches!(e, QuantityError::Range(_))
            }),
        ];
        for (text, check) in cases {
            let err = text.parse::<Quantity>().unwrap_err();
            assert!(check(&err), "{text:?} gave {err:?}");
        }
    }

    #[test]
    fn sums_are_exact_where_floats_drift() {
        let total: Quantity = std::iter::repeat_n(q("1.1Gi"), 1000).sum();
        assert_eq!(total, q("1100Gi"));
        let total: Quantity = std::iter::repeat_n(q("0.1"), 10).sum();
        assert_eq!(total, q("1"));
    }

    #[test]
    fn displays_in_the_largest_exact_binary_unit() {
        let cases = [
            ("10Gi", "10Gi"),
            ("1536Mi", "1536Mi"),
            ("2048Mi", "2Gi"),
            ("1000", "1000"),
            ("250m", "250m"),
            ("0", "0"),
        ];
        for (input, shown) in cases {
            assert_eq!(q(input).to_string(), shown, "{input}");
        }
    }

    #[test]
    fn percent_of_a_limit() {
        assert_eq!(q("50Gi").percent_of(&q("200Gi")), 25.0);
        assert_eq!(q("1Gi").percent_of(&Quantity::default()), 0.0);
    }
}
