//! Limits on inbound connections: the header read timeout against silent, partial and trickled heads, and
//! `max_connections` (a new connection waits while the held ones finish; the TCP port and the Unix socket share it).

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use crate::support::{closed_within, raw, raw_status, read_response, refusals::seen_paths, ProxyBuilder, Upstream};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
    task::JoinHandle,
};

#[tokio::test]
async fn unfinished_headers_are_cut_off_after_the_header_read_timeout() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("LISTEN__HEADER_READ_TIMEOUT", "300ms")
        .spawn()
        .await;
    // One that sends nothing, one that stops mid-head, one that trickles its head a byte at a time.
    let mut silent = TcpStream::connect(proxy.addr).await.unwrap();
    let mut partial = TcpStream::connect(proxy.addr).await.unwrap();
    partial
        .write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut trickle = TcpStream::connect(proxy.addr).await.unwrap();
    let writer = tokio::spawn(async move {
        for b in b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slowly: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
            if trickle.write_all(&[*b]).await.is_err() {
                return trickle;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        trickle
    });
    let started = Instant::now();
    assert!(
        closed_within(&mut silent, Duration::from_secs(3)).await,
        "a silent connection stays open"
    );
    assert!(
        closed_within(&mut partial, Duration::from_secs(3)).await,
        "a half head stays open"
    );
    let mut trickle = writer.await.unwrap();
    assert!(
        closed_within(&mut trickle, Duration::from_secs(3)).await,
        "a trickled head stays open"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(seen_paths(&upstream).is_empty(), "{:?}", seen_paths(&upstream));
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("LISTEN__HEADER_READ_TIMEOUT", "300ms")
        .spawn()
        .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .unwrap();
    let mut buf = [0u8; 64];
    let closed = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "still open: {closed:?}");
    // An idle keep-alive connection is not cut by the header timer.
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let n = stream.read(&mut [0u8; 8192]).await.unwrap();
    assert!(n > 0);
    tokio::time::sleep(Duration::from_millis(800)).await;
    stream
        .write_all(b"GET /echo HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    stream.read_to_end(&mut rest).await.unwrap();
    assert!(String::from_utf8_lossy(&rest).starts_with("HTTP/1.1 200"));
}

/// A request that holds its connection: far longer than it takes to see it arrive and check that another waits.
const HELD: &str = "/slow?ms=5000";

/// Send a `Connection: close` request on a new connection and read the whole answer.
async fn request_on_new_connection(addr: SocketAddr, path: &str) -> String {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    raw(addr, request.as_bytes()).await
}

#[tokio::test]
async fn at_max_connections_a_new_connection_waits_while_requests_in_flight_finish() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("LISTEN__MAX_CONNECTIONS", "2")
        .set("UPSTREAM__REQUEST_TIMEOUT", "30s")
        .spawn()
        .await;
    let addr = proxy.addr;
    // Held long enough that they are surely still in flight while the third connection is shown to wait, even
    // when seeing them arrive takes a while on a loaded machine.
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(request_on_new_connection(addr, HELD)))
        .collect();
    assert!(
        crate::support::wait_for(|| async { upstream.sim.requests().len() == 2 }).await,
        "both slow requests in flight"
    );
    // The third connection is accepted by the kernel, but the proxy does not take it while two are open.
    let mut third = TcpStream::connect(addr).await.unwrap();
    waits_at_the_limit(&mut third, &upstream, 2).await;
    served_once_the_held_finish(&mut third, held).await;
    assert_eq!(seen_paths(&upstream)[2], "/digital-accounts");
}

/// Send a GET on `stream` and see it not served (nothing read, nothing more upstream than `in_flight`).
async fn waits_at_the_limit<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S, upstream: &Upstream, in_flight: usize) {
    stream
        .write_all(b"GET /digital-accounts HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let early = read_response(stream, Duration::from_millis(400)).await;
    assert!(early.is_empty(), "served while at the limit: {early}");
    assert_eq!(upstream.sim.requests().len(), in_flight);
}

/// The held requests finish with 200, then the request waiting on `stream` is served.
async fn served_once_the_held_finish<S: AsyncRead + Unpin>(stream: &mut S, held: Vec<JoinHandle<String>>) {
    for h in held {
        let response = h.await.unwrap();
        assert_eq!(
            raw_status(&response),
            200,
            "in-flight requests finish normally: {response}"
        );
    }
    let late = read_response(stream, Duration::from_secs(15)).await;
    assert_eq!(raw_status(&late), 200, "served once a slot is free: {late}");
}

/// The limit counts the proxy's TCP port and its Unix socket together: with one connection allowed and a slow
/// request held on TCP, a request on the Unix socket waits until it finishes.
#[tokio::test]
async fn max_connections_is_shared_by_the_tcp_port_and_the_unix_socket() {
    let upstream = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("LISTEN__UNIX_SOCKET", &socket.display().to_string())
        .set("LISTEN__MAX_CONNECTIONS", "1")
        .set("UPSTREAM__REQUEST_TIMEOUT", "30s")
        .spawn()
        .await;
    let held = tokio::spawn(request_on_new_connection(proxy.addr, HELD));
    assert!(
        crate::support::wait_for(|| async { upstream.sim.requests().len() == 1 }).await,
        "the slow request in flight"
    );
    let mut unix = tokio::net::UnixStream::connect(&socket).await.unwrap();
    waits_at_the_limit(&mut unix, &upstream, 1).await;
    served_once_the_held_finish(&mut unix, vec![held]).await;
    // And the other way round: TCP is served again once the Unix connection has closed.
    let again = request_on_new_connection(proxy.addr, "/digital-accounts").await;
    assert_eq!(raw_status(&again), 200, "{again}");
    assert_eq!(seen_paths(&upstream)[1..], ["/digital-accounts", "/digital-accounts"]);
}
