//! File form → typed [`Config`]: parse every value and check every rule the contract states.
//!
//! Each failure is a [`ConfigError::Invalid`] naming the key (`section.key`) and what is wrong with it.

use std::{collections::HashMap, net::SocketAddr, path::PathBuf, str::FromStr, time::Duration};

use http::{Method, Uri};

use super::{
    BaseUrl, ClusterConfig, Config, ConfigError, FileConfig, InboundAuthorization, KubernetesConfig, ListenConfig,
    LogConfig, LogFormat, PolicyConfig, ShutdownConfig, TokenConfig, TokenEnv, UpstreamConfig,
};
use crate::egress::{self, Route};

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::invalid(key, reason)
}

fn duration(key: &str, text: &str) -> Result<Duration, ConfigError> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            key,
            format!("`{text}` is not a duration like \"500ms\", \"30s\", \"10m\": {e}"),
        )
    })
}

fn positive(key: &str, text: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, text)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

fn socket_addr(key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    SocketAddr::from_str(text.trim())
        .map_err(|_| invalid(key, format!("`{text}` is not an address like \"127.0.0.1:8080\"")))
}

fn optional_path(text: &str) -> Option<PathBuf> {
    let t = text.trim();
    (!t.is_empty()).then(|| PathBuf::from(t))
}

fn readable_file(key: &str, text: &str) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = optional_path(text) else {
        return Ok(None);
    };
    std::fs::metadata(&path).map_err(|e| invalid(key, format!("cannot read {}: {e}", path.display())))?;
    Ok(Some(path))
}

fn method(key: &str, text: &str) -> Result<Method, ConfigError> {
    let upper = text.trim().to_ascii_uppercase();
    Method::from_bytes(upper.as_bytes()).map_err(|_| invalid(key, format!("`{text}` is not an HTTP method")))
}

/// The methods IsSettled supports: the only ones `policy.allowed_methods` may list.
const UPSTREAM_METHODS: [Method; 3] = [Method::GET, Method::POST, Method::DELETE];

fn methods(key: &str, list: &[String]) -> Result<Vec<Method>, ConfigError> {
    entries(key, list)?.into_iter().map(|m| method(key, m)).collect()
}

/// A list's entries, trimmed. A blank entry is refused: filtered out, `[""]` would silently mean "no
/// entries", which for these lists means "allow everything".
fn entries<'a>(key: &str, list: &'a [String]) -> Result<Vec<&'a str>, ConfigError> {
    list.iter()
        .map(|s| match s.trim() {
            "" => Err(invalid(
                key,
                "has a blank entry; for no restriction, give no entries ([])",
            )),
            s => Ok(s),
        })
        .collect()
}

/// Parse `base_url` into scheme, authority and a path prefix; refuse anything a concatenation could misread.
pub(crate) fn base_url(text: &str) -> Result<BaseUrl, ConfigError> {
    const KEY: &str = "upstream.base_url";
    let text = text.trim();
    if text.is_empty() {
        return Err(invalid(KEY, "required (for example \"https://api.issettled.example\")"));
    }
    let uri = Uri::from_str(text).map_err(|e| invalid(KEY, format!("`{text}` is not a URL: {e}")))?;
    let scheme = uri
        .scheme()
        .cloned()
        .ok_or_else(|| invalid(KEY, "must start with https:// or http://"))?;
    if scheme != http::uri::Scheme::HTTPS && scheme != http::uri::Scheme::HTTP {
        return Err(invalid(KEY, "must start with https:// or http://"));
    }
    let authority = uri.authority().cloned().ok_or_else(|| invalid(KEY, "has no host"))?;
    if authority.as_str().contains('@') {
        return Err(invalid(KEY, "must not carry credentials"));
    }
    if uri.query().is_some() || text.contains('#') {
        return Err(invalid(KEY, "must not have a query or fragment"));
    }
    let prefix = uri.path().trim_end_matches('/').to_owned();
    if crate::path::check_path(if prefix.is_empty() { "/" } else { &prefix }).is_err() {
        return Err(invalid(
            KEY,
            "path prefix must not contain dot-segments, backslashes or `//`",
        ));
    }
    Ok(BaseUrl {
        scheme,
        authority,
        prefix,
    })
}

/// An `allowed_hosts` entry as requests are matched against it: lower-cased, IPv6 without brackets. A port is
/// refused, since the port of a request's `Host` is ignored and an entry with one could never match.
fn allowed_host(entry: &str) -> Result<String, ConfigError> {
    const KEY: &str = "listen.allowed_hosts";
    let host = match entry.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((ip, "")) => ip,
            Some(_) => return Err(invalid(KEY, format!("`{entry}`: drop the port (ports are ignored)"))),
            None => return Err(invalid(KEY, format!("`{entry}` lacks its closing `]`"))),
        },
        // One colon is host:port; more is a bare IPv6 address.
        None if entry.matches(':').count() == 1 => {
            return Err(invalid(KEY, format!("`{entry}`: drop the port (ports are ignored)")))
        }
        None => entry,
    };
    if host.is_empty() {
        return Err(invalid(KEY, format!("`{entry}` names no host")));
    }
    Ok(host.to_ascii_lowercase())
}

/// Whether binding `a` and then `b` would collide: the same port (not 0, which picks a free one) on the same
/// address, or with either on the unspecified address, which takes the port on every address.
fn same_socket(a: SocketAddr, b: SocketAddr) -> bool {
    a.port() == b.port() && a.port() != 0 && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified())
}

fn listen(f: &super::file::ListenSection) -> Result<ListenConfig, ConfigError> {
    if f.max_connections == 0 {
        return Err(invalid("listen.max_connections", "must be at least 1"));
    }
    let allowed_hosts = entries("listen.allowed_hosts", &f.allowed_hosts)?
        .into_iter()
        .map(allowed_host)
        .collect::<Result<_, _>>()?;
    let allowed_origins = entries("listen.allowed_origins", &f.allowed_origins)?
        .into_iter()
        .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
        .collect();
    let address = socket_addr("listen.address", &f.address)?;
    let admin_address = socket_addr("listen.admin_address", &f.admin_address)?;
    if same_socket(address, admin_address) {
        return Err(invalid(
            "listen.admin_address",
            format!("`{admin_address}` takes the port of listen.address `{address}`: give the admin port its own"),
        ));
    }
    Ok(ListenConfig {
        address,
        admin_address,
        max_connections: usize::try_from(f.max_connections).unwrap_or(usize::MAX),
        header_read_timeout: positive("listen.header_read_timeout", &f.header_read_timeout)?,
        idle_timeout: positive("listen.idle_timeout", &f.idle_timeout)?,
        allowed_hosts,
        allowed_origins,
        unix_socket: optional_path(&f.unix_socket),
    })
}

/// `upstream.proxy` and the proxy variables, decided for `base_url`; an unusable setting names the key (and the
/// variable it came from), never its value.
fn route(
    f: &super::file::UpstreamSection,
    env: &HashMap<String, String>,
    base_url: &BaseUrl,
) -> Result<Route, ConfigError> {
    let upstream = Uri::builder()
        .scheme(base_url.scheme.clone())
        .authority(base_url.authority.clone())
        .path_and_query("/")
        .build()
        .map_err(|e| invalid("upstream.base_url", e.to_string()))?;
    egress::decide(&f.proxy, env, &upstream).map_err(|e| match e.origin {
        egress::Origin::Key => invalid("upstream.proxy", e.reason),
        egress::Origin::Variable(name) => invalid(
            "upstream.proxy",
            format!("\"\" reads {name}, which cannot be used: {}", e.reason),
        ),
    })
}

/// `upstream.proxy_auth_file`: refused at load when it cannot be read or holds no `user:password`.
fn proxy_auth_file(text: &str) -> Result<Option<PathBuf>, ConfigError> {
    let Some(path) = optional_path(text) else {
        return Ok(None);
    };
    egress::ProxyAuth::new(None, Some(&path)).map_err(|reason| invalid("upstream.proxy_auth_file", reason))?;
    Ok(Some(path))
}

fn upstream(f: &super::file::UpstreamSection, env: &HashMap<String, String>) -> Result<UpstreamConfig, ConfigError> {
    let client_cert_file = readable_file("upstream.client_cert_file", &f.client_cert_file)?;
    let client_key_file = readable_file("upstream.client_key_file", &f.client_key_file)?;
    if client_cert_file.is_some() != client_key_file.is_some() {
        return Err(invalid(
            "upstream.client_key_file",
            "client_cert_file and client_key_file must be set together",
        ));
    }
    let base_url = base_url(&f.base_url)?;
    Ok(UpstreamConfig {
        route: route(f, env, &base_url)?,
        proxy_auth_file: proxy_auth_file(&f.proxy_auth_file)?,
        base_url,
        member_id: f.member_id.trim().to_owned(),
        connect_timeout: positive("upstream.connect_timeout", &f.connect_timeout)?,
        request_timeout: positive("upstream.request_timeout", &f.request_timeout)?,
        ca_file: readable_file("upstream.ca_file", &f.ca_file)?,
        client_cert_file,
        client_key_file,
    })
}

/// The longest `token.env` accepted. Variable names are short; a long word is more likely a token pasted in.
const MAX_ENV_NAME: usize = 64;

/// A JWT put where a path belongs: three base64url parts, the first a JSON object (`eyJ` is `{"`), no `/`.
fn looks_like_a_jwt(text: &str) -> bool {
    let t = text.trim();
    t.starts_with("eyJ")
        && t.split('.').count() == 3
        && t.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Whether `name` is an environment variable name: `[A-Za-z_][A-Za-z0-9_]*`, at most [`MAX_ENV_NAME`] long.
fn is_env_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_ENV_NAME
        && bytes.next().is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `[token]`; `clustered`: in cluster mode the Secrets are the token source, so neither file nor env is needed.
fn token(
    f: &super::file::TokenSection,
    env: &HashMap<String, String>,
    clustered: bool,
) -> Result<TokenConfig, ConfigError> {
    let file = optional_path(&f.file);
    let env_name = f.env.trim();
    for (key, value) in [("token.file", &f.file), ("token.state_file", &f.state_file)] {
        if looks_like_a_jwt(value) {
            // Not repeated, as for token.env.
            return Err(invalid(
                key,
                "must be a file path, not the token itself (value not shown)",
            ));
        }
    }
    if file.is_none() && env_name.is_empty() && !clustered {
        return Err(invalid(
            "token.file",
            "set token.file or token.env (or both: file wins)",
        ));
    }
    if !env_name.is_empty() && !is_env_name(env_name) {
        // The value is not repeated: an operator who put the token itself here must not see it printed.
        return Err(invalid(
            "token.env",
            format!(
                "must be the name of an environment variable ([A-Za-z_][A-Za-z0-9_]*, at most {MAX_ENV_NAME} \
                 characters), not the token itself (value not shown)"
            ),
        ));
    }
    let env_token = (!env_name.is_empty()).then(|| TokenEnv::read(env_name, env));
    let refresh_path = f.refresh_path.trim().to_owned();
    if !refresh_path.starts_with('/') {
        return Err(invalid("token.refresh_path", "must start with `/`"));
    }
    let refresh_interval = positive("token.refresh_interval", &f.refresh_interval)?;
    let revoke_after = positive("token.revoke_after", &f.revoke_after)?;
    if refresh_interval >= revoke_after {
        return Err(invalid(
            "token.refresh_interval",
            format!(
                "must be shorter than token.revoke_after ({} >= {})",
                humantime::format_duration(refresh_interval),
                humantime::format_duration(revoke_after)
            ),
        ));
    }
    Ok(TokenConfig {
        file,
        env: env_token,
        state_file: optional_path(&f.state_file),
        refresh_path,
        refresh_method: method("token.refresh_method", &f.refresh_method)?,
        refresh_interval,
        revoke_after,
        refresh_before_expiry: duration("token.refresh_before_expiry", &f.refresh_before_expiry)?,
        session_ttl: positive("token.session_ttl", &f.session_ttl)?,
        min_refresh_gap: duration("token.min_refresh_gap", &f.min_refresh_gap)?,
    })
}

fn policy(f: &super::file::PolicySection) -> Result<PolicyConfig, ConfigError> {
    const PREFIXES: &str = "policy.allowed_path_prefixes";
    let mut allowed_path_prefixes = Vec::new();
    for p in entries(PREFIXES, &f.allowed_path_prefixes)? {
        if !p.starts_with('/') {
            return Err(invalid(PREFIXES, format!("`{p}` must start with `/`")));
        }
        if crate::path::check_path(p).is_err() {
            return Err(invalid(
                PREFIXES,
                format!("`{p}` has dot-segments, backslashes or `//`"),
            ));
        }
        allowed_path_prefixes.push(p.trim_end_matches('/').to_owned());
    }
    let inbound_authorization = match f.inbound_authorization.trim() {
        "strip" => InboundAuthorization::Strip,
        "reject" => InboundAuthorization::Reject,
        other => {
            return Err(invalid(
                "policy.inbound_authorization",
                format!("`{other}`: expected \"strip\" or \"reject\""),
            ))
        }
    };
    let allowed_methods = methods("policy.allowed_methods", &f.allowed_methods)?;
    if allowed_methods.is_empty() {
        return Err(invalid("policy.allowed_methods", "must list at least one method"));
    }
    if let Some(other) = allowed_methods.iter().find(|m| !UPSTREAM_METHODS.contains(m)) {
        return Err(invalid(
            "policy.allowed_methods",
            format!("`{other}`: IsSettled supports only GET, POST and DELETE"),
        ));
    }
    Ok(PolicyConfig {
        allowed_methods,
        allowed_path_prefixes,
        max_body_bytes: f.max_body_bytes,
        inbound_authorization,
        retry_on_401: methods("policy.retry_on_401", &f.retry_on_401)?,
    })
}

fn log(f: &super::file::LogSection, env: &HashMap<String, String>) -> Result<LogConfig, ConfigError> {
    let format = match f.format.trim() {
        "json" => LogFormat::Json,
        "pretty" => LogFormat::Pretty,
        other => {
            return Err(invalid(
                "log.format",
                format!("`{other}`: expected \"json\" or \"pretty\""),
            ))
        }
    };
    let level = super::log_filter::filter("log.level", &f.level)?;
    // RUST_LOG wins over log.level, and is held to the same rules: a blank one counts as unset.
    let filter = match env.get("RUST_LOG").filter(|v| !v.trim().is_empty()) {
        Some(rust_log) => super::log_filter::filter("RUST_LOG", rust_log)?,
        None => level,
    };
    Ok(LogConfig { format, filter })
}

fn shutdown(f: &super::file::ShutdownSection) -> Result<ShutdownConfig, ConfigError> {
    Ok(ShutdownConfig {
        delay: duration("shutdown.delay", &f.delay)?,
        grace: duration("shutdown.grace", &f.grace)?,
        enable_quit_endpoint: f.enable_quit_endpoint,
    })
}

/// A DNS-1123 subdomain (Secret and Lease names): at most 253 characters of `a-z`, `0-9`, `-` and `.`,
/// starting and ending alphanumeric. A namespace is a DNS-1123 label: at most 63, no dots.
fn kubernetes_name(key: &str, name: &str, label: bool) -> Result<String, ConfigError> {
    let max = if label { 63 } else { 253 };
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || (!label && c == '.');
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if name.is_empty()
        || name.len() > max
        || !name.chars().all(ok_char)
        || !alnum(name.chars().next())
        || !alnum(name.chars().last())
    {
        let what = if label {
            "a DNS-1123 label"
        } else {
            "a DNS-1123 subdomain"
        };
        return Err(invalid(
            key,
            format!("`{name}` is not a valid Kubernetes name ({what}: lower-case letters, digits and '-', at most {max} characters, starting and ending with a letter or digit)"),
        ));
    }
    Ok(name.to_owned())
}

fn cluster(f: &super::file::ClusterSection, env: &HashMap<String, String>) -> Result<ClusterConfig, ConfigError> {
    match f.mode.trim() {
        "off" => return Ok(None),
        "kubernetes" => {}
        other => {
            return Err(invalid(
                "cluster.mode",
                format!("`{other}` is not \"off\" or \"kubernetes\""),
            ))
        }
    }
    let from_env = |name: &str| env.get(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());
    let namespace = match (f.namespace.trim(), from_env("POD_NAMESPACE")) {
        ("", None) => None,
        ("", Some(ns)) => Some(kubernetes_name("cluster.namespace", &ns, true)?),
        (ns, _) => Some(kubernetes_name("cluster.namespace", ns, true)?),
    };
    let identity = match f.identity.trim() {
        "" => from_env("POD_NAME")
            .or_else(|| from_env("HOSTNAME"))
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_owned())
            })
            .filter(|h| !h.is_empty())
            .ok_or_else(|| {
                invalid(
                    "cluster.identity",
                    "is empty and neither POD_NAME nor the host name is known",
                )
            })?,
        id => id.to_owned(),
    };
    let secret = kubernetes_name("cluster.secret", f.secret.trim(), false)?;
    let state_secret = kubernetes_name("cluster.state_secret", f.state_secret.trim(), false)?;
    if secret == state_secret {
        return Err(invalid(
            "cluster.state_secret",
            "must differ from cluster.secret: the proxy writes state_secret and only reads the administrator's secret",
        ));
    }
    let lease_duration = positive("cluster.lease_duration", &f.lease_duration)?;
    let renew_deadline = positive("cluster.renew_deadline", &f.renew_deadline)?;
    let retry_period = positive("cluster.retry_period", &f.retry_period)?;
    if lease_duration <= renew_deadline {
        return Err(invalid(
            "cluster.lease_duration",
            "must be longer than cluster.renew_deadline",
        ));
    }
    if renew_deadline <= retry_period {
        return Err(invalid(
            "cluster.renew_deadline",
            "must be longer than cluster.retry_period",
        ));
    }
    Ok(Some(KubernetesConfig {
        namespace,
        secret,
        state_secret,
        lease: kubernetes_name("cluster.lease", f.lease.trim(), false)?,
        identity,
        lease_duration,
        renew_deadline,
        retry_period,
        kubeconfig: from_env("KUBECONFIG")
            .map(|list| {
                list.split(':')
                    .filter(|p| !p.is_empty())
                    .map(std::path::PathBuf::from)
                    .collect()
            })
            .unwrap_or_default(),
        service_host: from_env("KUBERNETES_SERVICE_HOST"),
        service_port: from_env("KUBERNETES_SERVICE_PORT"),
    }))
}

/// Validate the merged file form. `env` supplies the value of `token.env`, `RUST_LOG` and the pod's variables.
pub(super) fn validate(mut raw: FileConfig, env: &HashMap<String, String>) -> Result<Config, ConfigError> {
    let listen = listen(&raw.listen)?;
    let upstream = upstream(&raw.upstream, env)?;
    // The file form is kept for `check-config`: never with the proxy's password in it.
    raw.upstream.proxy = egress::redacted_setting(&raw.upstream.proxy);
    Ok(Config {
        listen,
        upstream,
        token: token(&raw.token, env, raw.cluster.mode.trim() == "kubernetes")?,
        policy: policy(&raw.policy)?,
        log: log(&raw.log, env)?,
        shutdown: shutdown(&raw.shutdown)?,
        cluster: cluster(&raw.cluster, env)?,
        raw,
    })
}
