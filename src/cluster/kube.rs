//! Builds the Kubernetes API client as kubectl finds the API: the current context of `KUBECONFIG`, else the pod's
//! service account. The environment comes in through the settings; nothing here reads the process environment (as
//! kube's own loaders would), so the proxy variables meant for IsSettled (`HTTPS_PROXY`, `ALL_PROXY`, `NO_PROXY`)
//! never reach the API connection.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use http::{HeaderValue, Uri};
use hyper_util::{
    client::legacy::connect::{proxy::Tunnel, Connection, HttpConnector},
    rt::TokioExecutor,
};
use kube::{
    client::{Body, ConfigExt},
    config::{AuthInfo, Kubeconfig, KubeconfigError},
    Config,
};
use rustls_pki_types::{pem::PemObject, CertificateDer};
use tower::{timeout::TimeoutLayer, BoxError, ServiceBuilder};

/// Where a pod's service-account credentials are mounted.
const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// How to reach the API: what kubectl would use, read from an environment map.
#[derive(Clone, Debug)]
pub(crate) struct ApiSettings {
    /// The files named by `KUBECONFIG` (a `:`-separated list, merged as kubectl merges them); empty when unset.
    pub(crate) kubeconfig: Vec<PathBuf>,
    /// `KUBERNETES_SERVICE_HOST` and `KUBERNETES_SERVICE_PORT`, used when `KUBECONFIG` is not set.
    pub(crate) service_host: Option<String>,
    pub(crate) service_port: Option<String>,
    /// The service account's mounted `token`, `ca.crt` and `namespace`.
    pub(crate) service_account_dir: PathBuf,
    /// `cluster.namespace`, else `POD_NAMESPACE`; `None`: the kubeconfig context's, or the service account's.
    pub(crate) namespace: Option<String>,
    /// Bounds every API call up to its response head (connect, TLS, request, answer): kube has no read timeout,
    /// and its default retry of 429/503/504 (not used here) could outlive a renew deadline.
    pub(crate) call_timeout: Duration,
}

/// Why the client could not be built.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    #[error("no Kubernetes API found: KUBECONFIG is not set, nor KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT")]
    NoApi,
    #[error("{path}: cannot be read: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    // The parser's own message is left out: it may quote a line of the file, and the file holds credentials.
    #[error("kubeconfig {path}: not a valid kubeconfig")]
    KubeconfigInvalid { path: PathBuf },
    #[error("kubeconfig: {0}")]
    KubeconfigContents(String),
    #[error("the API server address {0:?} is not a URL")]
    ServerUrl(String),
    #[error("the kubeconfig proxy-url {0:?} is not supported: an http:// URL is")]
    ProxyUrl(String),
    #[error("certificate authority {0}: no PEM certificate in it")]
    CertificateAuthority(String),
    #[error("building the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

// === impl ApiSettings ===

impl ApiSettings {
    /// What `[cluster]` and the environment it was loaded with say. Every call is bounded by half the renew
    /// deadline, so a renewal can be tried twice before the leader must step down.
    pub(crate) fn from_config(cfg: &crate::config::KubernetesConfig) -> Self {
        ApiSettings {
            kubeconfig: cfg.kubeconfig.clone(),
            service_host: cfg.service_host.clone(),
            service_port: cfg.service_port.clone(),
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
            namespace: cfg.namespace.clone(),
            call_timeout: cfg.renew_deadline / 2,
        }
    }
}

#[cfg(test)]
impl ApiSettings {
    /// Only a kubeconfig, as with `KUBECONFIG` set and nothing else.
    pub(crate) fn with_kubeconfig(kubeconfig: Vec<PathBuf>, call_timeout: Duration) -> Self {
        ApiSettings {
            kubeconfig,
            service_host: None,
            service_port: None,
            service_account_dir: PathBuf::from(SERVICE_ACCOUNT_DIR),
            namespace: None,
            call_timeout,
        }
    }
}

/// The client for `settings`; its default namespace is the one the proxy works in.
pub(crate) async fn client(settings: &ApiSettings) -> Result<kube::Client, ClusterError> {
    let (mut config, proxy) = if settings.kubeconfig.is_empty() {
        (in_cluster(settings)?, None)
    } else {
        from_kubeconfig(&settings.kubeconfig)?
    };
    if let Some(namespace) = &settings.namespace {
        config.default_namespace.clone_from(namespace);
    }
    config.connect_timeout = Some(settings.call_timeout);

    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(settings.call_timeout));
    match proxy {
        None => build(&config, http, settings.call_timeout),
        Some(proxy) => {
            let mut tunnel = Tunnel::new(proxy.uri, http);
            if let Some(auth) = proxy.basic_auth {
                tunnel = tunnel.with_auth(auth);
            }
            build(&config, tunnel, settings.call_timeout)
        }
    }
}

/// kube's own stack (base URI, authentication, headers) over `connector`, with none of its default retry and
/// every call bounded by `call_timeout`.
fn build<C>(config: &Config, connector: C, call_timeout: Duration) -> Result<kube::Client, ClusterError>
where
    C: tower::Service<Uri> + Clone + Send + Sync + 'static,
    C::Response: Connection + hyper::rt::Read + hyper::rt::Write + Send + Unpin + 'static,
    C::Future: Send + 'static,
    C::Error: Into<BoxError>,
{
    let https = config
        .rustls_https_connector_with_connector(connector)
        .map_err(ClusterError::Client)?;
    let http: hyper_util::client::legacy::Client<_, Body> =
        hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(https);
    let service = ServiceBuilder::new()
        .layer(TimeoutLayer::new(call_timeout))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(ClusterError::Client)?)
        .layer(config.extra_headers_layer().map_err(ClusterError::Client)?)
        .map_err(BoxError::from)
        .service(http);
    Ok(kube::Client::new(service, config.default_namespace.clone()))
}

/// The kubeconfig's own `proxy-url`, the one proxy the API is ever reached through.
#[derive(Debug)]
struct Proxy {
    uri: Uri,
    basic_auth: Option<HeaderValue>,
}

/// The current context of the merged kubeconfig files, read as kubectl reads them (no environment variable).
fn from_kubeconfig(paths: &[PathBuf]) -> Result<(Config, Option<Proxy>), ClusterError> {
    let mut merged: Option<Kubeconfig> = None;
    for path in paths {
        let file = Kubeconfig::read_from(path).map_err(|e| match e {
            KubeconfigError::ReadConfig(source, _) => ClusterError::Read {
                path: path.clone(),
                source,
            },
            _ => ClusterError::KubeconfigInvalid { path: path.clone() },
        })?;
        merged = Some(match merged {
            None => file,
            Some(m) => m
                .merge(file)
                .map_err(|_| ClusterError::KubeconfigInvalid { path: path.clone() })?,
        });
    }
    let kubeconfig = merged.unwrap_or_default();
    let contents = |what: String| ClusterError::KubeconfigContents(what);
    let context_name = kubeconfig
        .current_context
        .clone()
        .ok_or_else(|| contents("no current-context".to_owned()))?;
    let context = kubeconfig
        .contexts
        .iter()
        .find(|c| c.name == context_name)
        .and_then(|c| c.context.clone())
        .ok_or_else(|| contents(format!("context {context_name:?} not found")))?;
    let cluster = kubeconfig
        .clusters
        .iter()
        .find(|c| c.name == context.cluster)
        .and_then(|c| c.cluster.clone())
        .ok_or_else(|| contents(format!("cluster {:?} not found", context.cluster)))?;
    // As client-go: a context without a user, or naming an unknown one, authenticates as nobody.
    let mut user = context
        .user
        .as_ref()
        .and_then(|name| kubeconfig.auth_infos.iter().find(|u| &u.name == name))
        .and_then(|u| u.auth_info.clone())
        .unwrap_or_default();
    if let Some(exec) = &mut user.exec {
        if exec.provide_cluster_info {
            exec.cluster = Some(
                (&cluster)
                    .try_into()
                    .map_err(|_| contents("exec cluster info".to_owned()))?,
            );
        }
    }

    let server = cluster
        .server
        .clone()
        .ok_or_else(|| contents(format!("cluster {:?} has no server", context.cluster)))?;
    let mut config = Config::new(server.parse().map_err(|_| ClusterError::ServerUrl(server.clone()))?);
    config.default_namespace = context.namespace.unwrap_or_else(|| "default".to_owned());
    config.accept_invalid_certs = cluster.insecure_skip_tls_verify.unwrap_or(false);
    config.disable_compression = cluster.disable_compression.unwrap_or(false);
    config.tls_server_name = cluster.tls_server_name.clone();
    config.root_cert = match (&cluster.certificate_authority_data, &cluster.certificate_authority) {
        (Some(data), _) => {
            use base64::Engine as _;
            let pem = base64::engine::general_purpose::STANDARD
                .decode(data.trim())
                .map_err(|_| ClusterError::CertificateAuthority("certificate-authority-data".to_owned()))?;
            Some(certificates(&pem, "certificate-authority-data")?)
        }
        (None, Some(path)) => Some(read_certificates(Path::new(path))?),
        (None, None) => None,
    };
    config.auth_info = user;
    config.default_retry = false;
    let proxy = cluster
        .proxy_url
        .as_deref()
        .filter(|p| !p.is_empty())
        .map(proxy)
        .transpose()?;
    Ok((config, proxy))
}

fn proxy(url: &str) -> Result<Proxy, ClusterError> {
    let uri: Uri = url.parse().map_err(|_| ClusterError::ProxyUrl(url.to_owned()))?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(ClusterError::ProxyUrl(url.to_owned()));
    }
    let userinfo = uri
        .authority()
        .and_then(|a| a.as_str().rsplit_once('@'))
        .map(|(user, _)| user.to_owned());
    let basic_auth = userinfo.map(|userinfo| {
        use base64::Engine as _;
        let mut value = HeaderValue::try_from(format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(percent_decode(&userinfo))
        ))
        .map_err(|_| ClusterError::ProxyUrl(redacted(&uri)))?;
        value.set_sensitive(true);
        Ok(value)
    });
    let basic_auth = basic_auth.transpose()?;
    Ok(Proxy { uri, basic_auth })
}

/// `url` without its user information, for messages.
fn redacted(uri: &Uri) -> String {
    format!("{}://{}", uri.scheme_str().unwrap_or(""), uri.host().unwrap_or(""))
}

/// The user information of a URL is percent-encoded (RFC 3986 §3.2.1); proxies expect it decoded.
fn percent_decode(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The pod's service account: the API at `KUBERNETES_SERVICE_HOST:KUBERNETES_SERVICE_PORT` over TLS, its CA, its
/// token (re-read by kube as the kubelet rotates it) and its namespace.
fn in_cluster(settings: &ApiSettings) -> Result<Config, ClusterError> {
    let (Some(host), Some(port)) = (&settings.service_host, &settings.service_port) else {
        return Err(ClusterError::NoApi);
    };
    let host = match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(ip)) => format!("[{ip}]"),
        _ => host.clone(),
    };
    let server = format!("https://{host}:{port}");
    let mut config = Config::new(server.parse().map_err(|_| ClusterError::ServerUrl(server.clone()))?);
    let dir = &settings.service_account_dir;
    let ca = dir.join("ca.crt");
    config.root_cert = Some(read_certificates(&ca)?);
    // kube re-reads this file to follow a rotated cluster CA.
    config.root_cert_file = Some(ca);
    let namespace = dir.join("namespace");
    config.default_namespace = std::fs::read_to_string(&namespace)
        .map_err(|source| ClusterError::Read {
            path: namespace,
            source,
        })?
        .trim()
        .to_owned();
    let token = dir.join("token");
    if let Err(source) = std::fs::metadata(&token) {
        return Err(ClusterError::Read { path: token, source });
    }
    config.auth_info = AuthInfo {
        token_file: Some(token.to_string_lossy().into_owned()),
        ..AuthInfo::default()
    };
    config.default_retry = false;
    Ok(config)
}

fn read_certificates(path: &Path) -> Result<Vec<Vec<u8>>, ClusterError> {
    let pem = std::fs::read(path).map_err(|source| ClusterError::Read {
        path: path.to_owned(),
        source,
    })?;
    certificates(&pem, &path.display().to_string())
}

/// The DER certificates in a PEM bundle (what kube's `root_cert` holds).
fn certificates(pem: &[u8], name: &str) -> Result<Vec<Vec<u8>>, ClusterError> {
    let certs: Vec<Vec<u8>> = CertificateDer::pem_slice_iter(pem)
        .filter_map(Result::ok)
        .map(|c| c.as_ref().to_vec())
        .collect();
    if certs.is_empty() {
        return Err(ClusterError::CertificateAuthority(name.to_owned()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests;
