//! The watch stream: newline-delimited JSON events over a chunked body, as the API server sends them. Synthetic
//! ADDED events for the current objects when no resourceVersion (or `0`) is given, else the history's events after
//! it (an ERROR event with 410 Gone when the history no longer reaches back); then every change as it happens,
//! BOOKMARK events when asked for, the end at `timeoutSeconds`, and an abrupt end when the watches are dropped.

use std::{io, sync::Arc, time::Duration};

use axum::{body::Body, response::Response};
use bytes::Bytes;
use serde_json::{json, Value};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};

use super::{store::Target, Shared};

/// How often a watch that allows bookmarks gets one (the real server: about once a minute).
const BOOKMARK_EVERY: Duration = Duration::from_millis(500);

/// What a watch request asked for.
#[derive(Debug)]
pub(crate) struct WatchRequest {
    /// `None`: start with the current objects.
    pub(crate) from: Option<u64>,
    pub(crate) bookmarks: bool,
    pub(crate) timeout: Duration,
}

type Chunk = Result<Bytes, io::Error>;

/// Start the stream; its events are produced by a task until the deadline, a drop, or the client going away.
///
/// The change and drop signals are subscribed here, before the response head goes out, not in the task: a
/// [`super::KubeApi::drop_watches`] right after the client has its stream must cut it even if the task has not
/// run yet (a receiver subscribed later would take the drop as already seen).
pub(crate) fn respond(shared: Arc<Shared>, target: Target, request: WatchRequest) -> Response {
    let (tx, mut rx) = mpsc::channel(64);
    let (changes, drops) = (shared.changes.subscribe(), shared.drops.subscribe());
    tokio::spawn(stream(shared, target, request, changes, drops, tx));
    let body = Body::from_stream(futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)));
    Response::builder()
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .expect("a valid response")
}

async fn stream(
    shared: Arc<Shared>,
    target: Target,
    request: WatchRequest,
    mut changes: watch::Receiver<()>,
    mut drops: watch::Receiver<()>,
    tx: mpsc::Sender<Chunk>,
) {
    let deadline = Instant::now() + request.timeout;
    let mut bookmarks = tokio::time::interval_at(Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    let mut seen = match request.from {
        Some(resource_version) => resource_version,
        None => {
            let (list, resource_version) = {
                let store = shared.store.lock().unwrap();
                (store.list(&target), store.resource_version())
            };
            for object in list["items"].as_array().into_iter().flatten() {
                if !send(&tx, "ADDED", object).await {
                    return;
                }
            }
            resource_version
        }
    };
    let mut bookmark_due = false;
    loop {
        let pending = shared.store.lock().unwrap().events_after(&target, seen);
        match pending {
            Ok((events, now)) => {
                for event in events {
                    if !send(&tx, event.kind_of_change, &event.object).await {
                        return;
                    }
                }
                seen = now;
            }
            Err(gone) => {
                send(&tx, "ERROR", &gone.status).await;
                return;
            }
        }
        if std::mem::take(&mut bookmark_due) && !send(&tx, "BOOKMARK", &target.bookmark(seen)).await {
            return;
        }
        tokio::select! {
            () = tokio::time::sleep_until(deadline) => return,
            _ = drops.changed() => {
                // An error in the body: the connection is cut mid-stream, as when the API server goes away.
                let _ = tx.send(Err(io::Error::other("watch dropped by the fake API"))).await;
                return;
            }
            () = tx.closed() => return,
            _ = changes.changed() => {}
            _ = bookmarks.tick(), if request.bookmarks => bookmark_due = true,
        }
    }
}

/// Send one event line; false when the client has gone away.
async fn send(tx: &mpsc::Sender<Chunk>, kind_of_change: &str, object: &Value) -> bool {
    let mut line = serde_json::to_vec(&json!({ "type": kind_of_change, "object": object })).expect("JSON");
    line.push(b'\n');
    tx.send(Ok(Bytes::from(line))).await.is_ok()
}
