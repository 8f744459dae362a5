//! An in-process fake of the Kubernetes API, faithful where the sidecar depends on it: core/v1 Secrets and
//! coordination.k8s.io/v1 Leases in one namespace ([`NAMESPACE`]) with get, list, watch, create (POST) and
//! update (PUT), resourceVersions from one counter that only grows, 409 Conflict on a stale update, 409
//! AlreadyExists, `Status` objects as the real server writes them, watches with `fieldSelector=metadata.name=…`,
//! bookmarks and 410 Gone ([`watch`]). DELETE works; PATCH is refused (405): the sidecar must send neither, and
//! the request log ([`Logged`]) shows whatever was sent. Label selectors are ignored.
//!
//! Fault knobs, settable while it runs: down (connections cut and refused), 503, 429 with Retry-After, latency,
//! open watches dropped, the history compacted (the next resume gets 410 Gone).

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Body,
    extract::{Query, Request, State},
    response::{IntoResponse, Response},
    Json,
};
use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::{Method, StatusCode};
use hyper_util::rt::TokioIo;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use serde::Deserialize;
use serde_json::{json, Value};
use store::{Failure, Kind, Store, Target};
use tokio::{net::TcpListener, sync::watch as signal, task::JoinHandle};
use tower::ServiceExt as _;

mod store;
mod watch;

/// The namespace of every object, and of the kubeconfig's context.
pub(crate) const NAMESPACE: &str = "payments";
/// The bearer token the kubeconfig carries; requests without it get 401.
pub(crate) const TOKEN: &str = "fake-service-account-token";

/// How the API answers every request, whatever it asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Answer {
    Normal,
    /// 503 ServiceUnavailable.
    Unavailable,
    /// 429 TooManyRequests with `Retry-After` (and `details.retryAfterSeconds`), as API priority and fairness does.
    TooManyRequests {
        retry_after_secs: u64,
    },
}

/// One request as it arrived (also those a fault answered).
#[derive(Debug, Clone)]
pub(crate) struct Logged {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: String,
    /// The object concerned: a write's `metadata.name` in its body, else the name in the path, else the name in
    /// a `metadata.name` field selector; `None` for a request on a whole collection.
    pub(crate) name: Option<String>,
    /// A write's `metadata.resourceVersion` in its body.
    pub(crate) resource_version: Option<String>,
}

/// The fake API, serving on `127.0.0.1:0`; dropping it stops it.
#[derive(Debug)]
pub(crate) struct KubeApi {
    shared: Arc<Shared>,
    addr: SocketAddr,
    task: JoinHandle<()>,
}

/// State shared by the handlers, the watches and the knobs.
#[derive(Debug)]
struct Shared {
    store: Mutex<Store>,
    /// Signalled after every write: watches look for new events.
    changes: signal::Sender<()>,
    /// Signalled by [`KubeApi::drop_watches`].
    drops: signal::Sender<()>,
    down: signal::Sender<bool>,
    faults: Mutex<(Answer, Duration)>,
    log: Mutex<Vec<Logged>>,
}

/// The query parameters the fake reads (others, e.g. `labelSelector`, are ignored).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Params {
    watch: Option<String>,
    resource_version: Option<String>,
    allow_watch_bookmarks: Option<String>,
    timeout_seconds: Option<u64>,
    field_selector: Option<String>,
}

// === impl KubeApi ===

impl KubeApi {
    pub(crate) async fn spawn() -> KubeApi {
        let shared = Arc::new(Shared {
            store: Mutex::new(Store::new()),
            changes: signal::Sender::new(()),
            drops: signal::Sender::new(()),
            down: signal::Sender::new(false),
            faults: Mutex::new((Answer::Normal, Duration::ZERO)),
            log: Mutex::default(),
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = axum::Router::new().fallback(handle).with_state(shared.clone());
        let task = tokio::spawn(serve(listener, router, shared.down.subscribe()));
        KubeApi { shared, addr, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub(crate) fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.addr.port())
    }

    /// Write `dir/kubeconfig`: one context, server [`Self::url`], namespace [`NAMESPACE`], a bearer token.
    pub(crate) fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let text = format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: fake\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: {NAMESPACE}\n\
             users:\n- name: fake\n  user:\n    token: {TOKEN}\n",
            self.url()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// The newest resourceVersion.
    pub(crate) fn resource_version(&self) -> u64 {
        self.shared.store.lock().unwrap().resource_version()
    }

    /// Every request received so far, in order.
    pub(crate) fn requests(&self) -> Vec<Logged> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Create a Secret with these keys (stored base64-encoded under `data`, as the API does).
    pub(crate) fn seed_secret(&self, name: &str, data: &[(&str, &str)]) {
        let data: serde_json::Map<String, Value> = data
            .iter()
            .map(|(key, value)| ((*key).to_owned(), json!(STANDARD.encode(value))))
            .collect();
        let secret = json!({ "metadata": { "name": name }, "type": "Opaque", "data": data });
        self.write(Kind::Secret, |store, target| store.create(target, secret));
    }

    /// A Secret's key, decoded; `None` when the Secret or the key is missing.
    pub(crate) fn secret_key(&self, name: &str, key: &str) -> Option<String> {
        let secret = self.object(Kind::Secret, name)?;
        let decoded = STANDARD.decode(secret["data"][key].as_str()?).expect("base64 data");
        Some(String::from_utf8(decoded).expect("UTF-8 data"))
    }

    /// Set one key of an existing Secret, as a person (`kubectl apply`) or a secret store would: a new
    /// resourceVersion, and the watchers see it.
    pub(crate) fn set_secret_key(&self, name: &str, key: &str, value: &str) {
        self.write(Kind::Secret, |store, target| {
            let mut secret = store.get(target, name)?;
            secret["data"][key] = json!(STANDARD.encode(value));
            store.update(target, name, secret)
        });
    }

    /// Create a Lease.
    pub(crate) fn seed_lease(&self, name: &str, spec: LeaseSpec) {
        let lease = json!({ "metadata": { "name": name }, "spec": spec });
        self.write(Kind::Lease, |store, target| store.create(target, lease));
    }

    /// A Lease as stored.
    pub(crate) fn lease(&self, name: &str) -> Option<Lease> {
        Some(serde_json::from_value(self.object(Kind::Lease, name)?).expect("a Lease"))
    }

    /// Down: open connections (watches included) are cut, new ones accepted and closed at once. Up again: served.
    pub(crate) fn set_down(&self, down: bool) {
        self.shared.down.send_replace(down);
    }

    /// How every request is answered from now on.
    pub(crate) fn set_answer(&self, answer: Answer) {
        self.shared.faults.lock().unwrap().0 = answer;
    }

    /// Added before every answer (a watch: before its first event).
    pub(crate) fn set_latency(&self, latency: Duration) {
        self.shared.faults.lock().unwrap().1 = latency;
    }

    /// Cut every open watch stream now (mid-body, as when an API server goes away).
    pub(crate) fn drop_watches(&self) {
        self.shared.drops.send_replace(());
    }

    /// Forget the change history: a watch resumed from any resourceVersion before now gets 410 Gone.
    pub(crate) fn compact(&self) {
        self.shared.store.lock().unwrap().compact();
    }

    fn object(&self, kind: Kind, name: &str) -> Option<Value> {
        self.shared.store.lock().unwrap().get(&target(kind), name).ok()
    }

    /// A helper's write: straight to the store (not logged as a request), and the watchers told.
    fn write(&self, kind: Kind, change: impl FnOnce(&mut Store, &Target) -> Result<Value, Failure>) {
        let result = change(&mut self.shared.store.lock().unwrap(), &target(kind));
        if let Err(failure) = result {
            panic!("the fake API refused a helper's write: {}", failure.status);
        }
        self.shared.changes.send_replace(());
    }
}

impl Drop for KubeApi {
    fn drop(&mut self) {
        self.task.abort();
        self.set_down(true);
    }
}

/// The collection of `kind` in [`NAMESPACE`].
fn target(kind: Kind) -> Target {
    Target {
        kind,
        namespace: NAMESPACE.to_owned(),
        name: None,
    }
}

/// Accept connections and serve them over HTTP/1.1; while down, close new connections at once and cut open ones.
async fn serve(listener: TcpListener, router: axum::Router, down: signal::Receiver<bool>) {
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        if *down.borrow() {
            continue;
        }
        let (router, mut down) = (router.clone(), down.clone());
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
                router.clone().oneshot(request.map(Body::new))
            });
            let connection = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tcp), service);
            tokio::select! {
                _ = connection => {}
                _ = down.wait_for(|down| *down) => {}
            }
        });
    }
}

/// Every request: log it, apply the faults, check the bearer token, route it.
async fn handle(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default();
    let object: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let params = Query::<Params>::try_from_uri(&parts.uri)
        .map(|q| q.0)
        .unwrap_or_default();
    let selected = params.field_selector.as_deref().map(selected_name).transpose();
    let target = Target::parse(parts.uri.path());
    let path_name = target.as_ref().and_then(|t| t.name.clone());
    let method = parts.method;
    let write = method == Method::PUT || method == Method::POST;
    let body_field = |field: &str| object["metadata"][field].as_str().map(str::to_owned);
    shared.log.lock().unwrap().push(Logged {
        method: method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        name: match write {
            true => body_field("name"),
            false => path_name.clone().or_else(|| selected.as_ref().ok().cloned().flatten()),
        },
        resource_version: write.then(|| body_field("resourceVersion")).flatten(),
    });

    let (answer, latency) = *shared.faults.lock().unwrap();
    tokio::time::sleep(latency).await;
    match answer {
        Answer::Normal => {}
        Answer::Unavailable => {
            let message = "the server is currently unable to handle the request".to_owned();
            return fail(Failure::new(503, "ServiceUnavailable", message, None));
        }
        Answer::TooManyRequests { retry_after_secs } => {
            let message = "Too many requests, please try again later.".to_owned();
            let mut failure = Failure::new(429, "TooManyRequests", message, None);
            failure.status["details"] = json!({ "retryAfterSeconds": retry_after_secs });
            let mut response = fail(failure);
            response
                .headers_mut()
                .insert(http::header::RETRY_AFTER, retry_after_secs.into());
            return response;
        }
    }
    let bearer = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if bearer != Some(&format!("Bearer {TOKEN}")) {
        return fail(Failure::new(401, "Unauthorized", "Unauthorized".to_owned(), None));
    }
    let Some(mut target) = target else {
        let message = "the server could not find the requested resource".to_owned();
        return fail(Failure::new(404, "NotFound", message, None));
    };
    if method == Method::GET && path_name.is_none() {
        match selected {
            Ok(name) => target.name = name,
            Err(failure) => return fail(failure),
        }
        if matches!(params.watch.as_deref(), Some("1" | "true")) {
            return match watch_request(&params) {
                Ok(request) => watch::respond(shared, target, request),
                Err(failure) => fail(failure),
            };
        }
    }
    let mut store = shared.store.lock().unwrap();
    let existed = path_name.as_ref().is_some_and(|name| store.get(&target, name).is_ok());
    let result = match (&method, path_name) {
        (&Method::GET, Some(name)) => store.get(&target, &name),
        (&Method::GET, None) => Ok(store.list(&target)),
        (&Method::POST, None) => store.create(&target, object),
        (&Method::PUT, Some(name)) => store.update(&target, &name, object),
        (&Method::DELETE, Some(name)) => store.delete(&target, &name),
        _ => {
            let message = format!("the fake Kubernetes API does not serve {method} here");
            Err(Failure::new(405, "MethodNotAllowed", message, None))
        }
    };
    drop(store);
    let object = match result {
        Ok(object) => object,
        Err(failure) => return fail(failure),
    };
    if method != Method::GET {
        shared.changes.send_replace(());
    }
    let created = method == Method::POST || method == Method::PUT && !existed;
    (if created { StatusCode::CREATED } else { StatusCode::OK }, Json(object)).into_response()
}

/// A watch's `resourceVersion` (none or `0`: start with the current objects), bookmarks, timeout (default 30 min).
fn watch_request(params: &Params) -> Result<watch::WatchRequest, Failure> {
    let from = match params.resource_version.as_deref().unwrap_or("0") {
        "0" | "" => None,
        text => Some(
            text.parse()
                .map_err(|_| Failure::bad_request(format!("invalid resource version: {text}")))?,
        ),
    };
    Ok(watch::WatchRequest {
        from,
        bookmarks: params.allow_watch_bookmarks.as_deref() == Some("true"),
        timeout: Duration::from_secs(params.timeout_seconds.unwrap_or(1800)),
    })
}

/// `metadata.name=NAME` (or `==`): the only field selector the fake (and the sidecar) uses.
fn selected_name(selector: &str) -> Result<String, Failure> {
    let name = selector
        .strip_prefix("metadata.name==")
        .or_else(|| selector.strip_prefix("metadata.name="));
    name.filter(|name| !name.contains(','))
        .map(str::to_owned)
        .ok_or_else(|| {
            let field = selector.split(['=', '!', ',']).next().unwrap_or_default();
            Failure::bad_request(format!("field label not supported: {field}"))
        })
}

/// The failure's `Status`, with its code.
fn fail(failure: Failure) -> Response {
    (StatusCode::from_u16(failure.code).unwrap(), Json(failure.status)).into_response()
}
