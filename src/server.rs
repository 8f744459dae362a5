//! Serves a router on a listener the caller bound: the accept loop and the connection limit. Used for the proxy
//! port (TCP and Unix, sharing one limit) and the admin port (its own). Each connection's life (parking idle keep-alive connections, the
//! header-read and idle timers, graceful shutdown) is in [`connection`].
//!
//! `axum::serve` sets no header-read timer, and hyper's own timer also closes idle keep-alive connections after
//! the header timeout; so each connection gets a small watchdog ([`activity`]) that tells the two apart.

// A panic aborts the process (`panic = "abort"`): nothing on the request path may unwrap or expect.
#![deny(clippy::expect_used, clippy::unwrap_used)]

mod activity;
mod conn_io;
mod connection;
mod in_flight;
mod on_wake;

use std::{
    future::Future,
    io,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream, UnixListener, UnixStream},
    sync::Semaphore,
};

use crate::shutdown::{Phase, ShutdownSignal};
use in_flight::RequestsInFlight;

/// An accepted connection: bytes both ways, and a readiness check for while it is parked.
pub(crate) trait Stream: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static {
    /// Ready when there are bytes (or end of stream) to read.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// Whether the peer is on another machine (or another pod): not a loopback address, not a Unix socket.
    fn peer_elsewhere(&self) -> bool {
        false
    }
}

impl Stream for TcpStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        TcpStream::poll_read_ready(self, cx)
    }

    fn peer_elsewhere(&self) -> bool {
        self.peer_addr().is_ok_and(|peer| !is_local(peer.ip()))
    }
}

/// Whether a peer address is this machine's (this pod's) loopback, IPv4-mapped IPv6 included.
pub(crate) fn is_local(ip: std::net::IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// Marks a request whose connection came from elsewhere ([`Stream::peer_elsewhere`]); absent for local peers,
/// which is every request on a loopback-bound port. The admin port refuses state-changing requests with it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FromElsewhere;

impl Stream for UnixStream {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        UnixStream::poll_read_ready(self, cx)
    }
}

/// A listener the accept loop can take connections from.
pub(crate) trait Accept: Send + 'static {
    /// The connection type.
    type Io: Stream;
    /// Take the next connection.
    fn accept(&mut self) -> impl Future<Output = io::Result<Self::Io>> + Send;
}

impl Accept for TcpListener {
    type Io = TcpStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        let (stream, _) = TcpListener::accept(self).await?;
        // Small requests and responses: send them now rather than waiting for Nagle.
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

impl Accept for UnixListener {
    type Io = UnixStream;
    async fn accept(&mut self) -> io::Result<Self::Io> {
        Ok(UnixListener::accept(self).await?.0)
    }
}

/// Connection-level limits from `[listen]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections beyond this are not served until one closes ([`ListenerGroup`]).
    pub(crate) max_connections: usize,
    /// A request head not complete after this long closes the connection.
    pub(crate) header_read_timeout: Duration,
    /// A connection with no request in flight and no bytes moving for this long is closed.
    pub(crate) idle_timeout: Duration,
}

/// Idle keep-alive connections park (give back hyper's buffers between requests) only while more than
/// `max_connections / PARK_SHARE` connections are open: 312 at the default 10,000.
const PARK_SHARE: usize = 32;

/// The listeners served together (the proxy's TCP port and Unix socket; the admin port alone): their
/// connection limit (`listen.max_connections`) and how many connections they have open, the requests in flight
/// on them, and their shutdown.
///
/// The count also drives the parking rule ([`connection`]). Parking saves about 16 KiB per idle connection,
/// which matters with thousands of them; it costs every request a teardown and rebuild of hyper's connection
/// (about 4,200 instructions, 11 % of the proxy's own work on a small GET; bench/README.md), which a sidecar with
/// a few dozen connections from its app should not pay. Below the share, at most `max_connections / PARK_SHARE`
/// connections keep their buffers (5 MiB at the default).
#[derive(Debug, Clone)]
pub(crate) struct ListenerGroup {
    slots: Arc<Semaphore>,
    max: usize,
    requests: RequestsInFlight,
}

impl ListenerGroup {
    /// A limit of `max_connections` (at least 1) for the listeners that will share it, which stop on `stop`.
    pub(crate) fn new(max_connections: usize, stop: ShutdownSignal) -> Self {
        let max = max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
        Self {
            slots: Arc::new(Semaphore::new(max)),
            max,
            requests: RequestsInFlight::new(stop),
        }
    }

    /// Whether an idle keep-alive connection should park now.
    pub(crate) fn parks(&self) -> bool {
        parks(self.max - self.slots.available_permits(), self.max)
    }
}

/// The parking rule: more than a share of `max` connections open.
fn parks(open: usize, max: usize) -> bool {
    open > max / PARK_SHARE
}

/// Most headers hyper's parser accepts; the proxy's own, lower limit answers 431 in the error schema.
pub(crate) const PARSER_MAX_HEADERS: usize = 500;

/// The most an HTTP/1 connection buffers (hyper's `max_buf_size`; its default is about 408 KiB). A request head
/// must fit in it: between the proxy's own 32 KiB header limit (a 431 in the error schema) and this, the head
/// still reaches the proxy; beyond it, hyper answers its bare 431 at once and closes, instead of holding the
/// bytes until `header_read_timeout`.
pub(crate) const PARSER_MAX_BUFFER: usize = 48 * 1024;

/// What a listener serves: a tower service from request to response that cannot fail. The admin port serves its
/// axum `Router`; the proxy port serves its one handler directly, with no routing (it takes every path).
pub(crate) trait Handler:
    tower::Service<
        http::Request<axum::body::Body>,
        Response = axum::response::Response,
        Error = std::convert::Infallible,
        Future: Send + Unpin + 'static,
    > + Clone
    + Unpin
    + Send
    + Sync
    + 'static
{
}

impl<T> Handler for T where
    T: tower::Service<
            http::Request<axum::body::Body>,
            Response = axum::response::Response,
            Error = std::convert::Infallible,
            Future: Send + Unpin + 'static,
        > + Clone
        + Unpin
        + Send
        + Sync
        + 'static
{
}

/// Serve `handler` on `listener` within `group`'s connection limit until its shutdown signal reaches
/// [`Phase::Stopping`]; then stop accepting and return a future that resolves when every connection open in
/// `group` has closed (the caller bounds it by `shutdown.grace`): a connection busy then finishes its request, an
/// idle one stays open while any request of `group` is in flight and closes when none is (see [`connection`]).
///
/// A connection is accepted first and then waits for a free slot, unserved: a slot taken before accepting would
/// sit idle in one listener's accept while another listener sharing the limit has a connection waiting. So
/// beyond the limit each listener holds at most one accepted connection; the rest wait in the kernel's queue.
pub(crate) async fn serve<A: Accept, H: Handler>(
    mut listener: A,
    handler: H,
    limits: Limits,
    group: ListenerGroup,
) -> impl Future<Output = ()> {
    let slots = group.slots.clone();
    let stop = group.requests.signal().clone();
    let stopping = stop.reached(Phase::Stopping);
    tokio::pin!(stopping);
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopping => break,
            a = listener.accept() => a,
        };
        let io = match accepted {
            Ok(io) => io,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly instead of spinning.
                tracing::warn!(event = "accept_error", error = %e, "cannot accept a connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let permit = tokio::select! {
            biased;
            () = &mut stopping => break,
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let connection = connection::serve(io, handler.clone(), limits, group.clone());
        tokio::spawn(async move {
            connection.await;
            drop(permit);
        });
    }
    drop(listener);
    async move {
        let _ = slots.acquire_many(group.max as u32).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_peers_are_local_and_others_are_not() {
        for local in ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"] {
            assert!(is_local(local.parse().unwrap()), "{local}");
        }
        for elsewhere in ["10.0.0.7", "192.0.2.2", "::ffff:10.0.0.7", "fe80::1", "0.0.0.0"] {
            assert!(!is_local(elsewhere.parse().unwrap()), "{elsewhere}");
        }
    }

    #[test]
    fn connections_park_only_beyond_a_share_of_the_limit() {
        assert!(!parks(1, 10_000));
        assert!(!parks(312, 10_000));
        assert!(parks(313, 10_000));
        // Under 32 allowed connections, every idle keep-alive connection parks.
        assert!(parks(1, 31));
        assert!(!parks(0, 31));
    }

    #[test]
    fn the_crowd_counts_open_connections() {
        let group = ListenerGroup::new(32, crate::shutdown::Shutdown::new().signal());
        assert!(!group.parks());
        let _one = group.slots.clone().try_acquire_owned().unwrap();
        assert!(!group.parks());
        let _two = group.slots.clone().try_acquire_owned().unwrap();
        assert!(group.parks());
    }
}
