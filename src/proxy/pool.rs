//! The forwarding client: keep-alive connections to the one upstream, on hyper's connection API.
//!
//! HTTP/1.1 connections wait in a lock-free queue between requests; a request takes one (or opens one), and its
//! response body puts it back when read to the end. When TLS negotiates HTTP/2 (ALPN), one connection is shared
//! by every request instead. There is one upstream, so there is no per-host map to hash or lock, and no task per
//! request (hyper-util's pooled client has both).
//!
//! A request is retried on another connection only when hyper hands it back unsent (a pooled connection that
//! closed as it was taken, or requests still queued on an HTTP/2 connection when its GOAWAY arrived); anything
//! that may have reached the upstream is never replayed here.
//!
//! A connection is made once for many requests where it may be shared: while the upstream's protocol is not
//! known to be HTTP/1.1 (the first requests of an `https://` upstream, or after the shared HTTP/2 connection
//! closed), concurrent requests wait for one connection attempt (one TLS handshake) instead of making one each,
//! and share its outcome. HTTP/1.1 connections, one per concurrent request, are then made in parallel.
//!
//! The shared HTTP/2 connection is replaced only when it fails: it closed (a GOAWAY, a connection error), or
//! PINGs every [`H2_PING_INTERVAL`], also while idle, went unanswered (a peer gone without FIN or RST). One
//! request's time-out says nothing about the connection (a slow endpoint), and retiring it would cost every other
//! request a new handshake.

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use arc_swap::ArcSwapOption;
use bytes::Bytes;
use crossbeam_queue::ArrayQueue;
use http::{
    header,
    uri::{Authority, PathAndQuery},
    HeaderValue, Request, Response, Uri,
};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{
    body::Incoming,
    client::conn::{http1, http2},
};
use hyper_util::{
    client::legacy::connect::Connection as _,
    rt::{TokioExecutor, TokioTimer},
};
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::{
    body::{poll_data, RequestBody},
    client::UpstreamConnector,
};

/// A pooled HTTP/1.1 connection not used for this long is closed rather than reused.
const IDLE_LIMIT: Duration = Duration::from_secs(90);

/// How often the shared HTTP/2 connection is PINGed, busy or idle: a peer gone without FIN or RST (a dropped NAT
/// entry, a dead host) is noticed within [`H2_PING_INTERVAL`] + [`H2_PING_TIMEOUT`], not when TCP gives up
/// (about 15 minutes of retransmissions, every request a 504 meanwhile).
const H2_PING_INTERVAL: Duration = Duration::from_secs(20);
/// A PING not answered within this closes the connection.
const H2_PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SendError {
    /// No connection could be made (refused, DNS, TLS, connect time-out): nothing was sent.
    #[error("cannot connect to the upstream: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The exchange failed after the request may have been sent.
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
    /// No response head before the deadline.
    #[error("no response from the upstream before the deadline")]
    Timeout,
    /// A bodiless HTTP/2 request hyper had taken but not yet opened a stream for (it waited for one of the
    /// upstream's `SETTINGS_MAX_CONCURRENT_STREAMS`) when the connection closed: nothing of it was sent. hyper
    /// then drops it (a "dispatch gone" error of the user kind, the only one a request without a body can get).
    #[error(transparent)]
    Unopened(hyper::Error),
}

impl SendError {
    /// Whether the upstream certainly did not process the request, so it may be sent again: HTTP/2 refused its
    /// stream (`REFUSED_STREAM`, RFC 9113 §8.7) or the stream's id was past the last one a GOAWAY from the
    /// upstream promised to process (§6.8; h2 gives exactly those streams the GOAWAY's error, and streams opened
    /// after it). A request hyper handed back unsent is retried here already; these it had taken.
    pub(crate) fn unprocessed(&self) -> bool {
        if matches!(self, SendError::Unopened(_)) {
            return true;
        }
        let mut source: Option<&(dyn std::error::Error + 'static)> = Some(self);
        while let Some(s) = source {
            if let Some(e) = s.downcast_ref::<h2::Error>() {
                return e.is_remote() && (e.is_go_away() || e.reason() == Some(h2::Reason::REFUSED_STREAM));
            }
            source = s.source();
        }
        false
    }
}

/// The shared HTTP/2 connection.
type H2 = Arc<http2::SendRequest<RequestBody>>;

/// Connections to the upstream of `base_url`.
#[derive(Debug)]
pub(crate) struct Pool {
    connector: UpstreamConnector,
    /// `scheme://authority` of the upstream: what is connected to.
    origin: Uri,
    /// The `Host` header HTTP/1.1 requests carry.
    host: HeaderValue,
    idle: ArrayQueue<Idle>,
    h2: ArcSwapOption<http2::SendRequest<RequestBody>>,
    /// The last connection made negotiated HTTP/1.1 (always, for `http://`): connections are made in parallel.
    /// Otherwise one at a time, under [`Pool::connecting`].
    http1: AtomicBool,
    /// Held while a connection that may be shared is being made; holds the last attempt's failure, which the
    /// requests that waited for it share.
    connecting: tokio::sync::Mutex<Option<SharedConnectError>>,
    /// Connection attempts finished under [`Pool::connecting`]: a waiter that sees it change while it waited
    /// takes that attempt's outcome instead of making its own.
    attempts: AtomicU64,
}

/// A connect failure shared by the requests that waited for the same attempt: it reads as the failure itself,
/// which is its source.
#[derive(Debug, Clone)]
struct SharedConnectError(Arc<dyn std::error::Error + Send + Sync>);

impl std::fmt::Display for SharedConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SharedConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<RequestBody>,
    since: Instant,
}

enum Fresh {
    Http1(http1::SendRequest<RequestBody>),
    /// Already in the slot, shared.
    Http2(H2),
}

/// `scheme://authority` cannot be a pool's origin.
#[derive(Debug, thiserror::Error)]
#[error("not a usable upstream origin: {0}")]
pub(crate) struct InvalidOrigin(String);

// === impl Pool ===

impl Pool {
    /// A pool keeping at most `max_idle` idle HTTP/1.1 connections to `scheme://authority`.
    pub(crate) fn new(
        connector: UpstreamConnector,
        scheme: &http::uri::Scheme,
        authority: &Authority,
        max_idle: usize,
    ) -> Result<Self, InvalidOrigin> {
        let origin = Uri::builder()
            .scheme(scheme.clone())
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|e| InvalidOrigin(e.to_string()))?;
        let host = HeaderValue::from_str(authority.as_str()).map_err(|e| InvalidOrigin(e.to_string()))?;
        Ok(Self {
            connector,
            origin,
            host,
            idle: ArrayQueue::new(max_idle.max(1)),
            h2: ArcSwapOption::empty(),
            http1: AtomicBool::new(*scheme == http::uri::Scheme::HTTP),
            connecting: tokio::sync::Mutex::new(None),
            attempts: AtomicU64::new(0),
        })
    }

    /// Send `req` (origin-form URI: path and query) and return the response head by `deadline`
    /// ([`SendError::Timeout`] after it); its body streams from the connection.
    pub(crate) async fn send(
        self: &Arc<Self>,
        req: Request<RequestBody>,
        deadline: Instant,
    ) -> Result<Response<PooledBody>, SendError> {
        let sent = tokio::time::timeout_at(deadline, self.exchange(req)).await;
        sent.unwrap_or(Err(SendError::Timeout))
    }

    /// [`Pool::send`] without the deadline.
    async fn exchange(self: &Arc<Self>, mut req: Request<RequestBody>) -> Result<Response<PooledBody>, SendError> {
        loop {
            let shared = self.h2.load_full();
            if let Some(h2) = &shared {
                if !h2.is_closed() {
                    match self.send_h2(h2, req).await? {
                        Ok(response) => return Ok(response),
                        // Never written: the connection closed first (after a GOAWAY). Try another.
                        Err(unsent) => req = unsent,
                    }
                }
                // Only if no other request has put a new one there meanwhile.
                self.h2.compare_and_swap(&shared, None);
            }
            let (mut sender, reused) = match self.checkout() {
                Some(sender) => (sender, true),
                None => match self.connect_shared().await? {
                    // Another request's connection: to the slot, or to the pool once it is idle.
                    None => continue,
                    Some(Fresh::Http1(sender)) => (sender, false),
                    Some(Fresh::Http2(sender)) => {
                        // A new connection that cannot take one request is not retried.
                        return match self.send_h2(&sender, req).await? {
                            Ok(response) => Ok(response),
                            Err(_) => Err(SendError::Connect("the new HTTP/2 connection closed at once".into())),
                        };
                    }
                },
            };
            if sender.ready().await.is_err() {
                // Closed while it waited in the queue: nothing was sent on it.
                continue;
            }
            if req.uri().scheme().is_some() {
                // Handed back by an HTTP/2 connection, which had made it absolute: HTTP/1.1 sends origin-form.
                *req.uri_mut() = Uri::from(
                    req.uri()
                        .path_and_query()
                        .cloned()
                        .unwrap_or_else(|| PathAndQuery::from_static("/")),
                );
            }
            req.headers_mut().insert(header::HOST, self.host.clone());
            match sender.try_send_request(req).await {
                Ok(response) => {
                    let home = Some((sender, self.clone()));
                    return Ok(response.map(|inner| PooledBody { inner, home }));
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Exchange(e.into_error())),
                },
            }
        }
    }

    /// Send on the shared HTTP/2 connection: the response, or the request handed back when the connection could
    /// not take it (`Ok(Err(req))`).
    async fn send_h2(
        &self,
        h2: &http2::SendRequest<RequestBody>,
        mut req: Request<RequestBody>,
    ) -> Result<Result<Response<PooledBody>, Request<RequestBody>>, SendError> {
        // HTTP/2 carries the authority in the URI, not in `Host`.
        let mut parts = http::uri::Parts::from(std::mem::take(req.uri_mut()));
        parts.scheme = self.origin.scheme().cloned();
        parts.authority = self.origin.authority().cloned();
        if parts.path_and_query.is_none() {
            parts.path_and_query = Some(PathAndQuery::from_static("/"));
        }
        *req.uri_mut() = Uri::from_parts(parts).map_err(|e| SendError::Connect(e.into()))?;
        let bodiless = req.body().is_end_stream();
        match h2.clone().try_send_request(req).await {
            Ok(response) => Ok(Ok(response.map(|inner| PooledBody { inner, home: None }))),
            Err(mut e) => match e.take_message() {
                Some(unsent) => Ok(Err(unsent)),
                None if bodiless && e.error().is_user() => Err(SendError::Unopened(e.into_error())),
                None => Err(SendError::Exchange(e.into_error())),
            },
        }
    }

    /// An idle HTTP/1.1 connection that is open, not too old, and ready now. One still busy (the upstream
    /// answered before it had read a request body that is still being sent) is left in the queue rather than
    /// waited for: the next request must not wait on another request's upload.
    fn checkout(&self) -> Option<http1::SendRequest<RequestBody>> {
        let now = Instant::now();
        let mut busy = Vec::new();
        let mut found = None;
        for _ in 0..self.idle.len() {
            let Some(idle) = self.idle.pop() else { break };
            if idle.sender.is_closed() || now.duration_since(idle.since) >= IDLE_LIMIT {
                continue;
            }
            if idle.sender.is_ready() {
                found = Some(idle.sender);
                break;
            }
            busy.push(idle);
        }
        for idle in busy {
            let _ = self.idle.push(idle);
        }
        found
    }

    fn checkin(&self, sender: http1::SendRequest<RequestBody>) {
        if !sender.is_closed() {
            // A full queue drops the connection, which closes it.
            let _ = self.idle.push(Idle {
                sender,
                since: Instant::now(),
            });
        }
    }

    /// A new connection, made at once when the upstream speaks HTTP/1.1, else once for all requests waiting
    /// meanwhile: `None` when another request's attempt succeeded while this one waited (its connection is in the
    /// slot, or the upstream turned out to speak HTTP/1.1); that attempt's error when it failed.
    async fn connect_shared(&self) -> Result<Option<Fresh>, SendError> {
        if self.http1.load(Ordering::Relaxed) {
            return self.connect().await.map(Some);
        }
        let before = self.attempts.load(Ordering::Acquire);
        let mut last_failure = self.connecting.lock().await;
        if self.attempts.load(Ordering::Acquire) != before {
            return match &*last_failure {
                Some(e) => Err(SendError::Connect(Box::new(e.clone()))),
                None => Ok(None),
            };
        }
        if self.h2.load().as_ref().is_some_and(|h2| !h2.is_closed()) {
            return Ok(None);
        }
        let made = match self.connect().await {
            Err(SendError::Connect(e)) => {
                let shared = SharedConnectError(Arc::from(e));
                *last_failure = Some(shared.clone());
                Err(SendError::Connect(Box::new(shared)))
            }
            made => {
                *last_failure = None;
                made.map(Some)
            }
        };
        self.attempts.fetch_add(1, Ordering::Release);
        made
    }

    /// A new connection; an HTTP/2 one is put in the slot.
    async fn connect(&self) -> Result<Fresh, SendError> {
        let io = self
            .connector
            .clone()
            .oneshot(self.origin.clone())
            .await
            .map_err(SendError::Connect)?;
        if io.connected().is_negotiated_h2() {
            let (sender, conn) = http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .keep_alive_interval(H2_PING_INTERVAL)
                .keep_alive_timeout(H2_PING_TIMEOUT)
                .keep_alive_while_idle(true)
                .handshake(io)
                .await?;
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "upstream HTTP/2 connection ended with an error");
                }
            });
            let sender = Arc::new(sender);
            self.h2.store(Some(sender.clone()));
            self.http1.store(false, Ordering::Relaxed);
            return Ok(Fresh::Http2(sender));
        }
        self.http1.store(true, Ordering::Relaxed);
        let (sender, conn) = http1::Builder::new().handshake(io).await?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        });
        Ok(Fresh::Http1(sender))
    }
}

/// A response body that returns its HTTP/1.1 connection to the pool once read to the end; data only. A body dropped
/// before its end takes the connection with it (hyper closes it).
#[derive(Debug)]
pub(crate) struct PooledBody {
    inner: Incoming,
    home: Option<(http1::SendRequest<RequestBody>, Arc<Pool>)>,
}

impl PooledBody {
    fn finished(&mut self) {
        if let Some((sender, pool)) = self.home.take() {
            pool.checkin(sender);
        }
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        if self.inner.is_end_stream() {
            self.finished();
        }
    }
}

impl HttpBody for PooledBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Response trailers are not passed to the app either (see `super::body`).
        let polled = poll_data(Pin::new(&mut self.inner), cx);
        if let Poll::Ready(None) = polled {
            self.finished();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests;
