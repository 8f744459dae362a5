//! Upstream error (status + bounded body bytes) → the nine-field schema, keeping what the upstream said.
//!
//! camelCase spellings map to snake_case, timestamps become int64 ms, missing fields are filled, other fields are
//! kept, and a body that is not a JSON object becomes a bounded, printable `long_message`. Pure: no I/O.

use http::StatusCode;
use serde_json::{Map, Value};

use super::schema::{ErrorBody, UPSTREAM_SERVICE_NAME};

/// The longest `long_message` excerpt made from a non-JSON body, in characters.
pub(crate) const EXCERPT_CHARS: usize = 512;

/// What fills the fields the upstream left out, and what must not come out.
#[derive(Debug, Clone, Copy)]
pub struct Fill<'a> {
    pub endpoint_url: &'a str,
    pub member_id: Option<&'a str>,
    pub request_id: &'a str,
    pub now_ms: i64,
    /// Text replaced wherever it appears in the parsed body (a string or a key, however the upstream escaped
    /// it), before any field is turned into text: the token, with its fingerprint.
    pub redact: Option<Redact<'a>>,
}

/// A secret and what replaces it.
#[derive(Clone, Copy)]
pub struct Redact<'a> {
    pub(crate) secret: &'a str,
    pub(crate) replacement: &'a str,
}

impl std::fmt::Debug for Redact<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redact")
            .field("replacement", &self.replacement)
            .finish_non_exhaustive()
    }
}

/// Accepted spellings of each schema field (the first is the canonical name).
const ALIASES: [(&str, &[&str]); 9] = [
    ("build_version", &["build_version", "buildVersion"]),
    ("code", &["code", "errorCode", "error_code"]),
    ("endpoint_url", &["endpoint_url", "endpointUrl", "endpointURL"]),
    ("long_message", &["long_message", "longMessage"]),
    (
        "member_identification",
        &["member_identification", "memberIdentification"],
    ),
    ("service_name", &["service_name", "serviceName"]),
    ("short_message", &["short_message", "shortMessage"]),
    ("timestamp", &["timestamp"]),
    (
        "troubleshooting_id",
        &["troubleshooting_id", "troubleshootingId", "troubleshootingID"],
    ),
];

/// Normalize an upstream error. Never panics, for any bytes.
pub fn normalize(status: StatusCode, body: &[u8], fill: &Fill<'_>) -> ErrorBody {
    let parsed = serde_json::from_slice::<Value>(body).ok().map(|mut v| {
        if let Some(r) = fill.redact {
            super::scrub::scrub_value(&mut v, r.secret, r.replacement);
        }
        v
    });
    let mut fields = match parsed {
        Some(Value::Object(map)) => map,
        // JSON that is not an object: its (redacted) text is the excerpt.
        Some(other) => excerpt_map(other.to_string().as_bytes()),
        None => excerpt_map(body),
    };
    let mut take = |name: &str| -> Option<Value> {
        let (_, aliases) = ALIASES.iter().find(|(n, _)| *n == name)?;
        let mut found = None;
        for alias in aliases.iter() {
            if let Some(v) = fields.remove(*alias) {
                if found.is_none() && !v.is_null() {
                    found = Some(v);
                }
            }
        }
        found
    };
    let reason = status.canonical_reason().unwrap_or("Error");
    let mut out = ErrorBody {
        build_version: take("build_version").map(stringify),
        code: Some(take("code").map_or_else(|| format!("HTTP_{}", status.as_u16()), stringify)),
        endpoint_url: Some(take("endpoint_url").map_or_else(|| fill.endpoint_url.to_owned(), stringify)),
        long_message: take("long_message").map(stringify),
        member_identification: take("member_identification")
            .map(stringify)
            .or_else(|| fill.member_id.map(str::to_owned)),
        service_name: Some(take("service_name").map_or_else(|| UPSTREAM_SERVICE_NAME.to_owned(), stringify)),
        short_message: Some(take("short_message").map_or_else(|| reason.to_owned(), stringify)),
        timestamp: take("timestamp").and_then(|v| timestamp_ms(&v)).unwrap_or(fill.now_ms),
        troubleshooting_id: Some(take("troubleshooting_id").map_or_else(|| fill.request_id.to_owned(), stringify)),
        extra: Map::new(),
    };
    if out.long_message.is_none() && body.is_empty() {
        out.long_message = Some(format!("the upstream answered {} with an empty body", status.as_u16()));
    }
    out.extra = fields;
    out
}

/// The fields of a body that is not a JSON object: its excerpt as `long_message`.
fn excerpt_map(body: &[u8]) -> Map<String, Value> {
    let mut map = Map::new();
    if let Some(text) = excerpt(body) {
        map.insert("long_message".into(), Value::String(text));
    }
    map
}

/// A field value as a string: strings as they are, anything else as compact JSON.
fn stringify(v: Value) -> String {
    match v {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

/// Coerce a timestamp (ms, seconds, numeric string, RFC 3339) to int64 milliseconds.
pub(crate) fn timestamp_ms(v: &Value) -> Option<i64> {
    crate::clock::parse_timestamp(v).map(crate::clock::to_ms)
}

/// A printable excerpt of a non-JSON body: control characters become spaces, runs of white space fold, and
/// the text is cut at [`EXCERPT_CHARS`] characters.
pub(crate) fn excerpt(body: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(body);
    let mut out = String::with_capacity(text.len().min(EXCERPT_CHARS + 3));
    let mut count = 0;
    let mut last_space = true;
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() { ' ' } else { c };
        if c == ' ' && last_space {
            continue;
        }
        last_space = c == ' ';
        if count == EXCERPT_CHARS {
            out.push('…');
            break;
        }
        out.push(c);
        count += 1;
    }
    let trimmed = out.trim_end();
    (!trimmed.is_empty()).then(|| trimmed.to_owned())
}

#[cfg(test)]
mod tests;
