//! Finding the API as kubectl does, against the fake API on 127.0.0.1; never through the proxy variables.

use std::time::Instant;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use super::*;
use crate::cluster::test_api::{FakeApi, Fault};

const CALL: Duration = Duration::from_secs(2);

#[tokio::test]
async fn a_kubeconfig_with_a_plain_http_server_reaches_it_in_the_contexts_namespace() {
    let api = FakeApi::start().await;
    api.create_lease("issettled-proxy");
    let client = client(&api.settings(CALL)).await.expect("client");
    assert_eq!(client.default_namespace(), FakeApi::NAMESPACE);
    let lease = Api::<Lease>::default_namespaced(client)
        .get("issettled-proxy")
        .await
        .expect("get");
    assert!(lease.metadata.resource_version.is_some());
    assert_eq!(api.requests(), ["GET issettled-proxy"]);
}

#[tokio::test]
async fn the_namespace_setting_overrides_the_contexts() {
    let api = FakeApi::start().await;
    let mut settings = api.settings(CALL);
    settings.namespace = Some("elsewhere".to_owned());
    assert_eq!(
        client(&settings).await.expect("client").default_namespace(),
        "elsewhere"
    );
}

#[tokio::test]
async fn kubeconfig_files_are_merged_as_kubectl_merges_them() {
    let api = FakeApi::start().await;
    api.create_lease("issettled-proxy");
    let whole = std::fs::read_to_string(api.kubeconfig()).expect("read kubeconfig");
    let (head, users) = whole.split_once("users:").expect("a users section");
    let first = api.kubeconfig().with_file_name("first");
    let second = api.kubeconfig().with_file_name("second");
    std::fs::write(&first, head).expect("write");
    std::fs::write(&second, format!("apiVersion: v1\nkind: Config\nusers:{users}")).expect("write");
    let client = client(&ApiSettings::with_kubeconfig(vec![first, second], CALL))
        .await
        .expect("client");
    assert_eq!(client.default_namespace(), FakeApi::NAMESPACE);
    Api::<Lease>::default_namespaced(client)
        .get("issettled-proxy")
        .await
        .expect("get");
}

/// Run by [`the_process_proxy_variables_are_not_used`] in a child process whose environment has them.
#[tokio::test]
#[ignore = "run as a child process with HTTPS_PROXY set"]
async fn child_reaches_the_api_directly() {
    let Ok(kubeconfig) = std::env::var("ISSETTLED_TEST_KUBECONFIG") else {
        println!("skipped: run by the_process_proxy_variables_are_not_used, which sets ISSETTLED_TEST_KUBECONFIG");
        return;
    };
    let client = client(&ApiSettings::with_kubeconfig(vec![kubeconfig.into()], CALL))
        .await
        .expect("client");
    Api::<Lease>::default_namespaced(client)
        .get("issettled-proxy")
        .await
        .expect("reached the API directly");
}

#[tokio::test]
async fn the_process_proxy_variables_are_not_used() {
    let api = FakeApi::start().await;
    api.create_lease("issettled-proxy");
    // Nothing listens on port 9: through it every call would fail.
    let dead = "http://127.0.0.1:9";
    let child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "cluster::kube::tests::child_reaches_the_api_directly",
            "--ignored",
            "--test-threads=1",
        ])
        .env("ISSETTLED_TEST_KUBECONFIG", api.kubeconfig())
        .envs([
            ("HTTPS_PROXY", dead),
            ("https_proxy", dead),
            ("HTTP_PROXY", dead),
            ("ALL_PROXY", dead),
        ])
        .env("NO_PROXY", "example.invalid")
        .output()
        .await
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&child.stdout);
    assert!(child.status.success(), "child failed: {stdout}");
    assert!(stdout.contains("1 passed"), "the child ran no test: {stdout}");
    assert_eq!(api.requests(), ["GET issettled-proxy"]);
}

#[tokio::test]
async fn the_kubeconfigs_own_proxy_url_is_used_with_its_credentials() {
    let proxy = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let proxy_addr = proxy.local_addr().expect("addr");
    let api = FakeApi::start().await;
    let kubeconfig = std::fs::read_to_string(api.kubeconfig())
        .expect("read kubeconfig")
        .replace(
            "    server:",
            &format!("    proxy-url: http://user:p%40ss@{proxy_addr}\n    server:"),
        );
    let path = api.kubeconfig().with_file_name("with-proxy");
    std::fs::write(&path, kubeconfig).expect("write");
    let mut settings = api.settings(CALL);
    settings.kubeconfig = vec![path];
    let client = client(&settings).await.expect("client");
    let call = tokio::spawn(async move { Api::<Lease>::default_namespaced(client).get("x").await });

    let (mut conn, _) = proxy.accept().await.expect("the proxy is reached");
    let mut head = vec![0; 1024];
    let n = conn.read(&mut head).await.expect("read");
    let head = String::from_utf8_lossy(&head[..n]).into_owned();
    conn.write_all(b"HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n")
        .await
        .expect("answer");
    assert!(head.starts_with(&format!("CONNECT {} HTTP/1.1", api.addr)), "{head}");
    // "user:p@ss", percent-decoded, in Basic.
    assert!(head.contains("Basic dXNlcjpwQHNz"), "{head}");
    assert!(call.await.expect("join").is_err(), "the refused tunnel fails the call");
    assert!(api.requests().is_empty());
}

#[tokio::test]
async fn a_proxy_url_that_is_not_http_is_refused() {
    assert!(matches!(
        proxy("socks5://127.0.0.1:1080"),
        Err(ClusterError::ProxyUrl(_))
    ));
}

#[tokio::test]
async fn an_api_that_does_not_answer_fails_the_call_within_the_call_timeout() {
    let api = FakeApi::start().await;
    api.create_lease("issettled-proxy");
    api.set_fault(Fault::Hang);
    let client = client(&api.settings(Duration::from_millis(300))).await.expect("client");
    let started = Instant::now();
    let result = Api::<Lease>::default_namespaced(client).get("issettled-proxy").await;
    assert!(matches!(result, Err(kube::Error::Service(_))), "{result:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "bounded: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_503_is_answered_once_not_retried() {
    let api = FakeApi::start().await;
    api.create_lease("issettled-proxy");
    api.set_fault(Fault::Unavailable);
    let client = client(&api.settings(CALL)).await.expect("client");
    let result = Api::<Lease>::default_namespaced(client).get("issettled-proxy").await;
    assert!(
        matches!(&result, Err(kube::Error::Api(s)) if s.code == 503),
        "{result:?}"
    );
    assert_eq!(api.requests().len(), 1);
}

#[tokio::test]
async fn in_a_pod_the_service_account_is_used() {
    let dir = tempfile::tempdir().expect("temp dir");
    let ca = rcgen::generate_simple_self_signed(vec!["kubernetes.default.svc".to_owned()]).expect("CA");
    std::fs::write(dir.path().join("ca.crt"), ca.cert.pem()).expect("ca.crt");
    std::fs::write(dir.path().join("token"), "sa-credential").expect("token");
    std::fs::write(dir.path().join("namespace"), "payments\n").expect("namespace");
    let mut settings = ApiSettings {
        service_host: Some("127.0.0.1".to_owned()),
        service_port: Some("6443".to_owned()),
        service_account_dir: dir.path().to_owned(),
        ..ApiSettings::with_kubeconfig(Vec::new(), CALL)
    };
    let config = in_cluster(&settings).expect("in-cluster config");
    assert_eq!(config.cluster_url.to_string(), "https://127.0.0.1:6443/");
    assert_eq!(config.default_namespace, "payments");
    assert!(!config.default_retry);
    assert_eq!(client(&settings).await.expect("client").default_namespace(), "payments");

    settings.service_host = Some("::1".to_owned());
    assert_eq!(
        in_cluster(&settings).expect("v6").cluster_url.to_string(),
        "https://[::1]:6443/"
    );
}

#[tokio::test]
async fn without_kubeconfig_or_service_variables_there_is_no_api() {
    let result = client(&ApiSettings::with_kubeconfig(Vec::new(), CALL)).await;
    assert!(matches!(result, Err(ClusterError::NoApi)), "{:?}", result.err());
}

#[tokio::test]
async fn a_broken_kubeconfig_is_reported_without_quoting_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "users:\n- name: x\n  user: {token: secret-credential-1234\n").expect("write");
    let Err(error) = client(&ApiSettings::with_kubeconfig(vec![path], CALL)).await else {
        panic!("accepted")
    };
    let error = error.to_string();
    assert!(error.contains("not a valid kubeconfig"), "{error}");
    assert!(!error.contains("secret-credential"), "{error}");
}

#[test]
fn a_kubeconfig_without_current_context_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("kubeconfig");
    std::fs::write(&path, "apiVersion: v1\nkind: Config\nclusters: []\n").expect("write");
    assert!(matches!(
        from_kubeconfig(&[path]),
        Err(ClusterError::KubeconfigContents(_))
    ));
}

/// An API server on https://localhost with a certificate from a fresh CA; its answers are one Lease.
async fn tls_api() -> (u16, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("certificate");
    let server =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut head = Vec::new();
                let mut buf = [0; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match tls.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = r#"{"apiVersion":"coordination.k8s.io/v1","kind":"Lease","metadata":{"name":"x","resourceVersion":"7"}}"#;
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = tls.write_all(response.as_bytes()).await;
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, ca.pem())
}

#[tokio::test]
async fn an_https_server_is_verified_with_the_kubeconfigs_certificate_authority() {
    use base64::Engine as _;
    let (port, ca_pem) = tls_api().await;
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(dir.path().join("ca.crt"), &ca_pem).expect("ca.crt");
    let ca_data = base64::engine::general_purpose::STANDARD.encode(&ca_pem);
    let trusts = [
        ("data", format!("certificate-authority-data: {ca_data}")),
        ("file beside the kubeconfig", "certificate-authority: ca.crt".to_owned()),
        ("none: the call fails", String::new()),
    ];
    for (name, trust) in trusts {
        let path = dir.path().join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\ncontexts:\n- name: c\n  context:\n    cluster: c\n\
             clusters:\n- name: c\n  cluster:\n    server: https://localhost:{port}\n    {trust}\n"
        );
        std::fs::write(&path, yaml).expect("write");
        let client = client(&ApiSettings::with_kubeconfig(vec![path], CALL))
            .await
            .expect("client");
        let result = Api::<Lease>::default_namespaced(client).get("x").await;
        assert_eq!(result.is_ok(), !trust.is_empty(), "{name}: {:?}", result.err());
    }
}
