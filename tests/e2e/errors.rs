//! Errors end to end: every upstream error answer normalized into the nine-field schema (scrubbed, decoded), and
//! the proxy's own refusals sending nothing upstream. Upstreams that fail outright are in `upstream_faults`.

use crate::support::{
    assert_schema, client,
    faulty::{Fault, Faulty},
    get_json, raw, raw_json, raw_status, ProxyBuilder, Upstream,
};

#[tokio::test]
async fn documented_upstream_errors_keep_their_fields_and_status() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("TOKEN__MIN_REFRESH_GAP", "1h")
        .spawn()
        .await;
    for status in [400u16, 401, 403, 404, 406, 409, 429, 500] {
        let (got, body) = get_json(&proxy.url(&format!("/errors/{status}"))).await;
        assert_eq!(got, status);
        assert_schema(&body);
        assert_eq!(body["service_name"], "issettled", "{body}");
        assert_eq!(body["build_version"], "2.14.3", "{body}");
        assert_ne!(
            body["code"],
            format!("HTTP_{status}"),
            "the upstream's own code is kept: {body}"
        );
    }
}

#[tokio::test]
async fn non_json_empty_and_camel_case_errors_are_normalized() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;

    let r = client().get(proxy.url("/errors/html-502")).send().await.unwrap();
    assert_eq!(r.status(), 502);
    assert_eq!(r.headers()["content-type"], "application/json");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "HTTP_502");
    assert_eq!(body["short_message"], "Bad Gateway");
    assert!(body["long_message"].as_str().unwrap().contains("502 Bad Gateway"));
    assert_eq!(body["endpoint_url"], "/errors/html-502");
    assert_eq!(body["member_identification"], "testBank");
    assert_eq!(body["service_name"], "issettled");

    let (status, body) = get_json(&proxy.url("/errors/empty-503")).await;
    assert_eq!(status, 503);
    assert_schema(&body);
    assert_eq!(body["code"], "HTTP_503");
    assert!(body["troubleshooting_id"].as_str().is_some_and(|s| !s.is_empty()));

    let (status, body) = get_json(&proxy.url("/errors/camel")).await;
    assert_eq!(status, 409);
    assert_schema(&body);
    assert!(body["short_message"].is_string());
    assert!(body.get("shortMessage").is_none());
    assert!(body["troubleshooting_id"].is_string());
    assert!(
        body["timestamp"].as_i64().unwrap() > 1_600_000_000_000,
        "seconds became milliseconds: {body}"
    );
    assert_eq!(body["details"]["field"], "amount", "extra fields are kept: {body}");
}

#[tokio::test]
async fn an_echoed_token_is_replaced_by_its_fingerprint() {
    let upstream = Upstream::spawn().await;
    let token = upstream.token();
    let proxy = ProxyBuilder::new(&upstream.url, &token)
        .set("TOKEN__REFRESH_INTERVAL", "10m")
        .spawn()
        .await;
    // The start-up refresh replaces the token; echo whatever is current.
    let r = client().get(proxy.url("/errors/echo-token")).send().await.unwrap();
    let header = r.headers().get("x-debug-token").map(|v| v.to_str().unwrap().to_owned());
    let text = r.text().await.unwrap();
    for t in upstream.sim.issued_tokens() {
        assert!(!text.contains(&t), "token in body: {text}");
        assert!(!header.as_deref().unwrap_or_default().contains(&t), "token in header");
    }
    assert!(text.contains("sha256:"), "{text}");
    assert!(header.unwrap().contains("sha256:"));
}

#[tokio::test]
async fn policy_refusals_send_nothing_upstream() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__ALLOWED_PATH_PREFIXES", "/payments,/digital-accounts")
        .set("POLICY__MAX_BODY_BYTES", "1024")
        .spawn()
        .await;
    let c = client();
    let r = c.put(proxy.url("/payments/1")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "METHOD_NOT_ALLOWED"
    );
    for path in ["/admin", "/payments-x", "/echo"] {
        let (status, body) = get_json(&proxy.url(path)).await;
        assert_eq!(status, 403, "{path}");
        assert_eq!(body["code"], "ENDPOINT_NOT_PERMITTED");
        assert_schema(&body);
    }
    // Over the limit with a Content-Length ...
    let r = c
        .post(proxy.url("/payments"))
        .body(vec![b'x'; 2048])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.json::<serde_json::Value>().await.unwrap()["code"],
        "PAYLOAD_TOO_LARGE"
    );
    assert!(upstream.sim.requests().is_empty(), "nothing sent upstream");
    // ... and chunked, without one.
    let chunk = format!("800\r\n{}\r\n0\r\n\r\n", "x".repeat(2048));
    let req = format!(
        "POST /payments HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunk}"
    );
    let r = raw(proxy.addr, req.as_bytes()).await;
    assert_eq!(raw_status(&r), 413, "{r}");
    assert_eq!(raw_json(&r)["code"], "PAYLOAD_TOO_LARGE");
}

#[tokio::test]
async fn a_gzipped_upstream_error_is_decoded_normalized_and_scrubbed() {
    let upstream = Faulty::spawn(Fault::GzipError).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
    // What curl --compressed sends.
    let r = client()
        .get(proxy.url("/payments/7"))
        .header("accept-encoding", "deflate, gzip, br, zstd")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(r.headers()["content-type"], "application/json");
    assert!(
        r.headers().get("content-encoding").is_none(),
        "the normalized body is not encoded"
    );
    let text = r.text().await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
    assert_schema(&body);
    assert_eq!(body["code"], "PAYMENT_CONFLICT", "the upstream's code survives: {body}");
    assert_eq!(body["short_message"], "Conflict");
    assert!(!text.contains("opaque-token"), "the token is scrubbed: {text}");
    assert!(body["long_message"].as_str().unwrap().contains("sha256:"), "{body}");
    // The upstream was offered only codings the proxy can decode.
    let head = upstream
        .request_heads()
        .into_iter()
        .find(|h| h.starts_with("GET /payments/7 "))
        .unwrap();
    let accept = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("accept-encoding:")
            .map(|v| v.trim().to_owned())
    });
    assert_eq!(accept.as_deref(), Some("gzip, deflate"), "{head}");
}

/// A 405 says which methods are allowed (RFC 9110 §15.5.6) and where that is configured.
#[tokio::test]
async fn a_405_carries_allow_and_names_policy_allowed_methods() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__ALLOWED_METHODS", "get,POST")
        .spawn()
        .await;
    for method in [http::Method::PUT, http::Method::DELETE] {
        let r = client()
            .request(method.clone(), proxy.url("/payments/1"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 405, "{method}");
        assert_eq!(r.headers()[http::header::ALLOW], "GET, POST", "{method}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_schema(&body);
        let message = body["long_message"].as_str().unwrap_or_default();
        assert!(
            message.contains("policy.allowed_methods") && message.contains("GET, POST"),
            "{message}"
        );
    }
}

/// `https://` in `base_url` for an upstream that speaks plain HTTP: the answer and the refresh error say so,
/// instead of rustls's "received corrupt message of type InvalidContentType".
#[tokio::test]
async fn https_to_a_plain_http_upstream_says_to_check_the_scheme() {
    const SAYS: &str = "the upstream did not answer TLS: check the scheme of upstream.base_url";
    let upstream = Upstream::spawn().await;
    let https = upstream.url.replacen("http://", "https://", 1);
    let proxy = ProxyBuilder::new(&https, &upstream.token()).spawn().await;
    let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["code"], "UPSTREAM_UNREACHABLE", "{body}");
    assert!(
        body["long_message"].as_str().unwrap_or_default().contains(SAYS),
        "{body}"
    );
    let refreshed = crate::support::wait_for(|| async {
        proxy.status().await["token"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains(SAYS))
    })
    .await;
    assert!(refreshed, "{}", proxy.status().await);
}
