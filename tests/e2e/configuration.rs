//! The configuration the way `run` sees it: `check-config` refuses what `run` refuses at start, override variables
//! that name no key are errors naming the variable, and `policy.allowed_methods` holds only what IsSettled serves.

use std::time::Duration;

use crate::support::binary::{check_config, quote, BinConfig};

/// `run` on `cfg` exits at once with a configuration error; its stderr.
async fn run_refuses(cfg: &BinConfig) -> String {
    let mut running = cfg.start();
    let status = running.wait(Duration::from_secs(10)).await;
    assert_eq!(
        status.code(),
        Some(2),
        "stdout:\n{}\nstderr:\n{}",
        running.stdout(),
        running.stderr()
    );
    running.stderr()
}

/// A `listen.unix_socket` in a directory that does not exist: `run` used to fail at bind (exit 1) after
/// `check-config` had passed it. Both refuse it now, naming the key.
#[tokio::test]
async fn check_config_and_run_refuse_a_unix_socket_without_its_directory() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("absent").join("proxy.sock");
    let cfg = BinConfig::new("http://127.0.0.1:9").set("listen", "unix_socket", &quote(&socket.display().to_string()));
    let (code, _, stderr) = check_config(&cfg.toml(), &[]).await;
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("listen.unix_socket") && stderr.contains("does not exist"),
        "{stderr}"
    );
    let stderr = run_refuses(&cfg).await;
    assert!(
        stderr.contains("listen.unix_socket") && stderr.contains("does not exist"),
        "{stderr}"
    );
}

/// A token file holding `Bearer …` (or another token the proxy refuses): `run` refuses the token, so
/// `check-config` refuses the file, without printing the token.
#[tokio::test]
async fn check_config_refuses_a_token_file_the_proxy_would_refuse() {
    let cfg = BinConfig::new("http://127.0.0.1:9");
    for content in ["Bearer abc.def.ghi", "two words", ""] {
        cfg.write_token(content);
        let (code, stdout, stderr) = check_config(&cfg.toml(), &[]).await;
        assert_eq!(code, Some(2), "{content:?}: {stderr}");
        assert!(stderr.contains("token.file"), "{stderr}");
        if !content.is_empty() {
            assert!(!stderr.contains(content) && !stdout.contains(content), "{stderr}");
        }
    }
    cfg.write_token("abc.def.ghi");
    let (code, _, stderr) = check_config(&cfg.toml(), &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// `ISSETTLED_PROXY_UPSTREAM__BASE_URL` (one underscore) and `ISSETTLED_PROXY__TOKEN__FIEL` (a typo) are errors
/// naming the variable, in `check-config` and `run`; `ISSETTLED_PROXY_BIN` (no `__`) is someone else's.
#[tokio::test]
async fn override_variables_that_name_no_key_are_refused_by_name() {
    for (var, says) in [
        (
            "ISSETTLED_PROXY_UPSTREAM__BASE_URL",
            "did you mean ISSETTLED_PROXY__UPSTREAM__BASE_URL",
        ),
        ("ISSETTLED_PROXY__TOKEN__FIEL", "no token.fiel"),
    ] {
        let cfg = BinConfig::new("http://127.0.0.1:9").env(var, "http://127.0.0.1:7");
        let (code, _, stderr) = check_config(&cfg.toml(), &[(var, "http://127.0.0.1:7")]).await;
        assert_eq!(code, Some(2), "{stderr}");
        assert!(
            stderr.contains(&format!("{var}: ")) && stderr.contains(says),
            "{stderr}"
        );
        assert!(!stderr.contains("127.0.0.1:7"), "the value is not shown: {stderr}");
        let stderr = run_refuses(&cfg).await;
        assert!(stderr.contains(&format!("{var}: ")), "{stderr}");
    }
    let cfg = BinConfig::new("http://127.0.0.1:9");
    let (code, _, stderr) = check_config(&cfg.toml(), &[("ISSETTLED_PROXY_BIN", "/usr/local/bin/x")]).await;
    assert_eq!(code, Some(0), "{stderr}");
}

/// IsSettled serves GET, POST and DELETE: `allowed_methods` takes those in any case (upper-cased) and refuses
/// the rest, `CONNECT` and `PUT` included.
#[tokio::test]
async fn allowed_methods_are_get_post_and_delete_in_any_case() {
    let cfg = BinConfig::new("http://127.0.0.1:9").set("policy", "allowed_methods", "[\"get\", \"Post\", \"delete\"]");
    let (code, _, stderr) = check_config(&cfg.toml(), &[]).await;
    assert_eq!(code, Some(0), "{stderr}");
    for other in ["CONNECT", "PUT"] {
        let cfg =
            BinConfig::new("http://127.0.0.1:9").set("policy", "allowed_methods", &format!("[\"GET\", \"{other}\"]"));
        let (code, _, stderr) = check_config(&cfg.toml(), &[]).await;
        assert_eq!(code, Some(2), "{other}: {stderr}");
        assert!(
            stderr.contains("policy.allowed_methods") && stderr.contains(other),
            "{stderr}"
        );
    }
}
