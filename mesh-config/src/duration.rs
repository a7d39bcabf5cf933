//! Durations as Istio's YAML writes them: Go's `time.ParseDuration` form.
//!
//! `7s`, `0.5s`, `100ms`, `3m`, `1h`, `1h30m`, `250us` — a sequence of decimal numbers,
//! each with a unit (`ns`, `us`/`µs`, `ms`, `s`, `m`, `h`). The protobuf JSON form (`1.5s`)
//! is a subset. Istio's fields never take negative durations, so a sign is rejected here.

use std::fmt;
use std::time::Duration as StdDuration;

use serde::de::{self, Deserialize, Deserializer, Visitor};

use crate::de::coded;
use crate::diag::Code;

/// A non-negative duration read from Go's duration syntax.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Duration(pub StdDuration);

impl Duration {
    /// The value as a standard duration.
    pub fn get(self) -> StdDuration {
        self.0
    }

    /// Whole milliseconds (saturating).
    pub fn as_millis(self) -> u64 {
        u64::try_from(self.0.as_millis()).unwrap_or(u64::MAX)
    }
}

impl From<StdDuration> for Duration {
    fn from(d: StdDuration) -> Self {
        Duration(d)
    }
}

/// Why a duration could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    /// Empty text.
    #[error("empty duration")]
    Empty,
    /// A leading `-` or `+`.
    #[error("durations cannot be negative or signed")]
    Signed,
    /// A number without a unit.
    #[error("missing unit in duration `{0}` (use ns, us, ms, s, m or h, e.g. `7s` or `100ms`)")]
    MissingUnit(String),
    /// A unit that is not one of Go's.
    #[error("unknown unit `{unit}` in duration `{text}` (use ns, us, ms, s, m or h)")]
    UnknownUnit {
        /// The unit found.
        unit: String,
        /// The whole text.
        text: String,
    },
    /// Not a number where one was expected.
    #[error("invalid duration `{0}` (expected e.g. `7s`, `0.5s`, `100ms`, `3m`, `1h`)")]
    Invalid(String),
    /// Larger than Go can represent (about 290 years).
    #[error("duration `{0}` is too large")]
    Overflow(String),
}

const MAX_NANOS: u128 = i64::MAX as u128;

/// Parses Go's duration syntax.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError::Empty);
    }
    if s.starts_with(['-', '+']) {
        return Err(DurationError::Signed);
    }
    if s == "0" {
        return Ok(Duration(StdDuration::ZERO));
    }
    let invalid = || DurationError::Invalid(text.to_string());
    let mut rest = s;
    let mut total: u128 = 0;
    while !rest.is_empty() {
        // number: digits [. digits]
        let int_len = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let int_part = &rest[..int_len];
        rest = &rest[int_len..];
        let mut frac_part = "";
        if let Some(r) = rest.strip_prefix('.') {
            let frac_len = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            frac_part = &r[..frac_len];
            rest = &r[frac_len..];
        }
        if int_part.is_empty() && frac_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let scale: u128 = match unit {
            "" => return Err(DurationError::MissingUnit(text.to_string())),
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            other => {
                return Err(DurationError::UnknownUnit {
                    unit: other.to_string(),
                    text: text.to_string(),
                });
            }
        };
        let overflow = || DurationError::Overflow(text.to_string());
        let int: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| overflow())?
        };
        let mut nanos = int.checked_mul(scale).ok_or_else(overflow)?;
        // fraction, to nanosecond precision (extra digits are truncated, as Go does)
        let mut frac_scale = scale;
        for d in frac_part.bytes() {
            frac_scale /= 10;
            if frac_scale == 0 {
                break;
            }
            nanos += u128::from(d - b'0') * frac_scale;
        }
        total = total.checked_add(nanos).ok_or_else(overflow)?;
        if total > MAX_NANOS {
            return Err(overflow());
        }
    }
    let secs = (total / 1_000_000_000) as u64;
    let sub = (total % 1_000_000_000) as u32;
    Ok(Duration(StdDuration::new(secs, sub)))
}

impl std::str::FromStr for Duration {
    type Err = DurationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_duration(s)
    }
}

impl fmt::Display for Duration {
    /// Writes the shortest exact Go form (`7s`, `100ms`, `1h30m`, `1.5s`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let nanos = d.as_nanos();
        if nanos.is_multiple_of(1_000_000_000) {
            let mut secs = d.as_secs();
            let h = secs / 3600;
            secs %= 3600;
            let m = secs / 60;
            secs %= 60;
            if h > 0 {
                write!(f, "{h}h")?;
            }
            if m > 0 {
                write!(f, "{m}m")?;
            }
            if secs > 0 {
                write!(f, "{secs}s")?;
            }
            return Ok(());
        }
        if d < StdDuration::from_secs(1) {
            if nanos.is_multiple_of(1_000_000) {
                return write!(f, "{}ms", nanos / 1_000_000);
            }
            if nanos.is_multiple_of(1_000) {
                return write!(f, "{}us", nanos / 1_000);
            }
            return write!(f, "{nanos}ns");
        }
        let frac = format!("{:09}", d.subsec_nanos());
        write!(f, "{}.{}s", d.as_secs(), frac.trim_end_matches('0'))
    }
}

impl<'de> Deserialize<'de> for Duration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as `7s`, `0.5s`, `100ms`, `3m` or `1h`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(|e| coded(Code::InvalidDuration, e))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
                if v == 0 {
                    return Ok(Duration::default());
                }
                Err(coded(
                    Code::InvalidDuration,
                    DurationError::MissingUnit(v.to_string()),
                ))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
                Err(coded(
                    Code::InvalidDuration,
                    DurationError::MissingUnit(v.to_string()),
                ))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
                Err(coded(
                    Code::InvalidDuration,
                    DurationError::MissingUnit(v.to_string()),
                ))
            }
        }
        deserializer.deserialize_str(V)
    }
}

impl serde::Serialize for Duration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u128 {
        parse_duration(text).unwrap().0.as_nanos() / 1_000_000
    }

    #[test]
    fn go_forms() {
        let table: &[(&str, u128)] = &[
            ("7s", 7_000),
            ("0.5s", 500),
            ("100ms", 100),
            ("3m", 180_000),
            ("1h", 3_600_000),
            ("1h30m", 5_400_000),
            ("1.5h", 5_400_000),
            ("2m3.5s", 123_500),
            ("0", 0),
            ("0s", 0),
            (".5s", 500),
            ("1.s", 1_000),
        ];
        for (text, want) in table {
            assert_eq!(ms(text), *want, "{text}");
        }
        assert_eq!(parse_duration("250us").unwrap().0.as_micros(), 250);
        assert_eq!(parse_duration("3µs").unwrap().0.as_nanos(), 3_000);
        assert_eq!(parse_duration("10ns").unwrap().0.as_nanos(), 10);
        assert_eq!(
            parse_duration("1.0000000001s").unwrap().0.as_nanos(),
            1_000_000_000
        );
    }

    #[test]
    fn rejects() {
        for bad in [
            "", "7", "1.5", "-1s", "+1s", "s", ".s", "1x", "1sec", "1 s", "5d", "1e3s",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert!(matches!(
            parse_duration("9999999999h"),
            Err(DurationError::Overflow(_))
        ));
        assert!(matches!(
            parse_duration("5d"),
            Err(DurationError::UnknownUnit { .. })
        ));
    }

    #[test]
    fn displays_shortest_go_form() {
        for (text, shown) in [
            ("7s", "7s"),
            ("100ms", "100ms"),
            ("90m", "1h30m"),
            ("1.5s", "1.5s"),
            ("0s", "0s"),
            ("250us", "250us"),
        ] {
            assert_eq!(parse_duration(text).unwrap().to_string(), shown);
        }
    }
}
