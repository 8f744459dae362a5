//! Serves a router on a listener the caller bound: the accept loop, the connection limit, per-connection
//! header-read and idle timers, and graceful shutdown. Used for the proxy port (TCP and Unix) and the admin port.
//!
//! `axum::serve` sets no header-read timer, and hyper's own timer also closes idle keep-alive connections after
//! the header timeout; so each connection gets a small watchdog ([`activity`]) that tells the two apart.

mod activity;

use std::{future::Future, io, sync::Arc, time::Duration};

use axum::{body::Body, Router};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, UnixListener},
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tower::ServiceExt as _;

use crate::shutdown::{Phase, ShutdownSignal};
use activity::{Activity, Tracked, Verdict, Watchdog};

/// A listener the accept loop can take connections from.
pub trait Accept: Send + 'static {
    /// The connection type.
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    /// Take the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Small requests and responses: send them now rather than waiting for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        Ok(UnixListener::accept(self).await?.0)
    }
}

/// Connection-level limits from `[listen]`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections beyond this wait in the kernel's accept queue.
    pub max_connections: usize,
    /// A request head not complete after this long closes the connection.
    pub header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub idle_timeout: Duration,
}

/// Most headers hyper's parser accepts; the proxy's own, lower limit answers 431 in the error schema.
pub const PARSER_MAX_HEADERS: usize = 500;

/// Serve `router` on `listener` until `stop` reaches [`Phase::Stopping`]; then stop accepting and return a
/// future that resolves when every open connection has closed (the caller bounds it by `shutdown.grace`).
pub async fn serve<A: Accept>(
    mut listener: A,
    router: Router,
    limits: Limits,
    stop: ShutdownSignal,
) -> impl Future<Output = ()> {
    let max = limits
        .max_connections
        .clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let slots = Arc::new(Semaphore::new(max));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().max_headers(PARSER_MAX_HEADERS);
    let builder = Arc::new(builder);
    let stopping = stop.reached(Phase::Stopping);
    tokio::pin!(stopping);
    loop {
        let permit = tokio::select! {
            biased;
            () = &mut stopping => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let accepted = tokio::select! {
            biased;
            () = &mut stopping => break,
            a = listener.accept() => a,
        };
        match accepted {
            Ok(io) => {
                tokio::spawn(connection(
                    io,
                    router.clone(),
                    builder.clone(),
                    limits,
                    stop.clone(),
                    permit,
                ));
            }
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(event = "accept_error", error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    async move {
        let _ = slots.acquire_many(max as u32).await;
    }
}

/// How often a connection's watchdog looks at it.
fn watchdog_period(limits: &Limits) -> Duration {
    (limits.header_read_timeout.min(limits.idle_timeout) / 4).clamp(Duration::from_millis(10), Duration::from_secs(5))
}

async fn connection<I>(
    io: I,
    router: Router,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    stop: ShutdownSignal,
    _permit: OwnedSemaphorePermit,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Tracked::new(io, activity.clone()));
    let service_activity = activity.clone();
    let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
        let request = service_activity.begin();
        let call = router.clone().oneshot(req.map(Body::new));
        async move {
            let response = call.await;
            drop(request);
            response
        }
    });
    let conn = builder.serve_connection(io, service);
    tokio::pin!(conn);
    let stopping = stop.reached(Phase::Stopping);
    tokio::pin!(stopping);
    let period = watchdog_period(&limits);
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut watchdog = Watchdog::new(period, limits.header_read_timeout, limits.idle_timeout);
    let mut closing = false;
    loop {
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = &mut stopping, if !closing => {
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            _ = ticks.tick() => match watchdog.tick(&activity) {
                Verdict::Keep => {}
                Verdict::HeaderTimeout => {
                    tracing::debug!("request headers not complete within listen.header_read_timeout: closing");
                    return;
                }
                Verdict::Idle if !closing => {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
                Verdict::Idle => return,
            },
        }
    }
}
