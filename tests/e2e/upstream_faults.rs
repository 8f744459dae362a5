//! An upstream that fails: down, silent, reset or truncated mid-body, stalling, garbage on the wire, huge or
//! trickled error bodies, TLS and DNS failures. Each ends promptly in the schema's 502 or 504, or as a body error
//! once the head has gone out, and nothing that may have arrived is replayed.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::support::{
    assert_schema, client,
    faulty::{Fault, Faulty},
    get_json,
    tls::TestPki,
    ProxyBuilder, Upstream,
};
use issettled_proxy::sim::SimConfig;
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn upstream_down_is_502_unreachable() {
    let port = crate::support::binary::free_port();
    let proxy = ProxyBuilder::new(&format!("http://127.0.0.1:{port}"), "opaque-token")
        .spawn()
        .await;
    let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(status, 502);
    assert_schema(&body);
    assert_eq!(body["code"], "UPSTREAM_UNREACHABLE");
    assert_eq!(body["service_name"], "issettled-proxy");
    assert_eq!(body["build_version"], env!("CARGO_PKG_VERSION"));
    // Counted by its code, once per request (the start-up refresh's failure is the refresher's, not counted here).
    let _ = get_json(&proxy.url("/digital-accounts")).await;
    let metrics = proxy.metrics().await;
    for line in [
        "issettled_proxy_upstream_errors_total{code=\"UPSTREAM_UNREACHABLE\"} 2",
        "issettled_proxy_upstream_errors_total{code=\"UPSTREAM_TIMEOUT\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
}

#[tokio::test]
async fn an_upstream_that_never_answers_is_504_within_the_timeout() {
    let upstream = Faulty::spawn(Fault::Hang).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token")
        .set("UPSTREAM__REQUEST_TIMEOUT", "1s")
        .spawn()
        .await;
    let started = Instant::now();
    let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(status, 504);
    assert_eq!(body["code"], "UPSTREAM_TIMEOUT");
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
}

#[tokio::test]
async fn broken_upstream_exchanges_are_502_protocol_errors() {
    for fault in [Fault::GarbageStatus, Fault::CloseImmediately] {
        let upstream = Faulty::spawn(fault).await;
        let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
        let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
        assert_eq!(status, 502, "{fault:?}");
        assert_eq!(body["code"], "UPSTREAM_PROTOCOL_ERROR", "{fault:?}");
    }
}

#[tokio::test]
async fn a_huge_error_body_is_read_only_up_to_a_bound() {
    let upstream = Faulty::spawn(Fault::HugeErrorBody).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
    let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(status, 500);
    assert_schema(&body);
    assert!(body["long_message"].as_str().unwrap().len() < 4096);
}

#[tokio::test]
async fn tls_with_a_ca_file_works_and_an_untrusted_certificate_is_unreachable() {
    let pki = TestPki::generate();
    let upstream = Upstream::spawn_tls(SimConfig::default(), pki.server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let trusted = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__CA_FILE", &ca.display().to_string())
        .spawn()
        .await;
    let (status, _) = get_json(&trusted.url("/digital-accounts")).await;
    assert_eq!(status, 200);
    assert!(!upstream.sim.requests().is_empty());

    let untrusted = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    let (status, body) = get_json(&untrusted.url("/digital-accounts")).await;
    assert_eq!(status, 502);
    assert_eq!(body["code"], "UPSTREAM_UNREACHABLE");
}

#[tokio::test]
async fn a_reset_or_truncated_response_body_reaches_the_client_as_an_error_promptly() {
    for fault in [Fault::ResetMidBody, Fault::TruncatedChunked] {
        let upstream = Faulty::spawn(fault).await;
        let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
        let started = Instant::now();
        let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{fault:?}: the head was already on its way");
        let body = r.bytes().await;
        assert!(
            body.is_err(),
            "{fault:?}: a truncated body must not look complete: {body:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{fault:?}: {:?}",
            started.elapsed()
        );
        assert_eq!(upstream.count_path("/digital-accounts"), 1, "{fault:?}: not replayed");
    }
}

/// RFC 9112 §6.3: a response with both framings is read by its chunked framing, and a proxy passing it on must
/// drop the `Content-Length`, which would otherwise frame (and cut) the body it re-frames.
#[tokio::test]
async fn a_chunked_response_that_also_states_a_length_reaches_the_app_whole() {
    let upstream = Faulty::spawn(Fault::ChunkedWithLength).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers().get("content-length"), None);
    assert_eq!(r.bytes().await.unwrap(), "hello");
}

#[tokio::test]
async fn a_response_body_that_stalls_is_cut_at_the_request_timeout() {
    let upstream = Faulty::spawn(Fault::StallMidBody).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token")
        .set("UPSTREAM__REQUEST_TIMEOUT", "1s")
        .spawn()
        .await;
    let started = Instant::now();
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200, "the head was already on its way");
    let body = r.bytes().await;
    assert!(body.is_err(), "a stalled body must not look complete: {body:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_garbage_status_line_is_502_protocol_error() {
    let upstream = Faulty::spawn(Fault::GarbageStatus).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
    let r = client().post(proxy.url("/payments")).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 502);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "UPSTREAM_PROTOCOL_ERROR");
    assert_eq!(body["service_name"], "issettled-proxy");
    assert_eq!(
        upstream.count_path("/payments"),
        1,
        "a POST that may have arrived is not replayed"
    );
}

#[tokio::test]
async fn huge_and_trickled_error_bodies_are_read_to_a_bound_and_normalized_promptly() {
    let huge = Faulty::spawn(Fault::HugeErrorBody).await;
    let proxy = ProxyBuilder::new(&huge.url(), "opaque-token")
        .set("UPSTREAM__REQUEST_TIMEOUT", "5s")
        .spawn()
        .await;
    let started = Instant::now();
    let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(status, 500);
    assert_schema(&body);
    assert_eq!(body["code"], "HTTP_500");
    let long = body["long_message"].as_str().unwrap();
    assert!(
        long.starts_with("xxx") && long.len() <= 4 * 512,
        "a bounded excerpt: {} chars",
        long.len()
    );
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());

    let trickle = Faulty::spawn(Fault::TrickleErrorBody).await;
    let proxy = ProxyBuilder::new(&trickle.url(), "opaque-token")
        .set("UPSTREAM__REQUEST_TIMEOUT", "1s")
        .spawn()
        .await;
    let started = Instant::now();
    let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(2), "request_timeout + 1s: {elapsed:?}");
    assert!(status == 500 || status == 504, "{status}");
    assert_schema(&body);
    if status == 500 {
        assert_eq!(body["code"], "HTTP_500");
    } else {
        assert_eq!(body["code"], "UPSTREAM_TIMEOUT");
    }
}

/// A plain TCP server that answers anything, even a TLS ClientHello, with a line of garbage and closes.
async fn garbage_on_connect() -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nthis is not TLS\r\n\r\n").await;
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn tls_handshake_failures_and_dns_failures_are_502_unreachable_promptly() {
    let (addr, server) = garbage_on_connect().await;
    let not_tls = ProxyBuilder::new(&format!("https://localhost:{}", addr.port()), "opaque-token")
        .set("UPSTREAM__CONNECT_TIMEOUT", "2s")
        .spawn()
        .await;
    let pki = TestPki::generate();
    let untrusted_upstream = Upstream::spawn_tls(SimConfig::default(), pki.server.clone()).await;
    let untrusted = ProxyBuilder::new(&untrusted_upstream.url, "opaque-token")
        .set("UPSTREAM__CONNECT_TIMEOUT", "2s")
        .spawn()
        .await;
    let no_dns = ProxyBuilder::new("http://does-not-exist.invalid", "opaque-token")
        .set("UPSTREAM__CONNECT_TIMEOUT", "2s")
        .set("UPSTREAM__REQUEST_TIMEOUT", "3s")
        .spawn()
        .await;
    for (name, proxy) in [
        ("not TLS", &not_tls),
        ("untrusted certificate", &untrusted),
        ("DNS", &no_dns),
    ] {
        let started = Instant::now();
        let (status, body) = get_json(&proxy.url("/digital-accounts")).await;
        assert_eq!(status, 502, "{name}: {body}");
        assert_schema(&body);
        assert_eq!(body["code"], "UPSTREAM_UNREACHABLE", "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{name}: {:?}",
            started.elapsed()
        );
    }
    assert!(
        untrusted_upstream.sim.requests().is_empty(),
        "no request over an untrusted connection"
    );
    server.abort();
}
