//! The proxy port: every request goes through one handler ([`forward`]) that checks it, injects the token,
//! sends it to the one configured upstream, and streams the answer back (or normalizes an error).

// A panic aborts the process (`panic = "abort"`): nothing on the request path may unwrap or expect.
#![deny(clippy::expect_used, clippy::unwrap_used)]

pub(crate) mod body;
pub mod client;
pub(crate) mod deadline;
pub(crate) mod encoding;
pub(crate) mod forward;
pub(crate) mod headers;
pub(crate) mod policy;
pub(crate) mod pool;
pub(crate) mod request_id;
pub(crate) mod target;
pub(crate) mod tcp;
pub(crate) mod tunnel;

use std::{sync::Arc, time::Duration};

use http::Method;

use crate::{
    config::InboundAuthorization,
    errors::Allow,
    metrics::Metrics,
    shutdown::ShutdownSignal,
    token::{RefreshHandle, TokenCell},
};
use pool::Pool;
use target::Target;

/// The request rules (built from the configuration by the app).
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    pub(crate) allowed_hosts: Vec<String>,
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) allowed_methods: Vec<Method>,
    /// `allowed_methods` for the `Allow` header of a 405.
    pub(crate) allow: Allow,
    pub(crate) allowed_path_prefixes: Vec<String>,
    /// `token.refresh_path`: the proxy's own endpoint, never forwarded for an app.
    pub(crate) refresh_path: crate::path::RefreshPath,
    pub(crate) max_body_bytes: u64,
    pub(crate) inbound_authorization: InboundAuthorization,
    pub(crate) retry_on_401: Vec<Method>,
    pub(crate) member_id: Option<String>,
    pub(crate) request_timeout: Duration,
}

/// Everything the handler reads. Built once by the app.
#[derive(Debug)]
pub(crate) struct ProxyState {
    pub(crate) rules: Rules,
    pub(crate) target: Target,
    pub(crate) client: Arc<Pool>,
    pub(crate) token: Arc<TokenCell>,
    pub(crate) refresh: RefreshHandle,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) shutdown: ShutdownSignal,
}

/// The proxy port's service: [`forward::forward`] for every request, without a router in front. An axum
/// fallback is a catch-all route: a path lookup and a parameters map per request, for a port that has one
/// handler (bench/README.md has the instruction counts).
pub(crate) fn handler(state: Arc<ProxyState>) -> impl crate::server::Handler {
    axum::handler::Handler::with_state(forward::forward, state)
}
