//! The shared harness for the integration tests: the simulated IsSettled on an ephemeral port ([`Upstream`]),
//! the proxy on ephemeral ports ([`TestProxy`]), and a client that follows no redirects and reads no proxy
//! variables. Configurations are built from TOML text plus an environment map; the process env is untouched.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{atomic::AtomicUsize, Arc},
    time::Duration,
};

use issettled_proxy::{
    app::{self, AppError, Listeners},
    config::{self, ConfigFile},
    sim::{Sim, SimConfig},
};
use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

pub(crate) mod binary;
pub(crate) mod connect_proxy;
pub(crate) mod faulty;
pub(crate) mod keepalive;
pub(crate) mod kube_api;
pub(crate) mod refusals;
pub(crate) mod tinyproxy;
pub(crate) mod tls;

/// The simulated IsSettled, serving on `127.0.0.1:0`.
pub(crate) struct Upstream {
    pub(crate) sim: Sim,
    /// `http://127.0.0.1:port` (or `https://localhost:port`), plus the sim's prefix.
    pub(crate) url: String,
    /// TLS connections accepted so far (always 0 without TLS).
    pub(crate) connections: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl Upstream {
    /// Default simulation.
    pub(crate) async fn spawn() -> Self {
        Self::spawn_with(SimConfig::default()).await
    }

    /// With a custom simulation.
    pub(crate) async fn spawn_with(cfg: SimConfig) -> Self {
        let prefix = cfg.prefix.clone();
        let sim = Sim::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = sim.router();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self {
            sim,
            url: format!("http://127.0.0.1:{}{prefix}", addr.port()),
            connections: Arc::default(),
            task,
        }
    }

    /// Over TLS with a certificate from `tls::TestPki` (served as `localhost`).
    pub(crate) async fn spawn_tls(cfg: SimConfig, server: Arc<rustls::ServerConfig>) -> Self {
        Self::spawn_tls_with(cfg, server, tls::ServeOptions::default()).await
    }

    /// Over TLS, with `options` for its connections.
    pub(crate) async fn spawn_tls_with(
        cfg: SimConfig,
        server: Arc<rustls::ServerConfig>,
        options: tls::ServeOptions,
    ) -> Self {
        let prefix = cfg.prefix.clone();
        let sim = Sim::new(cfg);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = sim.router();
        let connections = Arc::<AtomicUsize>::default();
        let task = tokio::spawn(tls::serve_tls_with(
            listener,
            server,
            router,
            options,
            connections.clone(),
        ));
        Self {
            sim,
            url: format!("https://localhost:{}{prefix}", addr.port()),
            connections,
            task,
        }
    }

    /// The newest token the sim minted (after a refresh that returned one: the proxy's current token).
    pub(crate) fn newest_token(&self) -> String {
        self.sim.issued_tokens().pop().expect("a token was minted")
    }

    /// A fresh administrator-issued token.
    pub(crate) fn token(&self) -> String {
        self.sim.mint_admin_token()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Builds a proxy configuration: TOML text for the upstream and token source, plus `ISSETTLED_PROXY__*`
/// overrides for everything else.
pub(crate) struct ProxyBuilder {
    toml: String,
    env: HashMap<String, String>,
    /// The admin listener binds every interface (as in Kubernetes), not only loopback.
    admin_everywhere: bool,
}

impl ProxyBuilder {
    /// Proxy in front of `upstream_url`, with the token handed over in the `TEST_TOKEN` variable.
    pub(crate) fn new(upstream_url: &str, token: &str) -> Self {
        let toml = format!(
            "[upstream]\nbase_url = \"{upstream_url}\"\nmember_id = \"testBank\"\nrequest_timeout = \"5s\"\n\
             [token]\nenv = \"TEST_TOKEN\"\n[log]\nformat = \"json\"\nlevel = \"warn\"\n"
        );
        let mut env = HashMap::new();
        env.insert("TEST_TOKEN".to_owned(), token.to_owned());
        Self {
            toml,
            env,
            admin_everywhere: false,
        }
    }

    /// With the token in a file instead (`token.file`); `token.env` is cleared.
    pub(crate) fn token_file(self, path: &std::path::Path) -> Self {
        self.set("TOKEN__FILE", &path.display().to_string())
            .set("TOKEN__ENV", "")
    }

    /// Override `section.key` (given as `SECTION__KEY`).
    pub(crate) fn set(mut self, key: &str, value: &str) -> Self {
        self.env.insert(format!("ISSETTLED_PROXY__{key}"), value.to_owned());
        self
    }

    /// Set the environment variable `name` in the map the configuration is loaded with (the process env is
    /// untouched): the proxy variables, for one.
    pub(crate) fn var(mut self, name: &str, value: &str) -> Self {
        self.env.insert(name.to_owned(), value.to_owned());
        self
    }

    /// The admin port on every interface (`0.0.0.0`), as the Kubernetes manifests bind it.
    pub(crate) fn admin_on_every_interface(mut self) -> Self {
        self.admin_everywhere = true;
        self
    }

    /// The validated configuration.
    pub(crate) fn config(&self) -> config::Config {
        config::load(ConfigFile::Toml(&self.toml), &self.env).expect("test configuration")
    }

    /// Bind ephemeral ports and run the app.
    pub(crate) async fn spawn(self) -> TestProxy {
        let cfg = self.config();
        let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = TcpListener::bind(if self.admin_everywhere {
            "0.0.0.0:0"
        } else {
            "127.0.0.1:0"
        })
        .await
        .unwrap();
        let unix = cfg.listen.unix_socket.as_ref().map(|p| app::bind_unix(p).unwrap());
        let addr = proxy.local_addr().unwrap();
        let admin_addr = SocketAddr::from(([127, 0, 0, 1], admin.local_addr().unwrap().port()));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app::run(cfg, Listeners { proxy, admin, unix }, async move {
            let _ = stopped.await;
        }));
        let proxy = TestProxy {
            addr,
            admin: admin_addr,
            stop: Some(stop),
            task: Some(task),
        };
        proxy.wait_until_up().await;
        proxy
    }
}

/// A running proxy on ephemeral ports.
pub(crate) struct TestProxy {
    pub(crate) addr: SocketAddr,
    pub(crate) admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), AppError>>>,
}

impl TestProxy {
    /// `http://127.0.0.1:port{path}` on the proxy port.
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.addr.port())
    }

    /// `http://127.0.0.1:port{path}` on the admin port.
    pub(crate) fn admin_url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.admin.port())
    }

    async fn wait_until_up(&self) {
        let c = client();
        for _ in 0..200 {
            if c.get(self.admin_url("/healthz")).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the proxy did not come up");
    }

    /// `GET /status` on the admin port.
    pub(crate) async fn status(&self) -> serde_json::Value {
        get_json(&self.admin_url("/status")).await.1
    }

    /// `GET /metrics` on the admin port: the Prometheus text.
    pub(crate) async fn metrics(&self) -> String {
        client()
            .get(self.admin_url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Wait until the refresh the proxy makes at start-up has succeeded (the token then comes from a refresh).
    pub(crate) async fn startup_refresh_done(&self) {
        let done = wait_for(|| async {
            let s = self.status().await;
            s["token"]["source"] == "refresh" && s["token"]["state"] == "valid"
        })
        .await;
        assert!(done, "the start-up refresh did not succeed: {}", self.status().await);
    }

    /// Wait until `/readyz` answers 200 (bounded).
    pub(crate) async fn wait_ready(&self) {
        assert!(wait_for(|| async { readyz(self).await == 200 }).await, "not ready");
    }

    /// Trigger the shutdown and wait for the app to end; re-raises a panic of the app task.
    pub(crate) async fn stop(mut self) -> Result<(), AppError> {
        self.trigger_stop();
        self.join().await
    }

    /// Start the shutdown (like SIGTERM) without waiting.
    pub(crate) fn trigger_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Wait for the app task to end.
    pub(crate) async fn join(&mut self) -> Result<(), AppError> {
        let task = self.task.take().expect("joined once");
        match task.await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("app task failed: {e}"),
        }
    }
}

impl Drop for TestProxy {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// The default simulated upstream and a default proxy in front of it, past its start-up refresh.
pub(crate) async fn refreshed_proxy() -> (Upstream, TestProxy) {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token()).spawn().await;
    proxy.startup_refresh_done().await;
    (upstream, proxy)
}

/// The simulated IsSettled over TLS (HTTP/2 by ALPN, as `tls::serve_tls` offers it) and a proxy builder that
/// trusts its test CA. Keep the directory: it holds the CA file.
pub(crate) async fn tls_upstream(cfg: SimConfig) -> (Upstream, ProxyBuilder, tempfile::TempDir) {
    tls_upstream_with(cfg, tls::ServeOptions::default()).await
}

/// [`tls_upstream`] with `options` for the upstream's connections.
pub(crate) async fn tls_upstream_with(
    cfg: SimConfig,
    options: tls::ServeOptions,
) -> (Upstream, ProxyBuilder, tempfile::TempDir) {
    let pki = tls::TestPki::generate();
    let upstream = Upstream::spawn_tls_with(cfg, pki.server.clone(), options).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let builder =
        ProxyBuilder::new(&upstream.url, &upstream.token()).set("UPSTREAM__CA_FILE", &ca.display().to_string());
    (upstream, builder, dir)
}

/// A client that follows no redirects and ignores proxy variables.
pub(crate) fn client() -> reqwest::Client {
    issettled_proxy::proxy::client::install_crypto_provider();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// `/readyz` status (0 if unreachable).
pub(crate) async fn readyz(proxy: &TestProxy) -> u16 {
    client()
        .get(proxy.admin_url("/readyz"))
        .send()
        .await
        .map_or(0, |r| r.status().as_u16())
}

/// Poll `check` every 20 ms for up to 30 s (what normally takes milliseconds can take seconds on a loaded CI
/// machine; every caller waits for something that must happen, so the bound only decides how late a failure is).
pub(crate) async fn wait_for<F, Fut>(mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if check().await {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nine fields of the IsSettled error schema.
pub(crate) const FIELDS: [&str; 9] = issettled_proxy::errors::schema::FIELDS;

/// Assert that `body` is a schema error with `code`, and return it.
pub(crate) fn assert_schema(body: &serde_json::Value) {
    let obj = body.as_object().unwrap_or_else(|| panic!("not an object: {body}"));
    for f in FIELDS {
        let v = obj.get(f).unwrap_or_else(|| panic!("{f} missing in {body}"));
        if f == "timestamp" {
            assert!(v.is_i64(), "timestamp not an integer in {body}");
        } else {
            assert!(v.is_string() || v.is_null(), "{f} not a string in {body}");
        }
    }
}

/// GET through the proxy and return (status, JSON body).
pub(crate) async fn get_json(url: &str) -> (u16, serde_json::Value) {
    let r = client().get(url).send().await.unwrap();
    let status = r.status().as_u16();
    let body = r.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// `GET url`: the body as text (the admin port's `/metrics`, say).
pub(crate) async fn get_text(url: &str) -> String {
    client().get(url).send().await.unwrap().text().await.unwrap()
}

/// The sum of the samples on the Prometheus text lines that start with `prefix` (a name, with `{` or a space).
pub(crate) fn metric_sum(text: &str, prefix: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// The Bearer token the upstream saw on a recorded request.
pub(crate) fn bearer(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::to_owned)
}

/// Send raw bytes on a new connection and read until the server closes it (or 10 s pass). Returns the raw
/// response text.
pub(crate) async fn raw(addr: SocketAddr, request: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Read one response (head, then a `Content-Length` body) or until the peer closes, within `limit`. Any stream:
/// TCP or the Unix socket.
pub(crate) async fn read_response<S: tokio::io::AsyncRead + Unpin>(stream: &mut S, limit: Duration) -> String {
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 8192];
        loop {
            let text = String::from_utf8_lossy(&out).into_owned();
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                if head.starts_with("HTTP/1.1 1") {
                    return; // an interim response
                }
                let length = head
                    .lines()
                    .find_map(|l| {
                        l.to_ascii_lowercase()
                            .strip_prefix("content-length:")
                            .map(str::to_owned)
                    })
                    .and_then(|v| v.trim().parse::<usize>().ok());
                if length.is_some_and(|n| body.len() >= n) {
                    return;
                }
            }
            match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    };
    let _ = tokio::time::timeout(limit, read).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the peer closes `stream` within `limit` (bytes still arriving are read and dropped).
pub(crate) async fn closed_within(stream: &mut tokio::net::TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let closed = async {
        loop {
            match tokio::io::AsyncReadExt::read(stream, &mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, closed).await.is_ok()
}

/// The status code of a raw response text (0 if none).
pub(crate) fn raw_status(response: &str) -> u16 {
    response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The JSON body of a raw `Connection: close` response.
pub(crate) fn raw_json(response: &str) -> serde_json::Value {
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    serde_json::from_str(body).unwrap_or(serde_json::Value::Null)
}

/// Publish `token` the way the kubelet updates a mounted Secret: write a new timestamped directory, point a
/// temporary `..data_tmp` symlink at it and rename that over `..data`; `token` itself links to `..data/token`.
pub(crate) fn publish_secret(dir: &std::path::Path, version: &str, token: &str) {
    let versioned = dir.join(version);
    std::fs::create_dir(&versioned).unwrap();
    std::fs::write(versioned.join("token"), format!("{token}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    let link = dir.join("token");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/token", &link).unwrap();
    }
}
