//! Reaching IsSettled through the bank's outbound proxy: every call (API and refresh) through a `CONNECT`
//! tunnel with TLS end to end inside it, so the proxy reads no secret; `NO_PROXY`, `"none"` and plain `http://`
//! go direct; pooled tunnels are reused; and the same against a real tinyproxy, with and without Basic auth.

use std::sync::Arc;

use crate::support::{
    client,
    connect_proxy::ConnectProxy,
    tinyproxy::Tinyproxy,
    tls::{ServeOptions, TestPki},
    tls_upstream, ProxyBuilder, TestProxy, Upstream,
};
use issettled_proxy::sim::SimConfig;

/// The simulated IsSettled over TLS (test CA), the in-process `CONNECT` proxy, and a proxy builder that trusts
/// the CA and names the outbound proxy in `upstream.proxy`. Keep the directory: it holds the CA file.
async fn behind_a_proxy() -> (Upstream, ConnectProxy, ProxyBuilder, tempfile::TempDir) {
    let (upstream, builder, dir) = tls_upstream(SimConfig::default()).await;
    let outbound = ConnectProxy::spawn().await;
    let builder = builder.set("UPSTREAM__PROXY", &outbound.url());
    (upstream, outbound, builder, dir)
}

/// Whether `haystack` holds `needle`, ignoring ASCII case.
fn contains_ignoring_case(haystack: &[u8], needle: &str) -> bool {
    let haystack = haystack.to_ascii_lowercase();
    let needle = needle.to_ascii_lowercase().into_bytes();
    haystack.windows(needle.len()).any(|w| w == needle.as_slice())
}

/// The port the TLS upstream listens on.
fn port_of(url: &str) -> u16 {
    url.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap()
}

#[tokio::test]
async fn api_calls_and_refreshes_go_through_the_tunnel_and_the_proxy_reads_no_secret() {
    let (upstream, outbound, builder, _dir) = behind_a_proxy().await;
    let proxy = builder.spawn().await;
    proxy.startup_refresh_done().await;
    let c = client();

    let r = c.get(proxy.url("/digital-accounts?limit=2")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A 5 MiB body streamed by the app (chunks, no length known up front) through the tunnel.
    let chunks = (0..20).map(|i| Ok::<_, std::io::Error>(vec![b'a' + (i % 26) as u8; 256 * 1024]));
    let body = reqwest::Body::wrap_stream(futures_util::stream::iter(chunks));
    let r = c.post(proxy.url("/upload")).body(body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let received: serde_json::Value = r.json().await.unwrap();
    assert_eq!(received["received"], 5 * 1024 * 1024);

    let r = c.delete(proxy.url("/payments/7")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // A refresh on demand, also through the tunnel.
    let refreshes = upstream.sim.refresh_calls().len();
    let r = c.post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(upstream.sim.refresh_calls().len() > refreshes);
    assert_eq!(proxy.status().await["upstream_proxy"], outbound.url());

    // Every connection the upstream accepted came through the proxy; the proxy saw only CONNECT heads (with
    // nothing but Host) and TLS records.
    let tunnels = outbound.connects();
    assert!(
        tunnels >= 2,
        "the API pool and the refresh client each tunnel: {tunnels}"
    );
    assert_eq!(upstream.connections.load(std::sync::atomic::Ordering::SeqCst), tunnels);
    let target = format!("localhost:{}", port_of(&upstream.url));
    for head in outbound.heads() {
        assert_eq!(head, format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n"));
    }
    let read = outbound.everything_read();
    assert!(read.len() > 5 * 1024 * 1024, "the upload went through the tunnel");
    for secret in ["authorization", "bearer", "/digital-accounts", "/oauth-token/refresh"] {
        assert!(!contains_ignoring_case(&read, secret), "the proxy read `{secret}`");
    }
    for token in upstream.sim.issued_tokens() {
        assert!(!contains_ignoring_case(&read, &token), "the proxy read a token");
    }
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn no_proxy_covering_the_upstream_none_and_plain_http_go_direct() {
    let outbound = ConnectProxy::spawn().await;
    let (upstream, _builder, dir) = tls_upstream(SimConfig::default()).await;
    let ca = dir.path().join("ca.pem").display().to_string();
    let outbound_url = outbound.url();
    let ip_url = upstream.url.replace("localhost", "127.0.0.1");
    let cases = [
        ("exact host name", &upstream.url, "", vec![("NO_PROXY", "localhost")]),
        (
            "a domain with its leading dot",
            &upstream.url,
            "",
            vec![("no_proxy", "example.com, .localhost")],
        ),
        ("CIDR", &ip_url, "", vec![("NO_PROXY", "10.0.0.0/8,127.0.0.0/8")]),
        ("*", &ip_url, "", vec![("NO_PROXY", "*")]),
        (
            "the key with NO_PROXY",
            &upstream.url,
            "KEY",
            vec![("NO_PROXY", "localhost")],
        ),
        ("\"none\"", &upstream.url, "none", vec![]),
    ];
    for (case, url, key, mut vars) in cases {
        vars.push(("HTTPS_PROXY", &outbound_url));
        vars.push(("ALL_PROXY", &outbound_url));
        let key = if key == "KEY" { outbound.url() } else { key.to_owned() };
        let mut builder = ProxyBuilder::new(url, &upstream.token())
            .set("UPSTREAM__CA_FILE", &ca)
            .set("UPSTREAM__PROXY", &key);
        for (name, value) in vars {
            builder = builder.var(name, value);
        }
        let proxy = builder.spawn().await;
        let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{case}");
        assert_eq!(
            proxy.status().await["upstream_proxy"],
            serde_json::Value::Null,
            "{case}"
        );
        assert_eq!(outbound.connects(), 0, "{case}: the proxy was used");
        proxy.stop().await.unwrap();
    }

    // A plain http:// upstream is never proxied, whatever names a proxy.
    let plain = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&plain.url, &plain.token())
        .set("UPSTREAM__PROXY", &outbound.url())
        .var("HTTPS_PROXY", &outbound.url())
        .var("HTTP_PROXY", &outbound.url())
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(proxy.status().await["upstream_proxy"], serde_json::Value::Null);
    assert_eq!(outbound.connects(), 0);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn the_proxy_variables_are_read_from_the_environment_when_the_key_is_blank() {
    let (upstream, _builder, dir) = tls_upstream(SimConfig::default()).await;
    let outbound = ConnectProxy::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__CA_FILE", &dir.path().join("ca.pem").display().to_string())
        .var("https_proxy", &outbound.url())
        .var("NO_PROXY", "other.example")
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(outbound.connects() >= 2, "API and refresh through the proxy");
    assert_eq!(proxy.status().await["upstream_proxy"], outbound.url());
    proxy.stop().await.unwrap();
}

/// `count` GETs, `parallel` at a time, each worker on its own keep-alive connection to the proxy port.
async fn burst(proxy: &TestProxy, count: usize, parallel: usize) {
    let workers: Vec<_> = (0..parallel)
        .map(|_| {
            let url = proxy.url("/digital-accounts/DA-1001");
            tokio::spawn(async move {
                let c = client();
                for _ in 0..count / parallel {
                    let r = c.get(&url).send().await.unwrap();
                    assert_eq!(r.status(), 200);
                    r.bytes().await.unwrap();
                }
            })
        })
        .collect();
    for w in workers {
        w.await.unwrap();
    }
}

#[tokio::test]
async fn a_keep_alive_burst_opens_no_more_tunnels_than_the_pool_holds() {
    // HTTP/2 by ALPN: one shared connection, so one tunnel, for a first request and 200 more 8 at a time.
    let (_upstream, outbound, builder, _dir) = behind_a_proxy().await;
    let proxy = builder.spawn().await;
    proxy.startup_refresh_done().await;
    let before = outbound.connects();
    burst(&proxy, 1, 1).await;
    burst(&proxy, 200, 8).await;
    let opened = outbound.connects() - before;
    assert_eq!(opened, 1, "HTTP/2: {opened} tunnels for 201 requests");
    proxy.stop().await.unwrap();

    // HTTP/1.1 only: a pooled connection per request in flight, so at most 8 tunnels; 200 one after another: 1.
    let pki = TestPki::generate();
    let mut server = (*pki.server).clone();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    let upstream = Upstream::spawn_tls_with(SimConfig::default(), Arc::new(server), ServeOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let outbound = ConnectProxy::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__CA_FILE", &ca.display().to_string())
        .set("UPSTREAM__PROXY", &outbound.url())
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let before = outbound.connects();
    burst(&proxy, 200, 8).await;
    let opened = outbound.connects() - before;
    assert!(
        (1..=8).contains(&opened),
        "HTTP/1.1, 8 at a time: {opened} tunnels for 200 requests"
    );
    let before = outbound.connects();
    burst(&proxy, 200, 1).await;
    assert_eq!(
        outbound.connects() - before,
        0,
        "one after another: the pooled tunnels are reused"
    );
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_real_forward_proxy_carries_api_calls_and_refreshes_with_and_without_basic_auth() {
    for credentials in [None, Some(("alice", "tiny-s3cret"))] {
        let Some(tinyproxy) = Tinyproxy::start(credentials).await else {
            return;
        };
        let (upstream, builder, dir) = tls_upstream(SimConfig::default()).await;
        let mut builder = builder.set("UPSTREAM__PROXY", &tinyproxy.url());
        if let Some((user, password)) = credentials {
            let file = dir.path().join("proxy-auth");
            std::fs::write(&file, format!("{user}:{password}\n")).unwrap();
            builder = builder.set("UPSTREAM__PROXY_AUTH_FILE", &file.display().to_string());
        }
        let proxy = builder.spawn().await;
        proxy.startup_refresh_done().await;
        let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{credentials:?}");
        let refreshes = upstream.sim.refresh_calls().len();
        let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{credentials:?}: {}", r.text().await.unwrap());
        assert!(upstream.sim.refresh_calls().len() > refreshes);
        proxy.stop().await.unwrap();

        if credentials.is_some() {
            // Without the credentials, tinyproxy's 407 comes back as the contract's 502, saying what to set.
            let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
                .set("UPSTREAM__CA_FILE", &dir.path().join("ca.pem").display().to_string())
                .set("UPSTREAM__PROXY", &tinyproxy.url())
                .spawn()
                .await;
            let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
            assert_eq!(r.status(), 502);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "UPSTREAM_UNREACHABLE");
            let message = body["long_message"].as_str().unwrap();
            assert!(
                message.contains(&format!("the outbound proxy {} answered 407", tinyproxy.url()))
                    && message.contains("set upstream.proxy_auth_file"),
                "{message}"
            );
            proxy.stop().await.unwrap();
        }
    }
}

#[tokio::test]
async fn mutual_tls_runs_end_to_end_inside_the_tunnel() {
    let (pki, client_cert, client_key) = TestPki::requiring_clients();
    let upstream = Upstream::spawn_tls(SimConfig::default(), pki.server.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let outbound = ConnectProxy::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__CA_FILE", &file("ca.pem", &pki.ca_pem))
        .set("UPSTREAM__CLIENT_CERT_FILE", &file("client.pem", &client_cert))
        .set("UPSTREAM__CLIENT_KEY_FILE", &file("client.key", &client_key))
        .set("UPSTREAM__PROXY", &outbound.url())
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let tunnels = outbound.connects();
    assert!(tunnels >= 2, "API and refresh through the proxy: {tunnels}");
    assert_eq!(upstream.connections.load(std::sync::atomic::Ordering::SeqCst), tunnels);
    assert!(!contains_ignoring_case(
        &outbound.everything_read(),
        "/digital-accounts"
    ));
    proxy.stop().await.unwrap();
}
