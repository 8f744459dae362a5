//! Request headers a hostile client may send: control characters, too many or too large, a head beyond the
//! parser's buffer, underscores in names. Each test checks the status, the error `code` and what the upstream got.

use std::time::Duration;

use crate::support::{
    assert_schema, raw, raw_json, raw_status,
    refusals::{assert_bad_request, proxy_for, seen_paths},
    ProxyBuilder, Upstream,
};

#[tokio::test]
async fn control_characters_in_header_values_are_refused_or_split_never_injected() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    for (name, request) in [
        (
            "bare CR",
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nX-A: one\rX-Injected: 1\r\nConnection: close\r\n\r\n",
        ),
        (
            "NUL",
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nX-A: one\0two\r\nConnection: close\r\n\r\n",
        ),
        (
            "obs-fold",
            "GET /echo HTTP/1.1\r\nHost: localhost\r\nX-A: one\r\n two\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_bad_request(&response, name);
    }
    assert!(seen_paths(&upstream).is_empty(), "{:?}", seen_paths(&upstream));
    // A bare LF ends the line (RFC 9112 §2.2 lets a recipient accept it): two ordinary headers, never a value
    // carrying a line break upstream.
    let response = raw(
        proxy.addr,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX-A: one\nX-B: two\r\nConnection: close\r\n\r\n",
    )
    .await;
    let status = raw_status(&response);
    assert!(status == 200 || status == 400, "{response}");
    for r in upstream.sim.requests() {
        for (name, value) in &r.headers {
            assert!(
                !value.as_bytes().iter().any(|b| matches!(b, b'\r' | b'\n' | 0)),
                "{name}: {value:?}"
            );
        }
        assert_eq!(r.headers.get("x-a").map(|v| v.as_bytes()), Some(&b"one"[..]));
    }
}

#[tokio::test]
async fn too_many_or_too_large_headers_are_431_in_the_schema() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    let many: String = (0..101).map(|i| format!("X-H{i}: v\r\n")).collect();
    let big = format!("X-Big: {}\r\n", "a".repeat(33 * 1024));
    // 40 KiB of cookie: the upstream is a JSON API that uses no cookies, and the 32 KiB header limit is what
    // keeps a request head bounded, so a cookie gets no exemption: 431 like any other oversize header block.
    let cookie = format!("Cookie: session={}\r\n", "c".repeat(40 * 1024));
    for (name, headers) in [
        ("101 headers", many),
        ("a 33 KiB header", big),
        ("a 40 KiB cookie", cookie),
    ] {
        let request = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n");
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(
            raw_status(&response),
            431,
            "{name}: {}",
            &response[..response.len().min(300)]
        );
        let body = raw_json(&response);
        assert_schema(&body);
        assert_eq!(body["code"], "HEADERS_TOO_LARGE", "{name}");
    }
    assert!(seen_paths(&upstream).is_empty(), "{:?}", seen_paths(&upstream));
    // Just under both limits passes.
    let fine: String = (0..90).map(|i| format!("X-H{i}: {}\r\n", "v".repeat(300))).collect();
    let request = format!("GET /echo HTTP/1.1\r\nHost: localhost\r\n{fine}Connection: close\r\n\r\n");
    assert_eq!(raw_status(&raw(proxy.addr, request.as_bytes()).await), 200);
}

/// A head larger than the parser's buffer (48 KiB) is cut off as soon as it is that large: the parser's bare 431
/// and a close (the contract's exception for an oversize header block), not 400 KiB held per connection until
/// `header_read_timeout`. Here the timeout is a minute and the head never ends.
#[tokio::test]
async fn a_head_beyond_the_parser_buffer_is_refused_at_once_not_held_until_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let upstream = Upstream::spawn().await;
    let proxy = ProxyBuilder::new(&upstream.url, &upstream.token())
        .set("LISTEN__HEADER_READ_TIMEOUT", "60s")
        .spawn()
        .await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "GET /echo HTTP/1.1\r\nHost: localhost\r\nX-Pad: {}",
        "a".repeat(100 * 1024)
    );
    // The proxy may stop reading (and close) before all of it is written.
    let _ = stream.write_all(head.as_bytes()).await;
    let mut out = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            out.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the connection was held: {:?}",
        String::from_utf8_lossy(&out)
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || text.starts_with("HTTP/1.1 431"), "{text}");
    assert!(seen_paths(&upstream).is_empty());
}

/// Decision: header names with underscores are forwarded as they are (hyper's default). nginx drops them because
/// a CGI-style backend maps `X_Foo` and `X-Foo` to the same variable, so one could shadow the other. Here nothing
/// the proxy decides on is spelled with an underscore, and the headers the proxy owns (`Authorization`,
/// `Proxy-Authorization`, `Host`, hop-by-hop) are matched by their exact names, so an underscore spelling can
/// neither replace the token nor survive as a second credential the proxy vouches for. Dropping them would break
/// apps that legitimately use such names, for no gain against this upstream.
#[tokio::test]
async fn underscores_in_header_names_are_forwarded_and_cannot_replace_the_token() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    let response = raw(
        proxy.addr,
        b"GET /echo HTTP/1.1\r\nHost: localhost\r\nX_Custom_Id: 7\r\nAuthorization: Bearer app-token\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(raw_status(&response), 200, "{response}");
    let seen = upstream.sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].headers["x_custom_id"], "7");
    assert_eq!(seen[0].headers.get_all("authorization").iter().count(), 1);
    assert!(seen[0].token_valid, "the proxy's token, not the app's");
    assert_ne!(seen[0].token.as_deref(), Some("app-token"));
}
