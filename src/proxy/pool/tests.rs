//! The pool's connection attempts, against an upstream that refuses connections.

use std::sync::Arc;

use http::uri::{Authority, Scheme};
use hyper_rustls::HttpsConnectorBuilder;
use rustls::{ClientConfig, RootCertStore};

use super::*;
use crate::proxy::tcp::Connector;

/// A pool for `https://127.0.0.1:port` (protocol unknown until a connection is made).
fn pool(port: u16) -> Arc<Pool> {
    let tls = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(RootCertStore::empty())
        .with_no_client_auth();
    let connector = HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(Connector::new(Duration::from_secs(5)));
    let authority: Authority = format!("127.0.0.1:{port}").parse().unwrap();
    Arc::new(Pool::new(connector.into(), &Scheme::HTTPS, &authority, 8).unwrap())
}

/// A port nothing listens on.
async fn refusing_port() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn get() -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::empty());
    *req.uri_mut() = Uri::from_static("/x");
    req
}

#[tokio::test]
async fn concurrent_first_requests_share_one_failed_connection_attempt() {
    let pool = pool(refusing_port().await);
    let deadline = Instant::now() + Duration::from_secs(10);
    let sends: Vec<_> = (0..8)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.send(get(), deadline).await })
        })
        .collect();
    for send in sends {
        let e = send.await.unwrap().unwrap_err();
        assert!(matches!(e, SendError::Connect(_)), "{e}");
        assert!(!e.unprocessed());
    }
    assert_eq!(pool.attempts.load(Ordering::Relaxed), 1, "one attempt for 8 requests");
    // A later request tries again.
    assert!(matches!(pool.send(get(), deadline).await, Err(SendError::Connect(_))));
    assert_eq!(pool.attempts.load(Ordering::Relaxed), 2);
}
