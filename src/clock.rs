//! Wall-clock helpers shared by the error schema, the token and the admin port: epoch milliseconds, RFC 3339
//! text, and reading a timestamp that may be seconds, milliseconds, a numeric string or RFC 3339. Pure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A wall-clock time as milliseconds since the epoch (0 before it).
pub fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 in UTC with millisecond precision.
pub fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Numbers below this are seconds, above it milliseconds (1e11 ms is 1973; 1e11 s is the year 5138).
const SECONDS_BELOW: f64 = 1e11;

/// Read a timestamp given as epoch seconds or milliseconds (number or numeric string) or RFC 3339 text.
pub fn parse_timestamp(v: &serde_json::Value) -> Option<SystemTime> {
    let number = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            match s.parse::<f64>() {
                Ok(n) => n,
                Err(_) => return humantime::parse_rfc3339_weak(s).ok(),
            }
        }
        _ => return None,
    };
    if !number.is_finite() || number < 0.0 {
        return None;
    }
    let ms = if number < SECONDS_BELOW {
        number * 1000.0
    } else {
        number
    };
    if ms >= 9.0e15 {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_millis(ms.round() as u64))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn timestamps_in_every_form() {
        let ms = |v| parse_timestamp(&v).map(to_ms);
        assert_eq!(ms(json!(1651224866578_i64)), Some(1651224866578));
        assert_eq!(ms(json!(1651224866)), Some(1651224866000));
        assert_eq!(ms(json!(1651224866.5)), Some(1651224866500));
        assert_eq!(ms(json!("1651224866578")), Some(1651224866578));
        assert_eq!(ms(json!("2022-04-29T09:34:26.578Z")), Some(1651224866578));
        assert_eq!(ms(json!("2022-04-29T09:34:26.578+00:00")), Some(1651224866578));
        assert_eq!(ms(json!("yesterday")), None);
        assert_eq!(ms(json!(-5)), None);
        assert_eq!(ms(json!(null)), None);
    }
}
