//! The handler: gate → checks → token → upstream request → stream the answer back, or normalize an error.
//! One log line and one metrics update per request, here and nowhere else.

use std::{sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    response::Response,
};
use bytes::Bytes;
use http::{header, request::Parts, HeaderMap, HeaderName, HeaderValue, StatusCode};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::time::Instant;

use super::{
    body::{BodyFailure, Failure, RequestBody},
    deadline::Deadlined,
    encoding, headers, policy,
    pool::{PooledBody, SendError},
    request_id, ProxyState,
};
use crate::{
    config::InboundAuthorization,
    errors::{
        json_response,
        normalize::{normalize, Fill, Redact},
        scrub, ErrorContext, ProxyError,
    },
    shutdown::Phase,
    token::{Current, Stamp, Trigger},
};

/// The most of an upstream error body that is read.
pub(crate) const MAX_ERROR_BODY: usize = 64 * 1024;

/// How often a replay refused unprocessed is sent again (see [`send_again`]).
const MAX_REFUSALS: usize = 8;

/// What the log line reports besides the request.
#[derive(Debug, Default)]
struct Exchange {
    upstream_status: Option<u16>,
    retried: bool,
}

/// The proxy port's handler.
pub(crate) async fn forward(State(state): State<Arc<ProxyState>>, req: Request) -> Response {
    let started = Instant::now();
    let _in_flight = state.metrics.in_flight();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let request_id = request_id::pick(req.headers());
    let mut exchange = Exchange::default();
    let result = handle(&state, req, &uri, &request_id, started, &mut exchange).await;
    let mut response = result.unwrap_or_else(|e| {
        let (_, code) = e.status_and_code();
        if e.is_upstream_fault() {
            state.metrics.upstream_error(code);
        }
        tracing::debug!(code, error = %e, "answered with a proxy error");
        e.to_response(&ErrorContext {
            endpoint_url: Some(uri.path()),
            member_id: state.rules.member_id.as_deref(),
            request_id: request_id.to_str().ok(),
        })
    });
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    state.metrics.request(&method, status, elapsed);
    tracing::info!(
        method = %method,
        path = uri.path(),
        status,
        upstream_status = exchange.upstream_status,
        retried = exchange.retried,
        duration_us = elapsed.as_micros() as u64,
        request_id = request_id.to_str().unwrap_or_default(),
        "request"
    );
    response.headers_mut().insert(request_id::HEADER, request_id);
    response
}

async fn handle(
    state: &ProxyState,
    req: Request,
    app_uri: &http::Uri,
    request_id: &HeaderValue,
    started: Instant,
    exchange: &mut Exchange,
) -> Result<Response, ProxyError> {
    if state.shutdown.phase() == Phase::Stopping {
        return Err(ProxyError::ShuttingDown);
    }
    let path = app_uri.path();
    let (mut parts, body) = req.into_parts();
    check(state, &parts)?;
    let token = state
        .token
        .usable(&Stamp::now())
        .map_err(|u| ProxyError::TokenUnavailable(u.reason()))?;
    parts.uri = upstream_uri(state, app_uri)?;
    headers::to_upstream(&mut parts.headers, token.header(), request_id);
    encoding::limit_accept_encoding(&mut parts.headers);
    let (body, failure) = limit_body(body, &parts.headers, state.rules.max_body_bytes)?;
    let deadline = started + state.rules.request_timeout;
    // A request may be replayed only if it has no body and its method is listed in `retry_on_401`.
    let replay = (state.rules.retry_on_401.contains(&parts.method) && body.is_end_stream())
        .then(|| Replay::keep(&parts, app_uri, request_id));
    // The app's HTTP version is its own hop's; the upstream connection's is chosen by ALPN.
    parts.version = http::Version::HTTP_11;
    let first = http::Request::from_parts(parts, body);
    let mut response = match state.client.send(first, deadline).await {
        Ok(response) => response,
        Err(e) => match &replay {
            // Refused before the upstream processed it (an HTTP/2 GOAWAY or REFUSED_STREAM): again, on a newer
            // connection.
            Some(again) if e.unprocessed() => {
                exchange.retried = true;
                send_again(state, again, token.header(), deadline).await?
            }
            _ => return Err(classify(&e, failure.as_deref().and_then(Failure::get))),
        },
    };
    let mut used = token;
    if response.status() == StatusCode::UNAUTHORIZED {
        match &replay {
            // Not replayable: refresh for the next request (no task, no wait), answer this one now.
            None => state.refresh.nudge(used.generation),
            Some(again) => {
                // The refresh counts against the same deadline: past it, the app gets the 401 rather than a
                // late 504.
                let refreshed = tokio::time::timeout_at(deadline, after_401(state, &used))
                    .await
                    .ok()
                    .flatten();
                if let Some(current) = refreshed {
                    exchange.retried = true;
                    response = send_again(state, again, current.header(), deadline).await?;
                    used = current;
                }
            }
        }
    }
    exchange.upstream_status = Some(response.status().as_u16());
    let (mut head, incoming) = response.into_parts();
    headers::strip_hop_by_hop(&mut head.headers);
    scrub_headers(&mut head.headers, &used);
    if head.status.as_u16() < 400 {
        return Ok(Response::from_parts(
            head,
            Body::new(Deadlined::new(incoming, deadline)),
        ));
    }
    let bytes = read_bounded(incoming, deadline).await;
    // Decoded under the same bound as the read, so a small gzip bomb stays small.
    let text = encoding::decode_error_body(&head.headers, &bytes, MAX_ERROR_BODY);
    let fingerprint = used.token().fingerprint();
    let clean = scrub::scrub_bytes(&text, used.token().expose().as_bytes(), fingerprint.as_bytes());
    let fill = Fill {
        endpoint_url: path,
        member_id: state.rules.member_id.as_deref(),
        request_id: request_id.to_str().unwrap_or_default(),
        now_ms: crate::clock::now_ms(),
        redact: Some(Redact {
            secret: used.token().expose(),
            replacement: &fingerprint,
        }),
    };
    Ok(error_response(head, &clean, &fill, used.token().expose(), &fingerprint))
}

/// What is kept of a bodiless request to send it again: after a 401 and a refresh (`retry_on_401`), or once when
/// HTTP/2 refused it unprocessed. Kept before the first send, which consumes the request, for every request of a
/// method `retry_on_401` lists (every GET, by default), and almost never used: so it copies as little as it can.
/// The target is derived again from the app's URI, and the token and request id are set again; only the other
/// upstream headers are copied (often none: then nothing is allocated).
#[derive(Debug)]
struct Replay<'a> {
    method: http::Method,
    app_uri: &'a http::Uri,
    request_id: &'a HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl<'a> Replay<'a> {
    /// Keep what the request with these `parts` (upstream headers set) needs to be sent again.
    fn keep(parts: &Parts, app_uri: &'a http::Uri, request_id: &'a HeaderValue) -> Self {
        let headers = parts
            .headers
            .iter()
            .filter(|(name, _)| **name != header::AUTHORIZATION && **name != request_id::HEADER)
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        Self {
            method: parts.method.clone(),
            app_uri,
            request_id,
            headers,
        }
    }

    /// The request again, with `token`.
    fn request(&self, state: &ProxyState, token: &HeaderValue) -> Result<http::Request<RequestBody>, ProxyError> {
        let mut again = http::Request::new(RequestBody::empty());
        *again.method_mut() = self.method.clone();
        *again.uri_mut() = upstream_uri(state, self.app_uri)?;
        let headers = again.headers_mut();
        headers.reserve(self.headers.len() + 2);
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        headers.insert(header::AUTHORIZATION, token.clone());
        headers.insert(request_id::HEADER, self.request_id.clone());
        Ok(again)
    }
}

/// The upstream request target for the app's request.
fn upstream_uri(state: &ProxyState, app_uri: &http::Uri) -> Result<http::Uri, ProxyError> {
    state
        .target
        .uri(app_uri.path_and_query())
        .map_err(|_| ProxyError::BadRequest("the request target is not a valid path"))
}

/// The upstream's error in the schema: same status, the upstream's other headers kept, JSON body. The output is
/// scrubbed again: parsing may have un-escaped a token the raw body spelled differently.
fn error_response(
    mut head: http::response::Parts,
    body: &[u8],
    fill: &Fill<'_>,
    secret: &str,
    fingerprint: &str,
) -> Response {
    let normalized = normalize(head.status, body, fill);
    let json = scrub::scrub_json(normalized.to_json(), secret, fingerprint);
    let mut response = json_response(head.status, json);
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_ENCODING,
        header::ETAG,
    ] {
        head.headers.remove(name);
    }
    let (mut parts, body) = response.into_parts();
    for (name, value) in &head.headers {
        parts.headers.append(name.clone(), value.clone());
    }
    response = Response::from_parts(parts, body);
    response
}

/// Host, origin, method, headers, path, prefix and credentials: everything decided before the upstream is
/// contacted.
fn check(state: &ProxyState, parts: &Parts) -> Result<(), ProxyError> {
    let rules = &state.rules;
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let host = match (hosts.next(), hosts.next()) {
        (Some(h), None) => h
            .to_str()
            .map_err(|_| ProxyError::BadRequest("the Host header is not valid"))?,
        (None, None) => parts
            .uri
            .authority()
            .filter(|_| parts.version == http::Version::HTTP_2)
            .map(|a| a.as_str())
            .ok_or(ProxyError::BadRequest("the request has no Host header"))?,
        _ => return Err(ProxyError::BadRequest("the request has more than one Host header")),
    };
    if !policy::host_allowed(host, &rules.allowed_hosts) {
        return Err(ProxyError::HostNotAllowed);
    }
    if let Some(origin) = parts.headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or_default();
        if !policy::origin_allowed(origin, &rules.allowed_origins) {
            return Err(ProxyError::OriginNotAllowed);
        }
    }
    if !policy::method_allowed(&parts.method, &rules.allowed_methods) {
        return Err(ProxyError::MethodNotAllowed);
    }
    policy::header_limits(&parts.headers).map_err(ProxyError::HeadersTooLarge)?;
    let path = parts.uri.path();
    // One scan decides the usual path for both checks below.
    let plain = crate::path::plain(path);
    if !plain {
        crate::path::check_segments(path).map_err(|_| {
            ProxyError::BadRequest(
                "the path is not allowed: dot-segments, backslashes, encoded separators and `//` are refused",
            )
        })?;
    }
    if !crate::path::prefix_allowed(path, &rules.allowed_path_prefixes) {
        return Err(ProxyError::EndpointNotPermitted);
    }
    // The app must not mint a token with the proxy's (or spend the proxy's refresh): the upstream path is
    // prefix + path for both, so comparing the paths compares the upstream URLs.
    if rules.refresh_path.matches(path, plain) {
        return Err(ProxyError::RefreshEndpoint);
    }
    if rules.inbound_authorization == InboundAuthorization::Reject && headers::has_app_credentials(&parts.headers) {
        return Err(ProxyError::BadRequest(
            "the app sent an Authorization header (policy.inbound_authorization = \"reject\")",
        ));
    }
    Ok(())
}

/// Refuse a declared length over the limit now; bound a body of unknown length as it streams. The body
/// ([`RequestBody`]) records why it failed in the returned [`Failure`], so [`classify`] can tell the app's fault
/// from the upstream's whatever the upstream connection's protocol.
fn limit_body(body: Body, headers: &HeaderMap, max: u64) -> Result<(RequestBody, Option<Arc<Failure>>), ProxyError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .map(|v| v.to_str().ok().and_then(|s| s.parse::<u64>().ok()));
    match declared {
        Some(None) => Err(ProxyError::BadRequest("the Content-Length header is not a number")),
        Some(Some(n)) if n > max && !body.is_end_stream() => Err(ProxyError::PayloadTooLarge),
        _ => Ok(RequestBody::new(body, max)),
    }
}

/// Send a bodiless request again (a replay) with `token`, by the deadline; and again while the upstream refuses
/// it unprocessed (HTTP/2 GOAWAY or REFUSED_STREAM: the connection is going away, the next attempt goes to a
/// newer one), up to [`MAX_REFUSALS`] times. All requests waiting for a new connection share one, so an upstream
/// that shuts connections down after a few requests refuses some of them more than once.
async fn send_again(
    state: &ProxyState,
    again: &Replay<'_>,
    token: &HeaderValue,
    deadline: Instant,
) -> Result<http::Response<PooledBody>, ProxyError> {
    let mut refusals = 0;
    loop {
        match state.client.send(again.request(state, token)?, deadline).await {
            Err(e) if e.unprocessed() && refusals < MAX_REFUSALS => refusals += 1,
            sent => return sent.map_err(|e| classify(&e, None)),
        }
    }
}

/// Map a client error to the contract's codes: the app's body failed (recorded by the body itself: hyper's
/// HTTP/1.1 client returns that error, its HTTP/2 client only resets the stream), no answer in time, nothing
/// sent (connect, DNS, TLS), or a broken exchange.
fn classify(e: &SendError, body: Option<BodyFailure>) -> ProxyError {
    match body {
        Some(BodyFailure::TooLarge) => return ProxyError::PayloadTooLarge,
        Some(BodyFailure::Broken) => return ProxyError::BadRequest("the request body is malformed or broke off"),
        None => {}
    }
    if matches!(e, SendError::Timeout) {
        return ProxyError::UpstreamTimeout;
    }
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    let mut detail = String::new();
    while let Some(s) = source {
        detail = s.to_string();
        source = s.source();
    }
    if matches!(e, SendError::Connect(_)) {
        ProxyError::UpstreamUnreachable(detail)
    } else {
        ProxyError::UpstreamProtocol(detail)
    }
}

/// After an upstream 401 on a request that can be replayed: ask for a refresh (joined with any in flight; skipped
/// within `min_refresh_gap`) and wait for it. Returns the token to retry with when a retry makes sense.
async fn after_401(state: &ProxyState, used: &Current) -> Option<Arc<Current>> {
    let seen = used.generation;
    match state.refresh.refresh_now(Trigger::Upstream401, Some(seen)).await {
        Ok(outcome) if outcome.refreshed || outcome.current.generation != seen => Some(outcome.current),
        _ => None,
    }
}

/// Replace an echoed token in response headers by its fingerprint.
fn scrub_headers(headers: &mut HeaderMap, used: &Current) {
    let secret = used.token().expose().as_bytes();
    if headers
        .values()
        .any(|v| v.len() >= secret.len() && memchr::memmem::find(v.as_bytes(), secret).is_some())
    {
        scrub::scrub_headers(headers, secret, used.token().fingerprint().as_bytes());
    }
}

/// Read at most [`MAX_ERROR_BODY`] bytes of an error body, until the deadline.
async fn read_bounded(mut body: PooledBody, deadline: Instant) -> Bytes {
    let mut out = Vec::new();
    let read = async {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data() {
                let room = MAX_ERROR_BODY - out.len();
                out.extend_from_slice(&data[..data.len().min(room)]);
                if out.len() == MAX_ERROR_BODY {
                    break;
                }
            }
        }
    };
    let _ = tokio::time::timeout_at(deadline.max(Instant::now() + Duration::from_millis(100)), read).await;
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::body::RequestBodyError;

    /// A body whose first frame is an error, like hyper's for a malformed chunk size.
    fn broken_body() -> Body {
        let frames = futures_util::stream::iter([Err::<Bytes, _>(std::io::Error::other("invalid chunk size"))]);
        Body::from_stream(frames)
    }

    /// The body's first error, and what it recorded.
    async fn first_error((mut body, failure): (RequestBody, Option<Arc<Failure>>)) -> (RequestBodyError, BodyFailure) {
        match body.frame().await {
            Some(Err(e)) => (e, failure.and_then(|f| f.get()).expect("a recorded failure")),
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn errors_of_the_app_body_are_recorded_as_the_clients() {
        let mut headers = HeaderMap::new();
        let chunked = limit_body(broken_body(), &headers, 1024).unwrap();
        assert!(matches!(
            first_error(chunked).await,
            (RequestBodyError::Broken(_), BodyFailure::Broken)
        ));
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("10"));
        let sized = limit_body(broken_body(), &headers, 1024).unwrap();
        assert!(matches!(
            first_error(sized).await,
            (RequestBodyError::Broken(_), BodyFailure::Broken)
        ));
    }

    #[tokio::test]
    async fn over_the_limit_is_a_length_error_not_the_clients_fault() {
        let big = Body::from_stream(futures_util::stream::iter([Ok::<_, std::io::Error>(Bytes::from(
            vec![b'x'; 2048],
        ))]));
        let limited = limit_body(big, &HeaderMap::new(), 1024).unwrap();
        assert!(matches!(
            first_error(limited).await,
            (RequestBodyError::TooLarge, BodyFailure::TooLarge)
        ));
        let mut declared = HeaderMap::new();
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("2048"));
        assert!(matches!(
            limit_body(broken_body(), &declared, 1024),
            Err(ProxyError::PayloadTooLarge)
        ));
        declared.insert(header::CONTENT_LENGTH, HeaderValue::from_static("ten"));
        assert!(matches!(
            limit_body(Body::empty(), &declared, 1024),
            Err(ProxyError::BadRequest(_))
        ));
    }

    #[test]
    fn a_recorded_body_failure_outranks_the_upstream_error() {
        let e = SendError::Connect("refused".into());
        assert!(matches!(classify(&e, None), ProxyError::UpstreamUnreachable(_)));
        assert!(matches!(
            classify(&e, Some(BodyFailure::TooLarge)),
            ProxyError::PayloadTooLarge
        ));
        assert!(matches!(
            classify(&e, Some(BodyFailure::Broken)),
            ProxyError::BadRequest(_)
        ));
    }
}
