//! Unverified JWT timing claims (`exp`, `iat`, `auth_time`): the proxy holds no key, it only reads the clock.
//! Pure. A token that is not a JWT is opaque and has no known timing.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use serde::Deserialize;

/// The timing claims of a token; all `None` for an opaque token.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Claims {
    pub(crate) exp: Option<SystemTime>,
    pub(crate) iat: Option<SystemTime>,
    /// When the administrator authenticated (the session start), if the issuer says.
    pub(crate) auth_time: Option<SystemTime>,
}

#[derive(Deserialize)]
struct Raw {
    exp: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    auth_time: Option<serde_json::Value>,
}

/// The longest payload decoded (a JWT bigger than this is treated as opaque).
const MAX_PAYLOAD: usize = 16 * 1024;

/// Read the claims of a compact JWS (`header.payload.signature`). Never panics.
pub fn claims(token: &str) -> Claims {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(_sig), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Claims::default();
    };
    if header.is_empty() || payload.len() > MAX_PAYLOAD {
        return Claims::default();
    }
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')) else {
        return Claims::default();
    };
    let Ok(raw) = serde_json::from_slice::<Raw>(&bytes) else {
        return Claims::default();
    };
    Claims {
        exp: raw.exp.as_ref().and_then(numeric_date),
        iat: raw.iat.as_ref().and_then(numeric_date),
        auth_time: raw.auth_time.as_ref().and_then(numeric_date),
    }
}

/// RFC 7519 NumericDate: seconds since the epoch, possibly fractional.
fn numeric_date(v: &serde_json::Value) -> Option<SystemTime> {
    let secs = v.as_f64()?;
    if !secs.is_finite() || !(0.0..1e12).contains(&secs) {
        return None;
    }
    UNIX_EPOCH.checked_add(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jwt(payload: &str) -> String {
        format!(
            "{}.{}.sig",
            URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
            URL_SAFE_NO_PAD.encode(payload)
        )
    }

    #[test]
    fn reads_timing_claims() {
        let c = claims(&jwt(r#"{"exp":1700000900,"iat":1700000000.5,"sub":"x"}"#));
        assert_eq!(c.exp, Some(UNIX_EPOCH + Duration::from_secs(1_700_000_900)));
        assert_eq!(c.iat, Some(UNIX_EPOCH + Duration::from_millis(1_700_000_000_500)));
        assert_eq!(c.auth_time, None);
    }

    #[test]
    fn opaque_and_malformed_tokens_have_no_claims() {
        for t in [
            "opaque",
            "a.b",
            "a.b.c.d",
            "x.!!!.y",
            &jwt("[1]"),
            &jwt(r#"{"exp":"soon"}"#),
            &jwt(r#"{"exp":-1}"#),
        ] {
            assert_eq!(claims(t).exp, None, "{t}");
        }
    }
}
