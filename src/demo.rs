//! `issettled-proxy demo`: the simulated IsSettled on 127.0.0.1:8090 and the sidecar in front of it on the
//! default ports, with curl lines that work as pasted. Needs no file, no network and no token.

use std::time::Duration;

use crate::{
    app::{self, AppError},
    config::{self, ConfigFile},
    shutdown,
    sim::{Sim, SimConfig},
    telemetry,
};

/// The configuration `demo` runs (environment overrides apply, as always).
pub(crate) const DEMO_CONFIG: &str = include_str!("../config/demo.toml");
/// Where the simulated IsSettled listens.
pub(crate) const SIM_ADDRESS: &str = "127.0.0.1:8090";

/// The curl lines printed at start.
pub(crate) fn curl_lines(proxy: &str, admin: &str) -> String {
    format!(
        r#"
issettled-proxy demo: a simulated IsSettled on http://{SIM_ADDRESS}, the sidecar on http://{proxy} (admin http://{admin}).
The app side needs no credentials. Try:

  curl -s http://{proxy}/digital-accounts
  curl -s http://{proxy}/digital-accounts/DA-1001
  curl -s -X POST http://{proxy}/payments -H 'Content-Type: application/json' -d '{{"amount":"125.00","currency":"EUR","creditor_account":"DA-1002"}}'
  curl -s -X DELETE http://{proxy}/payments/PAY-1001
  curl -s http://{proxy}/errors/404          # an upstream error, normalized to the nine-field schema
  curl -s -X PUT http://{proxy}/payments/1   # refused by the proxy: 405 METHOD_NOT_ALLOWED
  curl -s http://{admin}/status              # token state, fingerprint, refresh schedule
  curl -s -X POST http://{admin}/refresh     # refresh the token now
  curl -s http://{admin}/metrics

The token is refreshed every 30 s (the simulated upstream revokes it after 60 s without one). Ctrl-C stops.
"#
    )
}

/// A port of the demo's in use: most likely by another demo.
fn in_use(e: AppError) -> AppError {
    match e {
        AppError::Bind { what, addr, source } if source.kind() == std::io::ErrorKind::AddrInUse => AppError::Demo(
            format!("{addr} ({what}) is in use: is another `issettled-proxy demo` running? Stop it (Ctrl-C) first"),
        ),
        other => other,
    }
}

/// Run the demo until Ctrl-C.
pub async fn run() -> Result<(), AppError> {
    let signals = shutdown::OsSignals::install();
    let sim = Sim::new(SimConfig {
        revoke_after: Duration::from_secs(60),
        token_ttl: Duration::from_secs(15 * 60),
        ..SimConfig::default()
    });
    let mut env = config::process_env();
    env.insert("ISSETTLED_DEMO_TOKEN".into(), sim.mint_admin_token());
    let cfg = config::load(ConfigFile::Toml(DEMO_CONFIG), &env)?;
    // Every port is bound before logging starts: a demo that cannot start says so in one line.
    let sim_listener = tokio::net::TcpListener::bind(SIM_ADDRESS)
        .await
        .map_err(|source| AppError::Bind {
            what: "the simulated IsSettled",
            addr: SIM_ADDRESS.into(),
            source,
        })
        .map_err(in_use)?;
    let listeners = app::Listeners::bind(&cfg).await.map_err(in_use)?;
    let _log = telemetry::init(cfg.log.format, &cfg.log.filter);
    let router = sim.router();
    tokio::spawn(async move {
        if let Err(e) = axum::serve(sim_listener, router).await {
            tracing::error!(error = %e, "the simulated IsSettled stopped");
        }
    });
    println!(
        "{}",
        curl_lines(&cfg.listen.address.to_string(), &cfg.listen.admin_address.to_string())
    );
    app::run_until_signals(cfg, listeners, signals).await
}
