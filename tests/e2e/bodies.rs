//! Request bodies: `max_body_bytes` with and without a length and over HTTP/2 to the upstream,
//! `Expect: 100-continue`, a body trickled past the request timeout.

use std::time::{Duration, Instant};

use crate::support::{
    assert_schema, raw, raw_json, raw_status, read_response, refusals::SMUGGLED, ProxyBuilder, Upstream,
};
use issettled_proxy::sim::SimConfig;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

#[tokio::test]
async fn bodies_over_the_limit_are_413_with_or_without_a_length() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__MAX_BODY_BYTES", "1024")
        .spawn()
        .await;
    let body = "x".repeat(2048);
    let with_length =
        format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2048\r\nConnection: close\r\n\r\n{body}");
    let chunked = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         200\r\n{a}\r\n200\r\n{a}\r\n200\r\n{a}\r\n200\r\n{a}\r\n0\r\n\r\n",
        a = "x".repeat(512)
    );
    for (name, request) in [("Content-Length", with_length), ("chunked", chunked)] {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&response), 413, "{name}: {response}");
        let body = raw_json(&response);
        assert_schema(&body);
        assert_eq!(body["code"], "PAYLOAD_TOO_LARGE", "{name}");
    }
    // A declared length is refused before anything is sent; a chunked body may have started to stream, but the
    // upstream never gets a complete body.
    for r in upstream.sim.requests() {
        assert!(r.body.is_empty(), "{} bytes arrived", r.body.len());
    }
    // At the limit exactly, it passes.
    let request = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1024\r\nConnection: close\r\n\r\n{}",
        "y".repeat(1024)
    );
    assert_eq!(raw_status(&raw(proxy.addr, request.as_bytes()).await), 200);
    assert_eq!(upstream.sim.requests().last().unwrap().body.len(), 1024);
}

#[tokio::test]
async fn with_an_http2_upstream_a_body_too_large_is_413_and_a_broken_one_400() {
    // hyper's HTTP/2 client only logs a request body's error and resets the stream: the answer must still
    // blame the app's body, as it does over HTTP/1.1.
    let (upstream, builder, _ca) = crate::support::tls_upstream(SimConfig::default()).await;
    let proxy = builder.set("POLICY__MAX_BODY_BYTES", "1024").spawn().await;
    let too_large = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         200\r\n{a}\r\n200\r\n{a}\r\n200\r\n{a}\r\n0\r\n\r\n",
        a = "x".repeat(512)
    );
    let broken = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
         5\r\nhello\r\nzz\r\n{SMUGGLED}"
    );
    for (name, request, status, code) in [
        ("too large", too_large, 413, "PAYLOAD_TOO_LARGE"),
        ("broken", broken, 400, "BAD_REQUEST"),
    ] {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&response), status, "{name}: {response}");
        let body = raw_json(&response);
        assert_schema(&body);
        assert_eq!(body["code"], code, "{name}");
    }
    for r in upstream.sim.requests() {
        assert_eq!(
            r.version,
            http::Version::HTTP_2,
            "the upstream leg must be HTTP/2 for this test"
        );
        assert!(r.body.is_empty(), "a body over the limit or broken was delivered");
    }
}

#[tokio::test]
async fn expect_100_continue_is_honoured_and_refused_without_100_when_too_large() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("POLICY__MAX_BODY_BYTES", "1024")
        .spawn()
        .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream
        .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 11\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let interim = read_response(&mut stream, Duration::from_secs(5)).await;
    assert!(interim.starts_with("HTTP/1.1 100 Continue\r\n"), "{interim}");
    stream.write_all(b"hello world").await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .unwrap()
        .unwrap();
    let rest = String::from_utf8_lossy(&rest);
    let rest = rest.trim_start_matches("HTTP/1.1 100 Continue\r\n\r\n");
    assert_eq!(raw_status(rest), 200, "{rest}");
    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(&seen[0].body[..], b"hello world");
    assert!(
        seen[0].headers.get("expect").is_none(),
        "Expect is answered on this hop"
    );

    // Over the limit: 413 at once, no 100, and the body is never asked for.
    let response = raw(
        proxy.addr,
        b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 4096\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(!response.contains("100 Continue"), "{response}");
    assert_eq!(raw_json(&response)["code"], "PAYLOAD_TOO_LARGE");
    assert_eq!(upstream.sim.requests().len(), 1, "nothing more sent");
}

#[tokio::test]
async fn a_trickled_body_ends_at_the_request_timeout() {
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("UPSTREAM__REQUEST_TIMEOUT", "1s")
        .spawn()
        .await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(b"POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n")
        .await
        .unwrap();
    let trickler = tokio::spawn(async move {
        for _ in 0..1000 {
            if writer.write_all(b"x").await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            let text = String::from_utf8_lossy(&out);
            if text.contains("\r\n\r\n") && text.trim_end().ends_with('}') {
                return;
            }
        }
    })
    .await;
    let elapsed = started.elapsed();
    trickler.abort();
    let text = String::from_utf8_lossy(&out).into_owned();
    assert!(elapsed < Duration::from_secs(4), "still going after {elapsed:?}");
    if !text.is_empty() {
        assert_eq!(raw_status(&text), 504, "{text}");
        assert_eq!(raw_json(&text)["code"], "UPSTREAM_TIMEOUT");
    }
    for r in upstream.sim.requests() {
        assert!(r.body.is_empty(), "an unfinished body was delivered");
    }
}
