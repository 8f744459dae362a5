//! Every refresh response shape the contract lists.

use std::time::{Duration, UNIX_EPOCH};

use super::*;

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_700_000_000)
}

fn new_token(status: u16, body: &str) -> (String, Option<SystemTime>) {
    match parse_refresh_response(StatusCode::from_u16(status).unwrap(), body.as_bytes(), now()) {
        Ok(Refreshed::New { token, expires_at }) => (token.expose().to_owned(), expires_at),
        other => panic!("{body}: {other:?}"),
    }
}

#[test]
fn every_token_field_at_top_level_and_in_data() {
    for key in ["access_token", "token", "accessToken", "jwt"] {
        assert_eq!(new_token(200, &format!(r#"{{"{key}":"T1"}}"#)).0, "T1");
        assert_eq!(new_token(200, &format!(r#"{{"data":{{"{key}":"T2"}}}}"#)).0, "T2");
    }
}

#[test]
fn expiry_forms() {
    let secs = |t: Option<SystemTime>| t.unwrap().duration_since(UNIX_EPOCH).unwrap().as_secs();
    assert_eq!(
        secs(new_token(200, r#"{"token":"T","expires_in":900}"#).1),
        1_700_000_900
    );
    assert_eq!(
        secs(new_token(200, r#"{"token":"T","expires_at":1700000500}"#).1),
        1_700_000_500
    );
    assert_eq!(
        secs(new_token(200, r#"{"token":"T","expires_at":1700000500000}"#).1),
        1_700_000_500
    );
    assert_eq!(
        secs(new_token(200, r#"{"data":{"token":"T","expires_at":"2023-11-14T22:20:00Z"}}"#).1),
        1_700_000_400
    );
    // The same instant at other offsets.
    assert_eq!(
        secs(new_token(200, r#"{"token":"T","expires_at":"2023-11-15T00:20:00+02:00"}"#).1),
        1_700_000_400
    );
    assert_eq!(
        secs(new_token(200, r#"{"token":"T","expires_at":"2023-11-14T17:20:00-05:00"}"#).1),
        1_700_000_400
    );
    assert_eq!(new_token(200, r#"{"token":"T"}"#).1, None);
}

#[test]
fn no_token_keeps_the_current_one() {
    for (status, body) in [
        (204, ""),
        (200, ""),
        (200, r#"{"status":"ok"}"#),
        (200, "  \n"),
        (200, "OK"),
        (200, "<html>"),
        (200, "\u{feff}{}"),
    ] {
        let got = parse_refresh_response(StatusCode::from_u16(status).unwrap(), body.as_bytes(), now());
        assert_eq!(got, Ok(Refreshed::Kept), "{status} {body:?}");
    }
}

#[test]
fn failures_are_classified() {
    let classify = |s: u16| parse_refresh_response(StatusCode::from_u16(s).unwrap(), b"{}", now());
    assert_eq!(classify(401), Err(RefreshError::Revoked(401)));
    assert_eq!(classify(403), Err(RefreshError::Revoked(403)));
    for s in [429, 500, 502, 503, 504, 404] {
        assert!(matches!(classify(s), Err(RefreshError::Transient(_))), "{s}");
    }
    assert!(matches!(
        parse_refresh_response(StatusCode::OK, br#"{"token":"  "}"#, now()),
        Err(RefreshError::BadToken(TokenError::Empty))
    ));
    // JSON that does not parse may have carried a new token: never counted as refreshed.
    for body in [
        r#"{"access_token":"new","#,
        r#"{"access_token":"new",}"#,
        "[1,",
        r#""tok"#,
    ] {
        assert!(
            matches!(
                parse_refresh_response(StatusCode::OK, body.as_bytes(), now()),
                Err(RefreshError::Transient(_))
            ),
            "{body}"
        );
    }
}

#[test]
fn plain_text_is_what_does_not_start_like_json() {
    for text in ["", "  ", "OK", "<html>", "\u{feff}OK"] {
        assert!(is_plain_text(text.as_bytes()), "{text:?}");
    }
    for json in ["{}", " [1]", "\"x\"", "\u{feff}{}", "\u{feff} {\"token\":"] {
        assert!(!is_plain_text(json.as_bytes()), "{json:?}");
    }
}

#[test]
fn a_byte_order_mark_does_not_hide_a_new_token() {
    let got = parse_refresh_response(StatusCode::OK, "\u{feff}{\"token\":\"new\"}".as_bytes(), now());
    assert!(
        matches!(&got, Ok(Refreshed::New { token, .. }) if token.expose() == "new"),
        "{got:?}"
    );
}
