//! Wall-clock helpers shared by the error schema, the token and the admin port: epoch milliseconds, RFC 3339
//! text, and reading a timestamp that may be seconds, milliseconds, a numeric string or RFC 3339. Pure.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    to_ms(SystemTime::now())
}

/// A wall-clock time as milliseconds since the epoch (0 before it).
pub(crate) fn to_ms(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// RFC 3339 in UTC with millisecond precision.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// Numbers below this are seconds, above it milliseconds (1e11 ms is 1973; 1e11 s is the year 5138).
const SECONDS_BELOW: f64 = 1e11;

/// Read a timestamp given as epoch seconds or milliseconds (number or numeric string) or RFC 3339 text.
pub(crate) fn parse_timestamp(v: &serde_json::Value) -> Option<SystemTime> {
    let number = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => {
            let s = s.trim();
            match s.parse::<f64>() {
                Ok(n) => n,
                Err(_) => return parse_rfc3339(s),
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

/// The longest date-time (without its offset) read: a date, a time and a fraction of up to 20 digits.
const MAX_DATE_TIME: usize = 40;

/// RFC 3339 date-time text (§5.6) at any UTC offset: `Z`, `z` or `±HH:MM`, `T` or `t` (or a space) between date
/// and time, any fraction. Without an offset it is read as UTC, as before. humantime reads the date and time
/// (it knows only UTC); the offset is applied here.
pub(crate) fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let (local, offset_secs) = split_offset(text)?;
    if local.len() > MAX_DATE_TIME {
        return None;
    }
    let mut buf = [0u8; MAX_DATE_TIME];
    let buf = &mut buf[..local.len()];
    buf.copy_from_slice(local.as_bytes());
    if buf.get(10) == Some(&b't') {
        buf[10] = b'T';
    }
    let local = humantime::parse_rfc3339_weak(std::str::from_utf8(buf).ok()?).ok()?;
    // Local time = UTC + offset, so UTC = local − offset. Before the epoch is refused, like a negative number.
    let offset = Duration::from_secs(offset_secs.unsigned_abs());
    let utc = if offset_secs >= 0 {
        local.checked_sub(offset)
    } else {
        local.checked_add(offset)
    };
    utc.filter(|t| *t >= UNIX_EPOCH)
}

/// The date-time and its UTC offset in seconds: `Z`/`z` and no offset at all are 0, `±HH:MM` (hours up to 23,
/// minutes up to 59) is read; anything else after the time is left to the date-time parser to refuse.
fn split_offset(text: &str) -> Option<(&str, i64)> {
    if let Some(local) = text.strip_suffix(['Z', 'z']) {
        return Some((local, 0));
    }
    let b = text.as_bytes();
    let Some(at) = b.len().checked_sub(6).filter(|at| *at >= 19) else {
        return Some((text, 0));
    };
    let sign = match b[at] {
        b'+' => 1,
        b'-' => -1,
        _ => return Some((text, 0)),
    };
    let digits = |i: usize| -> Option<i64> {
        let (hi, lo) = (b[i], b[i + 1]);
        (hi.is_ascii_digit() && lo.is_ascii_digit()).then(|| i64::from((hi - b'0') * 10 + (lo - b'0')))
    };
    if b[at + 3] != b':' {
        return None;
    }
    let (hours, minutes) = (digits(at + 1)?, digits(at + 4)?);
    if hours > 23 || minutes > 59 {
        return None;
    }
    Some((&text[..at], sign * (hours * 3600 + minutes * 60)))
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
        assert_eq!(ms(json!("2022-04-29T11:34:26.578+02:00")), Some(1651224866578));
        assert_eq!(ms(json!("yesterday")), None);
        assert_eq!(ms(json!(-5)), None);
        assert_eq!(ms(json!(null)), None);
    }

    #[test]
    fn rfc3339_at_any_offset() {
        let ms = |s: &str| parse_rfc3339(s).map(to_ms);
        // The same instant, 2022-04-29T09:34:26.578Z, written at several offsets.
        for text in [
            "2022-04-29T09:34:26.578Z",
            "2022-04-29T09:34:26.578z",
            "2022-04-29t09:34:26.578Z",
            "2022-04-29T09:34:26.578+00:00",
            "2022-04-29T09:34:26.578-00:00",
            "2022-04-29T11:34:26.578+02:00",
            "2022-04-29T04:34:26.578-05:00",
            "2022-04-29T15:04:26.578+05:30",
            "2022-04-28T23:34:26.578-10:00",
            "2022-04-29T09:34:26.578",
            "2022-04-29 09:34:26.578Z",
        ] {
            assert_eq!(ms(text), Some(1_651_224_866_578), "{text}");
        }
        // No fraction, or more digits than milliseconds.
        assert_eq!(ms("2022-04-29T11:34:26+02:00"), Some(1_651_224_866_000));
        assert_eq!(ms("2022-04-29T04:34:26-05:00"), Some(1_651_224_866_000));
        assert_eq!(ms("2022-04-29T11:34:26.578123+02:00"), Some(1_651_224_866_578));
        assert_eq!(ms("1970-01-01T01:00:00+01:00"), Some(0));
        // Malformed offsets and text are refused, never misread.
        for text in [
            "2022-04-29T11:34:26+2:00",
            "2022-04-29T11:34:26+02-00",
            "2022-04-29T11:34:26+24:00",
            "2022-04-29T11:34:26+02:60",
            "2022-04-29T11:34:26.5x+02:00",
            "2022-04-29X11:34:26Z",
            "1970-01-01T00:00:00+01:00",
            "Z",
            "",
        ] {
            assert_eq!(ms(text), None, "{text}");
        }
    }
}
