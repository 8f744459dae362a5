//! The only wiring, in three steps: [`App::build`] makes every part from the configuration (token cell and
//! refresher, upstream clients, metrics, both handlers), [`App::serve`] spawns the servers on listeners the caller
//! bound, and [`Serving::shut_down`] runs the shutdown sequence (src/app/stop.rs).

mod check;
mod settings;
mod stop;

pub use check::{check, render_effective};
pub use stop::Flush;

use std::{future::Future, os::unix::fs::PermissionsExt, sync::Arc};

use tokio::net::{TcpListener, UnixListener};

use crate::{
    admin::{self, AdminState},
    config::{Config, ConfigError, ShutdownConfig},
    metrics::Metrics,
    proxy::{self, client, target::Target, ProxyState},
    server::{self, Limits, ListenerGroup},
    shutdown::{OsSignals, Phase, Shutdown},
    token::{self, refresh::HttpRefreshClient, RefreshHandle, Refresher, TokenCell},
};
use stop::Serving;

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
    #[error("stopped by a second signal before the shutdown finished")]
    SecondSignal,
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

/// Bind the configured addresses and run until SIGTERM or SIGINT; a second one cuts the shutdown short (exit 1).
pub async fn run_bound(cfg: Config) -> Result<(), AppError> {
    // A state file that cannot be written is a configuration error before any socket is bound.
    check::state_file_place(&cfg, token::state_file::prepare)?;
    // Handlers first: from here on SIGTERM means a graceful stop, even during start-up.
    let signals = OsSignals::install();
    let listeners = Listeners::bind(&cfg).await?;
    run_until_signals(cfg, listeners, signals).await
}

/// Run on `listeners` until the first of `signals` (or `POST /quitquitquit`); a second one cuts the shutdown short.
pub(crate) async fn run_until_signals(cfg: Config, listeners: Listeners, signals: OsSignals) -> Result<(), AppError> {
    let app = App::build(&cfg)?;
    app.serve(listeners)
        .until(signals.nth(1))
        .await
        .shut_down(signals.nth(2))
        .await
}

/// Run on `listeners` until `signal` completes (or `POST /quitquitquit`), then shut down gracefully.
pub async fn run(cfg: Config, listeners: Listeners, signal: impl Future<Output = ()>) -> Result<(), AppError> {
    check::state_file_place(&cfg, token::state_file::prepare)?;
    let app = App::build(&cfg)?;
    app.serve(listeners)
        .until(signal)
        .await
        .shut_down(std::future::pending())
        .await
}

/// Every part of a running sidecar, built from the configuration and not yet serving.
pub struct App {
    proxy: Arc<ProxyState>,
    admin: Arc<AdminState>,
    refresher: Refresher<HttpRefreshClient>,
    limits: Limits,
    /// Moves the proxy port through its phases; the admin port and the refresher follow `admin_phase`, later.
    proxy_phase: Shutdown,
    admin_phase: Shutdown,
    timing: ShutdownConfig,
    /// Work that must end before the process exits (see [`Flush`]).
    flush: Option<Flush>,
    /// What the `started` log line says.
    started: Started,
}

/// The addresses the `started` log line names.
#[derive(Debug)]
struct Started {
    address: std::net::SocketAddr,
    admin_address: std::net::SocketAddr,
    upstream: String,
}

// === impl App ===

impl std::fmt::Debug for App {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("App")
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

impl App {
    /// Build every part: clients (TLS material loaded), the token cell with its initial token, the refresher,
    /// the proxy's and the admin port's state.
    pub fn build(cfg: &Config) -> Result<Self, AppError> {
        let tls = client::tls_config(&cfg.upstream)?;
        let upstream = Arc::new(client::upstream_pool(&cfg.upstream, tls.clone()));
        let metrics = Arc::new(Metrics::new());
        let (refresher, cell, refresh) = token_keeper(cfg, tls, &metrics)?;
        let (proxy_phase, admin_phase) = (Shutdown::new(), Shutdown::new());
        let proxy = Arc::new(ProxyState {
            rules: settings::proxy_rules(cfg),
            target: Target::new(&cfg.upstream.base_url),
            client: upstream,
            token: cell.clone(),
            refresh: refresh.clone(),
            metrics: metrics.clone(),
            shutdown: proxy_phase.signal(),
        });
        let admin = Arc::new(AdminState {
            token: cell,
            refresh,
            metrics,
            signal: proxy_phase.signal(),
            quit: cfg.shutdown.enable_quit_endpoint.then(|| proxy_phase.clone()),
            upstream: cfg.upstream.base_url.as_string(),
            cluster: None,
        });
        let started = Started {
            address: cfg.listen.address,
            admin_address: cfg.listen.admin_address,
            upstream: cfg.upstream.base_url.as_string(),
        };
        Ok(Self {
            proxy,
            admin,
            refresher,
            limits: settings::server_limits(cfg),
            proxy_phase,
            admin_phase,
            timing: cfg.shutdown.clone(),
            flush: None,
            started,
        })
    }

    /// Spawn the refresher and the servers: the proxy's TCP port and Unix socket share one
    /// `listen.max_connections`; the admin port has its own, so probes are answered when the proxy port is full.
    pub fn serve(self, listeners: Listeners) -> Serving {
        let refresher_stop = self.admin_phase.signal();
        let refresher = tokio::spawn(
            self.refresher
                .run(async move { refresher_stop.reached(Phase::Stopping).await }),
        );
        let handler = proxy::handler(self.proxy);
        let crowd = ListenerGroup::new(self.limits.max_connections, self.proxy_phase.signal());
        let mut proxies = vec![tokio::spawn(serve(
            listeners.proxy,
            handler.clone(),
            self.limits,
            crowd.clone(),
        ))];
        if let Some(unix) = listeners.unix {
            proxies.push(tokio::spawn(serve(unix, handler, self.limits, crowd)));
        }
        let admin_crowd = ListenerGroup::new(self.limits.max_connections, self.admin_phase.signal());
        let admin = tokio::spawn(serve(
            listeners.admin,
            admin::router(self.admin),
            self.limits,
            admin_crowd,
        ));
        tracing::info!(
            event = "started",
            version = env!("CARGO_PKG_VERSION"),
            address = %self.started.address,
            admin_address = %self.started.admin_address,
            upstream = %self.started.upstream,
            "issettled-proxy is serving"
        );
        Serving {
            proxies,
            admin,
            refresher,
            proxy_phase: self.proxy_phase,
            admin_phase: self.admin_phase,
            timing: self.timing,
            flush: self.flush,
        }
    }
}

/// The token cell with its initial token, and the refresher that keeps it (with the handle to ask it for a
/// refresh).
fn token_keeper(
    cfg: &Config,
    tls: rustls::ClientConfig,
    metrics: &Arc<Metrics>,
) -> Result<(Refresher<HttpRefreshClient>, Arc<TokenCell>, RefreshHandle), AppError> {
    let refresh_client = HttpRefreshClient::new(
        client::refresh_client(&cfg.upstream, tls)?,
        format!("{}{}", cfg.upstream.base_url.as_string(), cfg.token.refresh_path),
        cfg.token.refresh_method.clone(),
    );
    let cell = TokenCell::new();
    let (mut refresher, refresh) = Refresher::new(
        settings::refresher_settings(cfg),
        cell.clone(),
        refresh_client,
        metrics.clone(),
    );
    if let Some(candidate) = token::initial_candidate(&cfg.token) {
        refresher.adopt_initial(candidate);
    }
    Ok((refresher, cell, refresh))
}

/// Serve until the crowd's phase reaches stopping, then wait for the connections to close.
async fn serve<A: server::Accept, H: server::Handler>(listener: A, handler: H, limits: Limits, crowd: ListenerGroup) {
    let drain = server::serve(listener, handler, limits, crowd).await;
    drain.await;
}
