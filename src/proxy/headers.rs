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

/// How many fixed hop-by-hop names there are.
const HOP_COUNT: usize = 7;

/// Where `Transfer-Encoding` is in [`HOP_BY_HOP`].
const TRANSFER_ENCODING: usize = 5;

/// Hop-by-hop fields removed in both directions, besides those `Connection` names (names, not strings: no
/// parsing per request).
const HOP_BY_HOP: [HeaderName; HOP_COUNT] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The elements of every `name` field, a comma-separated list (RFC 9110 §5.6.1), as raw bytes trimmed of
/// whitespace: bytes, not `str`, so one element with a byte outside visible ASCII does not hide the others.
pub(crate) fn list_elements(headers: &HeaderMap, name: HeaderName) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(name)
        .into_iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Remove `Connection`, every field it names, and the fixed hop-by-hop list.
pub(crate) fn strip_hop_by_hop(headers: &mut HeaderMap) {
    strip(headers, &[]);
}

/// [`strip_hop_by_hop`], and the fields in `also`. One pass over the names finds what is there; only that is
/// removed (each removal hashes and probes, and most messages carry at most `Connection`).
fn strip<const N: usize>(headers: &mut HeaderMap, also: &[HeaderName; N]) {
    let mut found = [false; HOP_COUNT];
    let mut found_also = [false; N];
    let mut any = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| h == name) {
            found[i] = true;
            any = true;
        } else if let Some(i) = also.iter().position(|h| h == name) {
            found_also[i] = true;
            any = true;
        }
    }
    if !any {
        return;
    }
    if found[0] {
        remove_connection_options(headers);
    }
    if found[TRANSFER_ENCODING] {
        // RFC 9112 §6.3: with both, the chunked framing was used, and a forwarded Content-Length would frame the
        // re-framed body wrongly (cut it short, or leave the receiver waiting). Removed whenever both are there.
        headers.remove(header::CONTENT_LENGTH);
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, f)| *f) {
        headers.remove(name);
    }
    for (name, _) in also.iter().zip(found_also).filter(|(_, f)| *f) {
        headers.remove(name);
    }
}

/// Remove the fields that `Connection` names. `keep-alive` and `close`, the usual options, name nothing else to
/// remove (`Keep-Alive` is on the fixed list); anything else is looked up.
fn remove_connection_options(headers: &mut HeaderMap) {
    let mut only_usual = true;
    let mut names_close = false;
    for token in list_elements(headers, header::CONNECTION) {
        let token = token.trim_ascii();
        if token.eq_ignore_ascii_case(b"close") {
            names_close = true;
        } else if !token.eq_ignore_ascii_case(b"keep-alive") {
            only_usual = false;
        }
    }
    if only_usual {
        if names_close {
            headers.remove("close");
        }
        return;
    }
    // Split the raw bytes: one option with a byte outside visible ASCII (which `to_str` refuses) must not hide
    // the others in the same value.
    let named: Vec<HeaderName> = list_elements(headers, header::CONNECTION)
        .filter_map(|name| HeaderName::from_bytes(name).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
}

/// Whether the app sent credentials of its own.
pub(crate) fn has_app_credentials(headers: &HeaderMap) -> bool {
    headers.contains_key(header::AUTHORIZATION) || headers.contains_key(header::PROXY_AUTHORIZATION)
}

/// Turn the app's request headers into the upstream's: hop-by-hop and the app's credentials out, `Host` out
/// (the client sets the upstream's), `Expect` out (answered on this hop), the token and request id in.
pub(crate) fn to_upstream(headers: &mut HeaderMap, bearer: &HeaderValue, request_id: &HeaderValue) {
    strip(headers, &[header::PROXY_AUTHORIZATION, header::HOST, header::EXPECT]);
    // `insert` replaces every value the app sent under these names.
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
    fn a_content_length_beside_transfer_encoding_goes_too() {
        assert_eq!(HOP_BY_HOP[TRANSFER_ENCODING], header::TRANSFER_ENCODING);
        let mut both = map(&[
            ("content-length", "3"),
            ("transfer-encoding", "chunked"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut both);
        assert_eq!(both.len(), 1, "{both:?}");
        let mut length = map(&[("content-length", "3"), ("connection", "keep-alive")]);
        strip_hop_by_hop(&mut length);
        assert_eq!(length["content-length"], "3");
    }

    #[test]
    fn a_non_ascii_connection_option_does_not_hide_the_others() {
        let mut h = map(&[("x-hop", "1"), ("x-other-hop", "2"), ("x-kept", "yes")]);
        h.append(
            header::CONNECTION,
            HeaderValue::from_bytes(b"x-hop, caf\xE9, X-Other-Hop").unwrap(),
        );
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn the_usual_connection_options_leave_other_fields_alone() {
        let mut h = map(&[
            ("connection", "Keep-Alive"),
            ("keep-alive", "timeout=5"),
            ("close", "reserved, yet named"),
            ("x-kept", "yes"),
        ]);
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 2, "{h:?}");
        let mut closing = map(&[("connection", "close"), ("close", "x"), ("x-kept", "yes")]);
        strip_hop_by_hop(&mut closing);
        assert_eq!(closing.len(), 1, "{closing:?}");
        assert_eq!(closing["x-kept"], "yes");
        let mut none = map(&[("x-kept", "yes"), ("content-type", "application/json")]);
        strip_hop_by_hop(&mut none);
        assert_eq!(none.len(), 2);
    }

    #[test]
    fn upstream_headers_carry_only_the_proxy_token() {
        let mut h = map(&[
            ("authorization", "Bearer app"),
            ("authorization", "Bearer second"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
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
