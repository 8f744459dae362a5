//! Connections to the upstream: kept alive and reused, never one per request; a connection the upstream closed
//! while it was idle is not used again (no error reaches the app); concurrent requests each get a connection.

mod common;

use std::time::Duration;

use common::{client, keepalive::KeepAlive, ProxyBuilder, TestProxy};

/// A keep-alive upstream that closes connections idle for `idle_close`, and a proxy in front of it.
async fn proxied(idle_close: Duration) -> (KeepAlive, TestProxy) {
    let upstream = KeepAlive::spawn(idle_close).await;
    let proxy = ProxyBuilder::new(&upstream.url(), "opaque-token").spawn().await;
    (upstream, proxy)
}

#[tokio::test]
async fn sequential_requests_reuse_one_upstream_connection() {
    let (upstream, proxy) = proxied(Duration::from_secs(30)).await;
    let c = client();
    for n in 0..20 {
        let response = c.get(proxy.url(&format!("/ping?n={n}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
        assert_eq!(response.text().await.unwrap(), r#"{"ok":true}"#);
    }
    assert_eq!(upstream.requests_for("/ping"), 20);
    assert_eq!(upstream.connections_for("/ping"), 1);
}

#[tokio::test]
async fn a_connection_the_upstream_closed_while_idle_is_not_reused() {
    let (upstream, proxy) = proxied(Duration::from_millis(100)).await;
    let c = client();
    for n in 0..3 {
        let response = c.get(proxy.url(&format!("/ping?n={n}"))).send().await.unwrap();
        assert_eq!(response.status(), 200, "request {n}");
        // Long enough for the upstream to close the idle connection and the proxy to notice.
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    for n in 0..3 {
        let response = c
            .post(proxy.url(&format!("/pay?n={n}")))
            .body("{}")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST {n}");
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    assert_eq!(upstream.connections_for("/ping"), 3);
    assert_eq!(upstream.requests_for("/pay"), 3, "a POST was sent twice or not at all");
}

#[tokio::test]
async fn concurrent_requests_each_get_a_connection_and_then_share_them() {
    let (upstream, proxy) = proxied(Duration::from_secs(30)).await;
    let c = client();
    let burst = |tag: &'static str| {
        let requests: Vec<_> = (0..16)
            .map(|n| c.get(proxy.url(&format!("/{tag}?n={n}"))).send())
            .collect();
        futures_util::future::join_all(requests)
    };
    for response in burst("first").await {
        assert_eq!(response.unwrap().status(), 200);
    }
    let opened = upstream.connections_for("/first");
    assert!((1..=16).contains(&opened), "{opened} connections for 16 requests");
    for n in 0..16 {
        let response = c.get(proxy.url(&format!("/then?n={n}"))).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
    let first = upstream.connection_ids_for("/first");
    let then = upstream.connection_ids_for("/then");
    assert!(
        then.iter().all(|id| first.contains(id)),
        "sequential requests opened new connections: {then:?} beside {first:?}"
    );
}
