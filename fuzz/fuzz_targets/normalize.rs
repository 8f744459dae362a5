//! Upstream error normalization: any status 400..600 and any body bytes give the nine fields, without panicking.
#![no_main]

use issettled_proxy::errors::normalize::{normalize, Fill};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: (u16, &[u8])| {
    let (raw, body) = input;
    let status = http::StatusCode::from_u16(400 + raw % 200).expect("400..600 is a valid status");
    let fill = Fill {
        endpoint_url: "/payments",
        member_id: Some("bankName"),
        request_id: "fuzz",
        now_ms: 1_651_224_866_578,
        redact: None,
    };
    let json: serde_json::Value =
        serde_json::from_slice(&normalize(status, body, &fill).to_json()).expect("normalization writes JSON");
    let object = json.as_object().expect("a JSON object");
    for field in issettled_proxy::errors::schema::FIELDS {
        let value = &object[field];
        if field == "timestamp" {
            assert!(value.is_i64(), "timestamp {value}");
        } else {
            assert!(value.is_string() || value.is_null(), "{field} {value}");
        }
    }
});
