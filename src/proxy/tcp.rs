//! TCP to the upstream: the connector under TLS (connect time-out, `TCP_NODELAY`, keep-alive probes; straight,
//! or through the outbound proxy's `CONNECT` tunnel) and the stream it yields, which acknowledges bulk reads at
//! once.
//!
//! Why the prompt ACK: a Linux receiver delays its ACK (40 ms at least) for data short of two full segments.
//! Where segments are large (loopback and other 64 KiB-MTU paths, such as a local mesh proxy or the built-in
//! simulator), a whole response body can be one segment. A sender that has filled its send buffer, or holds a
//! corked tail (nginx's `sendfile` with `tcp_nopush`), then waits for that delayed ACK, and the response stalls
//! for 40 ms. With the 64 KiB benchmark this was 0.3–1 % of responses, every one 40–50 ms late; nginx as a proxy
//! shows the same. So when a read drains the socket (a short read, or no data left) after at least
//! [`BULK_READ`] bytes, the stream sets `TCP_QUICKACK`, which sends the pending ACK now: one ACK per burst, not
//! per read (TLS reads 4 KiB at a time). Small JSON answers, the usual case, cost nothing extra. Measured in
//! bench/README.md.

use std::{
    future::Future,
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http::Uri;
use hyper_util::{
    client::legacy::connect::{Connected, Connection, HttpConnector},
    rt::TokioIo,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};

use super::tunnel::Tunnel;

/// A burst of at least this many bytes is acknowledged as soon as a read drains the socket.
pub(crate) const BULK_READ: usize = 4096;

/// TCP keep-alive probes on upstream connections, so a dead peer is noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// The bytes read since the socket was last drained, and whether to acknowledge them now: after a read of `read`
/// bytes that did or did not leave the socket `drained`, with `unacked` bytes counted before it.
#[must_use]
pub(crate) const fn after_read(unacked: usize, read: usize, drained: bool) -> (usize, bool) {
    let unacked = unacked.saturating_add(read);
    if drained {
        (0, unacked >= BULK_READ)
    } else {
        (unacked, false)
    }
}

/// Connects to the upstream, straight or through the outbound proxy's tunnel; yields [`UpstreamStream`]s.
#[derive(Debug, Clone)]
pub(crate) struct Connector {
    http: HttpConnector,
    /// Set when the one egress decision says every call goes through the outbound proxy.
    tunnel: Option<Arc<Tunnel>>,
}

impl Connector {
    /// A connector with `connect_timeout`. Any URI scheme is accepted: TLS is layered on top by the caller.
    #[must_use]
    pub(crate) fn new(connect_timeout: Duration) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        Self { http, tunnel: None }
    }

    /// Connect through `tunnel`: TCP to the proxy, `CONNECT` to the URI's host and port, then the same stream.
    #[must_use]
    pub(crate) fn through(mut self, tunnel: Arc<Tunnel>) -> Self {
        self.tunnel = Some(tunnel);
        self
    }
}

type Connecting = Pin<Box<dyn Future<Output = Result<TokioIo<UpstreamStream>, BoxError>> + Send>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<UpstreamStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let Some(tunnel) = self.tunnel.clone() else {
            let connecting = self.http.call(uri);
            return Box::pin(async move {
                let io = connecting.await?;
                Ok(TokioIo::new(UpstreamStream::from(io.into_inner())))
            });
        };
        let connecting = self.http.call(tunnel.proxy_uri().clone());
        Box::pin(async move {
            let mut tcp = connecting.await.map_err(|e| tunnel.unreachable(&e))?.into_inner();
            tunnel.establish(&mut tcp, &uri).await?;
            Ok(TokioIo::new(UpstreamStream::from(tcp)))
        })
    }
}

/// A TCP stream to the upstream that acknowledges bulk reads at once (see the module doc).
#[derive(Debug)]
pub(crate) struct UpstreamStream {
    tcp: TcpStream,
    /// Bytes read since the socket was last drained.
    unacked: usize,
}

#[cfg(test)]
impl UpstreamStream {
    /// The socket, for the tests.
    fn tcp(&self) -> &TcpStream {
        &self.tcp
    }
}

impl From<TcpStream> for UpstreamStream {
    fn from(tcp: TcpStream) -> Self {
        Self { tcp, unacked: 0 }
    }
}

/// Send the pending ACK now (Linux and Android; elsewhere nothing). A failure changes nothing but timing.
fn ack_now(tcp: &TcpStream) {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let _ = socket2::SockRef::from(tcp).set_tcp_quickack(true);
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    let _ = tcp;
}

impl AsyncRead for UpstreamStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.tcp).poll_read(cx, buf);
        let (read, drained) = match &polled {
            Poll::Ready(Ok(())) => (buf.filled().len() - before, buf.remaining() > 0),
            Poll::Ready(Err(_)) => return polled,
            Poll::Pending => (0, true),
        };
        let (unacked, ack) = after_read(self.unacked, read, drained);
        self.unacked = unacked;
        if ack {
            ack_now(&self.tcp);
        }
        polled
    }
}

impl AsyncWrite for UpstreamStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

impl Connection for UpstreamStream {
    fn connected(&self) -> Connected {
        self.tcp.connected()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    #[test]
    fn a_drained_burst_of_bulk_size_is_acknowledged_once() {
        // One short read of a whole 64 KiB body.
        assert_eq!(after_read(0, 65_000, true), (0, true));
        // Small answers never.
        assert_eq!(after_read(0, 300, true), (0, false));
        assert_eq!(after_read(0, BULK_READ - 1, true), (0, false));
        assert_eq!(after_read(0, BULK_READ, true), (0, true));
        // TLS-sized full reads add up, and the ACK waits for the socket to drain (a short read or Pending).
        let (unacked, ack) = after_read(0, 4096, false);
        assert_eq!((unacked, ack), (4096, false));
        let (unacked, ack) = after_read(unacked, 4096, false);
        assert_eq!((unacked, ack), (8192, false));
        assert_eq!(after_read(unacked, 0, true), (0, true));
        assert_eq!(after_read(unacked, 100, true), (0, true));
        // A drain resets the count.
        assert_eq!(after_read(BULK_READ - 1, 0, true), (0, false));
    }

    async fn pair() -> (UpstreamStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        (UpstreamStream::from(client.unwrap()), accepted.unwrap().0)
    }

    #[tokio::test]
    async fn bytes_pass_unchanged_both_ways() {
        let (mut stream, mut peer) = pair().await;
        let body: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = body.clone();
        let writer = tokio::spawn(async move {
            peer.write_all(&sent).await.unwrap();
            let mut back = [0u8; 5];
            peer.read_exact(&mut back).await.unwrap();
            back
        });
        let mut got = vec![0u8; body.len()];
        stream.read_exact(&mut got).await.unwrap();
        assert_eq!(got, body);
        let bufs = [io::IoSlice::new(b"he"), io::IoSlice::new(b"llo")];
        assert_eq!(stream.write_vectored(&bufs).await.unwrap(), 5);
        assert_eq!(&writer.await.unwrap(), b"hello");
    }

    #[cfg(any(target_os = "linux", target_os = "android"))]
    #[tokio::test]
    async fn a_bulk_read_leaves_quickack_mode_on() {
        let (mut stream, mut peer) = pair().await;
        let quickack = |s: &UpstreamStream| socket2::SockRef::from(s.tcp()).tcp_quickack().unwrap();
        // Clearing TCP_QUICKACK puts the socket in delayed-ACK mode; only the stream's read can set it back
        // this quickly (the kernel's own way out is the 40 ms delayed-ACK timer).
        socket2::SockRef::from(stream.tcp()).set_tcp_quickack(false).unwrap();
        assert!(!quickack(&stream));
        peer.write_all(&[7u8; 3 * BULK_READ]).await.unwrap();
        // A buffer larger than what was sent: the read is short, so it drains the socket.
        let mut buf = vec![0u8; 4 * BULK_READ];
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n >= BULK_READ, "loopback delivers the write at once, read {n}");
        assert!(quickack(&stream), "a bulk read must switch quickack mode on");
    }
}
