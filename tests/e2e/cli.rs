//! The command line as the contract fixes it, on the real binary: `--version`, `check-config` (exit 0/2, the key
//! named, the token never printed), exit 1 on an address in use, no token in trace-level logs,
//! `wait` and a `demo` smoke test.

use std::time::{Duration, Instant};

use crate::support::binary::{check_config, command, fingerprint, output, quote, tail, BinConfig, Running};
use issettled_proxy::sim::{Sim, SimConfig};

/// A valid minimal configuration, plus `extra` appended to its `[token]` section.
fn minimal(token_extra: &str) -> String {
    format!("[upstream]\nbase_url = \"http://127.0.0.1:9\"\n[token]\nfile = \"/nonexistent/token\"\n{token_extra}\n")
}

#[tokio::test]
async fn version_prints_the_version() {
    let mut cmd = command();
    cmd.arg("--version");
    let out = output(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(0));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains(env!("CARGO_PKG_VERSION")), "{stdout}");
    assert!(stdout.contains("issettled-proxy"), "{stdout}");
}

#[tokio::test]
async fn check_config_accepts_a_minimal_file() {
    let (code, stdout, stderr) = check_config(&minimal(""), &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(stdout.contains("127.0.0.1:9"), "{stdout}");
}

#[tokio::test]
async fn check_config_names_the_key_of_a_bad_value() {
    // refresh_interval must be shorter than revoke_after.
    let (code, _, stderr) = check_config(&minimal("refresh_interval = \"15m\"\nrevoke_after = \"15m\""), &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("token.refresh_interval"), "{stderr}");

    // An unknown key.
    let (code, _, stderr) = check_config(&minimal("refresh_intervall = \"1m\""), &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("refresh_intervall"), "{stderr}");

    // A bad duration.
    let text = "[upstream]\nbase_url = \"http://127.0.0.1:9\"\nrequest_timeout = \"5 parsecs\"\n\
                [token]\nfile = \"/nonexistent/token\"\n";
    let (code, _, stderr) = check_config(text, &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("upstream.request_timeout"), "{stderr}");

    // A bad value from the environment names the key too.
    let (code, _, stderr) = check_config(&minimal(""), &[("ISSETTLED_PROXY__LISTEN__ADDRESS", "not-an-address")]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("listen.address"), "{stderr}");
}

#[tokio::test]
async fn check_config_refuses_a_state_file_that_cannot_be_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let a_file = dir.path().join("a-file");
    std::fs::write(&a_file, "").unwrap();
    for (path, says) in [
        (a_file.join("token.state"), "is not a directory"),
        (dir.path().to_path_buf(), "is a directory"),
    ] {
        let (code, _, stderr) =
            check_config(&minimal(&format!("state_file = {:?}", path.display().to_string())), &[]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(stderr.contains("token.state_file") && stderr.contains(says), "{stderr}");
    }
    // A directory that does not exist yet is fine: `run` creates it.
    let later = dir.path().join("not-yet").join("token.state");
    let (code, _, stderr) = check_config(
        &minimal(&format!("state_file = {:?}", later.display().to_string())),
        &[],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// A CA bundle from the environment that holds no certificate: the check after loading names the variable too.
#[tokio::test]
async fn check_config_names_the_variable_of_an_unusable_ca_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("ca.pem");
    std::fs::write(&garbage, "not a certificate\n").unwrap();
    let var = "ISSETTLED_PROXY__UPSTREAM__CA_FILE";
    let (code, _, stderr) = check_config(&minimal(""), &[(var, garbage.to_str().unwrap())]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("upstream.ca_file") && stderr.contains(&format!("(set by {var})")),
        "{stderr}"
    );
}

#[tokio::test]
async fn check_config_on_a_missing_file_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = command();
    cmd.arg("check-config")
        .arg("--config")
        .arg(dir.path().join("absent.toml"));
    let out = output(cmd, Duration::from_secs(10)).await;
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

#[tokio::test]
async fn check_config_accepts_the_example_and_prints_the_effective_configuration() {
    for example in ["config/issettled-proxy.example.toml", "config/issettled-proxy.toml"] {
        let mut cmd = command();
        cmd.arg("check-config")
            .arg("--config")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/").to_owned() + example);
        let out = output(cmd, Duration::from_secs(10)).await;
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{example}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        for section in ["[listen]", "[upstream]", "[token]", "[policy]", "[log]", "[shutdown]"] {
            assert!(stdout.contains(section), "{example}: {section} missing in\n{stdout}");
        }
    }
}

#[tokio::test]
async fn check_config_never_prints_the_token() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    let text = "[upstream]\nbase_url = \"http://127.0.0.1:9\"\n[token]\nenv = \"MY_ISSETTLED_TOKEN\"\n";
    let (code, stdout, stderr) = check_config(text, &[("MY_ISSETTLED_TOKEN", &token)]).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.contains(&token) && !stderr.contains(&token),
        "the token was printed"
    );
    assert!(stdout.contains(&fingerprint(&token)), "no fingerprint in\n{stdout}");

    // Also when it comes through a configuration override.
    let (code, stdout, stderr) = check_config(
        &minimal(""),
        &[
            ("ISSETTLED_PROXY__TOKEN__ENV", "MY_ISSETTLED_TOKEN"),
            ("ISSETTLED_PROXY__TOKEN__FILE", ""),
            ("MY_ISSETTLED_TOKEN", &token),
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        !stdout.contains(&token) && !stderr.contains(&token),
        "the token was printed"
    );
}

/// A token written where a variable *name* belongs (`token.env`), or in a variable that names a whole section
/// (`ISSETTLED_PROXY__TOKEN`), is refused with exit 2 naming the key, and its value is printed nowhere.
#[tokio::test]
async fn check_config_refuses_a_token_in_place_of_a_name_without_printing_it() {
    let sim = Sim::new(SimConfig::default());
    let token = sim.mint_admin_token();
    let in_file = format!(
        "[upstream]\nbase_url = \"http://127.0.0.1:9\"\n[token]\nenv = {}\n",
        quote(&token)
    );
    let token = token.as_str();
    let cases = [
        (in_file, vec![], "token.env"),
        (minimal(""), vec![("ISSETTLED_PROXY__TOKEN__ENV", token)], "token.env"),
        (
            minimal(""),
            vec![(
                "ISSETTLED_PROXY__TOKEN__ENV",
                "opaque_token_with_only_word_characters_and_far_too_long_for_a_name",
            )],
            "token.env",
        ),
        (
            minimal(""),
            vec![("ISSETTLED_PROXY__TOKEN", token)],
            "ISSETTLED_PROXY__TOKEN",
        ),
        (
            minimal(""),
            vec![("ISSETTLED_PROXY__LISTEN", token)],
            "ISSETTLED_PROXY__LISTEN",
        ),
    ];
    for (text, env, key) in cases {
        let (code, stdout, stderr) = check_config(&text, &env).await;
        assert_eq!(code, Some(2), "{env:?}: {stderr}");
        assert!(stderr.contains(key), "{env:?}: {key} not named in {stderr}");
        for (_, value) in &env {
            assert!(
                !stdout.contains(value) && !stderr.contains(value),
                "the value was printed: {stderr}"
            );
        }
        assert!(
            !stdout.contains(token) && !stderr.contains(token),
            "the token was printed: {stderr}"
        );
    }
}

/// An environment token that is refused is logged with the reason, never with its value.
#[tokio::test]
async fn a_refused_env_token_is_logged_with_its_reason() {
    let upstream = crate::support::Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url)
        .set("token", "file", "\"\"")
        .set("token", "env", "\"MY_ISSETTLED_TOKEN\"")
        .env("MY_ISSETTLED_TOKEN", "secret with spaces");
    let mut running = cfg.start();
    running.wait_ready(&cfg.admin_url("/healthz")).await;
    running.term();
    assert_eq!(running.wait(Duration::from_secs(10)).await.code(), Some(0));
    let logs = running.stdout();
    let line = logs
        .lines()
        .find(|l| l.contains("MY_ISSETTLED_TOKEN"))
        .unwrap_or_else(|| panic!("token.env not logged:\n{logs}"));
    assert!(line.contains("characters not allowed in a bearer token"), "{line}");
    assert!(!logs.contains("secret with spaces"), "{logs}");
}

/// SIGINT (Ctrl-C on a laptop) stops it gracefully too: exit 0 with the same shutdown log.
#[tokio::test]
async fn sigint_stops_it_gracefully_with_exit_0() {
    let upstream = crate::support::Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url);
    cfg.write_token(&upstream.token());
    let mut running = cfg.start_ready().await;
    running.signal("INT");
    let status = running.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", running.stderr());
    let logs = running.stdout();
    assert!(logs.contains("SIGINT") && logs.contains("stopped"), "{logs}");
}

#[tokio::test]
async fn an_address_in_use_exits_1() {
    let upstream = crate::support::Upstream::spawn().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let cfg = BinConfig::new(&upstream.url).set("listen", "address", &quote(&taken.local_addr().unwrap().to_string()));
    cfg.write_token(&upstream.token());
    let mut running = cfg.start();
    let status = running.wait(Duration::from_secs(10)).await;
    assert_eq!(status.code(), Some(1), "stderr:\n{}", running.stderr());
    assert!(running.stderr().contains("listen.address"), "{}", running.stderr());
    drop(taken);
}

/// At trace level, through requests, an error echoing the token, refreshes (admin and after an
/// upstream 401) and a SIGTERM, no token the upstream ever issued appears in the output.
#[tokio::test]
async fn no_token_in_trace_logs() {
    let upstream = crate::support::Upstream::spawn().await;
    let first = upstream.token();
    let cfg = BinConfig::new(&upstream.url)
        .set("token", "min_refresh_gap", "\"100ms\"")
        // Long enough that no scheduled refresh lands between reading the current token and its 401 below (on a
        // loaded machine that took longer than 2 s), short enough for the scheduled one waited for at the end.
        .set("token", "refresh_interval", "\"5s\"")
        .set("token", "revoke_after", "\"15m\"")
        .env("RUST_LOG", "trace");
    cfg.write_token(&first);
    let mut running = cfg.start_ready().await;
    let c = crate::support::client();

    for _ in 0..3 {
        let r = c.get(cfg.url("/digital-accounts?limit=2")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    let r = c
        .post(cfg.url("/payments"))
        .json(&serde_json::json!({"amount": "1.00", "currency": "EUR", "creditor_account": "DA-1002"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    // An upstream error that repeats the token in its body and a header.
    let r = c.get(cfg.url("/errors/echo-token")).send().await.unwrap();
    assert_eq!(r.status(), 400);
    let headers = format!("{:?}", r.headers());
    let body = r.text().await.unwrap();
    for t in upstream.sim.issued_tokens() {
        assert!(
            !body.contains(&t) && !headers.contains(&t),
            "the token reached the app: {body}"
        );
    }

    // Refreshes on demand.
    for _ in 0..3 {
        let r = c.post(cfg.admin_url("/refresh")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    }

    // An upstream 401 on the current token: one refresh, then the GET is retried.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let current = upstream.sim.issued_tokens().last().unwrap().clone();
    upstream.sim.reject_api_token(&current);
    let refreshes = upstream.sim.refresh_calls().len();
    let r = c.get(cfg.url("/digital-accounts")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let requests = upstream.sim.requests();
    let [.., refused, retried] = &requests[..] else {
        panic!("too few requests")
    };
    assert_eq!(refused.token.as_deref(), Some(current.as_str()));
    assert!(!refused.token_valid, "the rejected token was accepted");
    assert!(
        retried.token_valid && retried.token.as_deref() != Some(current.as_str()),
        "no retry with a new token"
    );
    assert!(
        upstream.sim.refresh_calls().len() > refreshes,
        "no refresh after the 401"
    );

    // Let the scheduled refresh run once too.
    let before = upstream.sim.refresh_calls().len();
    assert!(
        crate::support::wait_for(|| async { upstream.sim.refresh_calls().len() > before }).await,
        "no scheduled refresh"
    );
    let r = c.get(cfg.url("/digital-accounts/DA-1001")).send().await.unwrap();
    assert_eq!(r.status(), 200);

    running.term();
    let status = running.wait(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", tail(&running.stderr()));

    let (stdout, stderr) = (running.stdout(), running.stderr());
    assert!(stdout.lines().count() > 20, "too few log lines:\n{stdout}");
    assert!(
        stdout.lines().any(|l| l.contains("token_refresh")),
        "no token_refresh event in the logs:\n{}",
        tail(&stdout)
    );
    let issued = upstream.sim.issued_tokens();
    assert!(issued.len() >= 6, "{} tokens issued", issued.len());
    for token in &issued {
        for (name, text) in [("stdout", &stdout), ("stderr", &stderr)] {
            if let Some(line) = text.lines().find(|l| l.contains(token.as_str())) {
                panic!("a token appears on {name}: {line}");
            }
            // Nor its signature alone (a token cut at a dot).
            let signature = token.rsplit('.').next().unwrap();
            assert!(!text.contains(signature), "a token's signature appears on {name}");
        }
    }
}

/// Start `issettled-proxy wait` against `cfg`'s admin port and check it is still waiting 0.7 s later.
async fn start_waiting(cfg: &BinConfig, still_because: &str) -> Running {
    let mut wait = command();
    // A time-out far beyond the test's own waits: on a loaded machine the sidecar may take seconds to be ready.
    wait.args(["wait", "--admin", &cfg.admin_url(""), "--timeout", "60s"]);
    let mut waiting = Running::spawn(wait);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        waiting.child.try_wait().unwrap().is_none(),
        "wait returned {still_because}"
    );
    waiting
}

/// Once `proxy` is ready, `waiting` exits 0 soon after; then the proxy stops cleanly.
async fn exits_0_once_ready(cfg: &BinConfig, proxy: &mut Running, waiting: &mut Running) {
    proxy.wait_ready(&cfg.admin_url("/readyz")).await;
    let ready_at = Instant::now();
    let status = waiting.wait(Duration::from_secs(5)).await;
    assert_eq!(status.code(), Some(0), "{status:?} {}", waiting.stderr());
    // `wait` polls every 100 ms, so it normally returns about 0.1 s after readiness ("within a second", with a
    // little room for a loaded machine).
    assert!(
        ready_at.elapsed() < Duration::from_millis(1200),
        "{:?}",
        ready_at.elapsed()
    );
    proxy.term();
    assert_eq!(proxy.wait(Duration::from_secs(10)).await.code(), Some(0));
}

/// `wait` against a sidecar that starts later: exit 0 within about a second of it becoming ready.
#[tokio::test]
async fn wait_returns_once_the_sidecar_starts() {
    let upstream = crate::support::Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url);
    cfg.write_token(&upstream.token());
    let mut waiting = start_waiting(&cfg, "before the sidecar started").await;
    let mut proxy = cfg.start();
    exits_0_once_ready(&cfg, &mut proxy, &mut waiting).await;
}

/// `wait` against a sidecar that runs without a token until its token file appears.
#[tokio::test]
async fn wait_returns_once_the_token_file_appears() {
    let upstream = crate::support::Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url);
    let mut proxy = cfg.start();
    proxy.wait_ready(&cfg.admin_url("/healthz")).await;
    let c = crate::support::client();
    assert_eq!(c.get(cfg.admin_url("/readyz")).send().await.unwrap().status(), 503);

    let mut waiting = start_waiting(&cfg, "while the sidecar had no token").await;
    cfg.write_token(&upstream.token());
    exits_0_once_ready(&cfg, &mut proxy, &mut waiting).await;
}

/// `wait` with nothing listening: exit 1 at its time-out, not before and not much after.
#[tokio::test]
async fn wait_exits_1_at_its_timeout() {
    let port = crate::support::binary::free_port();
    let started = Instant::now();
    let mut cmd = command();
    cmd.args([
        "wait",
        "--admin",
        &format!("http://127.0.0.1:{port}"),
        "--timeout",
        "3s",
    ]);
    let out = output(cmd, Duration::from_secs(10)).await;
    let took = started.elapsed();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(took >= Duration::from_millis(2900), "gave up early: {took:?}");
    assert!(took < Duration::from_secs(5), "overran its time-out: {took:?}");
}

/// `wait --admin ADDRESS --timeout 5s`: exit 1 and what it printed. (The reason is the last answer seen, so the
/// first poll must get one in time: with 1 s a loaded machine could print "no answer yet" instead.)
async fn wait_gives_up(admin: &str) -> String {
    let mut cmd = command();
    cmd.args(["wait", "--admin", admin, "--timeout", "5s"]);
    let out = output(cmd, Duration::from_secs(30)).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    stderr
}

/// When `wait` gives up it says why: nothing answered (connection refused), not ready with `/readyz`'s reason,
/// or pointed at the proxy port, which is not an admin port (and its request never reaches the upstream).
#[tokio::test]
async fn wait_says_why_it_is_still_waiting_when_it_gives_up() {
    let nothing = format!("http://127.0.0.1:{}", crate::support::binary::free_port());
    let stderr = wait_gives_up(&nothing).await;
    assert!(
        stderr.contains("nothing answered") && stderr.to_lowercase().contains("refused"),
        "{stderr}"
    );

    let upstream = crate::support::Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url);
    let mut proxy = cfg.start();
    proxy.wait_ready(&cfg.admin_url("/healthz")).await;
    let stderr = wait_gives_up(&cfg.admin_url("")).await;
    assert!(stderr.contains("not ready: no token loaded"), "{stderr}");

    cfg.write_token(&upstream.token());
    proxy.wait_ready(&cfg.admin_url("/readyz")).await;
    upstream.sim.clear_log();
    let stderr = wait_gives_up(&cfg.url("")).await;
    assert!(stderr.contains("not an admin port"), "{stderr}");
    let sent: Vec<String> = upstream
        .sim
        .requests()
        .iter()
        .map(|r| r.path_and_query.clone())
        .collect();
    assert!(sent.iter().all(|p| !p.contains("readyz")), "sent upstream: {sent:?}");
    proxy.term();
    assert_eq!(proxy.wait(Duration::from_secs(10)).await.code(), Some(0));
}

/// `wait --admin` without a scheme (or with another one) is a usage error: exit 2 at once, naming `--admin`,
/// instead of polling a URL that can never answer until the time-out.
#[tokio::test]
async fn wait_with_a_bad_admin_url_exits_2_at_once() {
    for admin in [
        "127.0.0.1:8081",
        "localhost:8081",
        "https://",
        "ftp://127.0.0.1:8081",
        "http://",
    ] {
        let started = Instant::now();
        let mut cmd = command();
        cmd.args(["wait", "--admin", admin, "--timeout", "30s"]);
        let out = output(cmd, Duration::from_secs(10)).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{admin}: {stderr}");
        assert!(stderr.contains("--admin"), "{admin}: {stderr}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{admin}: {:?}",
            started.elapsed()
        );
    }
}

/// `demo` on its fixed ports, if they are free: the printed curl line works, SIGTERM stops it with 0.
#[tokio::test]
async fn demo_serves_and_stops() {
    for port in [8080, 8081, 8090] {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            eprintln!("demo_serves_and_stops: port {port} is in use; skipping the demo smoke test");
            return;
        }
    }
    let mut cmd = command();
    cmd.arg("demo");
    let mut demo = Running::spawn(cmd);
    demo.wait_ready("http://127.0.0.1:8081/readyz").await;
    let c = crate::support::client();
    let r = c.get("http://127.0.0.1:8080/digital-accounts").send().await.unwrap();
    assert_eq!(r.status(), 200);
    let accounts: serde_json::Value = r.json().await.unwrap();
    assert!(accounts.as_array().is_some_and(|a| !a.is_empty()), "{accounts}");
    // Printed before it serves, but read from the pipe by a task of ours: wait for it rather than assume it.
    let printed =
        crate::support::wait_for(|| async { demo.stdout().contains("curl -s http://127.0.0.1:8080/digital-accounts") })
            .await;
    assert!(printed, "{}", demo.stdout());
    // Its JSON answers end with a newline (curl's output, then the prompt on its own line): the upstream's, the
    // proxy's errors, the admin port's.
    for (method, url) in [
        (http::Method::GET, "http://127.0.0.1:8080/digital-accounts"),
        (http::Method::PUT, "http://127.0.0.1:8080/payments/1"),
        (http::Method::GET, "http://127.0.0.1:8080/errors/404"),
        (http::Method::GET, "http://127.0.0.1:8081/status"),
        (http::Method::GET, "http://127.0.0.1:8081/readyz"),
        (http::Method::POST, "http://127.0.0.1:8081/refresh"),
    ] {
        let body = c
            .request(method.clone(), url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            body.ends_with(b"}\n") || body.ends_with(b"]\n"),
            "{method} {url}: {body:?}"
        );
    }
    // A second demo meanwhile: one clear line on stderr, nothing else.
    let mut again = command();
    again.arg("demo");
    let out = output(again, Duration::from_secs(10)).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("is another `issettled-proxy demo` running?"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    demo.term();
    let status = demo.wait(Duration::from_secs(15)).await;
    assert_eq!(status.code(), Some(0), "stderr:\n{}", demo.stderr());
}
