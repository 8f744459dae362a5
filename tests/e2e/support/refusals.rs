//! What a refused or hostile request leaves behind: the paths the upstream saw, and a 400 from the parser or in the
//! schema. Shared by the framing, headers, paths, origins and token tests.

use crate::support::{assert_schema, raw_json, raw_status, ProxyBuilder, TestProxy, Upstream};

/// A request hidden in a body or after it; the upstream must never see this path.
pub(crate) const SMUGGLED: &str = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";

/// The proxy with its defaults in front of `upstream`.
pub(crate) async fn proxy_for(upstream: &Upstream) -> TestProxy {
    ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await
}

/// The paths the upstream received, in order.
pub(crate) fn seen_paths(upstream: &Upstream) -> Vec<String> {
    upstream.sim.requests().into_iter().map(|r| r.path_and_query).collect()
}

/// A 400 from the parser (bare) or from the proxy (schema, `BAD_REQUEST`).
pub(crate) fn assert_bad_request(response: &str, context: &str) {
    assert_eq!(raw_status(response), 400, "{context}: {response}");
    let body = raw_json(response);
    if !body.is_null() {
        assert_schema(&body);
        assert_eq!(body["code"], "BAD_REQUEST", "{context}: {body}");
    }
}
