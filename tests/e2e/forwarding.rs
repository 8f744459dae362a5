//! Forwarding end to end: methods, paths and bodies intact, the token injected, streaming, hop-by-hop headers,
//! the one upstream only, redirects passed back, request ids, trailers.

use std::time::Duration;

use crate::support::{bearer, client, raw, raw_json, raw_status, ProxyBuilder, Upstream};
use issettled_proxy::sim::SimConfig;

#[tokio::test]
async fn methods_paths_queries_and_bodies_arrive_intact_with_the_proxy_token() {
    let upstream = Upstream::spawn_with(SimConfig {
        prefix: "/api/v1".into(),
        ..SimConfig::default()
    })
    .await;
    let token = upstream.token();
    let proxy = ProxyBuilder::new(&upstream.url, &token).spawn().await;
    let c = client();

    let r = c
        .get(proxy.url("/echo/a/b?x=1&y=%20z"))
        .header("authorization", "Bearer app-token")
        .header("proxy-authorization", "Basic app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c
        .post(proxy.url("/echo/pay?k=v"))
        .body(r#"{"amount":"1.00"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = c.delete(proxy.url("/echo/payments/7")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].method, http::Method::GET);
    assert_eq!(seen[0].path_and_query, "/api/v1/echo/a/b?x=1&y=%20z");
    assert_eq!(seen[1].method, http::Method::POST);
    assert_eq!(seen[1].path_and_query, "/api/v1/echo/pay?k=v");
    assert_eq!(&seen[1].body[..], br#"{"amount":"1.00"}"#);
    assert_eq!(seen[2].method, http::Method::DELETE);
    assert_eq!(seen[2].path_and_query, "/api/v1/echo/payments/7");
    let issued = upstream.sim.issued_tokens();
    for r in &seen {
        let used = bearer(&r.headers).unwrap();
        assert!(
            issued.contains(&used),
            "a token the upstream issued (the start-up refresh may have replaced it)"
        );
        assert_ne!(used, "app-token");
        assert_eq!(r.headers.get_all("authorization").iter().count(), 1);
        assert!(r.headers.get("proxy-authorization").is_none());
        assert!(r.token_valid);
    }
}

#[tokio::test]
async fn a_5_mib_post_streams_through_before_the_app_finishes_sending() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    let mut progress = upstream.sim.upload_progress();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(4);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let send = tokio::spawn(
        client()
            .post(proxy.url("/upload"))
            .header("content-length", (5 * 1024 * 1024).to_string())
            .body(body)
            .send(),
    );
    // First half: the upstream must see bytes while the second half has not been sent yet.
    for _ in 0..10 {
        tx.send(Ok(vec![b'a'; 256 * 1024])).await.unwrap();
    }
    // (The watch guard is dropped at once: holding it would block the upstream's next update.)
    let saw_bytes = tokio::time::timeout(Duration::from_secs(10), progress.wait_for(|n| *n > 0))
        .await
        .is_ok_and(|r| r.is_ok());
    assert!(
        saw_bytes,
        "the upstream received nothing while the app was still sending"
    );
    for _ in 0..10 {
        tx.send(Ok(vec![b'b'; 256 * 1024])).await.unwrap();
    }
    drop(tx);
    let r = send.await.unwrap().unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["received"], 5 * 1024 * 1024);
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    let response = raw(
        proxy.addr,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close, X-Named-Hop\r\nX-Named-Hop: secret\r\n\
          Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Kept: yes\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 200, "{response}");
    let seen = &upstream.sim.requests()[0].headers;
    for h in [
        "x-named-hop",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "trailer",
    ] {
        assert!(seen.get(h).is_none(), "{h} reached the upstream");
    }
    assert_eq!(seen["x-kept"], "yes");

    let r = client().get(proxy.url("/hop")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for h in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(r.headers().get(h).is_none(), "{h} reached the app");
    }
    assert_eq!(r.headers()["x-normal"], "kept");
}

#[tokio::test]
async fn only_the_configured_upstream_is_contacted_and_browser_requests_are_refused() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    // Absolute-form: the destination stays the configured upstream.
    let r = raw(
        proxy.addr,
        b"GET http://evil.example/echo/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&r), 200, "{r}");
    assert_eq!(upstream.sim.requests().last().unwrap().path_and_query, "/echo/x");
    // Host and Origin a browser could be tricked into sending.
    let before = upstream.sim.requests().len();
    let r = raw(
        proxy.addr,
        b"GET /echo HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&r), 403);
    assert_eq!(raw_json(&r)["code"], "HOST_NOT_ALLOWED");
    let r = raw(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nOrigin: https://evil.example\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&r), 403);
    assert_eq!(raw_json(&r)["code"], "ORIGIN_NOT_ALLOWED");
    assert_eq!(upstream.sim.requests().len(), before, "nothing sent upstream");
    // Ordinary local names work, with a port.
    for host in ["localhost:8080", "127.0.0.1:8080"] {
        let req = format!("GET /echo HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        assert_eq!(raw_status(&raw(proxy.addr, req.as_bytes()).await), 200, "{host}");
    }
    // `//evil.example/x` is refused, never joined into another host.
    let r = raw(
        proxy.addr,
        b"GET //evil.example/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&r), 400);
    assert_eq!(raw_json(&r)["code"], "BAD_REQUEST");
}

#[tokio::test]
async fn redirects_are_passed_back_not_followed() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    let r = client().get(proxy.url("/redirect")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        "https://elsewhere.example/landing?from=issettled"
    );
    assert_eq!(upstream.sim.requests().len(), 1);
}

#[tokio::test]
async fn request_ids_are_kept_or_minted_and_sent_both_ways() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    let r = client()
        .get(proxy.url("/echo"))
        .header("x-request-id", "app-42")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-request-id"], "app-42");
    let r = client()
        .get(proxy.url("/echo"))
        .header("x-request-id", "bad id!")
        .send()
        .await
        .unwrap();
    let minted = r.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_ne!(minted, "bad id!");
    let seen = upstream.sim.requests();
    assert_eq!(seen[0].headers["x-request-id"], "app-42");
    assert_eq!(seen[1].headers["x-request-id"], minted.as_str());
}

#[tokio::test]
async fn inbound_authorization_can_be_rejected() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__INBOUND_AUTHORIZATION", "reject")
        .spawn()
        .await;
    let r = client()
        .get(proxy.url("/echo"))
        .header("authorization", "Bearer app")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "BAD_REQUEST");
    assert!(upstream.sim.requests().is_empty());
}

#[tokio::test]
async fn request_trailers_never_reach_an_http2_upstream() {
    let (upstream, builder, _ca) = crate::support::tls_upstream(SimConfig::default()).await;
    let proxy = builder.spawn().await;
    let response = raw(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTE: trailers\r\n\
          Trailer: Authorization, X-Trailer\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n0\r\nAuthorization: Bearer app-token\r\nX-Trailer: t\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 200, "{response}");
    let seen = upstream.sim.requests().pop().unwrap();
    assert_eq!(
        seen.version,
        http::Version::HTTP_2,
        "the upstream leg must be HTTP/2 for this test"
    );
    assert_eq!(&seen.body[..], b"hello");
    assert!(
        seen.trailers.is_empty(),
        "trailers reached the upstream: {:?}",
        seen.trailers
    );
    assert!(bearer(&seen.headers).is_some_and(|t| t != "app-token"));
}
