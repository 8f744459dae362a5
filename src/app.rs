//! The only wiring, in three steps: [`App::build`] makes every part from the configuration (token cell and
//! refresher, upstream clients, metrics, both handlers), [`App::serve`] spawns the servers on listeners the caller
//! bound, and [`Serving::shut_down`] runs the shutdown sequence (src/app/stop.rs).

mod check;
mod settings;
mod stop;

pub use check::{check, render_effective, startup};
pub(crate) use stop::Flush;

use std::{future::Future, os::unix::fs::PermissionsExt, sync::Arc};

use tokio::net::{TcpListener, UnixListener};

use crate::{
    admin::{self, AdminState},
    cluster::{self, Cluster},
    config::{Config, ConfigError, ShutdownConfig},
    metrics::Metrics,
    proxy::{self, client, target::Target, ProxyState},
    server::{self, Limits, ListenerGroup},
    shutdown::{OsSignals, Phase, Shutdown},
    telemetry,
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
    /// Cluster mode could not reach or use the Kubernetes API at start.
    #[error("cluster mode: {0}")]
    Cluster(String),
    #[error("stopped by a second signal before the shutdown finished")]
    SecondSignal,
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
    pub(crate) async fn bind(cfg: &Config) -> Result<Self, AppError> {
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
    let app = App::build(&cfg).await?;
    app.serve(listeners)
        .until(signals.nth(1))
        .await
        .shut_down(signals.nth(2))
        .await
}

/// Run on `listeners` until `signal` completes (or `POST /quitquitquit`), then shut down gracefully.
pub async fn run(cfg: Config, listeners: Listeners, signal: impl Future<Output = ()>) -> Result<(), AppError> {
    check::state_file_place(&cfg, token::state_file::prepare)?;
    let app = App::build(&cfg).await?;
    app.serve(listeners)
        .until(signal)
        .await
        .shut_down(std::future::pending())
        .await
}

/// Every part of a running sidecar, built from the configuration and not yet serving.
pub(crate) struct App {
    proxy: Arc<ProxyState>,
    admin: Arc<AdminState>,
    refresher: Refresher<HttpRefreshClient>,
    limits: Limits,
    /// Moves the proxy port through its phases; the admin port and the refresher follow `admin_phase`, later.
    proxy_phase: Shutdown,
    admin_phase: Shutdown,
    timing: ShutdownConfig,
    /// Cluster mode's elector and watches, and the cell whose refresh in flight it waits for before releasing
    /// the Lease.
    cluster: Option<(Cluster, Arc<TokenCell>)>,
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
    /// Build every part: clients (TLS material loaded), the token cell with its initial token, the refresher
    /// (joined to the Kubernetes API in cluster mode), the proxy's and the admin port's state.
    pub(crate) async fn build(cfg: &Config) -> Result<Self, AppError> {
        let tls = client::tls_config(&cfg.upstream)?;
        // One route and one set of proxy credentials for both upstream clients.
        let egress = client::Egress::new(&cfg.upstream)?;
        egress.log_decision();
        let upstream = Arc::new(client::upstream_pool(&cfg.upstream, tls.clone(), &egress)?);
        let metrics = Arc::new(Metrics::new().with_log_lines_dropped(telemetry::dropped_lines));
        let (refresher, cell, refresh) = token_keeper(cfg, tls, &egress, &metrics)?;
        let (refresher, cluster) = join_the_cluster(cfg, refresher, &metrics).await?;
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
            token: cell.clone(),
            refresh,
            metrics,
            signal: proxy_phase.signal(),
            quit: cfg.shutdown.enable_quit_endpoint.then(|| proxy_phase.clone()),
            upstream: cfg.upstream.base_url.as_string(),
            upstream_proxy: egress.proxy_shown(),
            member_id: (!cfg.upstream.member_id.is_empty()).then(|| cfg.upstream.member_id.clone()),
            cluster: cluster.as_ref().map(Cluster::report),
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
            cluster: cluster.map(|c| (c, cell)),
            started,
        })
    }

    /// Spawn the refresher and the servers: the proxy's TCP port and Unix socket share one
    /// `listen.max_connections`; the admin port has its own, so probes are answered when the proxy port is full.
    pub(crate) fn serve(self, listeners: Listeners) -> Serving {
        let refresher_stop = self.admin_phase.signal();
        let refresher = tokio::spawn(
            self.refresher
                .run(async move { refresher_stop.reached(Phase::Stopping).await }),
        );
        let flush = self
            .cluster
            .map(|(cluster, cell)| compete_for_the_lease(cluster, cell, &self.proxy_phase));
        let handler = proxy::handler(self.proxy);
        let group = ListenerGroup::new(self.limits.max_connections, self.proxy_phase.signal());
        let mut proxies = vec![tokio::spawn(serve(
            listeners.proxy,
            handler.clone(),
            self.limits,
            group.clone(),
        ))];
        if let Some(unix) = listeners.unix {
            proxies.push(tokio::spawn(serve(unix, handler, self.limits, group)));
        }
        let admin_group = ListenerGroup::new(self.limits.max_connections, self.admin_phase.signal());
        let admin = tokio::spawn(serve(
            listeners.admin,
            admin::router(self.admin),
            self.limits,
            admin_group,
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
            flush,
        }
    }
}

/// Cluster mode: give the refresher the Kubernetes API as its store, authority and events (mode `off`: as it is).
async fn join_the_cluster(
    cfg: &Config,
    refresher: Refresher<HttpRefreshClient>,
    metrics: &Arc<Metrics>,
) -> Result<(Refresher<HttpRefreshClient>, Option<Cluster>), AppError> {
    let Some(k8s) = &cfg.cluster else {
        return Ok((refresher, None));
    };
    let state_file = cfg.token.state_file.clone();
    let (refresher, cluster) = cluster::attach(k8s, state_file, cfg.token.revoke_after, refresher, metrics.clone())
        .await
        .map_err(|e| AppError::Cluster(e.to_string()))?;
    Ok((refresher, Some(cluster)))
}

/// Cluster mode: compete for the Lease until the shutdown starts; at SIGTERM (before `shutdown.delay`), a
/// refresh in flight is written, then the Lease released. The returned [`Flush`] ends when the release has.
fn compete_for_the_lease(mut cluster: Cluster, cell: Arc<TokenCell>, proxy_phase: &Shutdown) -> Flush {
    let draining = proxy_phase.signal();
    let elector = cluster.spawn(cell.clone(), async move {
        draining.reached(Phase::Draining).await;
        cluster::refresh_settled(cell, RELEASE_WAIT).await;
    });
    Box::pin(async move {
        let _ = elector.await;
        drop(cluster);
    })
}

/// How long the Lease's release waits for a refresh in flight to be written.
const RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// The token cell with its initial token, and the refresher that keeps it (with the handle to ask it for a
/// refresh).
fn token_keeper(
    cfg: &Config,
    tls: rustls::ClientConfig,
    egress: &client::Egress,
    metrics: &Arc<Metrics>,
) -> Result<(Refresher<HttpRefreshClient>, Arc<TokenCell>, RefreshHandle), AppError> {
    let refresh_client = HttpRefreshClient::new(
        client::refresh_client(&cfg.upstream, tls, egress)?,
        format!("{}{}", cfg.upstream.base_url.as_string(), cfg.token.refresh_path),
        cfg.token.refresh_method.clone(),
    )
    .through(egress.proxy_shown());
    let cell = TokenCell::new();
    let sources = settings::token_sources(cfg);
    let (mut refresher, refresh) = Refresher::new(
        settings::refresher_settings(&sources),
        cell.clone(),
        refresh_client,
        metrics.clone(),
    );
    if let Some(candidate) = token::initial_candidate(&sources) {
        refresher.adopt_initial(candidate);
    }
    Ok((refresher, cell, refresh))
}

/// Serve until the group's phase reaches stopping, then wait for the connections to close.
async fn serve<A: server::Accept, H: server::Handler>(listener: A, handler: H, limits: Limits, group: ListenerGroup) {
    let drain = server::serve(listener, handler, limits, group).await;
    drain.await;
}
