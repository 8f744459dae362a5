//! The only wiring: build the state from the configuration (token cell and refresher, clients, metrics), serve
//! the proxy and admin ports on listeners the caller bound, and run the shutdown sequence.

use std::{future::Future, os::unix::fs::PermissionsExt, sync::Arc};

use tokio::net::{TcpListener, UnixListener};

use crate::{
    admin::{self, AdminState},
    cluster,
    config::{Config, ConfigError},
    metrics::Metrics,
    proxy::{self, client, target::Target, ProxyState, Rules},
    server::{self, Crowd, Limits},
    shutdown::{self, Phase, Shutdown},
    telemetry,
    token::{self, refresh::HttpRefreshClient, Refresher, TokenCell},
};

/// A fatal error of a running app (exit status 1, or 2 for configuration).
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("a server task failed: {0}")]
    Task(String),
    /// Cluster mode could not reach or use the Kubernetes API at start.
    #[error("cluster mode: {0}")]
    Cluster(String),
    /// `demo` cannot start (its ports are taken).
    #[error("demo: {0}")]
    Demo(String),
}

/// The sockets the app serves on, bound before it starts (tests bind `127.0.0.1:0`).
#[derive(Debug)]
pub struct Listeners {
    pub proxy: TcpListener,
    pub admin: TcpListener,
    pub unix: Option<UnixListener>,
}

impl Listeners {
    /// Bind the configured addresses (and the Unix socket, mode 0660).
    pub async fn bind(cfg: &Config) -> Result<Self, AppError> {
        let tcp = |what: &'static str, addr: std::net::SocketAddr| async move {
            TcpListener::bind(addr).await.map_err(|source| AppError::Bind {
                what,
                addr: addr.to_string(),
                source,
            })
        };
        let proxy = tcp("listen.address", cfg.listen.address).await?;
        let admin = tcp("listen.admin_address", cfg.listen.admin_address).await?;
        let unix = match &cfg.listen.unix_socket {
            Some(path) => Some(bind_unix(path)?),
            None => None,
        };
        Ok(Self { proxy, admin, unix })
    }
}

/// Bind a Unix socket with mode 0660, replacing a stale socket file left by an earlier run.
pub fn bind_unix(path: &std::path::Path) -> Result<UnixListener, AppError> {
    let err = |source| AppError::Bind {
        what: "listen.unix_socket",
        addr: path.display().to_string(),
        source,
    };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if meta.file_type().is_socket() {
            std::fs::remove_file(path).map_err(err)?;
        }
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(err)?;
    Ok(listener)
}

/// Apply `rule` to `token.state_file`, if set; its refusal is a configuration error naming the key.
fn state_file_place(cfg: &Config, rule: fn(&std::path::Path) -> Result<(), String>) -> Result<(), ConfigError> {
    match &cfg.token.state_file {
        Some(path) => rule(path).map_err(|reason| ConfigError::invalid("token.state_file", reason)),
        None => Ok(()),
    }
}

/// Bind the configured addresses and run until SIGTERM or SIGINT. Call [`preflight::startup`](crate::preflight::startup)
/// first.
pub async fn run_bound(cfg: Config) -> Result<(), AppError> {
    // A state file that cannot be written is a configuration error before any socket is bound (as is what
    // `preflight::startup` refuses, checked by the caller first).
    state_file_place(&cfg, token::state_file::prepare)?;
    // Handlers first: from here on SIGTERM means a graceful stop, even during start-up.
    let signal = shutdown::os_signal();
    let listeners = Listeners::bind(&cfg).await?;
    run_prepared(cfg, listeners, signal).await
}

/// Run on `listeners` until `signal` completes (or `POST /quitquitquit`), then shut down gracefully.
pub async fn run(cfg: Config, listeners: Listeners, signal: impl Future<Output = ()>) -> Result<(), AppError> {
    state_file_place(&cfg, token::state_file::prepare)?;
    run_prepared(cfg, listeners, signal).await
}

/// [`run`], once `token.state_file` is prepared.
async fn run_prepared(cfg: Config, listeners: Listeners, signal: impl Future<Output = ()>) -> Result<(), AppError> {
    let tls = client::tls_config(&cfg.upstream)?;
    let upstream = Arc::new(client::upstream_pool(&cfg.upstream, tls.clone()));
    let refresh_client = HttpRefreshClient::new(
        client::refresh_client(&cfg.upstream, tls)?,
        format!("{}{}", cfg.upstream.base_url.as_string(), cfg.token.refresh_path),
        cfg.token.refresh_method.clone(),
    );
    let metrics = Arc::new(Metrics::new().with_log_lines_dropped(telemetry::dropped_lines));
    let cell = TokenCell::new();
    let token_cfg = token_sources(&cfg);
    let (mut refresher, refresh) = Refresher::new(
        token::settings(&token_cfg),
        cell.clone(),
        refresh_client,
        metrics.clone(),
    );
    if let Some(candidate) = token::initial_candidate(&token_cfg) {
        refresher.adopt_initial(candidate);
    }
    let (refresher, mut cluster) = match &cfg.cluster {
        Some(k8s) => {
            let state_file = cfg.token.state_file.clone();
            let (r, c) = cluster::attach(k8s, state_file, cfg.token.revoke_after, refresher, metrics.clone())
                .await
                .map_err(|e| AppError::Cluster(e.to_string()))?;
            (r, Some(c))
        }
        None => (refresher, None),
    };

    let proxy_phase = Shutdown::new();
    let admin_phase = Shutdown::new();
    let proxy_state = Arc::new(ProxyState {
        rules: Rules::from_config(&cfg),
        target: Target::new(&cfg.upstream.base_url),
        client: upstream,
        token: cell.clone(),
        refresh: refresh.clone(),
        metrics: metrics.clone(),
        shutdown: proxy_phase.signal(),
    });
    let admin_state = Arc::new(AdminState {
        token: cell.clone(),
        refresh,
        metrics,
        signal: proxy_phase.signal(),
        quit: cfg.shutdown.enable_quit_endpoint.then(|| proxy_phase.clone()),
        upstream: cfg.upstream.base_url.as_string(),
        member_id: (!cfg.upstream.member_id.is_empty()).then(|| cfg.upstream.member_id.clone()),
        cluster: cluster.as_ref().map(cluster::Cluster::report),
    });
    let limits = Limits {
        max_connections: cfg.listen.max_connections,
        header_read_timeout: cfg.listen.header_read_timeout,
        idle_timeout: cfg.listen.idle_timeout,
    };
    let refresher_stop = admin_phase.signal();
    let refresher = tokio::spawn(refresher.run(async move { refresher_stop.reached(Phase::Stopping).await }));
    // Cluster mode: at SIGTERM (before shutdown.delay), a refresh in flight is written, then the Lease released.
    let elector = cluster.as_mut().map(|c| {
        let (draining, cell) = (proxy_phase.signal(), cell.clone());
        c.spawn(async move {
            draining.reached(Phase::Draining).await;
            cluster::refresh_settled(cell, RELEASE_WAIT).await;
        })
    });
    let proxy_handler = proxy::handler(proxy_state);
    // One listen.max_connections for the proxy's TCP port and Unix socket together; the admin port has its own,
    // so probes are answered when the proxy port is full.
    let proxy_crowd = Crowd::new(limits.max_connections, proxy_phase.signal());
    let mut proxies = vec![tokio::spawn(serve(
        listeners.proxy,
        proxy_handler.clone(),
        limits,
        proxy_crowd.clone(),
    ))];
    if let Some(unix) = listeners.unix {
        proxies.push(tokio::spawn(serve(unix, proxy_handler, limits, proxy_crowd)));
    }
    let admin_server = tokio::spawn(serve(
        listeners.admin,
        admin::router(admin_state),
        limits,
        Crowd::new(limits.max_connections, admin_phase.signal()),
    ));
    tracing::info!(
        event = "started",
        version = env!("CARGO_PKG_VERSION"),
        address = %cfg.listen.address,
        admin_address = %cfg.listen.admin_address,
        upstream = %cfg.upstream.base_url.as_string(),
        "issettled-proxy is serving"
    );

    // Running → draining: on a signal or /quitquitquit.
    let quit = proxy_phase.signal();
    tokio::select! {
        () = signal => {},
        () = quit.reached(Phase::Draining) => {},
    }
    proxy_phase.advance(Phase::Draining);
    tracing::info!(
        event = "draining",
        delay_ms = cfg.shutdown.delay.as_millis() as u64,
        "not ready; still serving for shutdown.delay"
    );
    tokio::time::sleep(cfg.shutdown.delay).await;
    // Draining → stopping: close the listeners, let in-flight requests finish within the grace.
    proxy_phase.advance(Phase::Stopping);
    let grace_ends = tokio::time::Instant::now() + cfg.shutdown.grace;
    let drained = tokio::time::timeout_at(grace_ends, futures_util::future::join_all(proxies)).await;
    let result = match drained {
        Ok(results) => results
            .into_iter()
            .try_for_each(|r| r.map_err(|e| AppError::Task(e.to_string()))),
        Err(_) => {
            tracing::warn!(
                event = "grace_expired",
                "shutdown.grace passed with requests still in flight; closing them"
            );
            Ok(())
        }
    };
    admin_phase.advance(Phase::Stopping);
    let _ = tokio::time::timeout(LAST_WORDS, admin_server).await;
    // A refresh call in flight may finish (so a token the upstream has just issued reaches the state file),
    // but only within the grace: an upstream that hangs must not hold the exit past delay + grace.
    let refresher_ends = grace_ends.max(tokio::time::Instant::now() + LAST_WORDS);
    if tokio::time::timeout_at(refresher_ends, refresher).await.is_err() {
        tracing::warn!(
            event = "refresh_abandoned",
            "shutdown.grace passed with a token refresh still in flight; exiting without its answer"
        );
    }
    if let Some(elector) = elector {
        let _ = tokio::time::timeout(LAST_WORDS, elector).await;
    }
    drop(cluster);
    tracing::info!(event = "stopped", "issettled-proxy stopped");
    result
}

/// How long the Lease's release waits for a refresh in flight to be written.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The token settings the refresher gets: in cluster mode the Secrets are the only token source, so the token
/// file and environment are ignored (with one warning); `state_file` stays, as a local copy.
fn token_sources(cfg: &Config) -> crate::config::TokenConfig {
    let mut token = cfg.token.clone();
    if cfg.cluster.is_some() && (token.file.is_some() || token.env.is_some()) {
        tracing::warn!(
            event = "token_source_ignored",
            "cluster mode: token.file and token.env are ignored; the token comes from cluster.secret"
        );
        token.file = None;
        token.env = None;
    }
    token
}

/// How long the admin server and the refresher get to finish once the proxy has drained.
const LAST_WORDS: std::time::Duration = std::time::Duration::from_secs(1);

/// Serve until the crowd's phase reaches stopping, then wait for the connections to close.
async fn serve<A: server::Accept, H: server::Handler>(listener: A, handler: H, limits: Limits, crowd: Crowd) {
    let drain = server::serve(listener, handler, limits, crowd).await;
    drain.await;
}
