//! The configuration file as written: a serde mirror of every contract key, with the defaults.
//!
//! Values stay close to their text form here (durations are strings); `validate.rs` turns this into the
//! typed [`Config`](crate::config::Config) and names the key in every error.

use serde::{Deserialize, Serialize};

/// A list given as a sequence (file) or as one string (environment variable): see [`list_from_text`].
fn list<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<String>),
        One(String),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::Many(v) => v,
        OneOrMany::One(s) => list_from_text(&s),
    })
}

/// A list written as one string: comma-separated (`GET,POST`), or as the file would write it, a JSON array
/// (`["GET","POST"]`, `[]`). Without this, `[]` in an environment variable became the one entry `[]`. Only a
/// blank value is no entries; a blank piece (`GET,,POST`, `,`) is kept, for validation to refuse.
pub(super) fn list_from_text(text: &str) -> Vec<String> {
    let text = text.trim();
    if text.is_empty() {
        return Vec::new();
    }
    if let Ok(v) = serde_json::from_str::<Vec<String>>(text) {
        return v;
    }
    text.split(',').map(|p| p.trim().to_owned()).collect()
}

/// The whole file. Unknown keys anywhere are an error (`deny_unknown_fields`).
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct FileConfig {
    pub(crate) listen: ListenSection,
    pub(crate) upstream: UpstreamSection,
    pub(crate) token: TokenSection,
    pub(crate) policy: PolicySection,
    pub(crate) log: LogSection,
    pub(crate) shutdown: ShutdownSection,
    pub(crate) cluster: ClusterSection,
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ListenSection {
    pub(crate) address: String,
    pub(crate) admin_address: String,
    pub(crate) max_connections: u64,
    pub(crate) header_read_timeout: String,
    pub(crate) idle_timeout: String,
    #[serde(deserialize_with = "list")]
    pub(crate) allowed_hosts: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub(crate) allowed_origins: Vec<String>,
    pub(crate) unix_socket: String,
}

impl Default for ListenSection {
    fn default() -> Self {
        Self {
            address: "127.0.0.1:8080".into(),
            admin_address: "127.0.0.1:8081".into(),
            max_connections: 10_000,
            header_read_timeout: "10s".into(),
            idle_timeout: "60s".into(),
            allowed_hosts: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
            allowed_origins: Vec::new(),
            unix_socket: String::new(),
        }
    }
}

/// `[upstream]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct UpstreamSection {
    pub(crate) base_url: String,
    pub(crate) member_id: String,
    pub(crate) connect_timeout: String,
    pub(crate) request_timeout: String,
    pub(crate) ca_file: String,
    pub(crate) client_cert_file: String,
    pub(crate) client_key_file: String,
    pub(crate) proxy: String,
    pub(crate) proxy_auth_file: String,
}

impl Default for UpstreamSection {
    fn default() -> Self {
        Self {
            base_url: String::new(),
            member_id: String::new(),
            connect_timeout: "5s".into(),
            request_timeout: "30s".into(),
            ca_file: String::new(),
            client_cert_file: String::new(),
            client_key_file: String::new(),
            proxy: String::new(),
            proxy_auth_file: String::new(),
        }
    }
}

/// `[token]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct TokenSection {
    pub(crate) file: String,
    pub(crate) env: String,
    pub(crate) state_file: String,
    pub(crate) refresh_path: String,
    pub(crate) refresh_method: String,
    pub(crate) refresh_interval: String,
    pub(crate) revoke_after: String,
    pub(crate) refresh_before_expiry: String,
    pub(crate) session_ttl: String,
    pub(crate) min_refresh_gap: String,
}

impl Default for TokenSection {
    fn default() -> Self {
        Self {
            file: String::new(),
            env: String::new(),
            state_file: String::new(),
            refresh_path: "/oauth-token/refresh".into(),
            refresh_method: "POST".into(),
            refresh_interval: "10m".into(),
            revoke_after: "15m".into(),
            refresh_before_expiry: "2m".into(),
            session_ttl: "24h".into(),
            min_refresh_gap: "5s".into(),
        }
    }
}

/// `[policy]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct PolicySection {
    #[serde(deserialize_with = "list")]
    pub(crate) allowed_methods: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub(crate) allowed_path_prefixes: Vec<String>,
    pub(crate) max_body_bytes: u64,
    pub(crate) inbound_authorization: String,
    #[serde(deserialize_with = "list")]
    pub(crate) retry_on_401: Vec<String>,
}

impl Default for PolicySection {
    fn default() -> Self {
        Self {
            allowed_methods: vec!["GET".into(), "POST".into(), "DELETE".into()],
            allowed_path_prefixes: Vec::new(),
            max_body_bytes: 10 * 1024 * 1024,
            inbound_authorization: "strip".into(),
            retry_on_401: vec!["GET".into()],
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct LogSection {
    pub(crate) format: String,
    pub(crate) level: String,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            format: "json".into(),
            level: "info".into(),
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ShutdownSection {
    pub(crate) delay: String,
    pub(crate) grace: String,
    pub(crate) enable_quit_endpoint: bool,
}

impl Default for ShutdownSection {
    fn default() -> Self {
        Self {
            delay: "0s".into(),
            grace: "20s".into(),
            enable_quit_endpoint: false,
        }
    }
}

/// `[cluster]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct ClusterSection {
    pub(crate) mode: String,
    pub(crate) namespace: String,
    pub(crate) secret: String,
    pub(crate) state_secret: String,
    pub(crate) lease: String,
    pub(crate) identity: String,
    pub(crate) lease_duration: String,
    pub(crate) renew_deadline: String,
    pub(crate) retry_period: String,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            mode: "off".into(),
            namespace: String::new(),
            secret: "issettled-token".into(),
            state_secret: "issettled-token-state".into(),
            lease: "issettled-proxy".into(),
            identity: String::new(),
            lease_duration: "15s".into(),
            renew_deadline: "10s".into(),
            retry_period: "2s".into(),
        }
    }
}
