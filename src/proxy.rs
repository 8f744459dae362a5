//! The proxy port: every request goes through one handler ([`forward`]) that checks it, injects the token,
//! sends it to the one configured upstream, and streams the answer back (or normalizes an error).

pub mod body;
pub mod client;
pub mod deadline;
pub mod encoding;
pub mod forward;
pub mod headers;
pub mod policy;
pub mod pool;
pub mod request_id;
pub mod target;
pub mod tcp;

use std::{sync::Arc, time::Duration};

use http::Method;

use crate::{
    config::{Config, InboundAuthorization},
    errors::Allow,
    metrics::Metrics,
    shutdown::ShutdownSignal,
    token::{RefreshHandle, TokenCell},
};
use pool::Pool;
use target::Target;

/// The request rules, from the configuration.
#[derive(Debug, Clone)]
pub struct Rules {
    pub allowed_hosts: Vec<String>,
    pub allowed_origins: Vec<String>,
    pub allowed_methods: Vec<Method>,
    /// `allowed_methods` for the `Allow` header of a 405.
    pub allow: Allow,
    pub allowed_path_prefixes: Vec<String>,
    /// `token.refresh_path`: the proxy's own endpoint, never forwarded for an app.
    pub refresh_path: policy::RefreshPath,
    pub max_body_bytes: u64,
    pub inbound_authorization: InboundAuthorization,
    pub retry_on_401: Vec<Method>,
    pub member_id: Option<String>,
    pub request_timeout: Duration,
}

impl Rules {
    /// From the validated configuration.
    pub fn from_config(cfg: &Config) -> Self {
        Self {
            allowed_hosts: cfg.listen.allowed_hosts.clone(),
            allowed_origins: cfg.listen.allowed_origins.clone(),
            allowed_methods: cfg.policy.allowed_methods.clone(),
            allow: Allow::new(&cfg.policy.allowed_methods),
            allowed_path_prefixes: cfg.policy.allowed_path_prefixes.clone(),
            refresh_path: policy::RefreshPath::new(&cfg.token.refresh_path),
            max_body_bytes: cfg.policy.max_body_bytes,
            inbound_authorization: cfg.policy.inbound_authorization,
            retry_on_401: cfg.policy.retry_on_401.clone(),
            member_id: (!cfg.upstream.member_id.is_empty()).then(|| cfg.upstream.member_id.clone()),
            request_timeout: cfg.upstream.request_timeout,
        }
    }
}

/// Everything the handler reads. Built once by the app.
#[derive(Debug)]
pub struct ProxyState {
    pub rules: Rules,
    pub target: Target,
    pub client: Arc<Pool>,
    pub token: Arc<TokenCell>,
    pub refresh: RefreshHandle,
    pub metrics: Arc<Metrics>,
    pub shutdown: ShutdownSignal,
}

/// The proxy port's service: [`forward::forward`] for every request, without a router in front. An axum
/// fallback is a catch-all route: a path lookup and a parameters map per request, for a port that has one
/// handler (bench/README.md has the instruction counts).
pub fn handler(state: Arc<ProxyState>) -> impl crate::server::Handler {
    axum::handler::Handler::with_state(forward::forward, state)
}
