//! Errors the proxy answers itself, and THE table that maps each to its HTTP status and contract code.
//!
//! Other modules return these typed errors; only this file knows the codes. Building a response is pure:
//! logging and counting happen in the handler that owns the request.

// A panic aborts the process (`panic = "abort"`): nothing on the request path may unwrap or expect.
#![deny(clippy::expect_used, clippy::unwrap_used)]

pub mod normalize;
pub mod schema;
pub(crate) mod scrub;

use axum::{
    body::Body,
    http::{header, HeaderValue, Response, StatusCode},
};

pub(crate) use schema::ErrorBody;

/// Everything the proxy can refuse or fail with on the proxy port.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ProxyError {
    /// Malformed request, or an app `Authorization` header under `inbound_authorization = "reject"`.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// Path outside `policy.allowed_path_prefixes`.
    #[error("the path is outside the permitted endpoints")]
    EndpointNotPermitted,
    /// The token refresh endpoint (`token.refresh_path`), which only the proxy calls.
    #[error("the token refresh endpoint is reserved to the proxy")]
    RefreshEndpoint,
    /// `Host` not in `listen.allowed_hosts`.
    #[error("the Host header is not one of listen.allowed_hosts")]
    HostNotAllowed,
    /// `Origin` not in `listen.allowed_origins`.
    #[error("the Origin header is not one of listen.allowed_origins")]
    OriginNotAllowed,
    /// Request header block over the limits.
    #[error("request headers exceed the limits ({0})")]
    HeadersTooLarge(&'static str),
    /// Method outside `policy.allowed_methods`; the methods that are, for the `Allow` header.
    #[error("the method is not one of policy.allowed_methods ({0})")]
    MethodNotAllowed(Allow),
    /// Body over `policy.max_body_bytes`.
    #[error("the request body exceeds policy.max_body_bytes")]
    PayloadTooLarge,
    /// Connection refused, DNS or TLS failure: nothing was sent.
    #[error("cannot reach the upstream: {0}")]
    UpstreamUnreachable(String),
    /// The upstream broke the exchange after the request may have been sent.
    #[error("the upstream broke the exchange: {0}")]
    UpstreamProtocol(String),
    /// No complete answer within `upstream.request_timeout`.
    #[error("no answer from the upstream within upstream.request_timeout")]
    UpstreamTimeout,
    /// No usable token: none loaded, revoked, or its revoke deadline passed.
    #[error("no usable token: {0}")]
    TokenUnavailable(&'static str),
    /// The proxy is shutting down.
    #[error("the proxy is shutting down")]
    ShuttingDown,
}

/// An error of the admin port's own requests (never forwarded upstream). Answered in the same nine-field schema
/// as [`ProxyError`], with its codes from the same file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum AdminError {
    /// A state-changing request that a browser sent for a web page (it carries `Origin`).
    #[error("the admin port refuses POST requests that carry an Origin header (sent by browsers)")]
    CrossOrigin,
    /// A state-changing request from another machine or pod.
    #[error("the admin port takes POST requests only from this machine or pod (use kubectl port-forward or exec)")]
    FromElsewhere,
    /// A method the path does not take.
    #[error("the method is not allowed")]
    MethodNotAllowed,
    /// A request that did not match any route.
    #[error("not found")]
    NotFound,
    /// `POST /refresh` left no usable token: refused (revoked), or none to refresh.
    #[error("no usable token: {0}")]
    TokenUnavailable(&'static str),
    /// `POST /refresh` failed for a reason that leaves the token usable (or unknown).
    #[error("{0}")]
    RefreshFailed(String),
}

impl ProxyError {
    /// THE mapping to status and contract code.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        use ProxyError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "BAD_REQUEST"),
            EndpointNotPermitted | RefreshEndpoint => (StatusCode::FORBIDDEN, "ENDPOINT_NOT_PERMITTED"),
            HostNotAllowed => (StatusCode::FORBIDDEN, "HOST_NOT_ALLOWED"),
            OriginNotAllowed => (StatusCode::FORBIDDEN, "ORIGIN_NOT_ALLOWED"),
            HeadersTooLarge(_) => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "HEADERS_TOO_LARGE"),
            MethodNotAllowed(_) => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE"),
            UpstreamUnreachable(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM_UNREACHABLE"),
            UpstreamProtocol(_) => (StatusCode::BAD_GATEWAY, "UPSTREAM_PROTOCOL_ERROR"),
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "UPSTREAM_TIMEOUT"),
            TokenUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "TOKEN_UNAVAILABLE"),
            ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "SHUTTING_DOWN"),
        }
    }

    /// Whether this is a fault of the upstream leg (counted in `issettled_proxy_upstream_errors_total`).
    pub(crate) fn is_upstream_fault(&self) -> bool {
        matches!(
            self,
            Self::UpstreamUnreachable(_) | Self::UpstreamProtocol(_) | Self::UpstreamTimeout
        )
    }

    /// The nine-field body for this error in the context of one request.
    pub(crate) fn body(&self, ctx: &ErrorContext<'_>) -> ErrorBody {
        proxy_made_body(self.status_and_code(), self.to_string(), ctx)
    }

    /// The complete response for this error. A 405 says which methods are allowed (RFC 9110 §15.5.6: "The
    /// origin server MUST generate an Allow header field in a 405 response").
    pub(crate) fn to_response(&self, ctx: &ErrorContext<'_>) -> Response<Body> {
        let mut response = json_response(self.status_and_code().0, self.body(ctx).to_json());
        if let Self::MethodNotAllowed(allow) = self {
            response.headers_mut().insert(header::ALLOW, allow.0.clone());
        }
        response
    }
}

/// The value of an `Allow` header: the methods a 405 names (`GET, POST, DELETE`).
#[derive(Debug, Clone)]
pub(crate) struct Allow(HeaderValue);

// === impl Allow ===

impl Allow {
    /// `methods`, comma-separated.
    pub(crate) fn new(methods: &[http::Method]) -> Self {
        let list = methods.iter().map(http::Method::as_str).collect::<Vec<_>>().join(", ");
        // Method names are tokens, always a valid header value.
        Self(HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("")))
    }
}

impl std::fmt::Display for Allow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0.to_str().unwrap_or_default())
    }
}

// === impl AdminError ===

impl AdminError {
    /// The admin port's mapping to status and contract code.
    pub(crate) fn status_and_code(&self) -> (StatusCode, &'static str) {
        use AdminError::*;
        match self {
            CrossOrigin => (StatusCode::FORBIDDEN, "ORIGIN_NOT_ALLOWED"),
            FromElsewhere => (StatusCode::FORBIDDEN, "ADMIN_LOCAL_ONLY"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED"),
            NotFound => (StatusCode::NOT_FOUND, "NOT_FOUND"),
            TokenUnavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "TOKEN_UNAVAILABLE"),
            RefreshFailed(_) => (StatusCode::BAD_GATEWAY, "TOKEN_REFRESH_FAILED"),
        }
    }

    /// The nine-field body for this error in the context of one request.
    pub(crate) fn body(&self, ctx: &ErrorContext<'_>) -> ErrorBody {
        proxy_made_body(self.status_and_code(), self.to_string(), ctx)
    }
}

/// The nine-field body of an error the proxy made itself (`service_name` says so).
fn proxy_made_body((status, code): (StatusCode, &'static str), message: String, ctx: &ErrorContext<'_>) -> ErrorBody {
    let mut body = ErrorBody::new(
        schema::PROXY_SERVICE_NAME,
        code,
        status.canonical_reason().unwrap_or("Error"),
        message,
    );
    body.build_version = Some(env!("CARGO_PKG_VERSION").to_owned());
    body.endpoint_url = ctx.endpoint_url.map(str::to_owned);
    body.member_identification = ctx.member_id.map(str::to_owned);
    body.troubleshooting_id = ctx.request_id.map(str::to_owned);
    body
}

/// A JSON response of `value` (the admin port's answers), ending with a newline like every JSON answer.
pub(crate) fn json_value_response(status: StatusCode, value: &impl serde::Serialize) -> Response<Body> {
    json_response(status, serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec()))
}

/// What the proxy knows about a request when it writes an error for it.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ErrorContext<'a> {
    /// The request path (no query).
    pub(crate) endpoint_url: Option<&'a str>,
    /// `upstream.member_id`, if configured.
    pub(crate) member_id: Option<&'a str>,
    /// The request id (becomes `troubleshooting_id`).
    pub(crate) request_id: Option<&'a str>,
}

impl axum::response::IntoResponse for ProxyError {
    fn into_response(self) -> axum::response::Response {
        self.to_response(&ErrorContext::default())
    }
}

/// A JSON response with the given status and bytes, ending with a newline (added if missing): `curl` in a
/// terminal then leaves the prompt on a line of its own.
pub(crate) fn json_response(status: StatusCode, mut json: Vec<u8>) -> Response<Body> {
    if json.last() != Some(&b'\n') {
        json.push(b'\n');
    }
    let mut response = Response::new(Body::from(json));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_errors_fill_all_nine_fields() {
        let ctx = ErrorContext {
            endpoint_url: Some("/payments"),
            member_id: Some("bankName"),
            request_id: Some("req-1"),
        };
        let v: serde_json::Value = serde_json::from_slice(&ProxyError::UpstreamTimeout.body(&ctx).to_json()).unwrap();
        for f in schema::FIELDS {
            assert!(v.get(f).is_some(), "{f} missing");
        }
        assert_eq!(v["code"], "UPSTREAM_TIMEOUT");
        assert_eq!(v["service_name"], "issettled-proxy");
        assert_eq!(v["troubleshooting_id"], "req-1");
        assert!(v["timestamp"].is_i64());
    }

    #[test]
    fn a_405_names_the_allowed_methods_and_the_key() {
        let e = ProxyError::MethodNotAllowed(Allow::new(&[http::Method::GET, http::Method::POST]));
        let response = e.to_response(&ErrorContext::default());
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[header::ALLOW], "GET, POST");
        let v: serde_json::Value = serde_json::from_slice(&e.body(&ErrorContext::default()).to_json()).unwrap();
        assert_eq!(
            v["long_message"],
            "the method is not one of policy.allowed_methods (GET, POST)"
        );
    }
}
