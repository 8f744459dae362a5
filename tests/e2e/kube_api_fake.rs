//! The fake Kubernetes API speaks kube's dialect: the real `kube` client, pointed at it through a kubeconfig, gets
//! what a real API server would give it (objects with their metadata, 404/409/410 `Status` errors, list and watch
//! with a field selector, bookmarks), and every fault knob shows from the client. The cluster tests build on this.

use std::{path::Path, time::Duration};

use futures_util::{stream::BoxStream, StreamExt as _};
use k8s_openapi::{
    api::{
        coordination::v1::{Lease, LeaseSpec},
        core::v1::Secret,
    },
    ByteString,
};
use kube::{
    api::{Api, DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams, WatchParams},
    config::{KubeConfigOptions, Kubeconfig},
    core::WatchEvent,
    Client, Config,
};

use crate::support::kube_api::{Answer, KubeApi, NAMESPACE, TOKEN};

/// Long enough for a loaded machine; only a failing test waits this long.
const WAIT: Duration = Duration::from_secs(30);

/// A kube client as the sidecar builds one: from the fake's kubeconfig, without kube's retries of 429/503.
async fn secrets(api: &KubeApi, dir: &Path) -> Api<Secret> {
    Api::default_namespaced(client(api, dir).await)
}

async fn client(api: &KubeApi, dir: &Path) -> Client {
    let kubeconfig = Kubeconfig::read_from(api.kubeconfig(dir)).unwrap();
    let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    config.default_retry = false;
    config.proxy_url = None;
    Client::try_from(config).unwrap()
}

type Events = BoxStream<'static, kube::Result<WatchEvent<Secret>>>;

async fn watch(secrets: &Api<Secret>, params: &WatchParams, from: &str) -> Events {
    secrets.watch(params, from).await.unwrap().boxed()
}

async fn next(events: &mut Events) -> WatchEvent<Secret> {
    tokio::time::timeout(WAIT, events.next())
        .await
        .expect("an event in time")
        .expect("the stream is open")
        .unwrap()
}

/// The stream ends (cleanly or cut) within [`WAIT`].
async fn ends(events: &mut Events) -> bool {
    let end = async { while let Some(Ok(_)) = events.next().await {} };
    tokio::time::timeout(WAIT, end).await.is_ok()
}

fn api_error(error: kube::Error) -> kube::core::Status {
    match error {
        kube::Error::Api(status) => *status,
        other => panic!("expected a Status error, got {other:?}"),
    }
}

fn data(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn with_key(mut secret: Secret, key: &str, value: &str) -> Secret {
    secret
        .data
        .get_or_insert_default()
        .insert(key.to_owned(), ByteString(value.as_bytes().to_vec()));
    secret
}

#[tokio::test]
async fn get_returns_a_seeded_object_with_server_metadata_and_a_missing_one_is_404_not_found() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("admin", &[("token", "abc")]);
    api.seed_lease(
        "lock",
        LeaseSpec {
            holder_identity: Some("pod-a".to_owned()),
            ..LeaseSpec::default()
        },
    );
    let secrets = secrets(&api, dir.path()).await;

    let secret = secrets.get("admin").await.unwrap();
    assert_eq!(data(&secret, "token"), "abc");
    assert_eq!(secret.metadata.namespace.as_deref(), Some(NAMESPACE));
    assert!(secret.metadata.uid.is_some() && secret.metadata.creation_timestamp.is_some());
    assert_eq!(secret.type_.as_deref(), Some("Opaque"));
    let leases: Api<Lease> = Api::default_namespaced(client(&api, dir.path()).await);
    let lease = leases.get("lock").await.unwrap();
    assert_eq!(lease.spec.unwrap().holder_identity.as_deref(), Some("pod-a"));
    assert_eq!(
        lease.metadata.resource_version,
        Some(api.resource_version().to_string())
    );
    assert_eq!(api.lease("lock").unwrap().metadata.uid, lease.metadata.uid);

    let missing = api_error(secrets.get("missing").await.unwrap_err());
    assert_eq!((missing.code, missing.reason.as_str()), (404, "NotFound"));
    assert_eq!(missing.message, r#"secrets "missing" not found"#);
    let details = missing.details.unwrap();
    assert_eq!((details.name.as_str(), details.kind.as_str()), ("missing", "secrets"));
    let missing = api_error(leases.get("missing").await.unwrap_err());
    assert_eq!(missing.message, r#"leases.coordination.k8s.io "missing" not found"#);
    assert_eq!(missing.details.unwrap().group, "coordination.k8s.io");
}

#[tokio::test]
async fn an_update_with_a_stale_resource_version_gets_409_conflict_and_one_without_is_unconditional() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let secrets = secrets(&api, dir.path()).await;
    let read = secrets.get("state").await.unwrap();

    let written = secrets
        .replace("state", &PostParams::default(), &with_key(read.clone(), "state", "2"))
        .await
        .unwrap();
    let (before, after) = (&read.metadata.resource_version, &written.metadata.resource_version);
    assert!(after.as_ref().unwrap().parse::<u64>().unwrap() > before.as_ref().unwrap().parse().unwrap());
    assert_eq!(written.metadata.uid, read.metadata.uid);
    let stale = secrets
        .replace("state", &PostParams::default(), &with_key(read.clone(), "state", "3"))
        .await;
    let conflict = api_error(stale.unwrap_err());
    assert_eq!((conflict.code, conflict.reason.as_str()), (409, "Conflict"));
    assert_eq!(
        conflict.message,
        r#"Operation cannot be fulfilled on secrets "state": the object has been modified; please apply your changes to the latest version and try again"#
    );
    assert_eq!(api.secret_key("state", "state").as_deref(), Some("2"));

    api.set_secret_key("state", "state", "by a person");
    let stale = secrets
        .replace("state", &PostParams::default(), &with_key(written, "state", "4"))
        .await;
    assert_eq!(api_error(stale.unwrap_err()).code, 409);
    let mut unconditional = with_key(read, "state", "5");
    unconditional.metadata.resource_version = None;
    secrets
        .replace("state", &PostParams::default(), &unconditional)
        .await
        .unwrap();
    assert_eq!(api.secret_key("state", "state").as_deref(), Some("5"));
}

#[tokio::test]
async fn a_lease_needs_a_resource_version_and_a_put_creates_it_a_secret_is_not_created_and_no_op_updates_write_nothing()
{
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let client = client(&api, dir.path()).await;
    let (secrets, leases) = (
        Api::<Secret>::default_namespaced(client.clone()),
        Api::<Lease>::default_namespaced(client),
    );
    let named = |name: &str| ObjectMeta {
        name: Some(name.to_owned()),
        ..ObjectMeta::default()
    };

    let lease = Lease {
        metadata: named("lock"),
        spec: Some(LeaseSpec::default()),
    };
    leases.replace("lock", &PostParams::default(), &lease).await.unwrap();
    let invalid = api_error(
        leases
            .replace("lock", &PostParams::default(), &lease)
            .await
            .unwrap_err(),
    );
    assert_eq!((invalid.code, invalid.reason.as_str()), (422, "Invalid"));
    assert!(invalid
        .message
        .ends_with("metadata.resourceVersion: Invalid value: 0x0: must be specified for an update"));
    let secret = Secret {
        metadata: named("missing"),
        ..Secret::default()
    };
    let missing = api_error(
        secrets
            .replace("missing", &PostParams::default(), &secret)
            .await
            .unwrap_err(),
    );
    assert_eq!(missing.code, 404);

    let before = api.resource_version();
    let read = secrets.get("state").await.unwrap();
    let same = secrets.replace("state", &PostParams::default(), &read).await.unwrap();
    api.set_secret_key("state", "state", "1");
    assert_eq!(same.metadata.resource_version, read.metadata.resource_version);
    assert_eq!(api.resource_version(), before);
}

#[tokio::test]
async fn creating_an_existing_name_gets_409_already_exists() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    let secrets = secrets(&api, dir.path()).await;
    let secret = with_key(
        Secret {
            metadata: ObjectMeta {
                name: Some("new".to_owned()),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        },
        "k",
        "v",
    );

    secrets.create(&PostParams::default(), &secret).await.unwrap();
    let exists = api_error(secrets.create(&PostParams::default(), &secret).await.unwrap_err());
    assert_eq!((exists.code, exists.reason.as_str()), (409, "AlreadyExists"));
    assert_eq!(exists.message, r#"secrets "new" already exists"#);
    assert_eq!(api.secret_key("new", "k").as_deref(), Some("v"));
}

#[tokio::test]
async fn a_list_with_a_name_field_selector_returns_that_object_at_the_newest_resource_version() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("admin", &[("token", "a")]);
    api.seed_secret("state", &[("state", "s")]);
    let secrets = secrets(&api, dir.path()).await;

    let list = secrets
        .list(&ListParams::default().fields("metadata.name=state"))
        .await
        .unwrap();
    assert_eq!(list.items.len(), 1);
    assert_eq!(data(&list.items[0], "state"), "s");
    assert_eq!(list.metadata.resource_version, Some(api.resource_version().to_string()));
    assert_eq!(secrets.list(&ListParams::default()).await.unwrap().items.len(), 2);
    let unsupported = api_error(
        secrets
            .list(&ListParams::default().fields("spec.x=y"))
            .await
            .unwrap_err(),
    );
    assert_eq!((unsupported.code, unsupported.reason.as_str()), (400, "BadRequest"));
}

#[tokio::test]
async fn a_watch_from_a_resource_version_receives_writes_by_others_for_its_name_only() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("admin", &[("token", "a")]);
    api.seed_secret("state", &[("state", "1")]);
    let (watcher, writer) = (secrets(&api, dir.path()).await, secrets(&api, dir.path()).await);
    let read = watcher.get("state").await.unwrap();
    let from = read.metadata.resource_version.clone().unwrap();
    let mut events = watch(&watcher, &WatchParams::default().fields("metadata.name=state"), &from).await;

    api.set_secret_key("admin", "token", "b");
    writer
        .replace("state", &PostParams::default(), &with_key(read, "state", "2"))
        .await
        .unwrap();
    let WatchEvent::Modified(secret) = next(&mut events).await else {
        panic!("a MODIFIED event")
    };
    assert_eq!(data(&secret, "state"), "2");
    api.set_secret_key("state", "state", "3");
    let WatchEvent::Modified(secret) = next(&mut events).await else {
        panic!("a MODIFIED event")
    };
    assert_eq!(data(&secret, "state"), "3");
    assert_eq!(
        secret.metadata.resource_version,
        Some(api.resource_version().to_string())
    );
}

#[tokio::test]
async fn on_the_wire_a_watch_is_chunked_json_lines_and_a_conflict_is_the_real_status_object() {
    let api = KubeApi::spawn().await;
    api.seed_secret("state", &[("state", "1")]);
    let from = api.resource_version();
    let url = format!("{}/api/v1/namespaces/{NAMESPACE}/secrets", api.url());
    let raw = crate::support::client();

    let watch = format!("{url}?watch=1&resourceVersion={from}&fieldSelector=metadata.name%3Dstate");
    let mut stream = raw.get(watch).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(stream.headers()["transfer-encoding"], "chunked");
    assert_eq!(stream.headers()["content-type"], "application/json");
    let stale = serde_json::json!({ "metadata": { "name": "state", "resourceVersion": "1" } });
    let conflict = raw
        .put(format!("{url}/state"))
        .bearer_auth(TOKEN)
        .json(&stale)
        .send()
        .await
        .unwrap();
    assert_eq!(conflict.status(), 409);
    let status: serde_json::Value = conflict.json().await.unwrap();
    let message = r#"Operation cannot be fulfilled on secrets "state": the object has been modified; please apply your changes to the latest version and try again"#;
    assert_eq!(
        status,
        serde_json::json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message,
            "reason": "Conflict", "details": { "name": "state", "kind": "secrets" }, "code": 409,
        })
    );
    api.set_secret_key("state", "state", "2");
    let chunk = tokio::time::timeout(WAIT, stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let line = std::str::from_utf8(&chunk)
        .unwrap()
        .strip_suffix('\n')
        .expect("one event per line");
    let event: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(
        (event["type"].as_str(), event["object"]["kind"].as_str()),
        (Some("MODIFIED"), Some("Secret"))
    );
}

#[tokio::test]
async fn a_watch_without_resource_version_starts_with_the_current_objects() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let secrets = secrets(&api, dir.path()).await;

    let mut events = watch(&secrets, &WatchParams::default().fields("metadata.name=state"), "0").await;
    let WatchEvent::Added(secret) = next(&mut events).await else {
        panic!("an ADDED event")
    };
    assert_eq!(data(&secret, "state"), "1");
}

#[tokio::test]
async fn a_watch_from_before_a_compaction_gets_an_error_event_410_expired() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let old = api.resource_version().to_string();
    api.set_secret_key("state", "state", "2");
    let secrets = secrets(&api, dir.path()).await;
    let mut events = watch(&secrets, &WatchParams::default(), &old).await;
    assert!(
        matches!(next(&mut events).await, WatchEvent::Modified(_)),
        "resumable before the compaction"
    );

    api.compact();
    let mut events = watch(&secrets, &WatchParams::default(), &old).await;
    let WatchEvent::Error(gone) = next(&mut events).await else {
        panic!("an ERROR event")
    };
    assert_eq!((gone.code, gone.reason.as_str()), (410, "Expired"));
    assert!(ends(&mut events).await);
    let now = api.resource_version().to_string();
    api.set_secret_key("state", "state", "3");
    let mut events = watch(&secrets, &WatchParams::default(), &now).await;
    assert!(
        matches!(next(&mut events).await, WatchEvent::Modified(_)),
        "resumable after the compaction"
    );
}

#[tokio::test]
async fn a_watch_that_allows_bookmarks_gets_them_at_the_newest_resource_version() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let secrets = secrets(&api, dir.path()).await;
    let from = api.resource_version().to_string();
    api.seed_secret("other", &[]);

    let mut events = watch(&secrets, &WatchParams::default().fields("metadata.name=state"), &from).await;
    let WatchEvent::Bookmark(bookmark) = next(&mut events).await else {
        panic!("a BOOKMARK event")
    };
    assert_eq!(bookmark.metadata.resource_version, api.resource_version().to_string());
    assert_eq!(
        (bookmark.types.api_version.as_str(), bookmark.types.kind.as_str()),
        ("v1", "Secret")
    );
}

#[tokio::test]
async fn a_watch_ends_at_its_timeout_and_when_the_watches_are_dropped() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    let secrets = secrets(&api, dir.path()).await;
    let from = api.resource_version().to_string();

    let mut events = watch(&secrets, &WatchParams::default().timeout(1), &from).await;
    assert!(ends(&mut events).await, "ended at timeoutSeconds");
    let mut events = watch(&secrets, &WatchParams::default(), &from).await;
    api.drop_watches();
    assert!(ends(&mut events).await, "ended by drop_watches");
}

#[tokio::test]
async fn while_down_connections_are_cut_and_refused_and_up_again_served() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let secrets = secrets(&api, dir.path()).await;
    let mut events = watch(&secrets, &WatchParams::default(), &api.resource_version().to_string()).await;

    api.set_down(true);
    assert!(ends(&mut events).await, "the open watch is cut");
    let error = secrets.get("state").await.unwrap_err();
    assert!(
        !matches!(error, kube::Error::Api(_)),
        "a connection error, not an answer: {error:?}"
    );
    api.set_down(false);
    assert_eq!(data(&secrets.get("state").await.unwrap(), "state"), "1");
}

#[tokio::test]
async fn the_503_and_429_knobs_answer_status_errors_and_latency_delays_answers() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let secrets = secrets(&api, dir.path()).await;
    let url = format!("{}/api/v1/namespaces/{NAMESPACE}/secrets/state", api.url());

    api.set_answer(Answer::Unavailable);
    let unavailable = api_error(secrets.get("state").await.unwrap_err());
    assert_eq!(
        (unavailable.code, unavailable.reason.as_str()),
        (503, "ServiceUnavailable")
    );
    api.set_answer(Answer::TooManyRequests { retry_after_secs: 2 });
    let throttled = api_error(secrets.get("state").await.unwrap_err());
    assert_eq!((throttled.code, throttled.reason.as_str()), (429, "TooManyRequests"));
    assert_eq!(throttled.details.unwrap().retry_after_seconds, 2);
    let raw = crate::support::client().get(&url).send().await.unwrap();
    assert_eq!(raw.headers()["retry-after"], "2");

    api.set_answer(Answer::Normal);
    let unauthenticated = crate::support::client().get(&url).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401, "no bearer token");
    api.set_latency(Duration::from_millis(300));
    let started = tokio::time::Instant::now();
    secrets.get("state").await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn the_request_log_names_each_object_and_the_resource_version_written() {
    let (api, dir) = (KubeApi::spawn().await, tempfile::tempdir().unwrap());
    api.seed_secret("state", &[("state", "1")]);
    let secrets = secrets(&api, dir.path()).await;
    let read = secrets.get("state").await.unwrap();
    let sent = read.metadata.resource_version.clone();
    let mut events = watch(
        &secrets,
        &WatchParams::default().fields("metadata.name=state"),
        sent.as_ref().unwrap(),
    )
    .await;
    secrets
        .replace("state", &PostParams::default(), &with_key(read, "state", "2"))
        .await
        .unwrap();
    let patch = Patch::Merge(serde_json::json!({ "data": {} }));
    let refused = api_error(
        secrets
            .patch("state", &PatchParams::default(), &patch)
            .await
            .unwrap_err(),
    );
    assert_eq!(refused.code, 405);
    secrets.delete("state", &DeleteParams::default()).await.unwrap();
    assert!(matches!(next(&mut events).await, WatchEvent::Modified(_)));
    assert!(matches!(next(&mut events).await, WatchEvent::Deleted(_)));

    let log: Vec<_> = api
        .requests()
        .into_iter()
        .map(|r| {
            (
                r.method.to_string(),
                r.path,
                r.name,
                r.resource_version,
                r.query.contains("watch=true"),
            )
        })
        .collect();
    let path = format!("/api/v1/namespaces/{NAMESPACE}/secrets");
    let state = Some("state".to_owned());
    assert_eq!(
        log,
        [
            ("GET".to_owned(), format!("{path}/state"), state.clone(), None, false),
            ("GET".to_owned(), path.clone(), state.clone(), None, true),
            ("PUT".to_owned(), format!("{path}/state"), state.clone(), sent, false),
            ("PATCH".to_owned(), format!("{path}/state"), state.clone(), None, false),
            ("DELETE".to_owned(), format!("{path}/state"), state, None, false),
        ]
    );
}
