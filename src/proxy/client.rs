//! The upstream clients: one rustls configuration (system roots plus `ca_file`, optional client certificate,
//! ALPN h2 and http/1.1, ring provider, no OpenSSL) shared by the connection pool that forwards requests
//! ([`super::pool`]) and the reqwest client that makes refresh calls. Neither follows redirects. Both go where the
//! one egress decision ([`crate::egress::Route`], in the configuration) says, with the same proxy credentials
//! ([`Egress`]); neither reads the proxy variables itself.

use std::{future::Future, pin::Pin, sync::Arc, task::Context, task::Poll};

use http::Uri;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder, MaybeHttpsStream};
use hyper_util::rt::TokioIo;
use rustls::{pki_types::pem::PemObject, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{
    pool::Pool,
    tcp::{Connector, UpstreamStream},
    tunnel::Tunnel,
};
use crate::{
    config::{ConfigError, UpstreamConfig},
    egress::{failure::innermost, ProxyAuth, Route, TunnelError, Why},
};

/// Idle pooled upstream connections kept.
const POOL_MAX_IDLE: usize = 1024;

fn invalid(key: &str, reason: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        reason,
    }
}

/// Make ring the process-wide rustls provider (for reqwest clients built without a configuration). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The TLS configuration from `[upstream]`. A CA file or client certificate that cannot be used is a
/// configuration error naming its key.
pub(crate) fn tls_config(cfg: &UpstreamConfig) -> Result<ClientConfig, ConfigError> {
    install_crypto_provider();
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if let Some(path) = &cfg.ca_file {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| {
                invalid(
                    "upstream.ca_file",
                    format!("cannot read PEM certificates from {}: {e}", path.display()),
                )
            })?;
        if certs.is_empty() {
            return Err(invalid("upstream.ca_file", "holds no PEM certificate".into()));
        }
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| invalid("upstream.ca_file", format!("unusable certificate: {e}")))?;
        }
    } else if added == 0 {
        tracing::warn!(
            "no system CA certificates found and upstream.ca_file is not set: TLS to the upstream will fail"
        );
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid("upstream.base_url", format!("TLS setup failed: {e}")))?
        .with_root_certificates(roots);
    let config = match (&cfg.client_cert_file, &cfg.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    invalid(
                        "upstream.client_cert_file",
                        format!("cannot read PEM certificates from {}: {e}", cert.display()),
                    )
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                invalid(
                    "upstream.client_key_file",
                    format!("cannot read a PEM private key from {}: {e}", key.display()),
                )
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| invalid("upstream.client_cert_file", format!("unusable client certificate: {e}")))?
        }
        _ => builder.with_no_client_auth(),
    };
    // ALPN is left empty: hyper-rustls fills it from the enabled versions, `refresh_client` sets its own.
    Ok(config)
}

/// The way out to the upstream that both clients share: the one route and the proxy's credentials.
#[derive(Debug, Clone)]
pub(crate) struct Egress {
    route: Route,
    /// Read by both clients on each new tunnel, so a changed `upstream.proxy_auth_file` reaches both at once.
    auth: Arc<ProxyAuth>,
}

// === impl Egress ===

impl Egress {
    /// From `[upstream]`: its route, and the credentials (`proxy_auth_file` wins over the URL's).
    pub(crate) fn new(cfg: &UpstreamConfig) -> Result<Self, ConfigError> {
        let auth = match cfg.route.proxy() {
            Some(proxy) => ProxyAuth::new(proxy.credentials(), cfg.proxy_auth_file.as_deref())
                .map_err(|reason| invalid("upstream.proxy_auth_file", reason))?,
            None => ProxyAuth::none(),
        };
        Ok(Self {
            route: cfg.route.clone(),
            auth: Arc::new(auth),
        })
    }

    /// The proxy every call goes through, shown without credentials (`/status` `upstream_proxy`).
    pub(crate) fn proxy_shown(&self) -> Option<String> {
        self.route.proxy().map(ToString::to_string)
    }

    /// Log the decision once at start: where calls go and why, and, for a plain `http://` upstream, that a
    /// configured proxy is not used.
    pub(crate) fn log_decision(&self) {
        match &self.route {
            Route::Direct {
                why: why @ Why::PlainHttp { .. },
            } => tracing::warn!(event = "egress", route = "direct", "{why}"),
            Route::Direct { why } => {
                tracing::info!(event = "egress", route = "direct", why = %why, "calls to the upstream go direct")
            }
            Route::Tunnel { proxy, why } => tracing::info!(
                event = "egress",
                route = "tunnel",
                proxy = %proxy,
                why = %why,
                credentials = self.auth.describe(),
                "calls to the upstream go through the outbound proxy"
            ),
        }
    }
}

/// The pool's connector: TCP (straight, or through the tunnel), then TLS. Through a tunnel, a TLS failure names
/// the proxy too: a proxy that closes the tunnel, or inspects TLS with a certificate `ca_file` does not trust,
/// shows up there.
#[derive(Debug, Clone)]
pub(crate) struct UpstreamConnector {
    https: HttpsConnector<Connector>,
    /// The proxy, as errors show it, when tunnelling.
    through: Option<Arc<str>>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

// === impl UpstreamConnector ===

/// Straight to the upstream: no tunnel to name in errors.
impl From<HttpsConnector<Connector>> for UpstreamConnector {
    fn from(https: HttpsConnector<Connector>) -> Self {
        Self { https, through: None }
    }
}

impl tower::Service<Uri> for UpstreamConnector {
    type Response = MaybeHttpsStream<TokioIo<UpstreamStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.https.poll_ready(cx)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connecting = self.https.call(uri);
        let Some(proxy) = self.through.clone() else {
            return connecting;
        };
        Box::pin(async move {
            connecting.await.map_err(|e| {
                if e.is::<TunnelError>() {
                    return e;
                }
                let inside = TunnelError::Inside {
                    proxy: proxy.to_string(),
                    detail: innermost(&*e),
                };
                Box::new(inside) as BoxError
            })
        })
    }
}

/// The forwarding client: pooled keep-alive connections, HTTP/1.1 or HTTP/2 by ALPN, through the tunnel when
/// the route says so.
pub(crate) fn upstream_pool(cfg: &UpstreamConfig, tls: ClientConfig, egress: &Egress) -> Result<Pool, ConfigError> {
    let mut tcp = Connector::new(cfg.connect_timeout);
    let mut through = None;
    if let Route::Tunnel { proxy, .. } = &egress.route {
        let tunnel = Tunnel::new(proxy.clone(), egress.auth.clone(), cfg.connect_timeout);
        through = Some(Arc::from(tunnel.shown()));
        tcp = tcp.through(Arc::new(tunnel));
    }
    let https = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    let connector = UpstreamConnector { https, through };
    Pool::new(connector, &cfg.base_url.scheme, &cfg.base_url.authority, POOL_MAX_IDLE)
        .map_err(|e| invalid("upstream.base_url", e.to_string()))
}

/// The refresh client. reqwest's own proxy support makes its tunnel, configured from the same route: the system
/// proxy and its variables are switched off (`no_proxy`), and the one proxy of the route, if any, is added back
/// with the credentials of the moment (reqwest asks on each new connection).
pub(crate) fn refresh_client(
    cfg: &UpstreamConfig,
    mut tls: ClientConfig,
    egress: &Egress,
) -> Result<reqwest::Client, ConfigError> {
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let mut builder = reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout);
    if let Some(proxy) = egress.route.proxy() {
        let auth = egress.auth.clone();
        let base = reqwest::Url::parse(&proxy.to_string()).map_err(|e| {
            invalid(
                "upstream.proxy",
                format!("cannot use the proxy for the refresh client: {e}"),
            )
        })?;
        // Called for the refresh URL only (the client calls nothing else); the route already decided for it.
        builder = builder.proxy(reqwest::Proxy::custom(move |_| {
            let mut url = base.clone();
            if let Some(credentials) = auth.current() {
                // Set on a URL with a host, these cannot fail; the matcher inside reqwest decodes them again.
                let _ = url.set_username(credentials.user());
                let _ = url.set_password(Some(credentials.password()));
            }
            Some(url)
        }));
    }
    builder
        .build()
        .map_err(|e| invalid("upstream.base_url", format!("cannot build the refresh client: {e}")))
}
