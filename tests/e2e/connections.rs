//! The life of an inbound connection: a keep-alive connection is parked between requests (hyper's buffers freed)
//! and wakes for the next one; pipelined and split requests survive a park; `Connection: close` and HTTP/1.0 are
//! honoured; idle time-out and shutdown close parked connections; HTTP/2 with prior knowledge is served; the Unix
//! socket serves with mode 0660 and the TCP port's rules.
//!
//! Connections park only while more than `max_connections / 32` are open (src/server.rs). The tests that
//! depend on the connection's state run in both: parked (`max_connections = 16`: every idle connection parks)
//! and kept active (the default 10,000: none of these tests' few connections park).

use std::time::{Duration, Instant};

use crate::support::{client, closed_within, raw_status, read_response, ProxyBuilder, TestProxy, Upstream};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// How long an answer or a close that should come at once may take (generous: CI machines are loaded).
const LIMIT: Duration = Duration::from_secs(15);

/// `listen.max_connections` for: every idle keep-alive connection parks; none does.
const PARKED: &str = "16";
const ACTIVE: &str = "10000";

/// A proxy whose idle keep-alive connections park.
async fn proxy(upstream: &Upstream, overrides: &[(&str, &str)]) -> TestProxy {
    proxy_in(PARKED, upstream, overrides).await
}

/// A proxy with `listen.max_connections = max`.
async fn proxy_in(max: &str, upstream: &Upstream, overrides: &[(&str, &str)]) -> TestProxy {
    let mut builder = ProxyBuilder::new(&upstream.url, &upstream.token()).set("LISTEN__MAX_CONNECTIONS", max);
    for (key, value) in overrides {
        builder = builder.set(key, value);
    }
    builder.spawn().await
}

fn get(n: usize, extra: &str) -> String {
    format!("GET /echo?n={n} HTTP/1.1\r\nHost: localhost\r\n{extra}\r\n")
}

/// The `n` of each echoed request, in the order the upstream saw them.
fn seen(upstream: &Upstream) -> Vec<String> {
    upstream.sim.requests().into_iter().map(|r| r.path_and_query).collect()
}

#[tokio::test]
async fn a_keep_alive_connection_serves_request_after_request_across_parks() {
    for max in [PARKED, ACTIVE] {
        keep_alive_requests(max).await;
    }
}

async fn keep_alive_requests(max: &str) {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_in(max, &upstream, &[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for n in 0..20 {
        stream.write_all(get(n, "").as_bytes()).await.unwrap();
        let response = read_response(&mut stream, LIMIT).await;
        assert_eq!(raw_status(&response), 200, "{max}: request {n}: {response}");
        assert!(response.contains(&format!("n={n}")), "request {n}: {response}");
        if n % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(30)).await;
        }
    }
    // A head that arrives in two parts after a park.
    stream.write_all(b"GET /echo?n=split HTTP/1.1\r\nHo").await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    stream.write_all(b"st: localhost\r\n\r\n").await.unwrap();
    let response = read_response(&mut stream, LIMIT).await;
    assert_eq!(raw_status(&response), 200, "{response}");
    assert_eq!(seen(&upstream).len(), 21);
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy(&upstream, &[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let batch = [get(1, ""), get(2, ""), get(3, ""), get(4, "Connection: close\r\n")].concat();
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut out))
        .await
        .expect("closed after the last request")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 4, "{text}");
    let at = |n: usize| {
        text.find(&format!("n={n}"))
            .unwrap_or_else(|| panic!("no answer {n}: {text}"))
    };
    assert!(at(1) < at(2) && at(2) < at(3) && at(3) < at(4), "{text}");
    assert_eq!(seen(&upstream), ["/echo?n=1", "/echo?n=2", "/echo?n=3", "/echo?n=4"]);
}

#[tokio::test]
async fn connection_close_and_http_1_0_close_after_the_response_and_1_0_keep_alive_stays() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy(&upstream, &[]).await;
    for request in [
        get(1, "Connection: close\r\n"),
        "GET /echo?n=2 HTTP/1.0\r\nHost: localhost\r\n\r\n".to_owned(),
    ] {
        let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream, LIMIT).await;
        assert_eq!(raw_status(&response), 200, "{request}: {response}");
        assert!(closed_within(&mut stream, LIMIT).await, "{request}: left open");
    }
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for n in 3..5 {
        let request = format!("GET /echo?n={n} HTTP/1.0\r\nHost: localhost\r\nConnection: keep-alive\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let response = read_response(&mut stream, LIMIT).await;
        assert_eq!(raw_status(&response), 200, "{n}: {response}");
    }
}

#[tokio::test]
async fn idle_time_out_and_shutdown_close_parked_connections() {
    for max in [PARKED, ACTIVE] {
        idle_and_shutdown(max).await;
    }
}

async fn idle_and_shutdown(max: &str) {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_in(max, &upstream, &[("LISTEN__IDLE_TIMEOUT", "300ms")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Taken before the request: the idle time starts when the proxy has answered, and reading the answer may be
    // late on a loaded machine, which would make a close at the right time look early.
    let started = Instant::now();
    stream.write_all(get(1, "").as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_response(&mut stream, LIMIT).await), 200);
    assert!(closed_within(&mut stream, LIMIT).await, "idle connection left open");
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed before the idle time-out"
    );

    let mut proxy = proxy_in(max, &upstream, &[("SHUTDOWN__GRACE", "20s")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(get(2, "").as_bytes()).await.unwrap();
    assert_eq!(raw_status(&read_response(&mut stream, LIMIT).await), 200);
    let started = Instant::now();
    proxy.trigger_stop();
    assert!(
        closed_within(&mut stream, LIMIT).await,
        "parked connection left open at shutdown"
    );
    proxy.join().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown waited for a parked connection"
    );
}

#[tokio::test]
async fn http2_with_prior_knowledge_is_served() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy(&upstream, &[]).await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .no_proxy()
        .build()
        .unwrap();
    for _ in 0..3 {
        let response = h2.get(proxy.url("/echo?n=h2")).send().await.unwrap();
        assert_eq!(response.version(), reqwest::Version::HTTP_2);
        assert_eq!(response.status(), 200);
    }
    // And HTTP/1.1 beside it.
    let response = client().get(proxy.url("/echo?n=h1")).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// An HTTP/2 client that only pings after its requests does not hold its connection (and its
/// `max_connections` slot) past `idle_timeout`: frames with no request in flight are not activity.
#[tokio::test]
async fn an_http2_connection_kept_up_only_by_pings_is_closed_when_idle() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy(&upstream, &[("LISTEN__IDLE_TIMEOUT", "1s")]).await;
    let tcp = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut send, mut connection) = h2::client::handshake(tcp).await.unwrap();
    let mut pings = connection.ping_pong().expect("ping_pong is taken once");
    let driver = tokio::spawn(connection);
    let request = http::Request::get(proxy.url("/echo?n=h2")).body(()).unwrap();
    let (response, _) = send.send_request(request, true).unwrap();
    assert_eq!(response.await.unwrap().status(), 200);
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        while pings.ping(h2::Ping::opaque()).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "pings kept an idle HTTP/2 connection open");
    let _ = driver.await;
}

#[tokio::test]
async fn a_request_body_left_unread_is_never_parsed_as_the_next_request() {
    for max in [PARKED, ACTIVE] {
        unread_body(max).await;
    }
}

async fn unread_body(max: &str) {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_in(max, &upstream, &[("POLICY__MAX_BODY_BYTES", "1024")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // Refused by its declared length: the proxy answers before reading a byte of the body.
    stream
        .write_all(b"POST /echo?n=big HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\n\r\n")
        .await
        .unwrap();
    let response = read_response(&mut stream, LIMIT).await;
    assert_eq!(raw_status(&response), 413, "{response}");
    // What follows is that body, whatever it looks like.
    let _ = stream.write_all(get(666, "").as_bytes()).await;
    let _ = read_response(&mut stream, Duration::from_millis(500)).await;
    assert!(
        seen(&upstream).is_empty(),
        "the body reached the upstream as a request: {:?}",
        seen(&upstream)
    );
}

#[tokio::test]
async fn connection_close_after_pipelined_keep_alive_requests_still_closes() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy(&upstream, &[]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    // The second answer is long enough to still be streaming when the connection looks at the first one's end.
    let big = "GET /big?bytes=3000000 HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".to_owned();
    let batch = [get(1, ""), big, get(3, "")].concat();
    stream.write_all(batch.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(LIMIT, stream.read_to_end(&mut out))
        .await
        .expect("closed after the request that asked for it")
        .unwrap();
    let text = String::from_utf8_lossy(&out);
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(seen(&upstream), ["/echo?n=1", "/big?bytes=3000000"]);
}

#[tokio::test]
async fn a_slow_reader_gets_the_whole_body_past_the_idle_time_out() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy(&upstream, &[("LISTEN__IDLE_TIMEOUT", "300ms")]).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let size = 8 * 1024 * 1024;
    let request = format!("GET /big?bytes={size} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut out = vec![0u8; 1024];
    let n = stream.read(&mut out).await.unwrap();
    out.truncate(n);
    // Stop reading for longer than the idle time-out while the response is still being sent.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    // The body is chunked: it is complete when the last chunk arrives, cut short if the connection closes first.
    let complete = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if out.ends_with(b"\r\n0\r\n\r\n") {
                return true;
            }
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(m) => out.extend_from_slice(&buf[..m]),
            }
        }
    })
    .await
    .expect("the body stalled");
    assert_eq!(raw_status(&String::from_utf8_lossy(&out[..n])), 200);
    assert!(complete, "the response was cut short after {} bytes", out.len());
    assert!(out.len() > size);
}

#[tokio::test]
async fn the_unix_socket_has_mode_0660_and_serves_curl() {
    use std::os::unix::fs::PermissionsExt;
    let upstream = Upstream::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("proxy.sock");
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("LISTEN__UNIX_SOCKET", &socket.display().to_string())
        .spawn()
        .await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660, "{mode:o}");
    let output = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("curl")
            .args([
                "--silent",
                "--show-error",
                "--max-time",
                "20",
                "--write-out",
                "\n%{http_code}",
                "--unix-socket",
            ])
            .arg(&socket)
            .arg("http://localhost/digital-accounts")
            .output(),
    )
    .await
    .unwrap()
    .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let (body, code) = stdout.rsplit_once('\n').unwrap();
    assert_eq!(code, "200", "{stdout} {}", String::from_utf8_lossy(&output.stderr));
    let accounts: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(accounts[0]["id"], "DA-1001");
    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path_and_query, "/digital-accounts");
    assert!(seen[0].token_valid);
    // The Unix socket has the same rules as the TCP port.
    let output = tokio::process::Command::new("curl")
        .args([
            "--silent",
            "--output",
            "/dev/null",
            "--write-out",
            "%{http_code}",
            "--unix-socket",
        ])
        .arg(&socket)
        .args(["-H", "Host: evil.example", "http://localhost/digital-accounts"])
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&output.stdout), "403");
    assert_eq!(upstream.sim.requests().len(), 1);
    drop(proxy);
}

/// A proxy-made error answered before the request body arrived (503 `TOKEN_UNAVAILABLE` to a POST whose body is
/// still on its way): the app's next request on the connection is answered, or the response announced the close
/// (`Connection: close`), so the app never writes into a connection the proxy has dropped.
#[tokio::test]
async fn an_error_before_the_body_arrived_keeps_the_connection_or_announces_its_close() {
    const BODY: &[u8] = br#"{"amount":"1.00"}"#;
    let upstream = Upstream::spawn().await;
    for max in [PARKED, ACTIVE] {
        let proxy = proxy_in(max, &upstream, &[("TOKEN__ENV", "ISSETTLED_NO_SUCH_VARIABLE")]).await;
        let mut s = TcpStream::connect(proxy.addr).await.unwrap();
        let head = format!(
            "POST /payments HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            BODY.len()
        );
        s.write_all(head.as_bytes()).await.unwrap();
        let first = read_response(&mut s, LIMIT).await;
        assert_eq!(raw_status(&first), 503, "{first}");
        let announced = first
            .split("\r\n\r\n")
            .next()
            .unwrap_or_default()
            .lines()
            .any(|l| l.eq_ignore_ascii_case("connection: close"));
        if announced {
            assert!(
                closed_within(&mut s, LIMIT).await,
                "announced a close, kept the connection"
            );
            continue;
        }
        // Not announced: the connection must take the body that was on its way, then the next request.
        s.write_all(BODY).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let sent = s
            .write_all(b"GET /digital-accounts HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await;
        let second = read_response(&mut s, LIMIT).await;
        assert!(
            sent.is_ok() && raw_status(&second) == 503,
            "max_connections {max}: the next request on the connection got {sent:?} {second:?} after:\n{first}"
        );
    }
}
