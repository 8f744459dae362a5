//! Cluster mode end to end: replicas of the real binary (child processes, so a kill or a stop is real) sharing
//! one chain through the in-process fake Kubernetes API, in front of the simulated IsSettled, which retires a
//! refreshed-away token after 3 s (two refreshers on one chain would break it). Times are compressed: refresh
//! every 1 s, Lease 3 s / renew 2 s / retry 0.5 s; load for 15 s.

use std::time::{Duration, Instant};

use base64::{engine::general_purpose::STANDARD, Engine as _};
use issettled_proxy::sim::SimConfig;
use k8s_openapi::api::coordination::v1::LeaseSpec;
use serde_json::Value;

use crate::support::{
    binary::{quote, BinConfig, Running},
    client, get_json, get_text,
    kube_api::KubeApi,
    metric_sum, Upstream,
};

const ADMIN_SECRET: &str = "issettled-token";
const STATE_SECRET: &str = "issettled-token-state";
const LEASE: &str = "issettled-proxy";
const LEASE_DURATION: Duration = Duration::from_secs(3);
const RETRY_PERIOD: Duration = Duration::from_millis(500);

/// The fake API with the two Secrets and the Lease pre-created (as deploy/ ships them), and the sim.
struct Fixture {
    api: KubeApi,
    upstream: Upstream,
    dir: tempfile::TempDir,
    /// The administrator-issued token in the administrator's Secret.
    admin_token: String,
}

/// One replica: its configuration (ports, directory) and the running child.
struct Replica {
    id: String,
    cfg: BinConfig,
    run: Running,
}

impl Fixture {
    async fn new() -> Self {
        let upstream = Upstream::spawn_with(SimConfig {
            revoke_after: Duration::from_secs(8),
            retire_refreshed_after: Some(Duration::from_secs(3)),
            ..SimConfig::default()
        })
        .await;
        Self::on(upstream).await
    }

    /// In front of `upstream`.
    async fn on(upstream: Upstream) -> Self {
        let api = KubeApi::spawn().await;
        let admin_token = upstream.token();
        api.seed_secret(ADMIN_SECRET, &[("token", &admin_token)]);
        api.seed_secret(STATE_SECRET, &[]);
        api.seed_lease(LEASE, LeaseSpec::default());
        Self {
            api,
            upstream,
            dir: tempfile::tempdir().unwrap(),
            admin_token,
        }
    }

    /// A replica's configuration: cluster mode on the fixture's API, compressed times.
    fn config(&self, id: &str) -> BinConfig {
        BinConfig::new(&self.upstream.url)
            .set("cluster", "mode", "\"kubernetes\"")
            .set("cluster", "identity", &quote(id))
            .set("cluster", "lease_duration", "\"3s\"")
            .set("cluster", "renew_deadline", "\"2s\"")
            .set("cluster", "retry_period", "\"500ms\"")
            .set("token", "refresh_interval", "\"1s\"")
            .set("token", "revoke_after", "\"8s\"")
            .set("token", "min_refresh_gap", "\"500ms\"")
            .env(
                "KUBECONFIG",
                &self.api.kubeconfig(self.dir.path()).display().to_string(),
            )
    }

    /// Start replica `id` and wait until it is ready (holds a usable token).
    async fn start(&self, id: &str) -> Replica {
        self.start_with(self.config(id)).await
    }

    async fn start_with(&self, cfg: BinConfig) -> Replica {
        let id = cfg
            .toml()
            .lines()
            .find_map(|l| l.strip_prefix("identity = "))
            .unwrap_or("")
            .trim_matches('"')
            .to_owned();
        let run = cfg.start_ready().await;
        Replica { id, cfg, run }
    }

    /// The chain as the state Secret holds it.
    fn state(&self) -> Option<Value> {
        let text = self.api.secret_key(STATE_SECRET, "state")?;
        serde_json::from_str(&text).ok()
    }

    fn generation(&self) -> u64 {
        self.state().and_then(|s| s["generation"].as_u64()).unwrap_or(0)
    }

    /// The Lease's holder, if any.
    fn holder(&self) -> Option<String> {
        let lease = self.api.lease(LEASE)?;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    /// The tokens the refresh calls presented form one chain: each is the one the previous call returned.
    fn assert_one_chain(&self) {
        let calls: Vec<String> = self
            .upstream
            .sim
            .refresh_calls()
            .into_iter()
            .filter_map(|c| c.token)
            .collect();
        let issued = self.upstream.sim.issued_tokens();
        assert!(calls.len() >= 2, "refreshes happened: {}", calls.len());
        // Each refresh call presents the token the previous one was answered with: the next one issued.
        let index = |t: &String| issued.iter().position(|i| i == t).expect("a token the sim issued");
        for pair in calls.windows(2) {
            assert_eq!(index(&pair[1]), index(&pair[0]) + 1, "the refresh calls form one chain");
        }
    }
}

impl Replica {
    async fn status(&self) -> Value {
        get_json(&self.cfg.admin_url("/status")).await.1
    }

    async fn role(&self) -> String {
        self.status().await["cluster"]["role"].as_str().unwrap_or("").to_owned()
    }

    /// Refresh calls this replica made (its own metrics).
    async fn refreshes(&self) -> u64 {
        let text = get_text(&self.cfg.admin_url("/metrics")).await;
        let file = metric_sum(&text, "issettled_proxy_token_refresh_total{result=\"file\"}");
        metric_sum(&text, "issettled_proxy_token_refresh_total{") - file
    }

    /// A GET through this replica: its status.
    async fn get(&self) -> u16 {
        match client()
            .get(self.cfg.url("/digital-accounts"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }
}

/// Poll `check` every 50 ms until it holds or `limit` passes; the time it took.
async fn within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// Which replica leads (by its own `/status`), waiting for exactly one.
async fn the_leader<'a>(replicas: &'a [&'a Replica]) -> &'a Replica {
    let mut found = None;
    within(Duration::from_secs(10), async || {
        let mut leaders = Vec::new();
        for r in replicas {
            if r.role().await == "leader" {
                leaders.push(*r);
            }
        }
        found = (leaders.len() == 1).then(|| leaders[0]);
        found.is_some()
    })
    .await
    .expect("one leader");
    found.unwrap()
}

/// Send GETs through every replica at once (one keep-alive client each) for `span`; how many were sent, and the
/// failed ones.
async fn load(replicas: &[&Replica], span: Duration) -> (usize, Vec<(String, u16)>) {
    let mut loaders = tokio::task::JoinSet::new();
    for r in replicas {
        let (id, url) = (r.id.clone(), r.cfg.url("/digital-accounts"));
        loaders.spawn(async move {
            let c = client();
            let start = Instant::now();
            let (mut sent, mut failed) = (0, Vec::new());
            while start.elapsed() < span {
                let status = match c.get(&url).timeout(Duration::from_secs(5)).send().await {
                    Ok(r) => r.status().as_u16(),
                    Err(_) => 0,
                };
                sent += 1;
                if status != 200 {
                    failed.push((id.clone(), status));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (sent, failed)
        });
    }
    let (mut sent, mut failed) = (0, Vec::new());
    while let Some(done) = loaders.join_next().await {
        let (s, f) = done.unwrap();
        sent += s;
        failed.extend(f);
    }
    (sent, failed)
}

#[tokio::test]
async fn three_replicas_share_one_chain_with_one_refresher_and_no_failed_request() {
    let f = Fixture::new().await;
    let a = f.start("replica-a").await;
    let b = f.start("replica-b").await;
    let c = f.start("replica-c").await;
    let all = [&a, &b, &c];
    let leader = the_leader(&all).await;
    // Sample the roles while the load runs: never two leaders.
    let sampler = {
        let urls: Vec<String> = all.iter().map(|r| r.cfg.admin_url("/status")).collect();
        tokio::spawn(async move {
            let mut most = 0;
            for _ in 0..75 {
                let mut leaders = 0;
                for url in &urls {
                    if get_json(url).await.1["cluster"]["role"] == "leader" {
                        leaders += 1;
                    }
                }
                most = most.max(leaders);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            most
        })
    };
    let (sent, failed) = load(&all, Duration::from_secs(15)).await;
    assert!(sent > 30, "load was sent: {sent}");
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    assert!(sampler.await.unwrap() <= 1, "never two leaders");
    f.assert_one_chain();
    assert!(
        f.generation() >= 8,
        "the leader wrote each link: generation {}",
        f.generation()
    );
    for r in all {
        if r.id != leader.id {
            assert_eq!(r.refreshes().await, 0, "follower {} made no refresh call", r.id);
        }
        assert_eq!(r.status().await["cluster"]["leader"], leader.id.as_str());
    }
}

#[tokio::test]
async fn a_killed_leader_is_replaced_within_the_lease_and_the_chain_goes_on() {
    let f = Fixture::new().await;
    let a = f.start("replica-a").await;
    let b = f.start("replica-b").await;
    let c = f.start("replica-c").await;
    let leader = the_leader(&[&a, &b, &c]).await.id.clone();
    let (dead, rest): (Vec<Replica>, Vec<Replica>) = [a, b, c].into_iter().partition(|r| r.id == leader);
    let generation = f.generation();
    dead[0].run.signal("KILL");
    let bound = LEASE_DURATION + 3 * RETRY_PERIOD + Duration::from_secs(1);
    let took = within(bound + Duration::from_secs(5), async || {
        f.holder().is_some_and(|h| h != leader)
    })
    .await;
    let took = took.expect("a new leader");
    assert!(
        took <= bound,
        "a new leader within lease_duration + 3 x retry_period (+1 s slack): {took:?}"
    );
    let others: Vec<&Replica> = rest.iter().collect();
    let (sent, failed) = load(&others, Duration::from_secs(5)).await;
    assert!(failed.is_empty(), "{} of {sent} failed: {failed:?}", failed.len());
    assert!(
        f.generation() > generation,
        "the new leader continued the chain from state"
    );
    f.assert_one_chain();
}

#[tokio::test]
async fn a_terminated_leader_releases_the_lease_and_another_takes_over_at_once() {
    let f = Fixture::new().await;
    let a = f.start("replica-a").await;
    let b = f.start("replica-b").await;
    let leader = the_leader(&[&a, &b]).await.id.clone();
    let (mut gone, stay): (Vec<Replica>, Vec<Replica>) = [a, b].into_iter().partition(|r| r.id == leader);
    let stopped = Instant::now();
    gone[0].run.term();
    let took = within(Duration::from_secs(10), async || {
        f.holder().is_some_and(|h| h != leader)
    })
    .await;
    let took = took.expect("the other replica leads");
    assert!(
        took <= 2 * RETRY_PERIOD + Duration::from_secs(1),
        "takeover within 2 x retry_period (+1 s slack): {took:?}"
    );
    let status = gone[0].run.wait(Duration::from_secs(30)).await;
    assert!(status.success(), "exit 0 after {:?}", stopped.elapsed());
    assert!(gone[0].run.stdout().contains("released"), "the release is logged");
    assert_eq!(stay[0].get().await, 200);
}

#[tokio::test]
async fn a_new_administrator_token_reaches_every_replica_and_a_refused_one_changes_nothing() {
    let f = Fixture::new().await;
    let a = f.start("replica-a").await;
    let b = f.start("replica-b").await;
    the_leader(&[&a, &b]).await;
    // A typo: refused by the upstream, reported, counted, nothing changes.
    let before = f.generation();
    f.api.set_secret_key(ADMIN_SECRET, "token", "eyJhbGciOiJub25lIn0.typo");
    let reported = within(Duration::from_secs(15), async || {
        let (sa, sb) = (a.status().await, b.status().await);
        [sa, sb]
            .iter()
            .any(|s| s["token"]["last_error"].as_str().is_some_and(|e| e.contains("refused")))
    })
    .await;
    assert!(reported.is_some(), "the refusal shows in /status token.last_error");
    let counted = within(Duration::from_secs(15), async || {
        let mut total = 0;
        for r in [&a, &b] {
            let text = get_text(&r.cfg.admin_url("/metrics")).await;
            total += metric_sum(&text, "issettled_proxy_token_handover_refused_total ");
        }
        total >= 1
    })
    .await;
    assert!(counted.is_some(), "the refusal is counted");
    let (_, failed) = load(&[&a, &b], Duration::from_secs(2)).await;
    assert!(failed.is_empty(), "zero failures: {failed:?}");
    assert!(f.generation() >= before, "the chain is untouched");
    // A real new session: every replica uses its descendants ("within seconds"; 15 s for a loaded machine).
    let rotated = f.upstream.token();
    let origin = crate::support::binary::fingerprint(&rotated);
    f.api.set_secret_key(ADMIN_SECRET, "token", &rotated);
    let moved = within(Duration::from_secs(15), async || {
        f.state().is_some_and(|s| s["origin"] == origin.as_str())
            && a.status().await["token"]["fingerprint"] == b.status().await["token"]["fingerprint"]
            && a.status().await["cluster"]["state_generation"].as_u64()
                == f.state().and_then(|s| s["generation"].as_u64())
    })
    .await;
    assert!(
        moved.is_some(),
        "the chain continues from the new token on every replica: {:?}",
        f.state()
    );
    let (_, failed) = load(&[&a, &b], Duration::from_secs(2)).await;
    assert!(failed.is_empty(), "zero failures: {failed:?}");
}

/// The leader is stopped (SIGSTOP) while its refresh call is in flight; another replica takes over and writes
/// newer links; the old leader wakes with the answer to its call: its write meets the fence (a conflict), it
/// adopts the newer state, and the generation never goes back. (An upstream that lets a refreshed-away token
/// live on, so that both refreshes succeed: the harder case for the fence.)
#[tokio::test]
async fn a_stale_leader_woken_from_sigstop_never_overwrites_a_newer_link() {
    let upstream = Upstream::spawn_with(SimConfig {
        revoke_after: Duration::from_secs(8),
        ..SimConfig::default()
    })
    .await;
    let f = Fixture::on(upstream).await;
    // The answer to the stopped leader's call waits for it (no request time-out while it sleeps).
    let patient = |id: &str| f.config(id).set("upstream", "request_timeout", "\"60s\"");
    let a = f.start_with(patient("replica-a")).await;
    let b = f.start_with(patient("replica-b")).await;
    let leader = the_leader(&[&a, &b]).await.id.clone();
    let (stale, other) = if a.id == leader { (&a, &b) } else { (&b, &a) };
    f.upstream.sim.set_refresh_latency(Duration::from_millis(1500));
    let calls = f.upstream.sim.refresh_calls().len();
    within(Duration::from_secs(10), async || {
        f.upstream.sim.refresh_calls().len() > calls
    })
    .await
    .expect("a refresh call in flight");
    stale.run.signal("STOP");
    let took = within(Duration::from_secs(15), async || {
        f.holder().is_some_and(|h| h != leader)
    })
    .await;
    assert!(took.is_some(), "the other replica leads");
    // Let the new leader write a few links, then wake the stale one.
    within(Duration::from_secs(10), async || {
        other.status().await["cluster"]["role"] == "leader"
    })
    .await
    .expect("leads");
    let written = f.generation();
    within(Duration::from_secs(20), async || f.generation() >= written + 2)
        .await
        .expect("newer links");
    let high = f.generation();
    stale.run.signal("CONT");
    let mut lowest_after = u64::MAX;
    let converged = within(Duration::from_secs(20), async || {
        lowest_after = lowest_after.min(f.generation());
        let (s, o) = (stale.status().await, other.status().await);
        s["cluster"]["role"] == "follower" && s["token"]["fingerprint"] == o["token"]["fingerprint"]
    })
    .await;
    assert!(
        converged.is_some(),
        "the stale leader adopts the newer state: {}",
        stale.status().await
    );
    assert!(
        lowest_after >= high,
        "the generation never went back: {lowest_after} < {high}"
    );
    // The log line goes out through a background writer and a pipe: wait for it rather than read at once.
    let fenced = within(Duration::from_secs(15), async || {
        stale.run.stdout().contains("state_conflict")
    })
    .await;
    assert!(fenced.is_some(), "its write met the fence");
    f.upstream.sim.set_refresh_latency(Duration::ZERO);
    let (_, failed) = load(&[stale, other], Duration::from_secs(3)).await;
    assert!(failed.is_empty(), "no request uses the stale token: {failed:?}");
}

#[tokio::test]
async fn a_later_replica_adopts_state_and_never_refreshes_while_a_leader_lives() {
    let f = Fixture::new().await;
    let a = f.start("replica-a").await;
    the_leader(&[&a]).await;
    within(Duration::from_secs(10), async || f.generation() >= 3)
        .await
        .expect("the chain advances");
    let late = f.start("replica-late").await;
    let status = late.status().await;
    assert_eq!(status["token"]["source"], "state_secret", "{status}");
    assert_ne!(
        status["token"]["fingerprint"],
        crate::support::binary::fingerprint(&f.admin_token).as_str()
    );
    let (_, failed) = load(&[&a, &late], Duration::from_secs(3)).await;
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(late.refreshes().await, 0);
    assert_eq!(late.role().await, "follower");
}

#[tokio::test]
async fn only_the_named_objects_are_touched_and_no_token_leaks() {
    let f = Fixture::new().await;
    let cfg = f.config("replica-a").set("log", "level", "\"trace\"");
    let a = f.start_with(cfg).await;
    within(Duration::from_secs(10), async || f.generation() >= 3)
        .await
        .expect("the chain advances");
    let status = a.status().await.to_string();
    let metrics = get_text(&a.cfg.admin_url("/metrics")).await;
    assert!(metrics.contains("issettled_proxy_cluster_leader 1"), "{metrics}");
    assert!(
        metrics.contains("issettled_proxy_cluster_state_generation"),
        "{metrics}"
    );
    let logs = a.run.stdout() + &a.run.stderr();
    for token in f.upstream.sim.issued_tokens() {
        for (what, text) in [("logs", &logs), ("/status", &status), ("/metrics", &metrics)] {
            assert!(!text.contains(&token), "a token in {what}");
            assert!(!text.contains(&STANDARD.encode(&token)), "a base64 token in {what}");
        }
    }
    for r in f.api.requests() {
        let allowed = match r.name.as_deref() {
            Some(ADMIN_SECRET) => ["GET"].contains(&r.method.as_str()),
            Some(STATE_SECRET) => ["GET", "PUT"].contains(&r.method.as_str()),
            Some(LEASE) => ["GET", "PUT"].contains(&r.method.as_str()),
            _ => false,
        };
        assert!(
            allowed,
            "only the two Secrets (the administrator's read-only) and the Lease: {r:?}"
        );
    }
}

#[tokio::test]
async fn a_chain_from_mode_off_starts_from_the_state_file_and_an_emptied_state_is_written_back_higher() {
    let f = Fixture::new().await;
    // A pod that ran in mode off: its state file holds a token refreshed from the administrator's.
    let refreshed = f.upstream.sim.refresh_directly(&f.admin_token);
    let cfg = f.config("replica-a");
    let state_file = cfg.dir.path().join("state");
    let record = serde_json::json!({
        "token": refreshed,
        "confirmed_at_ms": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        "origin": crate::support::binary::fingerprint(&f.admin_token),
    });
    std::fs::write(&state_file, record.to_string()).unwrap();
    let cfg = cfg.set("token", "state_file", &quote(&state_file.display().to_string()));
    let a = f.start_with(cfg).await;
    within(Duration::from_secs(10), async || f.generation() >= 2)
        .await
        .expect("the chain is written");
    f.assert_one_chain();
    let calls = f.upstream.sim.refresh_calls();
    assert_eq!(
        calls[0].token.as_deref(),
        Some(refreshed.as_str()),
        "the chain continued from the state file"
    );
    // A secret store rewrites the state Secret whole: the count is never restarted.
    let before = f.generation();
    f.api.set_secret_key(STATE_SECRET, "state", "");
    let restored = within(Duration::from_secs(15), async || f.generation() > before).await;
    assert!(
        restored.is_some(),
        "written back with a higher generation: {:?}",
        f.state()
    );
    assert_eq!(a.get().await, 200);
}

#[tokio::test]
async fn an_api_outage_longer_than_revoke_after_keeps_the_leader_serving_and_state_catches_up() {
    // An IsSettled that lets a refreshed-away token live on (so followers serve until their deadline).
    let upstream = Upstream::spawn_with(SimConfig {
        revoke_after: Duration::from_secs(8),
        ..SimConfig::default()
    })
    .await;
    let f = Fixture::on(upstream).await;
    let a = f.start("replica-a").await;
    let b = f.start("replica-b").await;
    let leader_id = the_leader(&[&a, &b]).await.id.clone();
    let (leader, follower) = if a.id == leader_id { (&a, &b) } else { (&b, &a) };
    f.api.set_down(true);
    let outage = Instant::now();
    let (mut leader_failed, mut follower_503) = (0, 0);
    while outage.elapsed() < Duration::from_secs(12) {
        if leader.get().await != 200 {
            leader_failed += 1;
        }
        match follower.get().await {
            200 => {}
            503 => follower_503 += 1,
            other => panic!("the follower answered {other} (200 while its token lasts, then 503)"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        leader_failed, 0,
        "the last leader kept the chain alive by last-resort refreshes"
    );
    assert!(
        follower_503 > 0,
        "the follower answered 503 TOKEN_UNAVAILABLE once its token's deadline passed"
    );
    let logged = within(Duration::from_secs(15), async || {
        leader.run.stdout().contains("last_resort_refresh")
    })
    .await;
    assert!(logged.is_some(), "the last-resort refresh is logged at warn");
    f.api.set_down(false);
    let caught_up = within(Duration::from_secs(15), async || {
        let Some(state) = f.state() else { return false };
        let (sl, sf) = (leader.status().await, follower.status().await);
        let fp = |s: &Value| s["token"]["fingerprint"].clone();
        sl["cluster"]["state_generation"] == state["generation"]
            && fp(&sl) == fp(&sf)
            && sf["token"]["state"] == "valid"
    })
    .await;
    assert!(
        caught_up.is_some(),
        "state caught up and every replica uses it within 15 s: {:?} / {}",
        f.state(),
        follower.status().await
    );
    assert_eq!(follower.get().await, 200);
}

/// `check-config` validates `[cluster]` (names, the three durations' order) and never contacts the API.
#[tokio::test]
async fn check_config_validates_the_cluster_section_without_contacting_the_api() {
    let f = Fixture::new().await;
    let check = async |cfg: BinConfig| {
        let path = cfg.write();
        let mut cmd = crate::support::binary::command();
        cmd.arg("check-config").arg("--config").arg(&path);
        cmd.env("KUBECONFIG", f.api.kubeconfig(f.dir.path()));
        let out = crate::support::binary::output(cmd, Duration::from_secs(10)).await;
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check(f.config("replica-a")).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("[cluster]") && text.contains("kubernetes"), "{text}");
    let (code, text) = check(f.config("replica-a").set("cluster", "renew_deadline", "\"5s\"")).await;
    assert_eq!(code, Some(2), "renew_deadline longer than lease_duration: {text}");
    assert!(text.contains("cluster.lease_duration"), "{text}");
    let (code, text) = check(f.config("replica-a").set("cluster", "state_secret", "\"Token_State\"")).await;
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cluster.state_secret"), "{text}");
    assert!(
        f.api.requests().is_empty(),
        "check-config contacted the API: {:?}",
        f.api.requests()
    );
}
