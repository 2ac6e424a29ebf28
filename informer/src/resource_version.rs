//! Comparing resourceVersions, as KEP-5504 defines them (stable since Kubernetes 1.35).
//!
//! A resourceVersion used to be an opaque string: clients could only test two of them for
//! equality. KEP-5504 made the format a contract: a resourceVersion written by the API server is
//! a decimal integer without leading zeros, and within **one resource** (one group and resource,
//! across all its namespaces) a larger one is newer. That is what read-your-writes and cache-lag
//! checks need: "has my store caught up with the write I made at `rv`?".
//!
//! Anything else — an empty string, a number with a sign or leading zeros, an aggregated API
//! server's own format, two resources — is [`NotComparable`], and callers **fail open**: they
//! treat the answer as "cannot tell" and go on as they would without the check, rather than
//! waiting forever or acting as if the cache were stale.
//!
//! ```
//! use std::cmp::Ordering;
//! use reflex_informer::resource_version::{compare, is_at_least};
//!
//! assert_eq!(compare("9", "10"), Ok(Ordering::Less));
//! assert!(compare("007", "7").is_err()); // not a resourceVersion the server writes
//! assert_eq!(is_at_least("12", "11"), Some(true));
//! assert_eq!(is_at_least("", "11"), None); // cannot tell: fail open
//! ```

use std::cmp::Ordering;

/// Why two resourceVersions cannot be compared: one of them is not in the KEP-5504 format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("resourceVersion {value:?} is not comparable: {reason}")]
pub struct NotComparable {
    /// The value that is not a comparable resourceVersion.
    pub value: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that `rv` is a decimal integer the way the API server writes one: digits only, no
/// sign, no leading zero (except `"0"` itself), at most 20 digits.
fn check(rv: &str) -> Result<&str, NotComparable> {
    let fail = |reason| NotComparable {
        value: rv.to_owned(),
        reason,
    };
    if rv.is_empty() {
        return Err(fail("empty"));
    }
    if !rv.bytes().all(|b| b.is_ascii_digit()) {
        return Err(fail("not a decimal integer"));
    }
    if rv.len() > 1 && rv.starts_with('0') {
        return Err(fail("leading zero"));
    }
    if rv.len() > 20 {
        return Err(fail("longer than any 64-bit integer"));
    }
    Ok(rv)
}

/// Compares two resourceVersions of the same resource: `Less` when `a` is older than `b`.
///
/// Both must be KEP-5504 integers; otherwise the error names the one that is not. Comparing
/// versions of two different resources is meaningless and cannot be detected here: only pass
/// versions of one resource.
pub fn compare(a: &str, b: &str) -> Result<Ordering, NotComparable> {
    let (a, b) = (check(a)?, check(b)?);
    // Same-format decimal strings: the longer is larger, equal lengths compare lexically.
    Ok(a.len().cmp(&b.len()).then_with(|| a.cmp(b)))
}

/// Whether `current` has reached `target` (`current >= target`); `None` when either cannot be
/// compared, so the caller can fail open.
pub fn is_at_least(current: &str, target: &str) -> Option<bool> {
    compare(current, target).ok().map(|o| o != Ordering::Less)
}

/// The numeric value of a comparable resourceVersion (for a metric gauge); `None` otherwise.
pub fn as_number(rv: &str) -> Option<u64> {
    check(rv).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_compare_by_value_not_by_text() {
        assert_eq!(compare("9", "10"), Ok(Ordering::Less));
        assert_eq!(compare("10", "9"), Ok(Ordering::Greater));
        assert_eq!(compare("123", "123"), Ok(Ordering::Equal));
        assert_eq!(compare("0", "1"), Ok(Ordering::Less));
        assert_eq!(
            compare("18446744073709551615", "18446744073709551614"),
            Ok(Ordering::Greater)
        );
    }

    #[test]
    fn anything_but_a_server_written_integer_is_not_comparable() {
        for bad in [
            "",
            "-1",
            "+1",
            "01",
            "1.5",
            "abc",
            " 1",
            "1 ",
            "123456789012345678901",
        ] {
            let err = compare(bad, "5").unwrap_err();
            assert_eq!(err.value, bad);
            assert!(compare("5", bad).is_err(), "{bad:?}");
            assert_eq!(is_at_least(bad, "5"), None, "{bad:?}");
            assert_eq!(as_number(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn is_at_least_is_greater_or_equal() {
        assert_eq!(is_at_least("5", "5"), Some(true));
        assert_eq!(is_at_least("6", "5"), Some(true));
        assert_eq!(is_at_least("4", "5"), Some(false));
        assert_eq!(as_number("42"), Some(42));
    }

    proptest::proptest! {
        #[test]
        fn comparison_agrees_with_u64(a: u64, b: u64) {
            proptest::prop_assert_eq!(compare(&a.to_string(), &b.to_string()), Ok(a.cmp(&b)));
        }

        #[test]
        fn arbitrary_strings_never_panic(a in ".{0,24}", b in ".{0,24}") {
            let _ = compare(&a, &b);
        }
    }
}
