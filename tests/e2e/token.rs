//! The token lifecycle end to end: scheduled refreshes under load, backoff on transient failures,
//! revocation and recovery through a Kubernetes-style token file swap, single-flight refresh after upstream 401s,
//! every refresh response shape, the state file across a restart, `exp`-driven refreshes and `min_refresh_gap`.
//!
//! That the token is in no log line is checked by the CLI tests, which capture the logs (`no_token_in_trace_logs`);
//! that an echoed token comes back as its fingerprint, at the end of this file.

use std::{
    os::unix::fs::PermissionsExt,
    time::{Duration, Instant, SystemTime},
};

use crate::support::{
    assert_schema, client, get_json, publish_secret, readyz,
    refusals::{proxy_for, seen_paths},
    wait_for, ProxyBuilder, Upstream,
};
use issettled_proxy::{
    sim::{RefreshShape, ScriptedResponse, SimConfig},
    token::secret::fingerprint,
};
use serde_json::Value;
use tokio::task::JoinSet;

/// The wall-clock time of a monotonic instant in the past.
fn wall_of(at: Instant) -> SystemTime {
    SystemTime::now() - at.elapsed()
}

fn rfc3339(v: &Value) -> SystemTime {
    humantime::parse_rfc3339(v.as_str().unwrap_or_else(|| panic!("not a time: {v}"))).unwrap()
}

/// `refresh_interval` 1 s for 10 s under 200 concurrent clients.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_second_refreshes_under_200_clients_fail_no_request_and_send_only_valid_tokens() {
    let upstream = Upstream::spawn_with(SimConfig {
        revoke_after: Duration::from_secs(5),
        ..SimConfig::default()
    })
    .await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("TOKEN__REFRESH_INTERVAL", "1s")
        .set("TOKEN__REVOKE_AFTER", "5s")
        .spawn()
        .await;
    proxy.wait_ready().await;

    let c = client();
    let url = proxy.url("/digital-accounts");
    let stop_at = Instant::now() + Duration::from_secs(10);
    let mut clients = JoinSet::new();
    for _ in 0..200 {
        let (c, url) = (c.clone(), url.clone());
        clients.spawn(async move {
            let (mut ok, mut failed) = (0_usize, Vec::new());
            while Instant::now() < stop_at {
                let result = match c.get(&url).send().await {
                    Ok(r) if r.status() == 200 => r.bytes().await.map(drop).map_err(|e| e.to_string()),
                    Ok(r) => Err(format!("status {}: {}", r.status(), r.text().await.unwrap_or_default())),
                    Err(e) => Err(e.to_string()),
                };
                match result {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(e),
                }
            }
            (ok, failed)
        });
    }
    let (mut ok, mut failed) = (0, Vec::new());
    while let Some(done) = clients.join_next().await {
        let (n, f) = done.unwrap();
        ok += n;
        failed.extend(f);
    }
    let refreshes = upstream.sim.refresh_calls().len();

    assert!(
        failed.is_empty(),
        "{} of {} requests failed, e.g. {:?}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(3)]
    );
    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), ok, "every request reached the upstream exactly once");
    let invalid = seen.iter().filter(|r| !r.token_valid).count();
    assert_eq!(
        invalid, 0,
        "the upstream saw {invalid} requests with a token it did not accept"
    );
    let distinct: std::collections::HashSet<_> = seen.iter().filter_map(|r| r.token.clone()).collect();
    assert!(
        distinct.len() >= 5,
        "the token was swapped under load ({} tokens seen)",
        distinct.len()
    );
    // One refresh at start-up, then one per second (each a second after the last one's answer): never more; and
    // never fewer than one every other second, even when 200 clients slow the refresh calls on two loaded cores.
    assert!((5..=12).contains(&refreshes), "{refreshes} refresh calls in 10 s");
}

/// The simulated upstream and a proxy whose token file is a mounted Secret (published as the kubelet does, in
/// `dir`) holding `first`, past its start-up refresh.
async fn on_a_mounted_secret() -> (Upstream, tempfile::TempDir, String, crate::support::TestProxy) {
    let upstream = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let first = upstream.token();
    publish_secret(dir.path(), "..2024_01_01_00_00_00.000000001", &first);
    let proxy = ProxyBuilder::new(&upstream.url, &first)
        .token_file(&dir.path().join("token"))
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    (upstream, dir, first, proxy)
}

/// Refresh answers 500 three times, then normally.
///
/// Backoff uses full jitter (base 1 s, floor 250 ms), so strictly growing delays cannot be asserted end to end;
/// `transient_failures_back_off_with_growing_delays_then_recover` in `src/token/refresher/tests.rs` checks the
/// growth on a paused clock with the jitter pinned. Here: three failures, then a success well before the
/// revoke deadline, and the proxy serving throughout.
#[tokio::test]
async fn three_refresh_500s_are_retried_with_backoff_and_the_token_is_refreshed_before_the_revoke_deadline() {
    let upstream = Upstream::spawn().await;
    upstream.sim.script_refresh(vec![ScriptedResponse::Status(500); 3]);
    let started = Instant::now();
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("TOKEN__REFRESH_INTERVAL", "10s")
        .set("TOKEN__REVOKE_AFTER", "20s")
        .spawn()
        .await;
    let revoke_deadline = started + Duration::from_secs(20);

    let failing =
        wait_for(|| async { proxy.status().await["token"]["consecutive_failures"].as_u64() >= Some(1) }).await;
    assert!(failing, "the failures show in /status: {}", proxy.status().await);
    let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(
        code, 200,
        "the current token keeps serving while the refresh is retried"
    );

    let recovered = wait_for(|| async {
        let s = proxy.status().await;
        upstream.sim.refresh_calls().len() >= 4
            && s["token"]["consecutive_failures"] == 0
            && s["token"]["source"] == "refresh"
    })
    .await;
    assert!(recovered, "not refreshed: {}", proxy.status().await);
    let calls = upstream.sim.refresh_calls();
    assert_eq!(calls.len(), 4, "three failures and one success");
    assert!(calls[3].at < revoke_deadline, "refreshed before the revoke deadline");
    for pair in calls.windows(2) {
        let gap = pair[1].at - pair[0].at;
        assert!(
            gap >= Duration::from_millis(200),
            "a retry waits at least the backoff floor, waited {gap:?}"
        );
    }
    // Full jitter over 1 s, 2 s and 4 s steps: at most 7 s in all.
    assert!(
        calls[3].at - calls[0].at <= Duration::from_secs(8),
        "backoff capped: {:?}",
        calls[3].at - calls[0].at
    );

    let s = proxy.status().await;
    assert_eq!(s["token"]["state"], "valid");
    assert_eq!(s["token"]["last_error"], Value::Null);
    let token = upstream.newest_token();
    assert_eq!(s["token"]["fingerprint"], fingerprint(&token));
    let metrics = proxy.metrics().await;
    assert!(
        metrics.contains("issettled_proxy_token_refresh_total{result=\"transient_error\"} 3"),
        "{metrics}"
    );

    let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(code, 200);
    let last = upstream.sim.requests().pop().unwrap();
    assert_eq!(
        last.token.as_deref(),
        Some(token.as_str()),
        "requests now carry the refreshed token"
    );
}

/// Refresh answers 401 → not ready, 503 `TOKEN_UNAVAILABLE`; a new token by symlink swap → ready.
#[tokio::test]
async fn a_revoked_token_makes_the_proxy_unready_until_a_new_token_file_is_swapped_in() {
    let (upstream, dir, _, proxy) = on_a_mounted_secret().await;
    let c = client();

    upstream.sim.script_refresh(vec![ScriptedResponse::Status(401)]);
    let r = c.post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert!(
        r.status().is_server_error(),
        "a refused refresh is an error: {}",
        r.status()
    );
    assert_eq!(readyz(&proxy).await, 503);
    let s = proxy.status().await;
    assert_eq!(s["ready"], false);
    assert_eq!(s["token"]["state"], "revoked");

    let sent_before = upstream.sim.requests().len();
    let (code, body) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(code, 503);
    assert_schema(&body);
    assert_eq!(body["code"], "TOKEN_UNAVAILABLE");
    assert_eq!(
        upstream.sim.requests().len(),
        sent_before,
        "nothing is sent upstream without a usable token"
    );

    let fresh = upstream.sim.mint_admin_token();
    publish_secret(dir.path(), "..2024_01_02_00_00_00.000000002", &fresh);
    let swapped = Instant::now();
    let ready = tokio::time::timeout(Duration::from_secs(3), async {
        while readyz(&proxy).await != 200 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(ready.is_ok(), "not ready 3 s after the token file changed");
    assert!(
        swapped.elapsed() <= Duration::from_millis(2500),
        "adopted within about 2 s: {:?}",
        swapped.elapsed()
    );

    let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(code, 200);
    let last = upstream.sim.requests().pop().unwrap();
    assert!(last.token_valid);
    // How long the new token waited before it reached the file is unknown: it is refreshed at once.
    let confirmed = wait_for(|| {
        let seen = upstream
            .sim
            .refresh_calls()
            .iter()
            .any(|c| c.token.as_deref() == Some(fresh.as_str()));
        async move { seen }
    })
    .await;
    assert!(confirmed, "no refresh of the token from the file");
    // The call is recorded when it arrives, before its answer is back: until then the state reads `refreshing`.
    let valid = wait_for(|| async { proxy.status().await["token"]["state"] == "valid" }).await;
    assert!(valid, "{}", proxy.status().await);
}

/// 100 concurrent GETs meeting 401 → one refresh, all succeed; a POST meeting 401 is not replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_upstream_401s_cause_one_refresh_and_gets_succeed_while_a_post_is_not_replayed() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("TOKEN__MIN_REFRESH_GAP", "0s")
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    assert_eq!(upstream.sim.refresh_calls().len(), 1, "the start-up refresh");
    let rejected = upstream.newest_token();
    upstream.sim.reject_api_token(&rejected);

    let c = client();
    let mut gets = JoinSet::new();
    for _ in 0..100 {
        let (c, url) = (c.clone(), proxy.url("/digital-accounts"));
        gets.spawn(async move { c.get(url).send().await.map(|r| r.status().as_u16()) });
    }
    let mut statuses = Vec::new();
    while let Some(done) = gets.join_next().await {
        statuses.push(done.unwrap().unwrap());
    }
    assert!(statuses.iter().all(|s| *s == 200), "all succeed on retry: {statuses:?}");
    assert_eq!(
        upstream.sim.refresh_calls().len(),
        2,
        "exactly one refresh beyond the start-up one"
    );
    let refreshed = upstream.newest_token();
    let seen = upstream.sim.requests();
    let with_new = seen
        .iter()
        .filter(|r| r.token.as_deref() == Some(refreshed.as_str()) && r.token_valid)
        .count();
    let with_old = seen
        .iter()
        .filter(|r| r.token.as_deref() == Some(rejected.as_str()))
        .count();
    assert_eq!(with_new, 100, "each GET answered with the refreshed token");
    assert_eq!(with_old + with_new, seen.len());
    assert!((1..=100).contains(&with_old));

    upstream.sim.reject_api_token(&refreshed);
    let r = c
        .post(proxy.url("/payments"))
        .header("content-type", "application/json")
        .body(r#"{"amount":"1.00","currency":"EUR"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let body: Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "UNAUTHORIZED", "the upstream's error, normalized: {body}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(posts_sent(&upstream), 1, "a POST is never replayed");
}

/// A 401 on a request that is not replayed (a POST) asks for a refresh and is answered at once, leaving nothing
/// behind: during a slow refresh, a burst of them adds no task, and they cause one refresh between them.
#[tokio::test]
async fn a_burst_of_401s_on_posts_during_a_slow_refresh_adds_no_task_and_causes_one_refresh() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("TOKEN__MIN_REFRESH_GAP", "0s")
        .set("UPSTREAM__REQUEST_TIMEOUT", "30s")
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let rejected = upstream.newest_token();
    upstream.sim.reject_api_token(&rejected);
    // Slow, within the refresh call's time-out (`request_timeout`, 30 s here), and long enough that all 51 POSTs
    // below are answered while it is still in flight, even on a loaded machine (else the later ones would use the
    // refreshed token and not meet a 401).
    upstream.sim.set_refresh_latency(Duration::from_secs(10));
    let c = client();
    let post = || async {
        let r = c
            .post(proxy.url("/payments"))
            .header("content-type", "application/json")
            .body(r#"{"amount":"1.00","currency":"EUR"}"#)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        // Read to the end, so the connection is reused.
        r.bytes().await.unwrap();
        status
    };
    // The first one starts the refresh; its connections are open before the count.
    assert_eq!(post().await, 401);
    let tasks = || tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let before = tasks();
    for i in 0..50 {
        assert_eq!(post().await, 401, "POST {i}");
    }
    let added = tasks().saturating_sub(before);
    assert!(
        added < 10,
        "{added} more tasks after 50 POSTs answered 401 during one refresh"
    );
    assert!(
        wait_for(|| async { upstream.newest_token() != rejected }).await,
        "the refresh did not finish"
    );
    assert_eq!(
        upstream.sim.refresh_calls().len(),
        2,
        "the start-up refresh and one for the burst"
    );
    assert_eq!(posts_sent(&upstream), 51, "a POST is never replayed");
}

/// How many POSTs reached the upstream.
fn posts_sent(upstream: &Upstream) -> usize {
    upstream
        .sim
        .requests()
        .iter()
        .filter(|r| r.method == http::Method::POST)
        .count()
}

/// Every refresh response shape of the contract.
#[tokio::test]
async fn every_refresh_response_shape_yields_a_working_token() {
    let (upstream, proxy) = crate::support::refreshed_proxy().await;
    let c = client();

    for shape in [
        RefreshShape::AccessToken,
        RefreshShape::Token,
        RefreshShape::AccessTokenCamel,
        RefreshShape::Jwt,
        RefreshShape::DataToken,
        RefreshShape::NoContent,
        RefreshShape::OkNoToken,
    ] {
        upstream.sim.set_refresh_shape(shape);
        let minted_before = upstream.sim.issued_tokens().len();
        let calls_before = upstream.sim.refresh_calls().len();
        let r = c.post(proxy.admin_url("/refresh")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{shape:?}");
        let body: Value = r.json().await.unwrap();
        assert_eq!(upstream.sim.refresh_calls().len(), calls_before + 1, "{shape:?}");

        let mints = !matches!(shape, RefreshShape::NoContent | RefreshShape::OkNoToken);
        let minted = upstream.sim.issued_tokens().len() - minted_before;
        assert_eq!(minted, usize::from(mints), "{shape:?}");
        // With a token-carrying shape the newest token; else the current one stays (and is the newest too).
        let expected = upstream.newest_token();
        assert_eq!(body["fingerprint"], fingerprint(&expected), "{shape:?}: {body}");
        assert_eq!(body["state"], "valid", "{shape:?}");
        assert_eq!(body["consecutive_failures"], 0, "{shape:?}");

        let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
        assert_eq!(code, 200, "{shape:?}");
        let last = upstream.sim.requests().pop().unwrap();
        assert_eq!(last.token.as_deref(), Some(expected.as_str()), "{shape:?}");
        assert!(last.token_valid, "{shape:?}");
    }

    // A 200 whose body is not JSON carries no token either: kept, and counted as refreshed.
    let current = upstream.newest_token();
    upstream
        .sim
        .script_refresh(vec![ScriptedResponse::StatusBody(200, "OK".into())]);
    let r = c.post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["fingerprint"], fingerprint(&current), "{body}");
    assert_eq!(body["last_error"], Value::Null, "{body}");

    // Every one of them counts as a success: the contract says a kept token counts as refreshed.
    let text = proxy.metrics().await;
    let successes: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("issettled_proxy_token_refresh_total{result=\"success\"} "))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        successes >= 9,
        "start-up, seven shapes and the text answer: {successes}\n{text}"
    );
    assert!(!text.contains("unchanged"), "{text}");
}

/// The refreshed token survives a restart through `state_file`, which is mode 0600, in a directory the
/// proxy creates (mode 0700) when it is missing.
#[tokio::test]
async fn a_restart_continues_with_the_persisted_token_not_the_stale_token_file() {
    let upstream = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    let state_file = dir.path().join("state").join("token.json");
    let stale = upstream.token();
    std::fs::write(&token_file, format!("{stale}\n")).unwrap();
    let builder = || {
        ProxyBuilder::new(&upstream.url, &stale)
            .token_file(&token_file)
            .set("TOKEN__STATE_FILE", &state_file.display().to_string())
    };

    let proxy = builder().spawn().await;
    proxy.startup_refresh_done().await;
    let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let persisted = upstream.newest_token();
    assert_eq!(upstream.sim.refresh_calls().len(), 2);
    proxy.stop().await.unwrap();

    let mode = std::fs::metadata(&state_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "state file mode {mode:o}");
    let dir_mode = std::fs::metadata(state_file.parent().unwrap())
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(dir_mode, 0o700, "state directory mode {dir_mode:o}");
    assert!(std::fs::read_to_string(&state_file).unwrap().contains(&persisted));
    assert_eq!(
        std::fs::read_to_string(&token_file).unwrap().trim(),
        stale,
        "the token file is still stale"
    );
    // Were the stale token used again, its first refresh would now be refused.
    upstream.sim.revoke(&stale);

    let proxy = builder().spawn().await;
    proxy.wait_ready().await;
    assert!(
        wait_for(|| async { upstream.sim.refresh_calls().len() >= 3 }).await,
        "no start-up refresh"
    );
    let call = &upstream.sim.refresh_calls()[2];
    assert_eq!(
        call.token.as_deref(),
        Some(persisted.as_str()),
        "the restarted proxy refreshed the persisted token"
    );
    proxy.startup_refresh_done().await;
    let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
    assert_eq!(code, 200);
    let last = upstream.sim.requests().pop().unwrap();
    assert!(last.token_valid);
    assert_ne!(last.token.as_deref(), Some(stale.as_str()));
    assert!(upstream
        .sim
        .requests()
        .iter()
        .all(|r| r.token.as_deref() != Some(stale.as_str())));
}

/// A token supplied after the persisted one's chain began wins at restart, even when the persisted token is
/// newer by its `iat`: here an administrator issued `replacement` earlier, and the operator hands it over by
/// environment after the persisted token was revoked.
#[tokio::test]
async fn a_restart_with_a_new_configured_token_uses_it_not_the_persisted_one() {
    let upstream = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let state_file = dir.path().join("token.json");
    let replacement = upstream.token();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let original = upstream.token();
    let builder = |token: &str| {
        ProxyBuilder::new(&upstream.url, token).set("TOKEN__STATE_FILE", &state_file.display().to_string())
    };

    let proxy = builder(&original).spawn().await;
    proxy.startup_refresh_done().await;
    let persisted = upstream.newest_token();
    proxy.stop().await.unwrap();
    assert!(std::fs::read_to_string(&state_file).unwrap().contains(&persisted));
    upstream.sim.revoke(&persisted);

    let calls = upstream.sim.refresh_calls().len();
    let proxy = builder(&replacement).spawn().await;
    proxy.wait_ready().await;
    assert!(
        wait_for(|| async { upstream.sim.refresh_calls().len() > calls }).await,
        "no start-up refresh"
    );
    assert_eq!(
        upstream.sim.refresh_calls()[calls].token.as_deref(),
        Some(replacement.as_str()),
        "the restarted proxy started from the token it was given"
    );
    proxy.startup_refresh_done().await;
    assert_eq!(proxy.status().await["token"]["state"], "valid");
}

/// A JWT whose `exp` is 60 s away is refreshed by `exp - refresh_before_expiry`, long before the
/// 10 minute interval. (`refresh_before_expiry` is 55 s here: with the default 2 m, a 60 s token would be due
/// at once after every refresh.)
#[tokio::test]
async fn a_token_expiring_in_60s_is_refreshed_before_exp_minus_refresh_before_expiry() {
    let upstream = Upstream::spawn_with(SimConfig {
        token_ttl: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("TOKEN__REFRESH_INTERVAL", "10m")
        .set("TOKEN__REFRESH_BEFORE_EXPIRY", "55s")
        .spawn()
        .await;
    proxy.startup_refresh_done().await;
    let first = upstream.newest_token();
    let s = proxy.status().await;
    let expires_at = rfc3339(&s["token"]["expires_at"]);
    let due = expires_at - Duration::from_secs(55);
    let next = rfc3339(&s["token"]["next_refresh_at"]);
    assert!(
        next <= due + Duration::from_millis(1),
        "next refresh {next:?} after exp - 55 s {due:?}"
    );

    assert!(
        wait_for(|| async { upstream.sim.refresh_calls().len() >= 2 }).await,
        "no exp-driven refresh"
    );
    let calls = upstream.sim.refresh_calls();
    assert_eq!(calls.len(), 2, "one exp-driven refresh, no storm");
    let call = &calls[1];
    assert_eq!(call.token.as_deref(), Some(first.as_str()));
    assert!(call.token_valid, "refreshed while the token was still valid");
    assert!(
        wall_of(call.at) <= due + Duration::from_secs(1),
        "refreshed by exp - refresh_before_expiry"
    );
    assert!(
        call.at - calls[0].at >= Duration::from_secs(2),
        "scheduled from exp, not at once"
    );
}

/// 50 upstream 401s on a token refreshed a second ago cause no refresh (`min_refresh_gap` 5 s).
#[tokio::test]
async fn upstream_401s_within_min_refresh_gap_cause_no_refresh() {
    let (upstream, proxy) = crate::support::refreshed_proxy().await;
    assert_eq!(upstream.sim.refresh_calls().len(), 1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let token = upstream.newest_token();
    // E.g. a token without the Permitted Endpoint: the upstream says 401 though the token is fine.
    upstream.sim.reject_api_token(&token);

    let c = client();
    for i in 0..50 {
        let r = c.get(proxy.url("/digital-accounts")).send().await.unwrap();
        assert_eq!(r.status(), 401, "request {i}");
        if i == 0 {
            assert_schema(&r.json().await.unwrap());
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        upstream.sim.refresh_calls().len(),
        1,
        "no refresh within min_refresh_gap"
    );
    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), 50, "no retries either");
    assert!(seen.iter().all(|r| r.token.as_deref() == Some(token.as_str())));
}

/// A token whose whole lifetime is shorter than `refresh_before_expiry` (default 2 m) must not make every fresh
/// token due at once: that turns the schedule into a refresh storm against the upstream.
#[tokio::test]
async fn a_token_lifetime_shorter_than_refresh_before_expiry_causes_no_refresh_storm() {
    let upstream = Upstream::spawn_with(SimConfig {
        token_ttl: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    proxy.startup_refresh_done().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = upstream.sim.refresh_calls().len();
    assert!(calls <= 5, "{calls} refresh calls in about 3 s");
}

/// The refresh call's shape, as the contract assumes it: the configured method and path (after `base_url`'s
/// prefix), the current token as Bearer, `Accept: application/json`, an empty body.
#[tokio::test]
async fn the_refresh_call_uses_the_configured_method_and_path_and_the_contract_shape() {
    use crate::support::faulty::{Fault, Faulty};
    let upstream = Faulty::spawn(Fault::Hang).await;
    let _proxy = ProxyBuilder::new(&format!("{}/v1", upstream.url()), "opaque-token")
        .set("TOKEN__REFRESH_PATH", "/custom/refresh")
        .set("TOKEN__REFRESH_METHOD", "put")
        .spawn()
        .await;
    assert!(wait_for(|| async { !upstream.request_heads().is_empty() }).await);
    let head = upstream.request_heads()[0].to_ascii_lowercase();
    assert!(head.starts_with("put /v1/custom/refresh http/1.1\r\n"), "{head}");
    for line in [
        "authorization: bearer opaque-token",
        "accept: application/json",
        "content-length: 0",
    ] {
        assert!(head.contains(&format!("\r\n{line}\r\n")), "{line}: {head}");
    }
}

/// A token file the checks refuse leaves the current token in place, says why in `/status`, and never shows
/// the refused text: a pasted `Bearer ` prefix, then a JWT already past its `exp`.
#[tokio::test]
async fn a_refused_token_file_keeps_the_current_token_and_says_why() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    let (upstream, dir, first, proxy) = on_a_mounted_secret().await;
    let mut in_use = proxy.status().await["token"]["fingerprint"].clone();

    let expired = format!(
        "{}.{}.sig",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none"}"#),
        URL_SAFE_NO_PAD.encode(r#"{"exp":1000000000}"#)
    );
    for (version, text, reason) in [
        ("..2024_01_02_00_00_00.000000002", format!("Bearer {first}"), "Bearer"),
        ("..2024_01_03_00_00_00.000000003", expired.clone(), "exp"),
    ] {
        publish_secret(dir.path(), version, &text);
        let said = wait_for(|| async {
            proxy.status().await["token"]["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("refused") && e.contains(reason))
        })
        .await;
        let status = proxy.status().await;
        assert!(said, "{reason}: {status}");
        assert_eq!(status["token"]["fingerprint"], in_use, "{reason}: {status}");
        assert_eq!(status["ready"], true);
        let shown = status.to_string();
        assert!(
            !shown.contains(&first) && !shown.contains(&expired),
            "no token text is shown: {shown}"
        );
        let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
        assert_eq!(code, 200, "{reason}");
        assert!(upstream.sim.requests().pop().unwrap().token_valid);
        // A refresh that succeeds meanwhile does not hide it: the file is still refused.
        let r = client().post(proxy.admin_url("/refresh")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        let token = proxy.status().await["token"].clone();
        let last = &token["last_error"];
        assert!(last.as_str().is_some_and(|e| e.contains(reason)), "{reason}: {last}");
        in_use = token["fingerprint"].clone();
    }
    // The original put back (the token the refreshes started from): nothing new to adopt, and nothing wrong.
    publish_secret(dir.path(), "..2024_01_04_00_00_00.000000004", &first);
    let cleared = wait_for(|| async { proxy.status().await["token"]["last_error"].is_null() }).await;
    assert!(cleared, "{}", proxy.status().await);
    assert_eq!(proxy.status().await["token"]["fingerprint"], in_use);
}

/// The checked hand-over through a mounted Secret: a two-segment token (opaque to the proxy, so the local checks
/// pass) that the upstream refuses never costs the working chain, and while it is being checked every request
/// carries the current token; a real new token is used once a refresh made with it has succeeded.
#[tokio::test]
async fn a_token_file_the_upstream_refuses_never_costs_the_working_chain() {
    let (upstream, dir, _first, proxy) = on_a_mounted_secret().await;
    let in_use = proxy.status().await["token"]["fingerprint"].clone();
    upstream.sim.set_refresh_latency(Duration::from_millis(600));
    publish_secret(
        dir.path(),
        "..2024_01_02_00_00_00.000000002",
        "eyJhbGciOiJub25lIn0.typo",
    );
    let answered = std::sync::Mutex::new(Vec::new());
    let refused = wait_for(|| async {
        let (code, _) = get_json(&proxy.url("/digital-accounts")).await;
        answered.lock().unwrap().push(code);
        proxy.status().await["token"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused"))
    })
    .await;
    let answered = answered.into_inner().unwrap();
    assert!(refused, "the refusal is reported: {}", proxy.status().await);
    assert!(
        answered.iter().all(|c| *c == 200),
        "every request was answered while the token was checked: {answered:?}"
    );
    assert!(
        upstream.sim.requests().iter().all(|r| r.token_valid),
        "no request carried the unproven token"
    );
    let status = proxy.status().await;
    assert_eq!(status["token"]["fingerprint"], in_use);
    assert_eq!(status["ready"], true);
    assert!(proxy
        .metrics()
        .await
        .contains("issettled_proxy_token_handover_refused_total 1"));
    // A real rotation: the chain continues from the new token once the upstream accepts it.
    upstream.sim.set_refresh_latency(Duration::ZERO);
    let rotated = upstream.token();
    publish_secret(dir.path(), "..2024_01_03_00_00_00.000000003", &rotated);
    let moved = wait_for(|| async {
        let s = proxy.status().await;
        s["token"]["source"] == "refresh" && s["token"]["fingerprint"] != in_use && s["token"]["last_error"].is_null()
    })
    .await;
    assert!(moved, "{}", proxy.status().await);
    let calls = upstream.sim.refresh_calls();
    assert_eq!(
        calls.last().unwrap().token.as_deref(),
        Some(rotated.as_str()),
        "checked by a refresh made with it"
    );
}

#[tokio::test]
async fn an_echoed_token_comes_back_as_its_fingerprint_and_redirects_are_not_followed() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    let r = client().get(proxy.url("/errors/echo-token")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let header = r.headers()["x-debug-token"].to_str().unwrap().to_owned();
    let body: serde_json::Value = r.json().await.unwrap();
    assert_schema(&body);
    assert_eq!(body["code"], "INVALID_TOKEN_SCOPE", "the upstream's own code is kept");
    let sent = upstream.sim.requests()[0].token.clone().unwrap();
    let fingerprint = issettled_proxy::token::secret::fingerprint(&sent);
    let text = body.to_string();
    for t in upstream.sim.issued_tokens() {
        assert!(
            !text.contains(&t) && !header.contains(&t),
            "a token leaked: {text} / {header}"
        );
    }
    assert!(text.contains(&fingerprint), "{text}");
    assert_eq!(header, fingerprint);

    let r = client().get(proxy.url("/redirect")).send().await.unwrap();
    assert_eq!(r.status(), 302);
    assert_eq!(
        r.headers()["location"],
        "https://elsewhere.example/landing?from=issettled"
    );
    assert_eq!(
        seen_paths(&upstream),
        ["/errors/echo-token", "/redirect"],
        "one request, not followed"
    );
}
