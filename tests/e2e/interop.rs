//! Interoperability: the running binary driven end to end by curl and by Python's standard library, checked
//! against what the simulated IsSettled received (the proxy's Bearer token, never the app's).

use std::time::Duration;

use crate::support::binary::{output, quote, BinConfig, Running};
use tokio::process::Command;

/// Start the binary in front of a fresh sim, the proxy also on a Unix socket.
async fn start() -> (crate::support::Upstream, BinConfig, Running) {
    let upstream = crate::support::Upstream::spawn().await;
    let cfg = BinConfig::new(&upstream.url);
    let socket = cfg.dir.path().join("proxy.sock").display().to_string();
    let cfg = cfg.set("listen", "unix_socket", &quote(&socket));
    cfg.write_token(&upstream.token());
    let running = cfg.start_ready().await;
    (upstream, cfg, running)
}

/// `curl` with the given arguments; returns (HTTP status, body). Proxy variables are ignored (`--noproxy`).
async fn curl(args: &[&str]) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--noproxy", "*", "--max-time", "10", "-w", "\n%{http_code}"])
        .args(args);
    let out = output(cmd, Duration::from_secs(15)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "curl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (body, code) = stdout.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status code"), body.to_owned())
}

/// The Bearer token the sim saw on its last request, checked to be a valid token it issued (not the app's).
fn last_bearer(upstream: &crate::support::Upstream) -> (issettled_proxy::sim::RecordedRequest, String) {
    let last = upstream.sim.requests().pop().expect("a request reached the sim");
    let token = crate::support::bearer(&last.headers).expect("a Bearer token upstream");
    assert!(
        upstream.sim.issued_tokens().contains(&token),
        "not a token the sim issued"
    );
    assert!(last.token_valid, "the sim refused the token");
    let authorizations = last.headers.get_all(http::header::AUTHORIZATION).iter().count();
    assert_eq!(authorizations, 1, "more than one Authorization header upstream");
    (last, token)
}

#[tokio::test]
async fn curl_end_to_end() {
    let (upstream, cfg, mut running) = start().await;

    // GET with a query; the app's own Authorization is stripped.
    let (status, body) = curl(&[
        "-H",
        "Authorization: Bearer app-own-token",
        &cfg.url("/digital-accounts?currency=EUR&limit=2"),
    ])
    .await;
    assert_eq!(status, 200, "{body}");
    let accounts: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(accounts.is_array(), "{body}");
    let (last, token) = last_bearer(&upstream);
    assert_eq!(last.method, http::Method::GET);
    assert_eq!(last.path_and_query, "/digital-accounts?currency=EUR&limit=2");
    assert_ne!(token, "app-own-token");

    // POST JSON with -d.
    let payment = r#"{"amount":"125.00","currency":"EUR","creditor_account":"DA-1002"}"#;
    let (status, body) = curl(&[
        "-X",
        "POST",
        "-H",
        "Content-Type: application/json",
        "-d",
        payment,
        &cfg.url("/payments"),
    ])
    .await;
    assert_eq!(status, 201, "{body}");
    let created: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = created["payment_id"].as_str().expect("payment_id").to_owned();
    let (last, _) = last_bearer(&upstream);
    assert_eq!(last.method, http::Method::POST);
    assert_eq!(last.path_and_query, "/payments");
    assert_eq!(&last.body[..], payment.as_bytes());
    assert_eq!(last.headers.get("content-type").unwrap(), "application/json");

    // DELETE.
    let (status, body) = curl(&["-X", "DELETE", &cfg.url(&format!("/payments/{id}"))]).await;
    assert_eq!(status, 200, "{body}");
    let (last, _) = last_bearer(&upstream);
    assert_eq!(last.method, http::Method::DELETE);
    assert_eq!(last.path_and_query, format!("/payments/{id}"));

    // An upstream error comes back in the nine-field schema, as JSON.
    let (status, body) = curl(&["-H", "Accept: application/json", &cfg.url("/errors/404")]).await;
    assert_eq!(status, 404, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    crate::support::assert_schema(&error);
    // And one of the proxy's own.
    let (status, body) = curl(&["-X", "PUT", &cfg.url("/payments/1")]).await;
    assert_eq!(status, 405, "{body}");
    let error: serde_json::Value = serde_json::from_str(&body).unwrap();
    crate::support::assert_schema(&error);
    assert_eq!(error["code"], "METHOD_NOT_ALLOWED");

    // The same proxy on its Unix socket.
    let socket = cfg.dir.path().join("proxy.sock").display().to_string();
    let (status, body) = curl(&["--unix-socket", &socket, "http://localhost/digital-accounts/DA-1001"]).await;
    assert_eq!(status, 200, "{body}");
    let (last, _) = last_bearer(&upstream);
    assert_eq!(last.path_and_query, "/digital-accounts/DA-1001");

    running.term();
    assert_eq!(running.wait(Duration::from_secs(10)).await.code(), Some(0));
}

/// Python's standard library only: GET, POST, and an `HTTPError` whose body is the nine-field JSON.
const PYTHON: &str = r#"
import json, sys, urllib.request, urllib.error

base = sys.argv[1]
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
out = {}

with opener.open(urllib.request.Request(base + "/digital-accounts?limit=1", headers={"Authorization": "Bearer py-app-token"}), timeout=10) as r:
    out["get_status"] = r.status
    out["get_body"] = json.load(r)

payment = json.dumps({"amount": "9.99", "currency": "EUR", "creditor_account": "DA-1001"}).encode()
req = urllib.request.Request(base + "/payments", data=payment, method="POST", headers={"Content-Type": "application/json"})
with opener.open(req, timeout=10) as r:
    out["post_status"] = r.status
    out["post_body"] = json.load(r)

try:
    opener.open(base + "/errors/409", timeout=10)
    out["error_status"] = None
except urllib.error.HTTPError as e:
    out["error_status"] = e.code
    out["error_content_type"] = e.headers.get("Content-Type")
    out["error_body"] = json.loads(e.read().decode())

print(json.dumps(out))
"#;

#[tokio::test]
async fn python_standard_library_end_to_end() {
    let (upstream, cfg, mut running) = start().await;
    let mut cmd = Command::new("python3");
    cmd.args(["-c", PYTHON, &cfg.url("")]);
    let out = output(cmd, Duration::from_secs(20)).await;
    assert!(
        out.status.success(),
        "python failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(result["get_status"], 200, "{result}");
    assert!(result["get_body"].is_array(), "{result}");
    assert_eq!(result["post_status"], 201, "{result}");
    assert_eq!(result["post_body"]["amount"], "9.99", "{result}");
    assert_eq!(result["error_status"], 409, "{result}");
    assert!(result["error_content_type"]
        .as_str()
        .is_some_and(|ct| ct.starts_with("application/json")));
    let error = &result["error_body"];
    crate::support::assert_schema(error);
    assert!(error.as_object().unwrap().len() >= 9);
    assert_eq!(error["code"], "PAYMENT_CONFLICT");

    let requests = upstream.sim.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert_eq!(requests[0].path_and_query, "/digital-accounts?limit=1");
    assert_eq!(requests[1].method, http::Method::POST);
    let sent: serde_json::Value = serde_json::from_slice(&requests[1].body).unwrap();
    assert_eq!(sent["amount"], "9.99");
    for r in &requests {
        let token = crate::support::bearer(&r.headers).expect("Bearer upstream");
        assert_ne!(token, "py-app-token");
        assert!(upstream.sim.issued_tokens().contains(&token));
        assert!(r.token_valid);
    }

    running.term();
    assert_eq!(running.wait(Duration::from_secs(10)).await.code(), Some(0));
}

/// The fenced block of README.md in the section `heading` whose first line starts with `fence` (```sh, ```python)
/// and that contains `needle`.
fn readme_block(heading: &str, fence: &str, needle: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let section = readme.split(heading).nth(1).expect("the README section");
    let section = section.split("\n## ").next().unwrap();
    section
        .split(fence)
        .skip(1)
        .filter_map(|rest| {
            rest.split_once("\n```")
                .map(|(block, _)| block.trim_start_matches('\n'))
        })
        .find(|block| block.contains(needle))
        .unwrap_or_else(|| panic!("no {fence} block with {needle} in {heading}"))
        .to_owned()
}

/// The README's "How an app calls it" examples, run as written (the address swapped for the test's) on a machine
/// with proxy variables set: with the README's `NO_PROXY` line they reach the sidecar; curl without it goes to
/// the (dead) proxy instead, which is why the README says so.
#[tokio::test]
async fn the_readme_examples_reach_the_sidecar_with_a_proxy_variable_set() {
    let (upstream, cfg, mut running) = start().await;
    let heading = "## How an app calls it";
    let here = |block: String| block.replace("127.0.0.1:8080", &cfg.address.to_string());
    let no_proxy = readme_block(heading, "```sh", "NO_PROXY=");
    let curl = here(readme_block(heading, "```sh", "curl "));
    let python = here(readme_block(heading, "```python", "urllib"));
    // A proxy that is not there: a request sent to it fails.
    let dead = format!("http://127.0.0.1:{}", crate::support::binary::free_port());
    let shell = |script: String| {
        let mut cmd = Command::new("sh");
        cmd.arg("-c").arg(script).env_remove("NO_PROXY").env_remove("no_proxy");
        for var in ["http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "ALL_PROXY"] {
            cmd.env(var, &dead);
        }
        cmd
    };

    let out = output(shell(format!("{no_proxy}\n{curl}")), Duration::from_secs(15)).await;
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let account: serde_json::Value = serde_json::from_str(&stdout).unwrap_or_else(|_| panic!("not JSON: {stdout}"));
    assert_eq!(account["id"], "DA-1001", "{account}");

    let script = format!("{no_proxy}\nexec python3 - <<'PY'\n{python}\nPY\n");
    let out = output(shell(script), Duration::from_secs(20)).await;
    assert!(out.status.success(), "python: {}", String::from_utf8_lossy(&out.stderr));
    assert!(!out.stdout.is_empty(), "python printed nothing");
    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(seen[1].method, http::Method::POST);
    assert!(seen.iter().all(|r| r.token_valid));

    // Without the NO_PROXY line, curl sends the request to the proxy variable's address.
    let out = output(shell(curl), Duration::from_secs(15)).await;
    assert!(out.stdout.is_empty() || !String::from_utf8_lossy(&out.stdout).contains("DA-1001"));
    assert_eq!(upstream.sim.requests().len(), 2, "reached the sidecar without NO_PROXY");

    running.term();
    assert_eq!(running.wait(Duration::from_secs(10)).await.code(), Some(0));
}

/// The README's install section names the minimum Rust version Cargo.toml declares (`rust-version`).
#[test]
fn the_readme_names_the_minimum_rust_version_of_cargo_toml() {
    let manifest = include_str!("../../Cargo.toml");
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml declares rust-version")
        .trim_matches('"');
    let install = readme_block_text("## Install");
    assert!(
        install.contains(&format!("Rust **{version}** or newer")),
        "README's Install section does not name Rust {version}:\n{install}"
    );
}

/// The text of README.md's section `heading`, up to the next section.
fn readme_block_text(heading: &str) -> String {
    let readme = include_str!("../../README.md");
    let section = readme.split(heading).nth(1).expect("the README section");
    section.split("\n## ").next().unwrap().to_owned()
}
