//! The simulated IsSettled's errors: the nine-field body it answers every failure with, and the scripted
//! error routes under `/errors/` (each status, an HTML 502, an empty 503, camelCase fields, an echoed token).

use std::sync::Arc;

use axum::{
    extract::{Request, State},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use http::{header, HeaderValue, StatusCode};

use super::{routes::bearer, tokens::epoch_secs, Shared};
use crate::errors::schema::{self, ErrorBody};

/// The upstream build the sim claims to be.
const BUILD_VERSION: &str = "2.14.3";

/// The `/errors/` routes, under `prefix`.
pub(super) fn routes(prefix: &str) -> Router<Arc<Shared>> {
    Router::new()
        .route(&format!("{prefix}/errors/html-502"), get(html_502))
        .route(&format!("{prefix}/errors/empty-503"), get(empty_503))
        .route(&format!("{prefix}/errors/camel"), get(camel))
        .route(&format!("{prefix}/errors/echo-token"), get(echo_token))
        .route(&format!("{prefix}/errors/{{status}}"), get(by_status))
}

/// A complete nine-field error from the upstream, as JSON.
pub(super) fn error_response(
    shared: &Shared,
    status: StatusCode,
    code: &str,
    short_message: &str,
    long_message: impl Into<String>,
    path: &str,
) -> Response {
    let mut body = ErrorBody::new(schema::UPSTREAM_SERVICE_NAME, code, short_message, long_message);
    body.build_version = Some(BUILD_VERSION.to_owned());
    body.endpoint_url = Some(path.to_owned());
    body.member_identification = Some(shared.cfg.member_id.clone());
    body.troubleshooting_id = Some(troubleshooting_id());
    json_bytes(status, body.to_json())
}

/// An error for `status` with the code and messages the upstream uses for it.
pub(super) fn status_error(shared: &Shared, status: StatusCode, path: &str) -> Response {
    let (code, long) = match status.as_u16() {
        400 => (
            "INVALID_REQUEST",
            "The request failed validation: amount must be a positive decimal string",
        ),
        401 => (
            "UNAUTHORIZED",
            "The access token is missing, invalid, expired or revoked",
        ),
        403 => (
            "ACCESS_DENIED",
            "The token is not permitted to use this endpoint or digital account",
        ),
        404 => (
            "PAYMENT_NOT_FOUND",
            "No payment with this identifier exists for this member",
        ),
        406 => (
            "NOT_ACCEPTABLE",
            "The requested representation is not available: accept application/json",
        ),
        409 => ("PAYMENT_CONFLICT", "A payment with this idempotency key already exists"),
        429 => ("RATE_LIMITED", "Too many requests for this member: retry later"),
        500 => (
            "INTERNAL_ERROR",
            "An unexpected error occurred: quote the troubleshooting id to support",
        ),
        503 => (
            "SERVICE_UNAVAILABLE",
            "The service is temporarily unavailable: retry later",
        ),
        _ => ("", "The upstream answered with an error"),
    };
    let code = if code.is_empty() {
        format!("HTTP_{}", status.as_u16())
    } else {
        code.to_owned()
    };
    let short = status.canonical_reason().unwrap_or("Error");
    let mut response = error_response(shared, status, &code, short, long, path);
    if status == StatusCode::TOO_MANY_REQUESTS {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// `GET /errors/{status}`: any 4xx or 5xx status with a full error body (401 even for a valid token).
async fn by_status(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let path = request.uri().path();
    let wanted = path.rsplit('/').next().and_then(|s| s.parse::<u16>().ok());
    match wanted.and_then(|n| StatusCode::from_u16(n).ok()) {
        Some(status) if status.is_client_error() || status.is_server_error() => status_error(&shared, status, path),
        _ => error_response(
            &shared,
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "Not Found",
            "no scripted error for this status: use a 4xx or 5xx code",
            path,
        ),
    }
}

/// `GET /errors/html-502`: what a load balancer in front of the upstream says.
async fn html_502() -> Response {
    (
        StatusCode::BAD_GATEWAY,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        "<html><body><h1>502 Bad Gateway</h1></body></html>",
    )
        .into_response()
}

/// `GET /errors/empty-503`: a 503 with no body at all.
async fn empty_503() -> Response {
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// `GET /errors/camel`: a 409 in the camelCase dialect, `timestamp` a numeric string of seconds, an extra field.
async fn camel(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let body = serde_json::json!({
        "buildVersion": BUILD_VERSION,
        "code": "PAYMENT_CONFLICT",
        "endpointUrl": request.uri().path(),
        "longMessage": "A payment with this idempotency key already exists",
        "memberIdentification": shared.cfg.member_id,
        "serviceName": schema::UPSTREAM_SERVICE_NAME,
        "shortMessage": "Conflict",
        "timestamp": epoch_secs(std::time::SystemTime::now()).to_string(),
        "troubleshootingId": troubleshooting_id(),
        "details": {"field": "amount"},
    });
    json_bytes(StatusCode::CONFLICT, body.to_string().into_bytes())
}

/// `GET /errors/echo-token`: a careless upstream that repeats the Bearer token in its body and a header.
async fn echo_token(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let token = bearer(request.headers()).unwrap_or_default();
    let long = format!("token {token} is not permitted for this endpoint");
    let mut response = error_response(
        &shared,
        StatusCode::BAD_REQUEST,
        "INVALID_TOKEN_SCOPE",
        "Bad Request",
        long,
        request.uri().path(),
    );
    if let Ok(value) = HeaderValue::from_str(&token) {
        response.headers_mut().insert("x-debug-token", value);
    }
    response
}

/// A JSON response from serialized bytes.
pub(super) fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A random id in UUID layout, as the upstream's support desk would quote it.
fn troubleshooting_id() -> String {
    let (a, b): (u64, u64) = (rand::random(), rand::random());
    format!(
        "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xffff,
        b >> 48,
        b & 0xffff_ffff_ffff
    )
}
