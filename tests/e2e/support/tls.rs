//! A test CA and server certificate generated at test time (rcgen), and a TLS server for the simulated upstream.

use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Arc,
};

use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tower::ServiceExt as _;

/// A CA and a server certificate it signed for `localhost` and `127.0.0.1`, as PEM.
pub(crate) struct TestPki {
    pub(crate) ca_pem: String,
    pub(crate) server: Arc<rustls::ServerConfig>,
}

impl TestPki {
    /// Generate a fresh CA and server certificate.
    pub(crate) fn generate() -> Self {
        Self::with_clients(false).0
    }

    /// Like [`TestPki::generate`], but the server demands a client certificate the CA signed (mutual TLS). Also
    /// returns such a certificate and its key, as PEM.
    pub(crate) fn requiring_clients() -> (Self, String, String) {
        let (pki, client) = Self::with_clients(true);
        let (cert, key) = client.expect("a client certificate");
        (pki, cert, key)
    }

    fn with_clients(required: bool) -> (Self, Option<(String, String)>) {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "issettled-proxy test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let cert = params.signed_by(&key, &issuer).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let (builder, client) = if required {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .unwrap();
            let client_key = rcgen::KeyPair::generate().unwrap();
            let mut client_params = rcgen::CertificateParams::new(vec!["issettled-proxy".to_owned()]).unwrap();
            client_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            let client_cert = client_params.signed_by(&client_key, &issuer).unwrap();
            (
                builder.with_client_cert_verifier(verifier),
                Some((client_cert.pem(), client_key.serialize_pem())),
            )
        } else {
            (builder.with_no_client_auth(), None)
        };
        let mut server = builder
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .unwrap();
        server.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let pki = Self {
            ca_pem: ca.pem(),
            server: Arc::new(server),
        };
        (pki, client)
    }
}

/// How the TLS upstream treats its connections.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServeOptions {
    /// Shut each connection down gracefully (HTTP/2: GOAWAY) as soon as it has received this many requests;
    /// those finish, later ones must go to a new connection.
    pub(crate) goaway_after: Option<usize>,
    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (hyper's default without it): a small one keeps further requests
    /// waiting in the client, unsent, when a GOAWAY arrives.
    pub(crate) max_concurrent_streams: Option<u32>,
}

/// Serve `router` over TLS on `listener`, HTTP/1.1 or HTTP/2 by ALPN, with `options`, counting the TLS connections it accepts in `connections`.
pub(crate) async fn serve_tls_with(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    router: axum::Router,
    options: ServeOptions,
    connections: Arc<AtomicUsize>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        let connections = connections.clone();
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            connections.fetch_add(1, Ordering::SeqCst);
            let received = Arc::new(AtomicUsize::new(0));
            let enough = Arc::new(tokio::sync::Notify::new());
            let notify = enough.clone();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let n = received.fetch_add(1, Ordering::SeqCst) + 1;
                if options.goaway_after == Some(n) {
                    notify.notify_one();
                }
                router.clone().oneshot(req.map(axum::body::Body::new))
            });
            let mut builder = auto::Builder::new(TokioExecutor::new());
            if let Some(max) = options.max_concurrent_streams {
                builder.http2().max_concurrent_streams(max);
            }
            let conn = builder.serve_connection(TokioIo::new(tls), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                () = enough.notified() => conn.as_mut().graceful_shutdown(),
            }
            let _ = conn.await;
        });
    }
}
