//! The IsSettled error schema: nine fields, every one always present (strings or null, `timestamp` in ms).

use serde::{Deserialize, Serialize};

/// The `service_name` of errors the proxy writes itself.
pub(crate) const PROXY_SERVICE_NAME: &str = "issettled-proxy";
/// The `service_name` filled into upstream errors that did not name their service.
pub(crate) const UPSTREAM_SERVICE_NAME: &str = "issettled";

/// One error body. Field order follows the IsSettled documentation; `extra` keeps whatever else the upstream sent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub(crate) build_version: Option<String>,
    pub(crate) code: Option<String>,
    pub(crate) endpoint_url: Option<String>,
    pub(crate) long_message: Option<String>,
    pub(crate) member_identification: Option<String>,
    pub(crate) service_name: Option<String>,
    pub(crate) short_message: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub(crate) timestamp: i64,
    pub(crate) troubleshooting_id: Option<String>,
    /// Other fields the upstream sent, kept as they were.
    #[serde(flatten)]
    pub(crate) extra: serde_json::Map<String, serde_json::Value>,
}

/// The nine field names, in schema order.
pub const FIELDS: [&str; 9] = [
    "build_version",
    "code",
    "endpoint_url",
    "long_message",
    "member_identification",
    "service_name",
    "short_message",
    "timestamp",
    "troubleshooting_id",
];

impl ErrorBody {
    /// An error written by `service` (the proxy or the simulated upstream) with the given code and messages.
    pub(crate) fn new(service: &str, code: &str, short_message: &str, long_message: impl Into<String>) -> Self {
        Self {
            build_version: None,
            code: Some(code.to_owned()),
            endpoint_url: None,
            long_message: Some(long_message.into()),
            member_identification: None,
            service_name: Some(service.to_owned()),
            short_message: Some(short_message.to_owned()),
            timestamp: now_ms(),
            troubleshooting_id: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Serialize to JSON bytes (infallible for this type), ending with a newline: `curl` in a terminal then
    /// leaves the prompt on a line of its own.
    pub fn to_json(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec(self).unwrap_or_else(|_| b"{}".to_vec());
        json.push(b'\n');
        json
    }
}

pub(crate) use crate::clock::now_ms;
