//! Request framing: conflicting or obfuscated `Content-Length` and `Transfer-Encoding`, bad chunk sizes. A request
//! hidden in a body or after it never reaches the upstream as a request of its own.

use std::time::Duration;

use crate::support::{
    raw, raw_status,
    refusals::{assert_bad_request, proxy_for, seen_paths, SMUGGLED},
    Upstream,
};

/// No request for the smuggled path reached the upstream.
fn assert_nothing_smuggled(upstream: &Upstream, context: &str) {
    let paths = seen_paths(upstream);
    assert!(
        paths.iter().all(|p| !p.contains("smuggled")),
        "{context}: the upstream saw {paths:?}"
    );
}

/// How many responses a raw response text holds.
fn responses(text: &str) -> usize {
    text.matches("HTTP/1.1 ").count()
}

#[tokio::test]
async fn conflicting_or_obfuscated_framing_is_refused_and_nothing_is_smuggled() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    let cases = [
        (
            "two different Content-Lengths",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\nContent-Length: 45\r\n\r\nhello{SMUGGLED}"),
        ),
        (
            "Transfer-Encoding: xchunked",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "chunked is not the last coding",
            format!(
                "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "a second Transfer-Encoding line",
            format!(
                "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
        ),
        (
            "whitespace before the colon",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a vertical tab before chunked",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\x0bchunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Transfer-Encoding folded onto a continuation line",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "Transfer-Encoding on HTTP/1.0",
            format!("POST /echo HTTP/1.0\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"),
        ),
        (
            "a Content-Length that is not a number",
            format!("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: +5\r\n\r\nhello{SMUGGLED}"),
        ),
    ];
    for (name, request) in cases {
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_bad_request(&response, name);
        assert_eq!(
            responses(&response),
            1,
            "{name}: one answer, then the connection closes: {response}"
        );
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_nothing_smuggled(&upstream, "framing");
    assert!(
        seen_paths(&upstream).is_empty(),
        "nothing reached the upstream: {:?}",
        seen_paths(&upstream)
    );
}

/// hyper does not refuse Content-Length together with Transfer-Encoding: as RFC 9112 §6.1 allows, it frames the
/// request by Transfer-Encoding alone, drops the Content-Length and closes the connection after answering (the
/// contract's parser exception covers this). What matters is checked here: the upstream gets one request with a
/// consistent body, the bytes behind it are never read as a second request, and the client gets one answer.
#[tokio::test]
async fn content_length_with_transfer_encoding_never_smuggles_a_second_request() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    // CL.TE: a front end that believed Content-Length would see the smuggled request inside this body.
    let cl_te = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}",
        5 + SMUGGLED.len()
    );
    // TE.CL: a back end that believed Content-Length would read the smuggled request after 4 bytes.
    let chunk = format!("{SMUGGLED}x=1");
    let te_cl = format!(
        "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n{SMUGGLED}",
        chunk.len()
    );
    for (name, request, body) in [("CL.TE", cl_te, String::new()), ("TE.CL", te_cl, chunk.clone())] {
        upstream.sim.clear_log();
        let response = raw(proxy.addr, request.as_bytes()).await;
        assert_eq!(raw_status(&response), 200, "{name}: {response}");
        assert_eq!(
            responses(&response),
            1,
            "{name}: the connection closes after one answer: {response}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_nothing_smuggled(&upstream, name);
        let seen = upstream.sim.requests();
        assert_eq!(seen.len(), 1, "{name}: {seen:?}");
        assert_eq!(seen[0].path_and_query, "/echo", "{name}");
        // Framed by the chunked coding alone: for TE.CL the would-be request is body bytes of this one, framed
        // by the proxy's own client, so the upstream cannot read it as a request either.
        assert_eq!(String::from_utf8_lossy(&seen[0].body), body, "{name}");
        assert_ne!(
            seen[0].headers.get("content-length").map(|v| v.as_bytes()),
            Some(&b"4"[..]),
            "{name}"
        );
    }
}

#[tokio::test]
async fn invalid_chunk_sizes_are_refused_and_the_body_never_arrives() {
    let upstream = Upstream::spawn().await;
    let proxy = proxy_for(&upstream).await;
    for size in ["zz", "-1", "0x5", "", "ffffffffffffffffffff"] {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n{size}\r\nhello\r\n0\r\n\r\n{SMUGGLED}"
        );
        let response = raw(proxy.addr, request.as_bytes()).await;
        // The head was valid, so the proxy may already be streaming to the upstream when the body breaks: the
        // answer is 400 (the client's fault), never a 2xx, and the upstream never gets a complete body.
        assert_bad_request(&response, size);
        assert_eq!(responses(&response), 1, "{size}: {response}");
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_nothing_smuggled(&upstream, "chunk sizes");
    for r in upstream.sim.requests() {
        assert_eq!(r.path_and_query, "/echo");
        assert!(r.body.is_empty(), "a broken body was delivered: {:?}", r.body);
    }
}
