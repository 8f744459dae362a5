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
pub struct FileConfig {
    pub listen: ListenSection,
    pub upstream: UpstreamSection,
    pub token: TokenSection,
    pub policy: PolicySection,
    pub log: LogSection,
    pub shutdown: ShutdownSection,
    pub cluster: ClusterSection,
}

/// `[listen]`
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ListenSection {
    pub address: String,
    pub admin_address: String,
    pub max_connections: u64,
    pub header_read_timeout: String,
    pub idle_timeout: String,
    #[serde(deserialize_with = "list")]
    pub allowed_hosts: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub allowed_origins: Vec<String>,
    pub unix_socket: String,
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
pub struct UpstreamSection {
    pub base_url: String,
    pub member_id: String,
    pub connect_timeout: String,
    pub request_timeout: String,
    pub ca_file: String,
    pub client_cert_file: String,
    pub client_key_file: String,
    pub proxy: String,
    pub proxy_auth_file: String,
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
pub struct TokenSection {
    pub file: String,
    pub env: String,
    pub state_file: String,
    pub refresh_path: String,
    pub refresh_method: String,
    pub refresh_interval: String,
    pub revoke_after: String,
    pub refresh_before_expiry: String,
    pub session_ttl: String,
    pub min_refresh_gap: String,
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
pub struct PolicySection {
    #[serde(deserialize_with = "list")]
    pub allowed_methods: Vec<String>,
    #[serde(deserialize_with = "list")]
    pub allowed_path_prefixes: Vec<String>,
    pub max_body_bytes: u64,
    pub inbound_authorization: String,
    #[serde(deserialize_with = "list")]
    pub retry_on_401: Vec<String>,
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
pub struct LogSection {
    pub format: String,
    pub level: String,
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
pub struct ShutdownSection {
    pub delay: String,
    pub grace: String,
    pub enable_quit_endpoint: bool,
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
pub struct ClusterSection {
    pub mode: String,
    pub namespace: String,
    pub secret: String,
    pub state_secret: String,
    pub lease: String,
    pub identity: String,
    pub lease_duration: String,
    pub renew_deadline: String,
    pub retry_period: String,
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
