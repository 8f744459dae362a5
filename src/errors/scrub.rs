//! Replace a token echoed by the upstream (in an error body or a header) with its fingerprint. Pure.

use std::borrow::Cow;

use http::{HeaderMap, HeaderValue};
use memchr::memmem;

/// `haystack` with every occurrence of `secret` replaced by `replacement`; borrowed when there is none.
pub(crate) fn scrub_bytes<'a>(haystack: &'a [u8], secret: &[u8], replacement: &[u8]) -> Cow<'a, [u8]> {
    if secret.is_empty() || memmem::find(haystack, secret).is_none() {
        return Cow::Borrowed(haystack);
    }
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(at) = memmem::find(rest, secret) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(replacement);
        rest = &rest[at + secret.len()..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Scrub serialized JSON: the secret as it is and as a JSON string spells it (a token with `"` or `\\` in it).
/// Run on the proxy's own output, after parsing, so an upstream that escaped the token (`abc\/def`,
/// `\u0061bc`) cannot carry it past [`scrub_bytes`], which sees only the raw body.
pub(crate) fn scrub_json(json: Vec<u8>, secret: &str, replacement: &str) -> Vec<u8> {
    let mut out = match scrub_bytes(&json, secret.as_bytes(), replacement.as_bytes()) {
        Cow::Borrowed(_) => json,
        Cow::Owned(clean) => clean,
    };
    let quoted = serde_json::to_string(secret).unwrap_or_default();
    // Exactly the quotes serde added: a secret ending in `"` keeps its own (escaped) one.
    let escaped = quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or_default();
    if !escaped.is_empty() && escaped != secret {
        if let Cow::Owned(clean) = scrub_bytes(&out, escaped.as_bytes(), replacement.as_bytes()) {
            out = clean;
        }
    }
    out
}

/// Scrub a parsed JSON value in place: every string and every object key, at any depth. Runs before fields are
/// turned back into text, so no escaping the upstream or the proxy applies can hide the secret.
pub(crate) fn scrub_value(value: &mut serde_json::Value, secret: &str, replacement: &str) {
    use serde_json::Value;
    if secret.is_empty() {
        return;
    }
    match value {
        Value::String(s) if s.contains(secret) => *s = s.replace(secret, replacement),
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secret, replacement)),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains(secret)) {
                *map = std::mem::take(map)
                    .into_iter()
                    .map(|(k, v)| (k.replace(secret, replacement), v))
                    .collect();
            }
            map.values_mut().for_each(|v| scrub_value(v, secret, replacement));
        }
        _ => {}
    }
}

/// Scrub every header value in place. Returns whether anything was replaced.
pub(crate) fn scrub_headers(headers: &mut HeaderMap, secret: &[u8], replacement: &[u8]) -> bool {
    let mut changed = false;
    for value in headers.values_mut() {
        if let Cow::Owned(clean) = scrub_bytes(value.as_bytes(), secret, replacement) {
            // The replacement is printable ASCII, so the value stays valid; fall back to dropping the text.
            *value = HeaderValue::from_bytes(&clean).unwrap_or_else(|_| HeaderValue::from_static("[redacted]"));
            changed = true;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::normalize::{normalize, Fill, Redact};

    /// The normalized, scrubbed output for an upstream error `body`, as the proxy writes it.
    fn written(body: &[u8], token: &str) -> String {
        let fill = Fill {
            endpoint_url: "/x",
            member_id: None,
            request_id: "r",
            now_ms: 0,
            redact: Some(Redact {
                secret: token,
                replacement: "sha256:1234",
            }),
        };
        let raw = scrub_bytes(body, token.as_bytes(), b"sha256:1234");
        let json = normalize(http::StatusCode::BAD_REQUEST, &raw, &fill).to_json();
        String::from_utf8(scrub_json(json, token, "sha256:1234")).unwrap()
    }

    /// Whether `token` can be recovered from `text` by decoding JSON strings any number of times.
    fn recoverable(text: &str, token: &str) -> bool {
        let mut text = text.to_owned();
        for _ in 0..4 {
            if text.contains(token) {
                return true;
            }
            let Ok(v) = serde_json::from_str::<serde_json::Value>(&text) else {
                return false;
            };
            let mut strings = Vec::new();
            collect_strings(&v, &mut strings);
            if strings.iter().any(|s| s.contains(token)) {
                return true;
            }
            text = strings.join(" ");
        }
        false
    }

    fn collect_strings(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::String(s) => out.push(s.clone()),
            serde_json::Value::Array(a) => a.iter().for_each(|v| collect_strings(v, out)),
            serde_json::Value::Object(m) => m.iter().for_each(|(k, v)| {
                out.push(k.clone());
                collect_strings(v, out);
            }),
            _ => {}
        }
    }

    #[test]
    fn a_token_nested_or_escaped_twice_is_scrubbed_and_the_output_stays_json() {
        for (token, body) in [
            (r#"abc"def"#, r#"{"code":{"t":"abc\"def"}}"#),
            (r#"abc"def"#, r#""abc\"def""#),
            (r#"abc"def"#, r#"["abc\"def", {"abc\"def": 1}]"#),
            (r#"abc""#, r#"{"long_message":"token abc\" refused","x":"abc\""}"#),
            (r#"a\b"#, r#"{"code":{"k":["a\\b"]}}"#),
            // Spelled with escapes the raw scrub cannot see, inside a field that becomes text.
            (r#"abc"def"#, r#"{"code":{"t":"\u0061bc\u0022def"}}"#),
            ("abc/def", r#"{"short_message":["abc\/def"],"x":{"abc\/def":true}}"#),
        ] {
            let out = written(body.as_bytes(), token);
            let parsed: serde_json::Value =
                serde_json::from_str(&out).unwrap_or_else(|e| panic!("{token}: not JSON ({e}): {out}"));
            assert!(parsed.is_object(), "{out}");
            assert!(!recoverable(&out, token), "{token} in {out}");
            assert!(out.contains("sha256:1234"), "{out}");
        }
    }

    #[test]
    fn replaces_every_occurrence_and_borrows_otherwise() {
        let out = scrub_bytes(b"a SECRET b SECRET", b"SECRET", b"sha256:1234");
        assert_eq!(&*out, b"a sha256:1234 b sha256:1234");
        assert!(matches!(scrub_bytes(b"clean", b"SECRET", b"x"), Cow::Borrowed(_)));
        assert!(matches!(scrub_bytes(b"clean", b"", b"x"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_token_the_upstream_json_escaped_is_scrubbed_after_parsing() {
        let token = "abc/def\"ghi";
        let fill = Fill {
            endpoint_url: "/x",
            member_id: None,
            request_id: "r",
            now_ms: 0,
            redact: None,
        };
        let body = br#"{"code":"E","long_message":"bad token abc\/def\"ghi","abc\u002fdef\"ghi":1}"#;
        let raw = scrub_bytes(body, token.as_bytes(), b"sha256:1234");
        assert!(matches!(raw, Cow::Borrowed(_)), "the raw body does not spell the token");
        let json = normalize(http::StatusCode::UNAUTHORIZED, &raw, &fill).to_json();
        let out = String::from_utf8(scrub_json(json, token, "sha256:1234")).unwrap();
        assert!(!out.contains("abc/def"), "{out}");
        assert_eq!(out.matches("sha256:1234").count(), 2, "{out}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["long_message"], "bad token sha256:1234");
        // Nothing to replace: the same bytes back.
        assert_eq!(scrub_json(b"{}".to_vec(), token, "x"), b"{}");
    }

    #[test]
    fn headers_are_scrubbed() {
        let mut h = HeaderMap::new();
        h.insert("x-debug", HeaderValue::from_static("Bearer SECRET"));
        h.insert("x-other", HeaderValue::from_static("fine"));
        assert!(scrub_headers(&mut h, b"SECRET", b"sha256:1234"));
        assert_eq!(h["x-debug"], "Bearer sha256:1234");
        assert_eq!(h["x-other"], "fine");
    }
}
