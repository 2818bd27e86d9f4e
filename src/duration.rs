//! Human durations for flags and config values: `30s`, `500ms`, `1m30s`, `2h`; a bare number is
//! seconds, as systemd reads it.

use std::time::Duration;

/// Parses a duration; the error says what was wrong and what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration (use e.g. 30s, 500ms, 1m30s)".into());
    }
    if let Ok(seconds) = text.parse::<u64>() {
        return Ok(Duration::from_secs(seconds));
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit()).unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "invalid duration {text:?}: expected a number at {rest:?} (use e.g. 30s, 500ms, 1m30s)"
            ));
        }
        let number: u64 = rest[..digits].parse().map_err(|_| format!("invalid duration {text:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(number),
            "s" => Duration::from_secs(number),
            "m" | "min" => Duration::from_secs(number.saturating_mul(60)),
            "h" => Duration::from_secs(number.saturating_mul(3600)),
            "" => return Err(format!("invalid duration {text:?}: a unit is needed after {number} (ms, s, m, h)")),
            other => return Err(format!("invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h)")),
        };
        total = total.checked_add(part).ok_or_else(|| format!("invalid duration {text:?}: too large"))?;
    }
    Ok(total)
}

/// A duration the way an operator writes one, for log lines and messages: `0s`, `150ms`, `1.5s`,
/// `1m30s`, `24h` (never `0ns` or `1.500000000s`).
pub fn show(d: Duration) -> String {
    if d.is_zero() {
        return "0s".into();
    }
    if d < Duration::from_millis(1) {
        return format!("{}µs", d.as_micros());
    }
    if d < Duration::from_secs(1) {
        return format!("{}ms", d.as_millis());
    }
    if d < Duration::from_secs(60) {
        let tenths = d.as_millis() / 100;
        return if tenths.is_multiple_of(10) {
            format!("{}s", tenths / 10)
        } else {
            format!("{}.{}s", tenths / 10, tenths % 10)
        };
    }
    let secs = d.as_secs();
    let (h, m, s) = (secs / 3600, secs / 60 % 60, secs % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_durations_as_written() {
        assert_eq!(show(Duration::ZERO), "0s");
        assert_eq!(show(Duration::from_millis(150)), "150ms");
        assert_eq!(show(Duration::from_millis(100)), "100ms");
        assert_eq!(show(Duration::from_micros(20)), "20µs");
        assert_eq!(show(Duration::from_millis(1500)), "1.5s");
        assert_eq!(show(Duration::from_secs(30)), "30s");
        assert_eq!(show(Duration::from_secs(90)), "1m30s");
        assert_eq!(show(Duration::from_secs(86_400)), "24h");
        assert_eq!(show(Duration::from_secs(u64::MAX)), "5124095576030431h15s");
    }

    #[test]
    fn accepts_units_and_combinations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("5min"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("12"), Ok(Duration::from_secs(12)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration(" 1s "), Ok(Duration::from_secs(1)));
    }

    #[test]
    fn rejects_garbage_with_a_reason() {
        for bad in ["", "s", "5x", "1.5s", "-3s", "10 s", "1m30", "abc", "99999999999999999999s"] {
            let err = parse_duration(bad).expect_err(bad);
            assert!(err.contains("duration"), "{bad}: {err}");
        }
    }
}
