//! What the logs say and what logging may cost, on the real binary: refresh trouble visible at `warn` up to the
//! moment requests fail, a filter that would silence the proxy refused as a configuration error, and a stalled
//! stdout that never stalls the proxy.

use std::time::Duration;

use futures_util::future::join_all;

use crate::support::{
    binary::{check_config, command, tail, BinConfig},
    client, get_text, metric_sum, wait_for, Upstream,
};

/// The JSON log lines of `stdout` (other lines skipped).
fn json_lines(stdout: &str) -> Vec<serde_json::Value> {
    stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// With `upstream.base_url` unreachable for longer than `token.revoke_after`, the log at `warn` shows every failed
/// refresh as a warning, then once, at ERROR, the moment requests start to fail, with what to do.
#[tokio::test]
async fn an_unreachable_upstream_shows_at_warn_until_requests_fail() {
    let closed = format!("127.0.0.1:{}", crate::support::binary::free_port());
    let cfg = BinConfig::new(&format!("http://{closed}"))
        .set("log", "level", "\"warn\"")
        .set("token", "refresh_interval", "\"1s\"")
        .set("token", "revoke_after", "\"3s\"");
    cfg.write_token("an-opaque-token");
    // Up, not ready: the token is usable only until its 3 s revoke deadline, which a slow start could pass
    // before a readiness check saw it.
    let mut running = cfg.start();
    running.wait_ready(&cfg.admin_url("/healthz")).await;
    let c = client();
    let failing = wait_for(|| async {
        let r = c.get(cfg.url("/digital-accounts")).send().await;
        r.is_ok_and(|r| r.status() == 503)
    })
    .await;
    assert!(failing, "requests never failed:\n{}", tail(&running.stdout()));
    // Past the deadline for a while: the error is not repeated.
    tokio::time::sleep(Duration::from_secs(2)).await;
    running.term();
    assert_eq!(running.wait(Duration::from_secs(10)).await.code(), Some(0));

    let stdout = running.stdout();
    let lines = json_lines(&stdout);
    let at = |level: &str, event: &str| -> Vec<usize> {
        (0..lines.len())
            .filter(|i| lines[*i]["level"] == level && lines[*i]["event"] == event)
            .collect()
    };
    let warnings = at("WARN", "token_refresh");
    let errors = at("ERROR", "token_unusable");
    assert!(warnings.len() >= 2, "failed refreshes not at warn:\n{stdout}");
    assert!(
        lines[warnings[0]]["error"].as_str().is_some_and(|e| !e.is_empty()),
        "{stdout}"
    );
    assert_eq!(errors.len(), 1, "the moment requests fail, once:\n{stdout}");
    assert!(warnings[0] < errors[0], "{stdout}");
    let message = lines[errors[0]]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("503 TOKEN_UNAVAILABLE")
            && message.contains("revoke deadline")
            && message.contains("upstream.base_url"),
        "{message}"
    );
    assert!(!stdout.contains("an-opaque-token"), "{stdout}");
    assert!(lines.iter().all(|l| l["level"] != "INFO"), "{stdout}");
}

/// `log.level = "warning"` (or `"verbose"`, or such a `RUST_LOG`) would make the filter match one target of that
/// name and the proxy log nothing: `check-config` and `run` both refuse it, naming where it came from.
#[tokio::test]
async fn a_level_that_is_not_a_level_is_refused_by_check_config_and_run() {
    let upstream = "http://127.0.0.1:9";
    /// The key named, `log.level`, and the child's environment.
    type Case<'a> = (&'a str, &'a str, &'a [(&'a str, &'a str)]);
    let cases: [Case<'_>; 4] = [
        ("log.level", "warning", &[]),
        ("log.level", "verbose", &[]),
        ("log.level", "info,hyper=loud", &[]),
        ("RUST_LOG", "info", &[("RUST_LOG", "verbose")]),
    ];
    for (key, level, env) in cases {
        let mut cfg = BinConfig::new(upstream).set("log", "level", &format!("{level:?}"));
        for (k, v) in env {
            cfg = cfg.env(k, v);
        }
        let (code, _, stderr) = check_config(&cfg.toml(), env).await;
        assert_eq!(code, Some(2), "check-config with {key} {level} {env:?}: {stderr}");
        assert!(stderr.contains(&format!("{key}: ")), "{stderr}");

        let mut running = cfg.start();
        let status = running.wait(Duration::from_secs(10)).await;
        assert_eq!(
            status.code(),
            Some(2),
            "run with {key} {level} {env:?}: {}",
            running.stderr()
        );
        assert!(running.stderr().contains(&format!("{key}: ")), "{}", running.stderr());
    }
    // A level with target directives is fine.
    let cfg = BinConfig::new(upstream).set("log", "level", "\"warn,issettled_proxy=debug\"");
    let (code, _, stderr) = check_config(&cfg.toml(), &[("RUST_LOG", "info")]).await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// The proxy's stdout is a pipe nobody reads (a stalled log shipper): once the pipe and the log queue are full,
/// lines are dropped and counted, and requests and `/healthz` are answered as before.
#[tokio::test]
async fn a_stalled_stdout_never_stops_requests_or_healthz() {
    /// Far more lines than the pipe and the queue hold together (one line per request).
    const MOST: usize = 40_000;
    const AT_ONCE: usize = 64;
    let upstream = Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url);
    cfg.write_token(&upstream.token());
    let path = cfg.write();
    let mut cmd = command();
    cmd.arg("run").arg("--config").arg(&path);
    let mut child = cmd.spawn().unwrap();
    // Held open, never read.
    let _stdout = child.stdout.take();
    let _stderr = child.stderr.take();
    let c = client();
    let ready = wait_for(|| async {
        let r = c.get(cfg.admin_url("/readyz")).send().await;
        r.is_ok_and(|r| r.status() == 200)
    })
    .await;
    assert!(ready, "not ready");

    let dropped = || async {
        let text = get_text(&cfg.admin_url("/metrics")).await;
        Some(metric_sum(&text, "issettled_proxy_log_lines_dropped_total "))
    };
    let mut sent = 0;
    while sent < MOST && dropped().await.unwrap_or(0) == 0 {
        let batch = (0..AT_ONCE).map(|_| {
            let c = c.clone();
            let url = cfg.url("/digital-accounts");
            async move {
                c.get(url)
                    .timeout(Duration::from_secs(10))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            }
        });
        for answer in join_all(batch).await {
            assert_eq!(
                answer.ok(),
                Some(200),
                "a request was not answered after {sent} requests"
            );
        }
        sent += AT_ONCE;
    }
    assert!(
        dropped().await.is_some_and(|n| n > 0),
        "no dropped log lines counted after {sent} requests"
    );
    let healthz = c
        .get(cfg.admin_url("/healthz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let r = c
        .get(cfg.url("/digital-accounts"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let _ = child.start_kill();
}
