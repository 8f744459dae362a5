//! Header rules for both directions: hop-by-hop removal (RFC 9110 §7.6.1), the app's credentials, `Host`, and
//! the proxy's `Authorization`. Pure: they edit a `HeaderMap`.
//!
//! RFC 9110 §7.6.1: "Intermediaries MUST parse a received Connection header field before a message is forwarded
//! and, for each connection-option in this field, remove any header or trailer field(s) from the message with the
//! same name as the connection-option, and then remove the Connection header field itself".

use http::{header, HeaderMap, HeaderName, HeaderValue};

/// `Keep-Alive` (no constant in `http`).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// `Proxy-Connection` (non-standard, sent by old clients).
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop fields removed in both directions, besides those `Connection` names (names, not strings: no
/// parsing per request).
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Remove `Connection`, every field it names, and the fixed hop-by-hop list.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            headers.remove(name);
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Whether the app sent credentials of its own.
pub fn has_app_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::PROXY_AUTHORIZATION)
}

/// Turn the app's request headers into the upstream's: hop-by-hop and the app's credentials out, `Host` out
/// (the client sets the upstream's), `Expect` out (answered on this hop), the token and request id in.
pub fn to_upstream(headers: &mut HeaderMap, bearer: &HeaderValue, request_id: &HeaderValue) {
    strip_hop_by_hop(headers);
    headers.remove(header::AUTHORIZATION);
    headers.remove(header::PROXY_AUTHORIZATION);
    headers.remove(header::HOST);
    headers.remove(header::EXPECT);
    headers.insert(header::AUTHORIZATION, bearer.clone());
    headers.insert(super::request_id::HEADER, request_id.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_fields_go() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("connection", "close"),
            ("x-secret-hop", "1"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "x"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn upstream_headers_carry_only_the_proxy_token() {
        let mut h = map(&[
            ("authorization", "Bearer app"),
            ("proxy-authorization", "Basic x"),
            ("host", "localhost:8080"),
            ("expect", "100-continue"),
            ("content-type", "application/json"),
        ]);
        let mut bearer = HeaderValue::from_static("Bearer proxy");
        bearer.set_sensitive(true);
        to_upstream(&mut h, &bearer, &HeaderValue::from_static("rid"));
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[header::AUTHORIZATION], "Bearer proxy");
        assert!(h.get(header::PROXY_AUTHORIZATION).is_none());
        assert!(h.get(header::HOST).is_none());
        assert!(h.get(header::EXPECT).is_none());
        assert_eq!(h["x-request-id"], "rid");
        assert_eq!(h[header::CONTENT_TYPE], "application/json");
    }
}
