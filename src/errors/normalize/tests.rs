//! Unit and property tests for upstream error normalization.

use proptest::prelude::*;
use serde_json::json;

use super::*;
use crate::errors::schema::FIELDS;

const FILL: Fill<'static> = Fill {
    endpoint_url: "/payments/7",
    member_id: Some("bankName"),
    request_id: "req-42",
    now_ms: 1_700_000_000_000,
    redact: None,
};

fn as_json(b: &ErrorBody) -> Value {
    serde_json::from_slice(&b.to_json()).unwrap()
}

#[test]
fn documented_body_is_kept_as_is() {
    let body = json!({
        "build_version": "2.1", "code": "PAYMENT_NOT_FOUND", "endpoint_url": "/payments/7",
        "long_message": "no such payment", "member_identification": "otherBank", "service_name": "payments",
        "short_message": "Not found", "timestamp": 1651224866578_i64, "troubleshooting_id": "t-1"
    });
    let out = as_json(&normalize(StatusCode::NOT_FOUND, body.to_string().as_bytes(), &FILL));
    assert_eq!(out, body);
}

#[test]
fn camel_case_string_seconds_and_extra_fields() {
    let body = br#"{"shortMessage":"Conflict","troubleshootingId":"t-9","timestamp":"1651224866","details":{"f":1}}"#;
    let out = as_json(&normalize(StatusCode::CONFLICT, body, &FILL));
    assert_eq!(out["short_message"], "Conflict");
    assert_eq!(out["troubleshooting_id"], "t-9");
    assert_eq!(out["timestamp"], 1_651_224_866_000_i64);
    assert_eq!(out["details"], json!({"f": 1}));
    assert!(out.get("shortMessage").is_none());
    assert_eq!(out["code"], "HTTP_409");
    assert_eq!(out["service_name"], "issettled");
    assert_eq!(out["member_identification"], "bankName");
}

#[test]
fn rfc3339_timestamps_at_any_offset_become_the_same_milliseconds() {
    for stamp in [
        "2022-04-29T09:34:26.578Z",
        "2022-04-29T11:34:26.578+02:00",
        "2022-04-29T04:34:26.578-05:00",
    ] {
        let body = json!({ "code": "X", "timestamp": stamp }).to_string();
        let out = as_json(&normalize(StatusCode::CONFLICT, body.as_bytes(), &FILL));
        assert_eq!(out["timestamp"], 1_651_224_866_578_i64, "{stamp}");
    }
    let body = json!({ "timestamp": "2022-04-29T11:34:26+02:00" }).to_string();
    let out = as_json(&normalize(StatusCode::CONFLICT, body.as_bytes(), &FILL));
    assert_eq!(out["timestamp"], 1_651_224_866_000_i64);
}

#[test]
fn html_and_empty_bodies_are_filled() {
    let html = b"<html><body>\n<h1>502 Bad Gateway</h1>\r\n</body></html>";
    let out = as_json(&normalize(StatusCode::BAD_GATEWAY, html, &FILL));
    assert_eq!(
        out["long_message"],
        "<html><body> <h1>502 Bad Gateway</h1> </body></html>"
    );
    assert_eq!(out["short_message"], "Bad Gateway");
    assert_eq!(out["endpoint_url"], "/payments/7");
    assert_eq!(out["troubleshooting_id"], "req-42");
    assert_eq!(out["timestamp"], FILL.now_ms);
    let out = as_json(&normalize(StatusCode::SERVICE_UNAVAILABLE, b"", &FILL));
    assert_eq!(out["code"], "HTTP_503");
    assert!(out["long_message"].as_str().unwrap().contains("empty body"));
}

#[test]
fn long_bodies_are_cut() {
    let body = "x".repeat(10_000);
    let out = normalize(StatusCode::INTERNAL_SERVER_ERROR, body.as_bytes(), &FILL);
    assert_eq!(out.long_message.unwrap().chars().count(), EXCERPT_CHARS + 1);
}

proptest! {
    #[test]
    fn any_bytes_any_status_give_the_nine_fields(body in proptest::collection::vec(any::<u8>(), 0..2048), status in 400u16..600) {
        let status = StatusCode::from_u16(status).unwrap();
        let out = as_json(&normalize(status, &body, &FILL));
        let obj = out.as_object().unwrap();
        for f in FIELDS {
            let v = obj.get(f).unwrap();
            if f == "timestamp" { prop_assert!(v.is_i64()); } else { prop_assert!(v.is_string() || v.is_null()); }
        }
    }

    #[test]
    fn any_json_object_gives_the_nine_fields(fields in proptest::collection::btree_map("[a-zA-Z_]{1,20}", any::<i64>().prop_map(Value::from), 0..12)) {
        let body = serde_json::to_vec(&fields).unwrap();
        let out = as_json(&normalize(StatusCode::BAD_REQUEST, &body, &FILL));
        for f in FIELDS {
            let v = out.get(f).unwrap();
            if f == "timestamp" { prop_assert!(v.is_i64()); } else { prop_assert!(v.is_string() || v.is_null()); }
        }
    }
}
