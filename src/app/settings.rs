//! The one place that reads the whole configuration: each component gets the settings type it owns, built here
//! from the parts of [`Config`] it needs, so no component sees more of the configuration than that.

use crate::{
    config::{Config, TokenConfig},
    path::RefreshPath,
    proxy::Rules,
    server::Limits,
    token::Settings,
};

/// The proxy handler's rules.
pub(super) fn proxy_rules(cfg: &Config) -> Rules {
    Rules {
        allowed_hosts: cfg.listen.allowed_hosts.clone(),
        allowed_origins: cfg.listen.allowed_origins.clone(),
        allowed_methods: cfg.policy.allowed_methods.clone(),
        allow: crate::errors::Allow::new(&cfg.policy.allowed_methods),
        allowed_path_prefixes: cfg.policy.allowed_path_prefixes.clone(),
        refresh_path: RefreshPath::new(&cfg.token.refresh_path),
        max_body_bytes: cfg.policy.max_body_bytes,
        inbound_authorization: cfg.policy.inbound_authorization,
        retry_on_401: cfg.policy.retry_on_401.clone(),
        member_id: (!cfg.upstream.member_id.is_empty()).then(|| cfg.upstream.member_id.clone()),
        request_timeout: cfg.upstream.request_timeout,
    }
}

/// The token settings the refresher gets: in cluster mode the Secrets are the only token source, so the token
/// file and environment are ignored (with one warning); `state_file` stays, as a local copy.
pub(super) fn token_sources(cfg: &Config) -> TokenConfig {
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

/// The refresher's timing and files, from [`token_sources`].
pub(super) fn refresher_settings(token: &TokenConfig) -> Settings {
    Settings {
        refresh_interval: token.refresh_interval,
        revoke_after: token.revoke_after,
        refresh_before_expiry: token.refresh_before_expiry,
        session_ttl: token.session_ttl,
        min_refresh_gap: token.min_refresh_gap,
        token_file: token.file.clone(),
        state_file: token.state_file.clone(),
    }
}

/// The connection limits and timers of both servers.
pub(super) fn server_limits(cfg: &Config) -> Limits {
    Limits {
        max_connections: cfg.listen.max_connections,
        header_read_timeout: cfg.listen.header_read_timeout,
        idle_timeout: cfg.listen.idle_timeout,
    }
}
