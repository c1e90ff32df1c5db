//! Durations as written in invariant files: `500ms`, `5s`, `1m30s`, `1.5s`, `2h`.
//!
//! Only `ms`, `s`, `m` and `h` are units. A bare number is refused rather than given a
//! default unit: `interval: 5` could mean seconds or milliseconds, and guessing wrong is
//! silent.

use std::time::Duration;

const NANOS_PER_MS: u128 = 1_000_000;
const NANOS_PER_S: u128 = 1_000 * NANOS_PER_MS;

/// The accepted units, longest spelling first where one is a prefix of another.
const UNITS: [(&str, u128); 4] = [
    ("ms", NANOS_PER_MS),
    ("s", NANOS_PER_S),
    ("m", 60 * NANOS_PER_S),
    ("h", 3_600 * NANOS_PER_S),
];

/// The hint every "not a duration" message ends with.
const HINT: &str = "write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s";

/// Parses a duration; the error is a complete message naming the text.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    if text.starts_with('-') {
        return Err(format!(
            "{text:?} is not a duration: durations cannot be negative"
        ));
    }
    if is_bare_number(text) {
        return Err(bare_number_message(text));
    }
    let mut nanos: u128 = 0;
    let mut rest = text;
    if rest.is_empty() {
        return Err(format!("{text:?} is not a duration; {HINT}"));
    }
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (number, after) = rest.split_at(number_len);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let has_digits = !(whole.is_empty() && fraction.is_empty());
        let well_formed = has_digits && !fraction.contains('.');
        if !well_formed {
            return Err(match rest.chars().next() {
                Some(c) if rest.len() < text.len() && number.is_empty() => {
                    format!("{text:?} is not a duration: unexpected {c:?}; {HINT}")
                }
                _ => format!("{text:?} is not a duration; {HINT}"),
            });
        }
        let unit_len = after
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(after.len());
        let (unit, after_unit) = after.split_at(unit_len);
        if unit.is_empty() {
            return Err(match after.chars().next() {
                None => format!("{text:?} is not a duration: {number} has no unit; {HINT}"),
                Some(c) => format!("{text:?} is not a duration: unexpected {c:?}; {HINT}"),
            });
        }
        let Some(&(_, unit_nanos)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!(
                "{text:?} is not a duration: unknown unit {unit:?}; use ms, s, m or h, e.g. 1m30s"
            ));
        };
        let part = component_nanos(whole, fraction, unit_nanos)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        nanos = nanos
            .checked_add(part)
            .ok_or_else(|| format!("{text:?} is too long a duration"))?;
        rest = after_unit;
    }
    let nanos = u64::try_from(nanos).map_err(|_| format!("{text:?} is too long a duration"))?;
    Ok(Duration::from_nanos(nanos))
}

/// The message for a number given where a duration belongs, e.g. a YAML `5` or `"5"`.
pub(super) fn bare_number_message(text: &str) -> String {
    format!("{text:?} is not a duration; write it with a unit, e.g. 5s or 500ms")
}

fn is_bare_number(text: &str) -> bool {
    let digits = text.strip_prefix('+').unwrap_or(text);
    !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().any(|c| c.is_ascii_digit())
        && digits.matches('.').count() <= 1
}

/// `whole.fraction` × `unit_nanos`, truncated to whole nanoseconds; `None` on overflow.
fn component_nanos(whole: &str, fraction: &str, unit_nanos: u128) -> Option<u128> {
    let mut whole_value: u128 = 0;
    for digit in whole.bytes() {
        whole_value = whole_value
            .checked_mul(10)?
            .checked_add(u128::from(digit - b'0'))?;
    }
    // Digits beyond nanosecond precision of the largest unit cannot change the result.
    let fraction = &fraction[..fraction.len().min(13)];
    let mut fraction_value: u128 = 0;
    let mut scale: u128 = 1;
    for digit in fraction.bytes() {
        fraction_value = fraction_value * 10 + u128::from(digit - b'0');
        scale *= 10;
    }
    whole_value
        .checked_mul(unit_nanos)?
        .checked_add(fraction_value * unit_nanos / scale)
}

/// Formats a duration the way it is written in a file: `1m30s`, `500ms`, `0s`.
pub(super) fn format_duration(duration: Duration) -> String {
    let mut nanos = duration.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("h", 3_600 * NANOS_PER_S),
        ("m", 60 * NANOS_PER_S),
        ("s", NANOS_PER_S),
        ("ms", NANOS_PER_MS),
        ("us", 1_000),
        ("ns", 1),
    ] {
        if nanos >= size {
            out.push_str(&format!("{}{unit}", nanos / size));
            nanos %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_durations() {
        let ms = Duration::from_millis;
        for (text, expected) in [
            ("0s", ms(0)),
            ("500ms", ms(500)),
            ("5s", ms(5_000)),
            ("1.5s", ms(1_500)),
            (".5s", ms(500)),
            ("2.s", ms(2_000)),
            ("1m30s", ms(90_000)),
            ("1h", ms(3_600_000)),
            ("24h", ms(86_400_000)),
            ("1h2m3s4ms", ms(3_723_004)),
            ("0.1ms", Duration::from_micros(100)),
            ("1.000000001s", Duration::from_nanos(1_000_000_001)),
            ("10m", ms(600_000)),
        ] {
            assert_eq!(parse_duration(text), Ok(expected), "{text}");
        }
    }

    #[test]
    fn invalid_durations() {
        for (text, message) in [
            (
                "5",
                "\"5\" is not a duration; write it with a unit, e.g. 5s or 500ms",
            ),
            (
                "1.5",
                "\"1.5\" is not a duration; write it with a unit, e.g. 5s or 500ms",
            ),
            (
                "5d",
                "\"5d\" is not a duration: unknown unit \"d\"; use ms, s, m or h, e.g. 1m30s",
            ),
            (
                "5ns",
                "\"5ns\" is not a duration: unknown unit \"ns\"; use ms, s, m or h, e.g. 1m30s",
            ),
            (
                "1m30",
                "\"1m30\" is not a duration: 30 has no unit; write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s",
            ),
            (
                "1m 30s",
                "\"1m 30s\" is not a duration: unexpected ' '; write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s",
            ),
            (
                "",
                "\"\" is not a duration; write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s",
            ),
            (
                "s",
                "\"s\" is not a duration; write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s",
            ),
            (
                "1.2.3s",
                "\"1.2.3s\" is not a duration; write a number with a unit (ms, s, m or h), e.g. 5s, 500ms or 1m30s",
            ),
            (
                "-5s",
                "\"-5s\" is not a duration: durations cannot be negative",
            ),
            (
                "99999999999999999999999h",
                "\"99999999999999999999999h\" is too long a duration",
            ),
            ("600000000h", "\"600000000h\" is too long a duration"),
        ] {
            assert_eq!(parse_duration(text), Err(message.to_string()), "{text}");
        }
    }

    #[test]
    fn formatting_matches_the_file_syntax() {
        for (nanos, text) in [
            (0, "0s"),
            (500_000_000, "500ms"),
            (90_000_000_000, "1m30s"),
            (1_500_000_000, "1s500ms"),
            (86_400_000_000_000, "24h"),
            (100_000, "100us"),
        ] {
            assert_eq!(format_duration(Duration::from_nanos(nanos)), text);
        }
    }
}
