//! Request targets: no path escapes the permitted prefixes (dot segments, percent-encoding, backslashes), the
//! absolute form goes only to the configured upstream, CONNECT and `*` are refused, and the token refresh endpoint
//! is never reachable through the proxy.

use crate::support::{
    assert_schema, client, raw, raw_json, raw_status,
    refusals::{assert_bad_request, seen_paths},
    ProxyBuilder, Upstream,
};
use issettled_proxy::{
    path::{check_path, prefix_allowed},
    sim::SimConfig,
};

#[tokio::test]
async fn no_path_escapes_the_permitted_prefix() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__ALLOWED_PATH_PREFIXES", "/payments")
        .spawn()
        .await;
    let long = format!("/{}", "a".repeat(16 * 1024));
    let long_escape = format!("/payments/{}/../../digital-accounts", "a".repeat(16 * 1024));
    let escapes = [
        "/payments/../digital-accounts",
        "/payments/./../digital-accounts",
        "/payments/%2e%2e/digital-accounts",
        "/payments/%2E%2e/digital-accounts",
        "/payments/.%2e/digital-accounts",
        "/payments/%252e%252e/digital-accounts",
        "/payments/%25252e%25252e/digital-accounts",
        "/payments%2f..%2fdigital-accounts",
        "/payments/..%2fdigital-accounts",
        "/payments%2F%2E%2E%2Fdigital-accounts",
        "/payments/..%5cdigital-accounts",
        "/payments\\..\\digital-accounts",
        "/payments/..;/digital-accounts",
        "/payments/.;x/../digital-accounts",
        "/payments//../digital-accounts",
        "//payments/../digital-accounts",
        "/payments/%00/../digital-accounts",
        "/payments/%zz",
        &long_escape,
    ];
    for target in escapes {
        let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_bad_request(&response, &target[..target.len().min(60)]);
    }
    for target in ["/payments-x", "/digital-accounts", "/Payments", "/payment", &long] {
        let request = format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
        let response = raw(proxy.addr, request.as_bytes()).await;
        let short = &target[..target.len().min(60)];
        assert_eq!(raw_status(&response), 403, "{short}");
        let body = raw_json(&response);
        assert_schema(&body);
        assert_eq!(body["code"], "ENDPOINT_NOT_PERMITTED", "{short}");
    }
    // A path too long for a URI at all (> 64 KiB) is the parser's 414.
    let huge = format!(
        "GET /payments/{} HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let status = raw_status(&raw(proxy.addr, huge.as_bytes()).await);
    assert!(matches!(status, 400 | 414 | 431), "{status}");
    assert!(seen_paths(&upstream).is_empty(), "{:?}", seen_paths(&upstream));
    // Inside the prefix, a long path is forwarded as it is.
    let inside = format!("/payments/{}", "b".repeat(16 * 1024));
    let request = format!("GET {inside} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    assert_eq!(raw_status(&raw(proxy.addr, request.as_bytes()).await), 200);
    assert_eq!(seen_paths(&upstream), vec![inside]);
}

#[tokio::test]
async fn absolute_form_goes_only_to_the_upstream_and_connect_and_asterisk_are_refused() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__ALLOWED_PATH_PREFIXES", "/payments")
        .spawn()
        .await;
    let response = raw(
        proxy.addr,
        b"GET http://evil.example/payments/7 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 200, "{response}");
    assert_eq!(
        seen_paths(&upstream),
        ["/payments/7"],
        "the configured upstream, not evil.example"
    );
    let response = raw(
        proxy.addr,
        b"GET http://evil.example/digital-accounts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 403);
    assert_eq!(raw_json(&response)["code"], "ENDPOINT_NOT_PERMITTED");
    for request in [
        "CONNECT evil.example:443 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "OPTIONS * HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        "TRACE /payments/7 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ] {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&response), 405, "{request}: {response}");
        let body = raw_json(&response);
        assert_schema(&body);
        assert_eq!(body["code"], "METHOD_NOT_ALLOWED");
    }
    // CONNECT naming a foreign Host is refused before anything else.
    let response = raw(
        proxy.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 403);
    assert_eq!(seen_paths(&upstream), ["/payments/7"], "nothing else was sent");
}

/// Property: a path the proxy accepts under a prefix stays under it after any percent-decoding (up to three
/// rounds) and RFC 3986 §5.2.4 dot-segment removal, with `\` read as `/` as some servers do.
mod path_property {
    use super::*;
    use proptest::prelude::*;

    fn decode_once(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::new();
        let mut i = 0;
        while i < bytes.len() {
            let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
            match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
                (b'%', Some(b)) => {
                    out.push(b);
                    i += 3;
                }
                (b, _) => {
                    out.push(b);
                    i += 1;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn remove_dot_segments(path: &str) -> String {
        let mut out: Vec<&str> = Vec::new();
        for segment in path.split('/').skip(1) {
            match segment.split(';').next().unwrap_or_default() {
                "." => {}
                ".." => {
                    out.pop();
                }
                _ => out.push(segment),
            }
        }
        format!("/{}", out.join("/"))
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("payments".to_owned()),
            Just("7".to_owned()),
            Just(".".to_owned()),
            Just("..".to_owned()),
            Just("%2e".to_owned()),
            Just("%2e%2e".to_owned()),
            Just("%252e%252e".to_owned()),
            Just("..;".to_owned()),
            Just("%2f".to_owned()),
            Just("%5c".to_owned()),
            Just("\\".to_owned()),
            Just("".to_owned()),
            "[a-z.%;0-9]{1,6}",
        ]
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_under_the_prefix(segments in proptest::collection::vec(segment(), 1..8)) {
            let path = format!("/{}", segments.join("/"));
            let prefixes = vec!["/payments".to_owned()];
            if check_path(&path).is_ok() && prefix_allowed(&path, &prefixes) {
                let mut resolved = path.clone();
                for _ in 0..3 {
                    resolved = decode_once(&resolved);
                }
                let resolved = remove_dot_segments(&resolved.replace('\\', "/"));
                prop_assert!(prefix_allowed(&resolved, &prefixes), "{path} resolves to {resolved}");
            }
        }
    }
}

#[tokio::test]
async fn the_token_refresh_endpoint_is_refused_with_nothing_sent() {
    let upstream = Upstream::spawn_with(SimConfig {
        prefix: "/api/v1".into(),
        ..SimConfig::default()
    })
    .await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    proxy.startup_refresh_done().await;
    let (refreshes, requests) = (upstream.sim.refresh_calls().len(), upstream.sim.requests().len());
    let c = client();
    for path in [
        "/oauth-token/refresh",
        "/oauth-token/refresh/",
        "/OAUTH-TOKEN/Refresh",
        "/oauth-token/%72efresh",
    ] {
        for method in [http::Method::POST, http::Method::GET] {
            let r = c.request(method.clone(), proxy.url(path)).send().await.unwrap();
            assert_eq!(r.status(), 403, "{method} {path}");
            let body: serde_json::Value = r.json().await.unwrap();
            crate::support::assert_schema(&body);
            assert_eq!(body["code"], "ENDPOINT_NOT_PERMITTED", "{method} {path}");
        }
    }
    assert_eq!(
        upstream.sim.refresh_calls().len(),
        refreshes,
        "a refresh call reached the upstream"
    );
    assert_eq!(upstream.sim.requests().len(), requests, "nothing sent upstream");
    // Paths beside it still pass.
    assert_eq!(
        c.get(proxy.url("/echo/oauth-token/refresh"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}
