//! The Lease through the real binary on the fake Kubernetes API: the API reached directly whatever the proxy
//! variables say, a missing Lease reported and never created, a leader cut off from the API stepping down and
//! leading again when it returns. Lease 3 s / renew 2 s / retry 0.5 s.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::LeaseSpec;

use crate::support::{
    binary::{BinConfig, Running},
    get_json,
    kube_api::KubeApi,
    wait_for, Upstream,
};

const LEASE: &str = "issettled-proxy";

/// The fake API with both Secrets (and the Lease when `lease`), the sim, and one replica's configuration.
async fn setup(lease: bool) -> (KubeApi, Upstream, tempfile::TempDir, BinConfig) {
    let upstream = Upstream::spawn().await;
    let api = KubeApi::spawn().await;
    api.seed_secret("issettled-token", &[("token", &upstream.token())]);
    api.seed_secret("issettled-token-state", &[]);
    if lease {
        api.seed_lease(LEASE, LeaseSpec::default());
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = BinConfig::new(&upstream.url)
        .set("cluster", "mode", "\"kubernetes\"")
        .set("cluster", "identity", "\"replica-a\"")
        .set("cluster", "lease_duration", "\"3s\"")
        .set("cluster", "renew_deadline", "\"2s\"")
        .set("cluster", "retry_period", "\"500ms\"")
        .env("KUBECONFIG", &api.kubeconfig(dir.path()).display().to_string());
    (api, upstream, dir, cfg)
}

/// `/status` `cluster.role` becomes `role` within `limit`.
async fn role_within(cfg: &BinConfig, role: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if get_json(&cfg.admin_url("/status")).await.1["cluster"]["role"] == role {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test]
async fn the_api_is_reached_directly_whatever_the_proxy_variables_say() {
    let (api, _upstream, _dir, cfg) = setup(true).await;
    // Nothing listens on port 9: through these, every API call would fail.
    let dead = "http://127.0.0.1:9";
    let cfg = [
        "HTTPS_PROXY",
        "https_proxy",
        "HTTP_PROXY",
        "http_proxy",
        "ALL_PROXY",
        "all_proxy",
    ]
    .into_iter()
    .fold(cfg, |cfg, var| cfg.env(var, dead))
    .env("NO_PROXY", "example.invalid");
    let run = cfg.start_ready().await;
    assert!(
        role_within(&cfg, "leader", Duration::from_secs(10)).await,
        "{}",
        run.stderr()
    );
    let lease = api.lease(LEASE).and_then(|l| l.spec).unwrap();
    assert_eq!(lease.holder_identity.as_deref(), Some("replica-a"));
}

#[tokio::test]
async fn a_missing_lease_is_reported_with_what_to_do_and_never_created() {
    let (api, _upstream, _dir, cfg) = setup(false).await;
    let mut run: Running = cfg.start();
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Up (a loaded machine may take longer than the 3 s to start it), and its log line written out (the log
    // writer is a background thread, the pipe read by a task): wait for both rather than assume them.
    run.wait_ready(&cfg.admin_url("/healthz")).await;
    let logged =
        wait_for(|| async { format!("{}{}", run.stdout(), run.stderr()).contains("the Lease does not exist") }).await;
    assert_eq!(
        get_json(&cfg.admin_url("/status")).await.1["cluster"]["role"],
        "candidate"
    );
    let logs = format!("{}{}", run.stdout(), run.stderr());
    assert!(logged, "{logs}");
    assert!(api.lease(LEASE).is_none(), "the proxy creates nothing");
    assert!(
        api.requests().iter().all(|r| r.method == http::Method::GET),
        "only reads: {:?}",
        api.requests()
    );
}

#[tokio::test]
async fn a_leader_cut_off_from_the_api_steps_down_and_leads_again_when_it_returns() {
    let (api, _upstream, _dir, cfg) = setup(true).await;
    let _run = cfg.start_ready().await;
    assert!(role_within(&cfg, "leader", Duration::from_secs(10)).await);

    api.set_down(true);
    // renew_deadline, plus slack for two loaded cores.
    assert!(
        role_within(&cfg, "candidate", Duration::from_secs(2 + 3)).await,
        "stepped down"
    );
    api.set_down(false);
    assert!(
        role_within(&cfg, "leader", Duration::from_secs(10)).await,
        "leads again"
    );
    let lease = api.lease(LEASE).and_then(|l| l.spec).unwrap();
    assert_eq!(lease.lease_transitions, Some(1), "the same holder: no transition");
}
