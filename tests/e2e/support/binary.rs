//! Running the real `issettled-proxy` binary in the tests: a configuration file in a temporary directory with
//! free ports, the token in a file, the child's stdout and stderr captured, and SIGTERM by `kill -TERM`.
//! Only the child's environment is set; the test process's environment is never changed.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::{ExitStatus, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt},
    process::{Child, Command},
};

/// The binary under test.
pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_issettled-proxy");

/// A port for a child to bind (or to find nothing listening on), free now and handed out once per test process.
///
/// Taken outside the kernel's ephemeral range (`net.ipv4.ip_local_port_range`), where neither a `bind` to port 0
/// nor an outgoing connection of another test lands: nothing takes it between this check and the child's `bind`.
/// Each process starts at its own offset, so two test processes rarely walk the same ports.
pub(crate) fn free_port() -> u16 {
    use std::sync::{atomic::AtomicU32, atomic::Ordering, OnceLock};
    static WINDOW: OnceLock<(u32, u32)> = OnceLock::new();
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let (first, len) = *WINDOW.get_or_init(|| {
        let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
        let mut bounds = range.split_whitespace().filter_map(|n| n.parse::<u32>().ok());
        let (low, high) = (bounds.next().unwrap_or(32768), bounds.next().unwrap_or(60999));
        if low >= 11024 {
            (low - 10000, 10000)
        } else {
            (high + 1, 65535 - high)
        }
    });
    if len == 0 {
        // The whole port space is ephemeral: a port the kernel just handed out, as the next best.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        return listener.local_addr().unwrap().port();
    }
    let offset = std::process::id().wrapping_mul(7919) % len;
    for _ in 0..len {
        let port = first + (offset + NEXT.fetch_add(1, Ordering::Relaxed)) % len;
        let port = u16::try_from(port).expect("a port number");
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {first}..{}", first + len);
}

/// A `Command` for the binary with an empty environment except `PATH` (nothing from the test process leaks in,
/// such as `RUST_LOG` or `ISSETTLED_PROXY__*`).
pub(crate) fn command() -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

/// A configuration file for the binary, built section by section (values are TOML literals).
#[derive(Debug)]
pub(crate) struct BinConfig {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) address: SocketAddr,
    pub(crate) admin: SocketAddr,
    pub(crate) token_file: PathBuf,
    sections: BTreeMap<String, BTreeMap<String, String>>,
    env: BTreeMap<String, String>,
}

impl BinConfig {
    /// In front of `upstream_url`, on free ports, the token read from `<dir>/token` (not written yet: see
    /// [`BinConfig::write_token`]), JSON logs at `info`.
    pub(crate) fn new(upstream_url: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let address: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let token_file = dir.path().join("token");
        let mut cfg = Self {
            dir,
            address,
            admin,
            token_file,
            sections: BTreeMap::new(),
            env: BTreeMap::new(),
        };
        cfg = cfg
            .set("listen", "address", &quote(&address.to_string()))
            .set("listen", "admin_address", &quote(&admin.to_string()))
            .set("upstream", "base_url", &quote(upstream_url))
            .set("upstream", "member_id", "\"testBank\"")
            .set("upstream", "request_timeout", "\"5s\"")
            .set("log", "format", "\"json\"")
            .set("log", "level", "\"info\"");
        let file = cfg.token_file.display().to_string();
        cfg.set("token", "file", &quote(&file))
    }

    /// Set `section.key` to a TOML literal (`"\"5s\""`, `"true"`, `"[\"GET\"]"`).
    pub(crate) fn set(mut self, section: &str, key: &str, literal: &str) -> Self {
        self.sections
            .entry(section.to_owned())
            .or_default()
            .insert(key.to_owned(), literal.to_owned());
        self
    }

    /// An environment variable for the child only.
    pub(crate) fn env(mut self, key: &str, value: &str) -> Self {
        self.env.insert(key.to_owned(), value.to_owned());
        self
    }

    /// Write the token file (with the trailing newline a Secret file has).
    pub(crate) fn write_token(&self, token: &str) {
        std::fs::write(&self.token_file, format!("{token}\n")).unwrap();
    }

    /// The TOML text.
    pub(crate) fn toml(&self) -> String {
        let mut out = String::new();
        for (section, keys) in &self.sections {
            out.push_str(&format!("[{section}]\n"));
            for (k, v) in keys {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
        out
    }

    /// Write `config.toml` into the directory and return its path.
    pub(crate) fn write(&self) -> PathBuf {
        let path = self.dir.path().join("config.toml");
        std::fs::write(&path, self.toml()).unwrap();
        path
    }

    /// `http://127.0.0.1:port{path}` on the proxy port.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// `http://127.0.0.1:port{path}` on the admin port.
    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// Write the file and start `issettled-proxy run --config FILE` (not waiting for it).
    pub(crate) fn start(&self) -> Running {
        let path = self.write();
        let mut cmd = command();
        cmd.arg("run").arg("--config").arg(&path).envs(&self.env);
        Running::spawn(cmd)
    }

    /// Start and wait until `/readyz` answers 200.
    pub(crate) async fn start_ready(&self) -> Running {
        let mut running = self.start();
        running.wait_ready(&self.admin_url("/readyz")).await;
        running
    }
}

/// A TOML string literal.
pub(crate) fn quote(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// A running child with its output collected in the background (so a chatty child never blocks on a pipe).
#[derive(Debug)]
pub(crate) struct Running {
    pub(crate) child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Spawn `cmd` (which must have piped stdout and stderr).
    pub(crate) fn spawn(mut cmd: Command) -> Self {
        let mut child = cmd.spawn().expect("spawn the binary");
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let readers = vec![
            tokio::spawn(collect(child.stdout.take().unwrap(), stdout.clone())),
            tokio::spawn(collect(child.stderr.take().unwrap(), stderr.clone())),
        ];
        Self {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id().expect("still running")
    }

    /// Everything on stdout so far.
    pub(crate) fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Everything on stderr so far.
    pub(crate) fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    /// Send a signal with `kill -SIG pid`.
    pub(crate) fn signal(&self, sig: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// SIGTERM.
    pub(crate) fn term(&self) {
        self.signal("TERM");
    }

    /// Wait for the exit (bounded), then for the rest of its output.
    pub(crate) async fn wait(&mut self, limit: Duration) -> ExitStatus {
        let status = match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.unwrap(),
            Err(_) => panic!(
                "the child did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                tail(&self.stdout()),
                tail(&self.stderr())
            ),
        };
        for reader in self.readers.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), reader).await;
        }
        status
    }

    /// Poll `url` until it answers 200 (30 s at most: a start on a loaded CI machine can take seconds); panic with
    /// the child's output if it exits first.
    pub(crate) async fn wait_ready(&mut self, url: &str) {
        let client = super::client();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "the binary exited early with {status}\nstdout:\n{}\nstderr:\n{}",
                    tail(&self.stdout()),
                    tail(&self.stderr())
                );
            }
            if let Ok(r) = client.get(url).timeout(Duration::from_secs(1)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "{url} not 200 within 30 s\nstdout:\n{}\nstderr:\n{}",
            tail(&self.stdout()),
            tail(&self.stderr())
        );
    }
}

async fn collect(mut pipe: impl AsyncRead + Unpin, into: Arc<Mutex<Vec<u8>>>) {
    let mut buf = [0u8; 8192];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => into.lock().unwrap().extend_from_slice(&buf[..n]),
        }
    }
}

/// The last 4000 characters of `s`, for panic messages.
pub(crate) fn tail(s: &str) -> &str {
    let mut start = s.len().saturating_sub(4000);
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Run a short command (the binary's one-shot commands, curl, python) to completion, bounded.
pub(crate) async fn output(mut cmd: Command, limit: Duration) -> std::process::Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    match tokio::time::timeout(limit, cmd.output()).await {
        Ok(out) => out.expect("run the command"),
        Err(_) => panic!("{cmd:?} did not finish within {limit:?}"),
    }
}

/// Run `check-config --config <text>` and return (exit code, stdout, stderr).
pub(crate) async fn check_config(text: &str, env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.toml");
    std::fs::write(&path, text).unwrap();
    let mut cmd = command();
    cmd.arg("check-config").arg("--config").arg(&path);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = output(cmd, Duration::from_secs(10)).await;
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `sha256:` and the first 8 hex digits of the token's SHA-256: the only form a token may appear in.
pub(crate) fn fingerprint(token: &str) -> String {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(token.as_bytes());
    let hex: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}
