//! When the outbound proxy fails: down, refusing (407 with and without credentials, 403, 5xx), hanging up or
//! silent, each a 502 `UPSTREAM_UNREACHABLE` naming the proxy and what it did; a refresh through it is retried,
//! never taken for a revocation. And what never shows: the proxy's password and the token, at trace level, in
//! `check-config`, `/status` and `/metrics`.

use std::time::Duration;

use crate::support::{
    binary::{check_config, command, free_port, output, quote, tail, BinConfig},
    client,
    connect_proxy::{Answer, ConnectProxy},
    tls_upstream, wait_for, ProxyBuilder, TestProxy, Upstream,
};
use issettled_proxy::sim::SimConfig;

/// GET through `proxy`: the status, and the `long_message` of a 502 `UPSTREAM_UNREACHABLE` (empty otherwise).
async fn get(proxy: &TestProxy) -> (u16, String) {
    let r = client().get(proxy.url("/digital-accounts")).send().await.unwrap();
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    if status == 502 {
        assert_eq!(body["code"], "UPSTREAM_UNREACHABLE", "{body}");
        assert_eq!(body["service_name"], "issettled-proxy", "{body}");
    }
    (status, body["long_message"].as_str().unwrap_or_default().to_owned())
}

/// A GET through `proxy` is a 502 `UPSTREAM_UNREACHABLE` whose `long_message` says `says`.
async fn unreachable_saying(proxy: &TestProxy, says: &str) {
    let (status, message) = get(proxy).await;
    assert_eq!(status, 502, "{message}");
    assert!(message.contains(says), "expected `{says}` in: {message}");
}

/// The text of a GET (admin pages).
async fn text(url: &str) -> String {
    client().get(url).send().await.unwrap().text().await.unwrap()
}

/// A proxy builder for `upstream` trusting the CA in `dir` (as `tls_upstream` makes one), for a second proxy.
fn tls_builder(upstream: &Upstream, dir: &tempfile::TempDir) -> ProxyBuilder {
    ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__CA_FILE", &dir.path().join("ca.pem").display().to_string())
}

#[tokio::test]
async fn a_proxy_that_is_down_is_a_502_naming_it() {
    let (upstream, builder, _dir) = tls_upstream(SimConfig::default()).await;
    let down = format!("http://127.0.0.1:{}", free_port());
    let proxy = builder.set("UPSTREAM__PROXY", &down).spawn().await;
    unreachable_saying(&proxy, &format!("cannot connect to the outbound proxy {down}")).await;
    assert!(upstream.sim.requests().is_empty());
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_refusing_proxy_is_a_502_saying_what_it_answered_and_what_to_do() {
    let (upstream, builder, dir) = tls_upstream(SimConfig::default()).await;
    let outbound = ConnectProxy::spawn().await;
    outbound.require("alice", "right");
    let auth_file = dir.path().join("proxy-auth");
    std::fs::write(&auth_file, "alice:wrong\n").unwrap();
    let url = outbound.url();

    // No credentials at all.
    let proxy = builder.set("UPSTREAM__PROXY", &url).spawn().await;
    let (_, message) = get(&proxy).await;
    assert!(
        message.ends_with(&format!(
            "the outbound proxy {url} answered 407 Proxy Authentication Required: set upstream.proxy_auth_file"
        )),
        "{message}"
    );
    proxy.stop().await.unwrap();

    // Credentials the proxy refuses, then the file corrected: read again on the next tunnel, no restart.
    let proxy = tls_builder(&upstream, &dir)
        .set("UPSTREAM__PROXY", &url)
        .set("UPSTREAM__PROXY_AUTH_FILE", &auth_file.display().to_string())
        .spawn()
        .await;
    let refused =
        "answered 407 Proxy Authentication Required: the proxy refused the credentials; check upstream.proxy_auth_file";
    unreachable_saying(&proxy, refused).await;
    for (answer, says) in [
        (
            Answer::Refuse(403, "Forbidden"),
            "answered 403 Forbidden: the proxy does not allow a tunnel to localhost:",
        ),
        (
            Answer::Refuse(503, "Service Unavailable"),
            "answered 503 Service Unavailable: the proxy could not reach localhost:",
        ),
        (Answer::HangUp, "closed the connection before answering CONNECT"),
    ] {
        outbound.answer(answer);
        unreachable_saying(&proxy, &format!("the outbound proxy {url} {says}")).await;
    }
    outbound.answer(Answer::Tunnel);
    let fixed = dir.path().join("proxy-auth.new");
    std::fs::write(&fixed, "alice:right\n").unwrap();
    std::fs::rename(&fixed, &auth_file).unwrap();
    assert_eq!(get(&proxy).await.0, 200);
    let last = outbound.heads().pop().unwrap();
    assert!(last.contains("Proxy-Authorization: Basic "), "{last}");
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_certificate_the_tunnel_shows_that_ca_file_does_not_trust_is_a_502_naming_the_proxy() {
    // What a TLS-inspecting proxy whose CA is not in ca_file looks like: the tunnel stands, TLS inside fails.
    let (upstream, _builder, _dir) = tls_upstream(SimConfig::default()).await;
    let outbound = ConnectProxy::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__PROXY", &outbound.url())
        .spawn()
        .await;
    let says = format!(
        "TLS with the upstream through the outbound proxy {} failed: invalid peer certificate",
        outbound.url()
    );
    unreachable_saying(&proxy, &says).await;
    assert!(upstream.sim.requests().is_empty());
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_proxy_that_never_answers_connect_is_given_up_after_the_connect_timeout() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent_url = format!("http://{}", silent.local_addr().unwrap());
    let (upstream, builder, _dir) = tls_upstream(SimConfig::default()).await;
    let proxy = builder
        .set("UPSTREAM__PROXY", &silent_url)
        .set("UPSTREAM__CONNECT_TIMEOUT", "300ms")
        .spawn()
        .await;
    let says = format!("the outbound proxy {silent_url} did not answer CONNECT within upstream.connect_timeout");
    unreachable_saying(&proxy, &says).await;
    assert!(upstream.sim.requests().is_empty());
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn a_refresh_through_a_failing_proxy_is_retried_and_the_token_not_revoked() {
    let (upstream, builder, _dir) = tls_upstream(SimConfig::default()).await;
    let outbound = ConnectProxy::spawn().await;
    outbound.answer(Answer::Refuse(407, "Proxy Authentication Required"));
    let proxy = builder
        .set("UPSTREAM__PROXY", &outbound.url())
        .set("TOKEN__REFRESH_INTERVAL", "1s")
        .spawn()
        .await;
    // The start-up refresh and its retries fail at the proxy: transient, with backoff, the token still usable.
    // Read between two attempts: while one is in flight (every 250 ms at least) the state reads `refreshing`.
    let retried = wait_for(|| async {
        let s = proxy.status().await;
        s["token"]["consecutive_failures"].as_u64() >= Some(2) && s["token"]["state"] == "valid"
    })
    .await;
    let status = proxy.status().await;
    assert!(retried, "no retry, or the token not valid between them: {status}");
    let error = status["token"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("through the outbound proxy {}", outbound.url())),
        "{error}"
    );
    assert!(status["token"]["next_refresh_at"].is_string(), "{status}");
    assert_eq!(crate::support::readyz(&proxy).await, 200);
    assert!(upstream.sim.refresh_calls().is_empty());
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("issettled_proxy_token_refresh_total{result=\"transient_error\"}"),
        "{metrics}"
    );
    assert!(!metrics.contains("result=\"revoked\"} 1"), "{metrics}");

    // The proxy lets it through again: the next retry succeeds.
    outbound.answer(Answer::Tunnel);
    proxy.startup_refresh_done().await;
    assert_eq!(proxy.status().await["token"]["consecutive_failures"], 0);
    proxy.stop().await.unwrap();
}

#[tokio::test]
async fn neither_the_proxy_password_nor_the_token_shows_in_trace_logs_check_config_status_or_metrics() {
    let (upstream, _builder, dir) = tls_upstream(SimConfig::default()).await;
    let outbound = ConnectProxy::spawn().await;
    // The variable's password is overridden by the file's, which the proxy requires: both are secrets.
    let (url_password, file_password) = ("url-pw-3e9d1c", "file-pw-8b2f4a");
    outbound.require("alice", file_password);
    let auth_file = dir.path().join("proxy-auth");
    std::fs::write(&auth_file, format!("alice:{file_password}\n")).unwrap();
    let https_proxy = format!("http://alice:{url_password}@{}", outbound.addr);
    let first = upstream.token();
    let cfg = BinConfig::new(&upstream.url)
        .set(
            "upstream",
            "ca_file",
            &quote(&dir.path().join("ca.pem").display().to_string()),
        )
        .set("upstream", "proxy_auth_file", &quote(&auth_file.display().to_string()))
        .env("HTTPS_PROXY", &https_proxy)
        .env("RUST_LOG", "trace");
    cfg.write_token(&first);
    let mut running = cfg.start_ready().await;
    let c = client();
    assert!(
        wait_for(|| async { !upstream.sim.refresh_calls().is_empty() }).await,
        "no start-up refresh"
    );
    assert_eq!(c.get(cfg.url("/digital-accounts")).send().await.unwrap().status(), 200);
    let r = c
        .post(cfg.url("/echo"))
        .body("{\"amount\":\"1.00\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(c.post(cfg.admin_url("/refresh")).send().await.unwrap().status(), 200);
    let status = text(&cfg.admin_url("/status")).await;
    let metrics = text(&cfg.admin_url("/metrics")).await;
    assert!(
        status.contains(&format!("\"upstream_proxy\":\"{}\"", outbound.url())),
        "{status}"
    );

    let mut check = command();
    check
        .arg("check-config")
        .arg("--config")
        .arg(cfg.write())
        .env("HTTPS_PROXY", &https_proxy);
    let checked = output(check, Duration::from_secs(10)).await;
    let checked = format!(
        "{}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    assert!(
        checked.contains(&format!(
            "# upstream.proxy: through {} (from HTTPS_PROXY); credentials from upstream.proxy_auth_file",
            outbound.url()
        )),
        "{checked}"
    );

    running.term();
    let exit = running.wait(Duration::from_secs(15)).await;
    assert_eq!(exit.code(), Some(0), "{}", tail(&running.stderr()));
    let logs = format!("{}{}", running.stdout(), running.stderr());
    assert!(logs.lines().count() > 50, "too few trace lines:\n{}", tail(&logs));
    assert!(
        logs.contains("\"egress\""),
        "no egress decision logged:\n{}",
        tail(&logs)
    );

    use base64::Engine as _;
    let mut secrets = vec![url_password.to_owned(), file_password.to_owned()];
    for password in [url_password, file_password] {
        secrets.push(base64::engine::general_purpose::STANDARD.encode(format!("alice:{password}")));
    }
    secrets.extend(upstream.sim.issued_tokens());
    for (place, text) in [
        ("logs", &logs),
        ("check-config", &checked),
        ("/status", &status),
        ("/metrics", &metrics),
    ] {
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in {place}:\n{}", tail(text));
        }
    }
}

#[tokio::test]
async fn check_config_shows_the_decision_and_why_and_refuses_what_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = |proxy: &str, extra: &str| {
        format!(
            "[upstream]\nbase_url = \"https://api.issettled.example\"\nproxy = {}\n{extra}[token]\nfile = \"/nonexistent/token\"\n",
            quote(proxy)
        )
    };

    let (code, stdout, stderr) = check_config(&file("http://bob:key-s3cret@proxy.corp:3128", ""), &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("# upstream.proxy: through http://proxy.corp:3128 (from upstream.proxy); credentials from the proxy URL (redacted)"), "{stdout}");
    assert!(
        stdout.contains("proxy = \"http://<redacted>@proxy.corp:3128\""),
        "{stdout}"
    );
    assert!(!stdout.contains("key-s3cret") && !stdout.contains("bob"), "{stdout}");

    let vars = [("HTTPS_PROXY", "http://proxy.corp"), ("NO_PROXY", ".issettled.example")];
    let (code, stdout, _) = check_config(&file("", ""), &vars).await;
    assert_eq!(code, Some(0));
    assert!(stdout.contains("# upstream.proxy: direct (NO_PROXY entry `.issettled.example` covers the upstream host; the proxy from HTTPS_PROXY is not used)"), "{stdout}");

    let (code, stdout, _) = check_config(&file("none", ""), &[("HTTPS_PROXY", "http://proxy.corp")]).await;
    assert_eq!(code, Some(0));
    assert!(
        stdout.contains("# upstream.proxy: direct (upstream.proxy is \"none\")"),
        "{stdout}"
    );

    let (code, _, stderr) = check_config(&file("socks5://proxy.corp:1080", ""), &[]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("upstream.proxy: a socks5:// (SOCKS) proxy is not supported"),
        "{stderr}"
    );
    let (code, _, stderr) = check_config(&file("", ""), &[("ALL_PROXY", "https://proxy.corp")]).await;
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("upstream.proxy: \"\" reads ALL_PROXY, which cannot be used: an https:// proxy"),
        "{stderr}"
    );

    let missing = dir.path().join("missing");
    let extra = format!("proxy_auth_file = {}\n", quote(&missing.display().to_string()));
    let (code, _, stderr) = check_config(&file("http://proxy.corp:3128", &extra), &[]).await;
    assert_eq!(code, Some(2));
    assert!(stderr.contains("upstream.proxy_auth_file: cannot read"), "{stderr}");
}

#[tokio::test]
async fn a_plain_http_upstream_says_once_at_start_that_the_proxy_is_not_used() {
    let upstream = Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url).env("HTTPS_PROXY", "http://127.0.0.1:9");
    cfg.write_token(&upstream.token());
    let mut running = cfg.start_ready().await;
    assert_eq!(
        client()
            .get(cfg.url("/digital-accounts"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    running.term();
    running.wait(Duration::from_secs(15)).await;
    let said: Vec<_> = running
        .stdout()
        .lines()
        .filter(|l| l.contains("never sent through a proxy"))
        .map(str::to_owned)
        .collect();
    assert_eq!(said.len(), 1, "{}", tail(&running.stdout()));
    assert!(said[0].contains("HTTPS_PROXY is not used"), "{}", said[0]);
}
