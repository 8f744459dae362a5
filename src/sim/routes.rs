//! The simulated IsSettled's router: the gate every API call passes (record, then demand a valid Bearer
//! token) and the API handlers (accounts, payments, echo, upload, redirect, slow, hop-by-hop headers, big).

use std::{convert::Infallible, sync::Arc, time::Duration};

use axum::{
    body::Body,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
    Router,
};
use bytes::Bytes;
use http::{header, HeaderMap, StatusCode, Uri};
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::{
    errors::{error_response, status_error},
    refresh, RecordedRequest, Shared,
};

/// Digital accounts that exist; any other id is 404.
const ACCOUNTS: [(&str, &str, &str, &str); 2] = [
    ("DA-1001", "Operating account", "DE89370400440532013000", "12500.00"),
    ("DA-1002", "Settlement account", "NL91ABNA0417164300", "310.75"),
];
/// `/echo` returns at most this much of the body it received.
const ECHO_BODY_LIMIT: usize = 4 * 1024;
/// `/big` streams in chunks of this size.
const BIG_CHUNK: u64 = 16 * 1024;
/// Upper bounds on `/big?bytes=` (4 GiB) and `/slow?ms=` (one hour).
const BIG_MAX: u64 = 4 << 30;
const SLOW_MAX_MS: u64 = 3_600_000;

/// The whole upstream, state included.
pub(super) fn router(shared: Arc<Shared>) -> Router {
    let p = shared.cfg.prefix.clone();
    Router::new()
        .route(&format!("{p}/oauth-token/refresh"), any(refresh::refresh))
        .route(&format!("{p}/digital-accounts"), get(accounts))
        .route(&format!("{p}/digital-accounts/{{id}}"), get(account))
        .route(&format!("{p}/payments"), post(create_payment))
        .route(&format!("{p}/payments/{{id}}"), get(payment).delete(cancel_payment))
        .route(&format!("{p}/echo"), any(echo))
        .route(&format!("{p}/echo/{{*rest}}"), any(echo))
        .route(&format!("{p}/upload"), post(upload))
        .route(&format!("{p}/redirect"), get(redirect))
        .route(&format!("{p}/slow"), get(slow))
        .route(&format!("{p}/hop"), get(hop))
        .route(&format!("{p}/big"), get(big))
        .merge(super::errors::routes(&p))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Outermost: every request, matched or not, passes the gate (the refresh path straight through).
        .layer(middleware::from_fn_with_state(Arc::clone(&shared), gate))
        .with_state(shared)
}

/// Record every API request, then let only those with a valid, non-rejected Bearer token through.
/// Bodies are read whole and recorded, except `/upload`'s, which streams to its handler.
async fn gate(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let prefix = &shared.cfg.prefix;
    let path = request.uri().path();
    if path.strip_prefix(prefix.as_str()) == Some("/oauth-token/refresh") {
        return next.run(request).await;
    }
    let streamed = path.strip_prefix(prefix.as_str()) == Some("/upload");
    let (parts, body) = request.into_parts();
    let token = bearer(&parts.headers);
    let refusal = match &token {
        None => Some("an Authorization: Bearer token is required"),
        Some(t) if super::lock(&shared.knobs).rejected.contains(t) => Some("the access token was rejected"),
        Some(t) => super::lock(&shared.tokens).check(t).err(),
    };
    let seq = shared.record_request(RecordedRequest {
        method: parts.method.clone(),
        path_and_query: path_and_query(&parts.uri),
        version: parts.version,
        headers: parts.headers.clone(),
        body: Bytes::new(),
        trailers: HeaderMap::new(),
        token,
        token_valid: refusal.is_none(),
        at: std::time::Instant::now(),
    });
    let body = if streamed {
        body
    } else {
        match body.collect().await {
            Ok(collected) => {
                let trailers = collected.trailers().cloned();
                let bytes = collected.to_bytes();
                shared.set_body(seq, bytes.clone(), trailers.as_ref());
                Body::from(bytes)
            }
            Err(e) => return bad_request(&shared, &parts.uri, format!("could not read the request body: {e}")),
        }
    };
    if let Some(reason) = refusal {
        let mut response = error_response(
            &shared,
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "Unauthorized",
            reason,
            parts.uri.path(),
        );
        // RFC 6750 §3: no error code when the request carried no token at all.
        let challenge = if bearer(&parts.headers).is_some() {
            "Bearer error=\"invalid_token\""
        } else {
            "Bearer"
        };
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, http::HeaderValue::from_static(challenge));
        return response;
    }
    next.run(Request::from_parts(parts, body)).await
}

/// `GET /digital-accounts`.
async fn accounts() -> Response {
    let list: Vec<Value> = ACCOUNTS.iter().map(|a| account_json(*a)).collect();
    (StatusCode::OK, super::JsonLine(Value::Array(list))).into_response()
}

/// `GET /digital-accounts/{id}`: the account, or 404.
async fn account(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let id = last_segment(&uri);
    match ACCOUNTS.iter().find(|a| a.0 == id) {
        Some(a) => (StatusCode::OK, super::JsonLine(account_json(*a))).into_response(),
        None => error_response(
            &shared,
            StatusCode::NOT_FOUND,
            "DIGITAL_ACCOUNT_NOT_FOUND",
            "Not Found",
            format!("no digital account with identifier {id}"),
            uri.path(),
        ),
    }
}

/// `POST /payments`: a JSON object in, the same object with `payment_id` and `status` out (201).
async fn create_payment(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let uri = parts.uri;
    // The gate has already read the body into memory: collecting it again cannot fail.
    let body = body.collect().await.map(|c| c.to_bytes()).unwrap_or_default();
    match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(mut payment)) => {
            payment.insert("payment_id".to_owned(), Value::String(shared.next_payment_id()));
            payment.insert("status".to_owned(), Value::String("ACCEPTED".to_owned()));
            (StatusCode::CREATED, super::JsonLine(Value::Object(payment))).into_response()
        }
        Ok(_) => bad_request(&shared, &uri, "the payment must be a JSON object"),
        Err(e) => bad_request(&shared, &uri, format!("the body is not valid JSON: {e}")),
    }
}

/// `GET /payments/{id}`.
async fn payment(uri: Uri) -> Response {
    let body = json!({
        "payment_id": last_segment(&uri),
        "status": "ACCEPTED",
        "amount": "125.00",
        "currency": "EUR",
        "creditor_account": "DA-1002",
    });
    (StatusCode::OK, super::JsonLine(body)).into_response()
}

/// `DELETE /payments/{id}`.
async fn cancel_payment(uri: Uri) -> Response {
    let body = json!({"payment_id": last_segment(&uri), "status": "CANCELLED"});
    (StatusCode::OK, super::JsonLine(body)).into_response()
}

/// `ANY /echo[/..]`: what the upstream received.
async fn echo(request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => Bytes::new(),
    };
    let mut headers = serde_json::Map::new();
    for name in parts.headers.keys() {
        let values = parts
            .headers
            .get_all(name)
            .iter()
            .map(|v| Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        headers.insert(name.as_str().to_owned(), Value::Array(values));
    }
    let shown = &body[..body.len().min(ECHO_BODY_LIMIT)];
    let reply = json!({
        "method": parts.method.as_str(),
        "path": parts.uri.path(),
        "query": parts.uri.query(),
        "headers": headers,
        "body_len": body.len(),
        "body": String::from_utf8_lossy(shown),
    });
    (StatusCode::OK, super::JsonLine(reply)).into_response()
}

/// `POST /upload`: count the body frame by frame, publishing the count on the upload watch.
async fn upload(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, mut body) = request.into_parts();
    shared.upload.send_replace(0);
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    received += data.len() as u64;
                    shared.upload.send_replace(received);
                }
            }
            Err(e) => return bad_request(&shared, &parts.uri, format!("the upload broke off: {e}")),
        }
    }
    (StatusCode::OK, super::JsonLine(json!({"received": received}))).into_response()
}

/// `GET /redirect`: a redirect the proxy must pass back, not follow.
async fn redirect() -> Response {
    (
        StatusCode::FOUND,
        [(header::LOCATION, "https://elsewhere.example/landing?from=issettled")],
    )
        .into_response()
}

/// `GET /slow?ms=N`.
async fn slow(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let Some(ms) = query_u64(&uri, "ms").filter(|ms| *ms <= SLOW_MAX_MS) else {
        return bad_request(
            &shared,
            &uri,
            format!("ms must be a number of milliseconds up to {SLOW_MAX_MS}"),
        );
    };
    tokio::time::sleep(Duration::from_millis(ms)).await;
    (StatusCode::OK, super::JsonLine(json!({"slept_ms": ms}))).into_response()
}

/// `GET /hop`: hop-by-hop headers (RFC 9110 §7.6.1) the proxy must drop, and one it must keep.
async fn hop() -> Response {
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CONNECTION, "x-hop"),
            (header::HeaderName::from_static("x-hop"), "should-not-pass"),
            (header::HeaderName::from_static("keep-alive"), "timeout=5"),
            (header::HeaderName::from_static("proxy-connection"), "keep-alive"),
            (header::HeaderName::from_static("x-normal"), "kept"),
        ],
        r#"{"ok":true}"#,
    )
        .into_response()
}

/// `GET /big?bytes=N`: exactly N bytes, streamed. For N >= 2 the body is one JSON string.
async fn big(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    let Some(total) = query_u64(&uri, "bytes").filter(|n| *n <= BIG_MAX) else {
        return bad_request(&shared, &uri, format!("bytes must be a number up to {BIG_MAX}"));
    };
    let chunks = futures_util::stream::unfold(0_u64, move |offset| async move {
        if offset >= total {
            return None;
        }
        let end = (offset + BIG_CHUNK).min(total);
        let chunk: Vec<u8> = (offset..end).map(|i| filler_byte(i, total)).collect();
        Some((Ok::<_, Infallible>(Bytes::from(chunk)), end))
    });
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(chunks),
    )
        .into_response()
}

/// Byte `i` of a `total`-byte filler: `"` first and last, letters and digits between.
fn filler_byte(i: u64, total: u64) -> u8 {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    match total {
        1 => b'0',
        _ if i == 0 || i + 1 == total => b'"',
        _ => ALPHABET[(i % ALPHABET.len() as u64) as usize],
    }
}

/// Any path the upstream does not serve.
async fn not_found(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    error_response(
        &shared,
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        "Not Found",
        format!("no endpoint at {}", uri.path()),
        uri.path(),
    )
}

/// A known path with a method it does not serve.
async fn method_not_allowed(State(shared): State<Arc<Shared>>, uri: Uri) -> Response {
    status_error(&shared, StatusCode::METHOD_NOT_ALLOWED, uri.path())
}

fn bad_request(shared: &Shared, uri: &Uri, long: impl Into<String>) -> Response {
    error_response(
        shared,
        StatusCode::BAD_REQUEST,
        "INVALID_REQUEST",
        "Bad Request",
        long,
        uri.path(),
    )
}

fn account_json((id, name, iban, balance): (&str, &str, &str, &str)) -> Value {
    json!({"id": id, "name": name, "iban": iban, "currency": "EUR", "balance": balance, "status": "ACTIVE"})
}

/// The `Authorization: Bearer` value, if the header is present and well formed.
pub(super) fn bearer(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then(|| token.to_owned())
}

pub(super) fn path_and_query(uri: &Uri) -> String {
    uri.path_and_query()
        .map_or_else(|| uri.path().to_owned(), |pq| pq.as_str().to_owned())
}

/// The last path segment, as sent (not percent-decoded).
fn last_segment(uri: &Uri) -> &str {
    uri.path().rsplit('/').next().unwrap_or_default()
}

/// The query parameter `key` as a number.
fn query_u64(uri: &Uri, key: &str) -> Option<u64> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .and_then(|(_, v)| v.parse().ok())
}
