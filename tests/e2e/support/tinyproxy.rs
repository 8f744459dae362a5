//! A real forward proxy from Debian's packages, tinyproxy, started by a test as a child process on a free loopback
//! port (only `127.0.0.1` allowed in), optionally demanding Basic credentials. Missing tinyproxy skips the test
//! with a printed reason, except under `CI=true`, where it fails.

use std::time::Duration;

use tokio::process::{Child, Command};

use super::binary::{free_port, output};

/// A running tinyproxy.
pub(crate) struct Tinyproxy {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Tinyproxy {
    /// Start tinyproxy, with `BasicAuth user password` when `credentials` are given. `None` when it is not
    /// installed (the reason printed); under `CI=true` that panics instead.
    pub(crate) async fn start(credentials: Option<(&str, &str)>) -> Option<Self> {
        let mut which = Command::new("sh");
        which.args(["-c", "command -v tinyproxy"]);
        let installed = output(which, Duration::from_secs(10)).await.status.success();
        if !installed {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "tinyproxy is not installed, and CI=true: .ci/run installs it (apt-get install tinyproxy)"
            );
            eprintln!("skipped: tinyproxy is not installed (apt-get install -y tinyproxy)");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 30\nMaxClients 50\nAllow 127.0.0.1\nLogLevel Info\n\
             DisableViaHeader Yes\n"
        );
        if let Some((user, password)) = credentials {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let path = dir.path().join("tinyproxy.conf");
        std::fs::write(&path, conf).unwrap();
        // -d: in the foreground, logging to stderr, so the child is ours to stop.
        let child = Command::new("tinyproxy")
            .arg("-d")
            .arg("-c")
            .arg(&path)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start tinyproxy");
        let proxy = Self { port, child, _dir: dir };
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return Some(proxy);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("tinyproxy did not listen on 127.0.0.1:{port} within 30 s");
    }

    /// `http://127.0.0.1:port`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
