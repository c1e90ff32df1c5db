//! Short, stable renderings of numbers for reasons and interval messages.
//!
//! These are `Display` wrappers rather than functions returning `String`, so an interval's
//! `last_error` can be rewritten in place (reusing its buffer) on every bad sample.

use std::fmt;
use std::time::Duration;

/// A value as people write it: `7`, `0.25`, `1.5e300` (never 300 digits).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Num(pub f64);

impl fmt::Display for Num {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = self.0;
        let a = v.abs();
        if v.is_finite() && a != 0.0 && !(1e-4..1e15).contains(&a) {
            write!(f, "{v:e}")
        } else {
            write!(f, "{v}")
        }
    }
}

/// A latency in microseconds as seconds with millisecond precision (`1.52s`), or as
/// microseconds below one millisecond (`250µs`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Secs(pub u64);

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let us = self.0;
        if us < 1000 {
            return write!(f, "{us}µs");
        }
        let ms = us.saturating_add(500) / 1000;
        let (whole, mut frac) = (ms / 1000, ms % 1000);
        if frac == 0 {
            return write!(f, "{whole}s");
        }
        let mut digits = 3;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(f, "{whole}.{frac:0digits$}s")
    }
}

/// A percentage with up to three decimals, trailing zeros trimmed (`99.9`, `93.125`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Percent(pub f64);

impl fmt::Display for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.is_finite() {
            return write!(f, "{}", self.0);
        }
        // Saturating `as` keeps absurd values from panicking; percentages are 0..=100.
        let scaled = (self.0 * 1000.0).round() as i64;
        let sign = if scaled < 0 { "-" } else { "" };
        let scaled = scaled.unsigned_abs();
        let (whole, mut frac) = (scaled / 1000, scaled % 1000);
        if frac == 0 {
            return write!(f, "{sign}{whole}");
        }
        let mut digits = 3;
        while frac % 10 == 0 {
            frac /= 10;
            digits -= 1;
        }
        write!(f, "{sign}{whole}.{frac:0digits$}")
    }
}

/// A sample time as RFC 3339, or as raw milliseconds when it lies beyond year 9999
/// (where `Timestamp`'s own formatting gives up).
#[derive(Clone, Copy, Debug)]
pub(crate) struct At(pub i64);

/// 9999-12-31T23:59:59.999Z in ms since the epoch.
const LATEST_RFC3339_MS: i64 = 253_402_300_799_999;

impl fmt::Display for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if (0..=LATEST_RFC3339_MS).contains(&self.0) {
            f.write_str(&crate::sample::Timestamp(self.0).to_rfc3339())
        } else {
            write!(f, "{} ms since the epoch", self.0)
        }
    }
}

/// A duration as in the invariant file (`5m`, `1h 30m`).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", humantime::format_duration(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders() {
        assert_eq!(Num(7.0).to_string(), "7");
        assert_eq!(Num(0.25).to_string(), "0.25");
        assert_eq!(Num(1.5e300).to_string(), "1.5e300");
        assert_eq!(Num(f64::NAN).to_string(), "NaN");
        assert_eq!(Num(f64::INFINITY).to_string(), "inf");
        assert_eq!(Secs(1_520_000).to_string(), "1.52s");
        assert_eq!(Secs(1_000_000).to_string(), "1s");
        assert_eq!(Secs(250).to_string(), "250µs");
        assert_eq!(Secs(2_500).to_string(), "0.003s");
        assert_eq!(Secs(u64::MAX).to_string(), "18446744073709.551s");
        assert_eq!(Percent(93.1).to_string(), "93.1");
        assert_eq!(Percent(100.0).to_string(), "100");
        assert_eq!(Percent(99.96667).to_string(), "99.967");
        assert_eq!(Percent(-1.5).to_string(), "-1.5");
        assert_eq!(Human(Duration::from_secs(300)).to_string(), "5m");
        assert_eq!(At(1000).to_string(), "1970-01-01T00:00:01.000Z");
        assert_eq!(
            At(LATEST_RFC3339_MS).to_string(),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(
            At(i64::MAX).to_string(),
            "9223372036854775807 ms since the epoch"
        );
        assert_eq!(At(-5).to_string(), "-5 ms since the epoch");
    }
}
