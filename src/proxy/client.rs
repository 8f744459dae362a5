//! The upstream clients: one rustls configuration (system roots plus `ca_file`, optional client certificate,
//! ALPN h2 and http/1.1, ring provider, no OpenSSL) shared by the connection pool that forwards requests
//! ([`super::pool`]) and the reqwest client that makes refresh calls. Neither follows redirects or reads proxy
//! variables.

use std::sync::Arc;

use hyper_rustls::HttpsConnectorBuilder;
use rustls::{pki_types::pem::PemObject, ClientConfig, RootCertStore};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use super::{pool::Pool, tcp::Connector};
use crate::config::{ConfigError, UpstreamConfig};

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
pub fn tls_config(cfg: &UpstreamConfig) -> Result<ClientConfig, ConfigError> {
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

/// The forwarding client: pooled keep-alive connections, HTTP/1.1 or HTTP/2 by ALPN.
pub fn upstream_pool(cfg: &UpstreamConfig, tls: ClientConfig) -> Result<Pool, ConfigError> {
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Connector::new(cfg.connect_timeout));
    Pool::new(connector, &cfg.base_url.scheme, &cfg.base_url.authority, POOL_MAX_IDLE)
        .map_err(|e| invalid("upstream.base_url", e.to_string()))
}

/// The refresh client.
pub fn refresh_client(cfg: &UpstreamConfig, mut tls: ClientConfig) -> Result<reqwest::Client, ConfigError> {
    tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(cfg.connect_timeout)
        .timeout(cfg.request_timeout)
        .build()
        .map_err(|e| invalid("upstream.base_url", format!("cannot build the refresh client: {e}")))
}
