//! A Lease-only fake of the Kubernetes API for the cluster unit tests, served over a real socket on 127.0.0.1:
//! get and update (resourceVersion that only grows, 409 Conflict on a stale update, 404 for a missing Lease),
//! Status bodies as the API writes them, fault knobs, and a kubeconfig that points at it over plain http. The same
//! routes also serve a client in memory, for tests on tokio's paused clock. (The end-to-end tests have their own,
//! fuller fake.)

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::get,
    Json, Router,
};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use serde_json::json;

use super::kube::ApiSettings;

/// What the fake does with the next requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Fault {
    None,
    /// 503 with a Status body, as an API server that is shutting down or overloaded answers.
    Unavailable,
    /// Accepts and never answers.
    Hang,
}

#[derive(Debug)]
struct Inner {
    leases: HashMap<String, Lease>,
    last_resource_version: u64,
    fault: Fault,
    /// `METHOD name` of every request that reached a Lease route.
    requests: Vec<String>,
}

type Shared = Arc<Mutex<Inner>>;

/// The running fake; stops when dropped.
#[derive(Debug)]
pub(crate) struct FakeApi {
    pub(crate) addr: SocketAddr,
    state: Shared,
    server: tokio::task::JoinHandle<()>,
    dir: tempfile::TempDir,
    app: Router,
}

// === impl FakeApi ===

impl FakeApi {
    pub(crate) const NAMESPACE: &'static str = "team-a";

    pub(crate) async fn start() -> FakeApi {
        let state: Shared = Arc::new(Mutex::new(Inner {
            leases: HashMap::new(),
            last_resource_version: 100,
            fault: Fault::None,
            requests: Vec::new(),
        }));
        let app = Router::new()
            .route(
                "/apis/coordination.k8s.io/v1/namespaces/{ns}/leases/{name}",
                get(get_lease).put(put_lease),
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let served = app.clone();
        let server = tokio::spawn(async move {
            axum::serve(listener, served).await.expect("fake API serves");
        });
        FakeApi {
            addr,
            state,
            server,
            dir: tempfile::tempdir().expect("temp dir"),
            app,
        }
    }

    /// A client that calls the routes in memory, with no socket: the paused clock then runs the whole test.
    pub(crate) fn client_in_memory(&self) -> kube::Client {
        kube::Client::new(self.app.clone(), Self::NAMESPACE)
    }

    /// A kubeconfig whose current context points at the fake over http, namespace [`Self::NAMESPACE`].
    pub(crate) fn kubeconfig(&self) -> PathBuf {
        let path = self.dir.path().join("kubeconfig");
        let yaml = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\ncontexts:\n- name: fake\n  context:\n    \
             cluster: fake\n    user: fake\n    namespace: {ns}\nclusters:\n- name: fake\n  cluster:\n    \
             server: http://{addr}\nusers:\n- name: fake\n  user:\n    token: fake-api-credential\n",
            ns = Self::NAMESPACE,
            addr = self.addr,
        );
        std::fs::write(&path, yaml).expect("write kubeconfig");
        path
    }

    /// Settings that reach the fake through [`Self::kubeconfig`].
    pub(crate) fn settings(&self, call_timeout: Duration) -> ApiSettings {
        ApiSettings::with_kubeconfig(vec![self.kubeconfig()], call_timeout)
    }

    /// Creates (or replaces) the Lease `name`, as deploy ships it: no holder.
    pub(crate) fn create_lease(&self, name: &str) {
        let mut inner = self.state.lock().expect("fake API lock");
        let mut lease = Lease::default();
        lease.metadata.name = Some(name.to_owned());
        lease.metadata.namespace = Some(Self::NAMESPACE.to_owned());
        lease.spec = Some(LeaseSpec::default());
        inner.store(lease);
    }

    /// Another writer (a replica outside the test) takes the Lease `name` for `holder`.
    pub(crate) fn take_lease(&self, name: &str, holder: &str) {
        let mut inner = self.state.lock().expect("fake API lock");
        let mut lease = inner.leases.get(name).cloned().expect("the lease exists");
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(holder.to_owned());
        spec.lease_duration_seconds = Some(15);
        spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        inner.store(lease);
    }

    pub(crate) fn lease(&self, name: &str) -> Option<Lease> {
        self.state.lock().expect("fake API lock").leases.get(name).cloned()
    }

    pub(crate) fn set_fault(&self, fault: Fault) {
        self.state.lock().expect("fake API lock").fault = fault;
    }

    pub(crate) fn requests(&self) -> Vec<String> {
        self.state.lock().expect("fake API lock").requests.clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

// === impl Inner ===

impl Inner {
    fn store(&mut self, mut lease: Lease) -> Lease {
        self.last_resource_version += 1;
        lease.metadata.resource_version = Some(self.last_resource_version.to_string());
        let name = lease.metadata.name.clone().unwrap_or_default();
        self.leases.insert(name, lease.clone());
        lease
    }

    /// Logs the request; the fault to apply, if any.
    fn arrive(&mut self, method: &str, name: &str) -> Fault {
        self.requests.push(format!("{method} {name}"));
        self.fault
    }
}

async fn get_lease(State(state): State<Shared>, Path((_ns, name)): Path<(String, String)>) -> Response {
    let fault = state.lock().expect("fake API lock").arrive("GET", &name);
    if let Some(response) = faulted(fault).await {
        return response;
    }
    match state.lock().expect("fake API lock").leases.get(&name) {
        Some(lease) => Json(lease.clone()).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        ),
    }
}

async fn put_lease(
    State(state): State<Shared>,
    Path((_ns, name)): Path<(String, String)>,
    Json(lease): Json<Lease>,
) -> Response {
    let fault = state.lock().expect("fake API lock").arrive("PUT", &name);
    if let Some(response) = faulted(fault).await {
        return response;
    }
    let mut inner = state.lock().expect("fake API lock");
    let Some(current) = inner.leases.get(&name) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("leases.coordination.k8s.io \"{name}\" not found"),
        );
    };
    if lease.metadata.resource_version != current.metadata.resource_version {
        let message = format!(
            "Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; \
             please apply your changes to the latest version and try again"
        );
        return status(StatusCode::CONFLICT, "Conflict", &message);
    }
    Json(inner.store(lease)).into_response()
}

async fn faulted(fault: Fault) -> Option<Response> {
    match fault {
        Fault::None => None,
        Fault::Unavailable => Some(status(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
            "unavailable",
        )),
        Fault::Hang => std::future::pending().await,
    }
}

/// A `Status` object as the API server writes it.
fn status(code: StatusCode, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code.as_u16(),
    });
    (code, Json(body)).into_response()
}
