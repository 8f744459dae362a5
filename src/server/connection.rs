//! One inbound connection, from accept to close.
//!
//! An HTTP/1 connection alternates between two states. *Active*: hyper serves it and holds its read and write
//! buffers (8 KiB each). *Parked*: after a response the client keeps the connection open for, hyper hands the
//! socket back and its buffers are freed; only the socket and this task remain until the client sends again (as
//! nginx frees its buffers between keep-alive requests). Ten thousand idle keep-alive connections so cost a few
//! KiB each instead of about 25. Parking costs each request a rebuild of hyper's connection, so a connection
//! parks only while the listener has many open ([`super::ListenerGroup`]); with a few, it stays active between requests.
//! An HTTP/2 connection (prior knowledge) is served by hyper throughout.
//!
//! In both states the watchdog ([`super::activity`]) closes slow request heads and idle connections.
//!
//! Shutdown (the listeners stopped): a request in flight finishes. An idle HTTP/1 connection, parked or not,
//! stays open while any request of the listeners is in flight ([`super::in_flight`]), and closes as soon as none
//! is; a request arriving on it meanwhile is answered (the proxy's gate says 503 `SHUTTING_DOWN`) and every
//! response from then on carries `Connection: close`. An HTTP/2 connection gets GOAWAY at once and finishes its
//! streams.

use std::{
    convert::Infallible,
    future::{poll_fn, Future},
    io,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http::{header, Request, Response, Version};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::{body::Incoming, server::conn::http1, server::conn::http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::{io::AsyncReadExt as _, time::Interval};
use tower::{util::Oneshot, ServiceExt as _};

use super::{
    activity::{Activity, InRequest, Verdict, Watchdog},
    conn_io::ConnIo,
    in_flight::RequestsInFlight,
    on_wake::WakeFilter,
    FromElsewhere, Handler, Limits, ListenerGroup, Stream, PARSER_MAX_BUFFER, PARSER_MAX_HEADERS,
};
use crate::shutdown::Phase;

/// What an HTTP/2 client sends first.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve one accepted connection until it closes.
pub(super) async fn serve<I: Stream, H: Handler>(io: I, handler: H, limits: Limits, group: ListenerGroup) {
    let activity = Arc::new(Activity::new(group.requests.clone()));
    let mut guard = Guard::new(&limits, activity.clone(), &group.requests);
    let mut io = ConnIo::new(io, activity.clone());
    let sniffed = tokio::select! {
        biased;
        reason = guard.next(true) => return reason.log(),
        first = first_bytes(&mut io) => first,
    };
    let from_elsewhere = io.get_ref().peer_elsewhere();
    let service = Service {
        handler,
        activity,
        from_elsewhere,
    };
    match sniffed {
        Ok(Some((first, http2))) => {
            io.unread(first);
            if http2 {
                service.activity.serving_http2();
                // Boxed: hyper's HTTP/2 state is large, and rare here; it should not size every connection's task.
                Box::pin(serve_http2(io, service, &mut guard)).await;
            } else {
                serve_http1(io, service, &group, &mut guard).await;
            }
        }
        Ok(None) => {}
        Err(e) => tracing::debug!(error = %e, "connection failed before its first request"),
    }
}

/// Wait for the first bytes and read enough of them to tell HTTP/2's preface from an HTTP/1 request. Returns the
/// bytes read and whether it is HTTP/2; `None` if the client closed first.
async fn first_bytes<I: Stream>(io: &mut ConnIo<I>) -> io::Result<Option<(Bytes, bool)>> {
    let mut buf = BytesMut::with_capacity(H2_PREFACE.len());
    loop {
        if !H2_PREFACE.starts_with(&buf) {
            return Ok(Some((buf.freeze(), false)));
        }
        if buf.len() == H2_PREFACE.len() {
            return Ok(Some((buf.freeze(), true)));
        }
        if io.read_buf(&mut buf).await? == 0 {
            return Ok(None);
        }
    }
}

async fn serve_http1<I: Stream, H: Handler>(
    mut io: ConnIo<I>,
    service: Service<H>,
    group: &ListenerGroup,
    guard: &mut Guard,
) {
    let mut builder = http1::Builder::new();
    builder.max_headers(PARSER_MAX_HEADERS).max_buf_size(PARSER_MAX_BUFFER);
    let wake_filter = WakeFilter::new();
    loop {
        if !io.has_unread() {
            // Parked.
            tokio::select! {
                biased;
                reason = guard.next(true) => return reason.log(),
                ready = poll_fn(|cx| io.get_ref().poll_read_ready(cx)) => {
                    if ready.is_err() {
                        return;
                    }
                }
            }
        }
        // Active: boxed, so a parked connection's task does not keep room for hyper's state.
        service.activity.take_park();
        let mut conn = Box::new(builder.serve_connection(TokioIo::new(io), service.clone()));
        let mut parking = false;
        let mut closing = false;
        let served = loop {
            let activity = &service.activity;
            let run = poll_fn(|cx| loop {
                let polled = conn.poll_without_shutdown(cx);
                // Park after a keep-alive response once no request waits for its answer (a pipelined one would
                // otherwise be answered `Connection: close`), if enough connections are open for it to matter:
                // hyper finishes writing, then returns the socket.
                if polled.is_pending() && !closing && !parking && activity.idle_after_keep_alive() && group.parks() {
                    Pin::new(&mut *conn).graceful_shutdown();
                    parking = true;
                    continue;
                }
                return polled;
            });
            tokio::select! {
                biased;
                served = run => break served,
                reason = wake_filter.on_wake(guard.next(!closing)) => {
                    if !reason.wind_down(&mut closing) {
                        return;
                    }
                    Pin::new(&mut *conn).graceful_shutdown();
                }
            }
        };
        if let Err(e) = served {
            tracing::debug!(error = %e, "connection ended with an error");
            return;
        }
        if closing || !parking {
            // Shut down, or hyper closed it (the client asked to, or hung up).
            return;
        }
        let parts = conn.into_parts();
        io = parts.io.into_inner();
        io.unread(parts.read_buf);
    }
}

async fn serve_http2<I: Stream, H: Handler>(io: ConnIo<I>, service: Service<H>, guard: &mut Guard) {
    let conn = http2::Builder::new(TokioExecutor::new()).serve_connection(TokioIo::new(io), service);
    tokio::pin!(conn);
    let wake_filter = WakeFilter::new();
    let mut closing = false;
    loop {
        tokio::select! {
            biased;
            served = conn.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            reason = wake_filter.on_wake(guard.next(!closing)) => {
                if !reason.wind_down(&mut closing) {
                    return;
                }
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Why a connection should close (or, if active, stop taking requests).
#[derive(Debug, Clone, Copy)]
enum CloseReason {
    Stop,
    HeaderTimeout,
    Idle,
}

impl CloseReason {
    /// On an active connection: the first stop or idle time-out lets hyper finish the requests in flight (true: shut
    /// it down gracefully); a second one, or a header time-out, closes the connection now (false).
    fn wind_down(self, closing: &mut bool) -> bool {
        if matches!(self, CloseReason::Stop | CloseReason::Idle) && !*closing {
            *closing = true;
            return true;
        }
        self.log();
        false
    }

    fn log(self) {
        if let CloseReason::HeaderTimeout = self {
            tracing::debug!("request headers not complete within listen.header_read_timeout: closing");
        }
    }
}

/// The watchdog's ticks and the shutdown, shared by a connection's states.
struct Guard {
    activity: Arc<Activity>,
    ticks: Interval,
    watchdog: Watchdog,
    stopping: Pin<Box<dyn Future<Output = ()> + Send>>,
}

impl Guard {
    fn new(limits: &Limits, activity: Arc<Activity>, requests: &RequestsInFlight) -> Self {
        let period = watchdog_period(limits);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let (requests, protocol) = (requests.clone(), activity.clone());
        // HTTP/2 stops at once (GOAWAY lets its streams finish); HTTP/1 once nothing is in flight anywhere, so an
        // idle connection stays open to answer a late request until then.
        let stopping = async move {
            requests.signal().reached(Phase::Stopping).await;
            if !protocol.is_http2() {
                requests.stopped_and_drained().await;
            }
        };
        Self {
            activity,
            ticks,
            watchdog: Watchdog::new(period, limits.header_read_timeout, limits.idle_timeout),
            stopping: Box::pin(stopping),
        }
    }

    /// The next reason to close; shutdown (for HTTP/1: stopped and drained) counts only while `watch_stop` (it is acted on
    /// once).
    async fn next(&mut self, watch_stop: bool) -> CloseReason {
        loop {
            tokio::select! {
                biased;
                () = self.stopping.as_mut(), if watch_stop => return CloseReason::Stop,
                _ = self.ticks.tick() => match self.watchdog.tick(&self.activity) {
                    Verdict::Keep => {}
                    Verdict::HeaderTimeout => return CloseReason::HeaderTimeout,
                    Verdict::Idle => return CloseReason::Idle,
                },
            }
        }
    }
}

/// How often a connection's watchdog looks at it.
fn watchdog_period(limits: &Limits) -> Duration {
    (limits.header_read_timeout.min(limits.idle_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

/// Whether a `Connection` header asks for `token` (comma-separated, any case).
fn connection_has(headers: &http::HeaderMap, token: &[u8]) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Whether the client keeps the connection open after this request (RFC 9112 §9.3).
fn wants_keep_alive<B>(req: &Request<B>) -> bool {
    match req.version() {
        Version::HTTP_11 => !connection_has(req.headers(), b"close"),
        Version::HTTP_10 => connection_has(req.headers(), b"keep-alive"),
        _ => false,
    }
}

/// Whether hyper keeps the connection after sending this response: it does not ask to close, and to an HTTP/1.0
/// client its length is known (else the body is delimited by closing).
fn response_keeps_alive<B: HttpBody>(res: &Response<B>, http10: bool) -> bool {
    !connection_has(res.headers(), b"close")
        && (!http10 || res.headers().contains_key(header::CONTENT_LENGTH) || res.body().is_end_stream())
}

/// The handler as a hyper service that tells the connection which requests are in flight, whether a request's
/// body was read to its end, and whether a finished response leaves the connection open.
#[derive(Clone)]
struct Service<H> {
    handler: H,
    activity: Arc<Activity>,
    /// The peer is not local: requests carry [`FromElsewhere`].
    from_elsewhere: bool,
}

impl<H: Handler> hyper::service::Service<Request<Incoming>> for Service<H> {
    type Response = Response<ResponseBody>;
    type Error = Infallible;
    type Future = Respond<H>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let keep_alive = wants_keep_alive(&req);
        let http10 = req.version() == Version::HTTP_10;
        let request = self.activity.begin();
        let bodiless = req.body().is_end_stream();
        self.activity.request_body(bodiless);
        let mut req = if bodiless {
            req.map(Body::new)
        } else {
            let activity = self.activity.clone();
            req.map(|inner| Body::new(EndReportingBody { inner, activity }))
        };
        if self.from_elsewhere {
            req.extensions_mut().insert(FromElsewhere);
        }
        Respond {
            call: self.handler.clone().oneshot(req),
            request: Some(request),
            keep_alive,
            http10,
        }
    }
}

/// The handler's answer.
struct Respond<H: Handler> {
    call: Oneshot<H, Request<Body>>,
    request: Option<InRequest>,
    keep_alive: bool,
    http10: bool,
}

impl<H: Handler> Future for Respond<H> {
    type Output = Result<Response<ResponseBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut response = ready!(Pin::new(&mut self.call).poll(cx))?;
        let closes = |r: &InRequest| r.closes_http1() || r.body_abandoned();
        if self.request.as_ref().is_some_and(closes) {
            // The listeners have stopped, or the handler answered without reading the request body (an error
            // before the body arrived: hyper cannot tell where the next request starts, so it closes the
            // connection after this response). Either way the response says so (RFC 9112 §9.6), or the app's
            // next request on the connection would meet a broken pipe. Waiting for a body the proxy refused, only
            // to keep the connection, would delay every such answer by the app's upload.
            response
                .headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        }
        let keeps_alive = self.keep_alive && response_keeps_alive(&response, self.http10);
        if self.http10 && keeps_alive {
            // hyper closes an HTTP/1.0 connection unless the response says otherwise.
            response
                .headers_mut()
                .insert(header::CONNECTION, http::HeaderValue::from_static("keep-alive"));
        }
        let request = self.request.take();
        Poll::Ready(Ok(response.map(|inner| ResponseBody {
            inner,
            request,
            keeps_alive,
        })))
    }
}

/// A response body; the request stays in flight until hyper is done with it, and then the connection may park.
struct ResponseBody {
    inner: Body,
    request: Option<InRequest>,
    keeps_alive: bool,
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        if let Some(request) = self.request.take() {
            request.done(self.keeps_alive);
        }
    }
}

impl HttpBody for ResponseBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A request body that tells the connection when it has been read to its end: until then hyper has request
/// bytes to read or discard, and the connection must not be parked. Dropped before its end, it tells that too.
struct EndReportingBody {
    inner: Incoming,
    activity: Arc<Activity>,
}

impl Drop for EndReportingBody {
    fn drop(&mut self) {
        self.activity.request_body_dropped();
    }
}

impl HttpBody for EndReportingBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(polled, Poll::Ready(None))
            || (matches!(polled, Poll::Ready(Some(Ok(_)))) && self.inner.is_end_stream())
        {
            self.activity.request_body_ended();
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
mod tests {
    use super::*;

    fn request(version: Version, connection: &[&'static str]) -> Request<()> {
        let mut req = Request::builder().version(version);
        for c in connection {
            req = req.header(header::CONNECTION, *c);
        }
        req.body(()).unwrap()
    }

    #[test]
    fn keep_alive_follows_the_version_and_the_connection_header() {
        assert!(wants_keep_alive(&request(Version::HTTP_11, &[])));
        assert!(wants_keep_alive(&request(Version::HTTP_11, &["keep-alive"])));
        assert!(!wants_keep_alive(&request(Version::HTTP_11, &["Close"])));
        assert!(!wants_keep_alive(&request(Version::HTTP_11, &["x-foo", "te, close"])));
        assert!(!wants_keep_alive(&request(Version::HTTP_10, &[])));
        assert!(wants_keep_alive(&request(Version::HTTP_10, &["Keep-Alive"])));
        assert!(!wants_keep_alive(&request(Version::HTTP_2, &[])));
    }

    /// Every connection's task is allocated at this size for its whole life, parked or not: hyper's state must
    /// stay boxed (about 2.1 KiB when HTTP/2's was inline, under 0.8 KiB now).
    #[tokio::test]
    async fn a_connection_task_stays_small() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let limits = Limits {
            max_connections: 1,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
        };
        let shutdown = crate::shutdown::Shutdown::new();
        let task = serve(
            stream,
            axum::Router::new(),
            limits,
            ListenerGroup::new(1, shutdown.signal()),
        );
        assert!(
            std::mem::size_of_val(&task) <= 1536,
            "{} bytes",
            std::mem::size_of_val(&task)
        );
    }
}
