//! Configuration: load a TOML or YAML file plus `ISSETTLED_PROXY__SECTION__KEY` overrides, then validate it
//! into the typed [`Config`] the rest of the program reads.
//!
//! Loading takes the environment as a map, so tests build configurations without touching the process env.

mod env;
mod file;
mod log_filter;
mod redact;
mod validate;

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, time::Duration};

use http::{uri::Authority, uri::Scheme, Method};

pub(crate) use file::FileConfig;
pub(crate) use redact::render_effective;

/// Prefix of the environment variables that override file values.
pub(crate) const ENV_PREFIX: &str = "ISSETTLED_PROXY";

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenConfig,
    pub(crate) upstream: UpstreamConfig,
    pub(crate) token: TokenConfig,
    pub(crate) policy: PolicyConfig,
    pub log: LogConfig,
    pub(crate) shutdown: ShutdownConfig,
    pub(crate) cluster: ClusterConfig,
    /// The file form, as merged from file and environment, for `check-config`.
    pub(crate) raw: FileConfig,
}

/// `[listen]`, validated.
#[derive(Debug, Clone)]
pub struct ListenConfig {
    pub(crate) address: SocketAddr,
    pub(crate) admin_address: SocketAddr,
    pub(crate) max_connections: usize,
    pub(crate) header_read_timeout: Duration,
    pub(crate) idle_timeout: Duration,
    /// Lower-cased host names (no port); empty means any.
    pub(crate) allowed_hosts: Vec<String>,
    /// Exact origins (`scheme://host[:port]`, lower-cased); empty means none.
    pub(crate) allowed_origins: Vec<String>,
    pub unix_socket: Option<PathBuf>,
}

/// The upstream's base URL split into the parts the proxy concatenates (never joins).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BaseUrl {
    pub(crate) scheme: Scheme,
    pub(crate) authority: Authority,
    /// Path prefix without a trailing slash: `""` or `"/api/v1"`.
    pub(crate) prefix: String,
}

impl BaseUrl {
    /// `scheme://authority/prefix`, as configured (normalized).
    pub(crate) fn as_string(&self) -> String {
        format!("{}://{}{}", self.scheme, self.authority, self.prefix)
    }
}

/// `[upstream]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConfig {
    pub(crate) base_url: BaseUrl,
    pub(crate) member_id: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ca_file: Option<PathBuf>,
    pub(crate) client_cert_file: Option<PathBuf>,
    pub(crate) client_key_file: Option<PathBuf>,
    /// How every call to the upstream is made (`upstream.proxy` and the proxy variables, decided once).
    pub(crate) route: crate::egress::Route,
    pub(crate) proxy_auth_file: Option<PathBuf>,
}

/// `token.env`: the variable's name, and its value as it was when the configuration was loaded (the environment
/// of a process does not change). The value is kept here unread: the token module parses it
/// (`token::source::EnvToken`), and no `Debug` or error ever shows it.
#[derive(Clone)]
pub(crate) struct TokenEnv {
    /// Name of the variable (checked to be a variable name, so it is safe to print).
    pub(crate) name: String,
    value: Option<String>,
}

// === impl TokenEnv ===

impl TokenEnv {
    /// The variable `name` as `env` has it.
    pub(crate) fn read(name: &str, env: &HashMap<String, String>) -> Self {
        Self {
            name: name.to_owned(),
            value: env.get(name).cloned(),
        }
    }

    /// The variable's value, `None` when it was not set. A secret: parse it, never print it.
    pub(crate) fn value(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl std::fmt::Debug for TokenEnv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value = if self.value.is_some() {
            "<set, not shown>"
        } else {
            "<not set>"
        };
        f.debug_struct("TokenEnv")
            .field("name", &self.name)
            .field("value", &value)
            .finish()
    }
}

/// `[token]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct TokenConfig {
    pub(crate) file: Option<PathBuf>,
    pub(crate) env: Option<TokenEnv>,
    pub(crate) state_file: Option<PathBuf>,
    pub(crate) refresh_path: String,
    pub(crate) refresh_method: Method,
    pub(crate) refresh_interval: Duration,
    pub(crate) revoke_after: Duration,
    pub(crate) refresh_before_expiry: Duration,
    pub(crate) session_ttl: Duration,
    pub(crate) min_refresh_gap: Duration,
}

/// What to do with an `Authorization` header sent by the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InboundAuthorization {
    /// Drop it; the proxy's token replaces it.
    Strip,
    /// Answer 400 `BAD_REQUEST`.
    Reject,
}

/// `[policy]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct PolicyConfig {
    pub(crate) allowed_methods: Vec<Method>,
    /// Whole-segment prefixes without trailing slash; empty means every path.
    pub(crate) allowed_path_prefixes: Vec<String>,
    pub(crate) max_body_bytes: u64,
    pub(crate) inbound_authorization: InboundAuthorization,
    pub(crate) retry_on_401: Vec<Method>,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// `[log]`, validated.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub format: LogFormat,
    /// The filter in effect: `RUST_LOG` when set, else `log.level`; both checked (a level or `target=level`).
    pub filter: String,
}

/// `[cluster]`, validated. `None` in mode `off`.
pub(crate) type ClusterConfig = Option<KubernetesConfig>;

/// `[cluster]` with `mode = "kubernetes"`: every replica naming the same Secrets and Lease shares one chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct KubernetesConfig {
    /// `None`: `POD_NAMESPACE` was unset too; the client's own namespace applies.
    pub(crate) namespace: Option<String>,
    /// The administrator's Secret (key `token`), only read.
    pub(crate) secret: String,
    /// The chain's Secret (key `state`), written by the leader.
    pub(crate) state_secret: String,
    pub(crate) lease: String,
    /// This replica's name in the Lease: the key, else `POD_NAME`, else the host name.
    pub(crate) identity: String,
    pub(crate) lease_duration: Duration,
    pub(crate) renew_deadline: Duration,
    pub(crate) retry_period: Duration,
    /// `KUBECONFIG`, when set (a `:`-separated list, merged as kubectl merges it): its current context finds
    /// the API; else the pod's service account at `KUBERNETES_SERVICE_HOST`:`KUBERNETES_SERVICE_PORT`.
    pub(crate) kubeconfig: Vec<PathBuf>,
    pub(crate) service_host: Option<String>,
    pub(crate) service_port: Option<String>,
}

/// `[shutdown]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownConfig {
    pub(crate) delay: Duration,
    pub(crate) grace: Duration,
    pub(crate) enable_quit_endpoint: bool,
}

/// A configuration that cannot be used; the message names the key. Exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration: {0}")]
    Load(String),
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    /// `key` has a value that cannot work, for `reason`.
    pub(crate) fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
        }
    }

    /// Say so when the key's value came from its environment variable, which an operator reading the file
    /// would not see (the variable's name only, never its value).
    pub fn naming_its_variable(self, env: &HashMap<String, String>) -> Self {
        let ConfigError::Invalid { key, reason } = self else {
            return self;
        };
        let var = format!("{ENV_PREFIX}__{}", key.replace('.', "__")).to_ascii_uppercase();
        let reason = if env.keys().any(|k| k.eq_ignore_ascii_case(&var)) {
            format!("{reason} (set by {var})")
        } else {
            reason
        };
        ConfigError::Invalid { key, reason }
    }
}

/// The configuration file: a path, or its text.
#[derive(Debug, Clone, Copy)]
pub enum ConfigFile<'a> {
    /// A file; YAML if it ends in `.yaml`/`.yml`, TOML otherwise.
    Path(&'a std::path::Path),
    /// TOML text (tests, the demo).
    Toml(&'a str),
    /// YAML text.
    Yaml(&'a str),
}

/// Load, merge the environment overrides, and validate.
pub fn load(source: ConfigFile<'_>, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    use config::{Environment, File, FileFormat};
    let overrides = env::overrides(env)?;
    let environment = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator("__")
        .separator("__")
        .source(Some(overrides));
    let builder = config::Config::builder();
    let builder = match source {
        ConfigFile::Path(path) => {
            if !path.is_file() {
                return Err(ConfigError::Load(format!("{}: no such file", path.display())));
            }
            if let Err(e) = std::fs::File::open(path) {
                return Err(ConfigError::Load(format!("{}: {e}", path.display())));
            }
            let yaml = matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"));
            let format = if yaml { FileFormat::Yaml } else { FileFormat::Toml };
            builder.add_source(File::from(path).format(format).required(true))
        }
        ConfigFile::Toml(text) => builder.add_source(File::from_str(text, FileFormat::Toml)),
        ConfigFile::Yaml(text) => builder.add_source(File::from_str(text, FileFormat::Yaml)),
    };
    let merged = builder
        .add_source(environment)
        .build()
        .map_err(|e| ConfigError::Load(e.to_string()))?;
    let raw: FileConfig = merged.try_deserialize().map_err(|e| ConfigError::Load(e.to_string()))?;
    validate::validate(raw, env).map_err(|e| e.naming_its_variable(env))
}

/// Parse an upstream base URL as `upstream.base_url` is parsed (for the unit tests of its users).
#[cfg(test)]
pub(crate) fn parse_base_url(text: &str) -> Result<BaseUrl, ConfigError> {
    validate::base_url(text)
}

/// The process environment as a map, for [`load`].
pub fn process_env() -> HashMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
        .collect()
}

#[cfg(test)]
mod tests;
