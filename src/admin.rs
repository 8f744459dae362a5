//! The admin port: liveness, readiness, status, metrics, an on-demand refresh and the opt-in quit endpoint.
//! Readiness depends only on holding a usable token and not shutting down, never on reaching the upstream.
//! POSTs a browser sends for a web page (they carry `Origin`) are refused: see [`browser_post`].

mod status;

use std::{sync::Arc, time::SystemTime};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};

use crate::{
    errors::{json_response, json_value_response, AdminError, ErrorContext},
    metrics::{Metrics, TokenGauges},
    proxy::request_id,
    server::FromElsewhere,
    shutdown::{Phase, Shutdown, ShutdownSignal},
    token::{self, refresh::RefreshError, RefreshHandle, TokenCell, Trigger},
};
pub(crate) use status::{status_json, token_json, ClusterReport, ClusterStatus};

/// What the admin handlers read.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub(crate) token: Arc<TokenCell>,
    pub(crate) refresh: RefreshHandle,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) signal: ShutdownSignal,
    /// Present only with `shutdown.enable_quit_endpoint`.
    pub(crate) quit: Option<Shutdown>,
    /// `base_url`, for `/status`.
    pub(crate) upstream: String,
    /// The outbound proxy (no credentials), for `/status`.
    pub(crate) upstream_proxy: Option<String>,
    /// `upstream.member_id`, if configured: `member_identification` in errors, as on the proxy port.
    pub(crate) member_id: Option<String>,
    /// Cluster mode's election view; `None` in mode `off`.
    pub(crate) cluster: Option<Arc<dyn ClusterReport>>,
}

/// The admin router.
pub(crate) fn router(state: Arc<AdminState>) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/status", get(status))
        .route("/metrics", get(metrics))
        .route("/refresh", post(refresh));
    if state.quit.is_some() {
        router = router.route("/quitquitquit", post(quit));
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), refuse_foreign_posts))
        .with_state(state)
}

/// An error of the admin port, filled in like every other error: `member_identification` from the
/// configuration, `troubleshooting_id` the request's `X-Request-Id` (or a new id, returned in that header).
fn error_response(state: &AdminState, error: &AdminError, path: &str, headers: &HeaderMap) -> Response {
    with_error_context(state, error, path, headers, |_| {})
}

/// [`error_response`], with `amend` adding to the body.
fn with_error_context(
    state: &AdminState,
    error: &AdminError,
    path: &str,
    headers: &HeaderMap,
    amend: impl FnOnce(&mut crate::errors::ErrorBody),
) -> Response {
    let request_id = request_id::pick(headers);
    let ctx = ErrorContext {
        endpoint_url: Some(path),
        member_id: state.member_id.as_deref(),
        request_id: request_id.to_str().ok(),
    };
    let mut body = error.body(&ctx);
    amend(&mut body);
    let mut response = json_response(error.status_and_code().0, body.to_json());
    response.headers_mut().insert(request_id::HEADER, request_id);
    response
}

/// Whether a request is one a web page made a browser send: a state-changing method with an `Origin` header.
/// A page can POST to `127.0.0.1:8081` without CORS (a "simple" request; it cannot read the answer, but the
/// refresh or shutdown would happen). Browsers always send `Origin` on a cross-origin POST; curl, kubectl and
/// probes do not. `listen.allowed_hosts` is not applied here: kubelet probes use the pod IP as `Host`.
pub(crate) fn browser_post(method: &Method, headers: &HeaderMap) -> bool {
    !method.is_safe() && headers.contains_key(header::ORIGIN)
}

/// State-changing admin requests (`POST /refresh`, `POST /quitquitquit`) are taken only from this machine or
/// pod, and not from a browser: in Kubernetes the admin port listens on every interface for the kubelet's
/// probes, and whatever else the NetworkPolicy lets in (a scraper, another pod) could otherwise force refreshes
/// against IsSettled or stop the sidecar. Operators reach it through `kubectl port-forward` or `kubectl exec`
/// into the app container, which are local. Reads (`GET`) are served to everyone the listener accepts.
async fn refuse_foreign_posts(State(state): State<Arc<AdminState>>, request: Request, next: Next) -> Response {
    if let Some(error) = foreign_post(&request) {
        return error_response(&state, &error, request.uri().path(), request.headers());
    }
    next.run(request).await
}

/// Why a request is refused before routing, if it is: a state-changing one from elsewhere, or from a browser.
pub(crate) fn foreign_post<B>(request: &http::Request<B>) -> Option<AdminError> {
    if request.method().is_safe() {
        None
    } else if request.extensions().get::<FromElsewhere>().is_some() {
        Some(AdminError::FromElsewhere)
    } else if browser_post(request.method(), request.headers()) {
        Some(AdminError::CrossOrigin)
    } else {
        None
    }
}

/// Whether the proxy is ready, and if not, why, given a snapshot of the token.
pub(crate) fn readiness(state: &AdminState, snap: &token::Snapshot) -> Result<(), &'static str> {
    if state.signal.phase() != Phase::Running {
        return Err("shutting down");
    }
    match snap.unusable {
        None => Ok(()),
        Some(u) => Err(u.reason()),
    }
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(state): State<Arc<AdminState>>) -> Response {
    match readiness(&state, &token::snapshot(&state.token)) {
        Ok(()) => json_value_response(StatusCode::OK, &serde_json::json!({"ready": true})),
        Err(reason) => json_value_response(
            StatusCode::SERVICE_UNAVAILABLE,
            &serde_json::json!({"ready": false, "reason": reason}),
        ),
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let snap = token::snapshot(&state.token);
    let ready = readiness(&state, &snap).is_ok();
    let cluster = state.cluster.as_ref().map(|c| c.report());
    json_value_response(
        StatusCode::OK,
        &status_json(
            &snap,
            ready,
            &state.upstream,
            state.upstream_proxy.as_deref(),
            cluster.as_ref(),
        ),
    )
}

async fn metrics(State(state): State<Arc<AdminState>>) -> Response {
    let snap = token::snapshot(&state.token);
    let now = SystemTime::now();
    let seconds_until = |t: Option<SystemTime>| {
        t.map(|t| match t.duration_since(now) {
            Ok(d) => d.as_secs_f64(),
            Err(e) => -e.duration().as_secs_f64(),
        })
    };
    let gauges = TokenGauges {
        ready: readiness(&state, &snap).is_ok(),
        revoke_deadline_seconds: seconds_until(snap.revoke_deadline),
        session_remaining_seconds: seconds_until(snap.session_expires_at),
        cluster: state
            .cluster
            .as_ref()
            .map(|c| (c.report().role == "leader", snap.chain_generation)),
    };
    let mut response = state.metrics.render(&gauges).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

async fn refresh(State(state): State<Arc<AdminState>>, headers: HeaderMap) -> Response {
    match state.refresh.refresh_now(Trigger::Admin, None).await {
        Ok(_) => json_value_response(StatusCode::OK, &token_json(&token::snapshot(&state.token))),
        Err(e) => {
            // A refused refresh leaves no usable token: the contract's 503. Anything else (the upstream failed,
            // answered garbage) is a failed refresh of a token that may still be usable.
            let error = match e {
                RefreshError::Revoked(_) => {
                    AdminError::TokenUnavailable("the refresh was refused: the token is revoked")
                }
                RefreshError::NoToken => AdminError::TokenUnavailable("no token to refresh"),
                other => AdminError::RefreshFailed(other.to_string()),
            };
            let token = token_json(&token::snapshot(&state.token));
            with_error_context(&state, &error, "/refresh", &headers, |body| {
                body.extra.insert("token".into(), token);
            })
        }
    }
}

async fn quit(State(state): State<Arc<AdminState>>) -> Response {
    if let Some(quit) = &state.quit {
        tracing::info!(
            event = "shutdown_signal",
            signal = "quitquitquit",
            "shutting down gracefully"
        );
        quit.advance(Phase::Draining);
    }
    json_value_response(StatusCode::OK, &serde_json::json!({"shutting_down": true}))
}

async fn method_not_allowed(State(state): State<Arc<AdminState>>, request: Request) -> Response {
    error_response(
        &state,
        &AdminError::MethodNotAllowed,
        request.uri().path(),
        request.headers(),
    )
}

async fn not_found(State(state): State<Arc<AdminState>>, request: Request) -> Response {
    error_response(&state, &AdminError::NotFound, request.uri().path(), request.headers())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_state_changing_requests_with_an_origin_are_browser_posts() {
        let mut with_origin = HeaderMap::new();
        with_origin.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(browser_post(&Method::POST, &with_origin));
        assert!(browser_post(&Method::DELETE, &with_origin));
        assert!(!browser_post(&Method::GET, &with_origin));
        assert!(!browser_post(&Method::POST, &HeaderMap::new()));
    }

    #[test]
    fn state_changing_requests_from_elsewhere_are_refused_and_reads_are_not() {
        let request = |method: Method, elsewhere: bool| {
            let mut r = http::Request::builder()
                .method(method)
                .uri("/refresh")
                .body(())
                .unwrap();
            if elsewhere {
                r.extensions_mut().insert(FromElsewhere);
            }
            r
        };
        let code = |r: &http::Request<()>| foreign_post(r).map(|e| e.status_and_code().1);
        assert_eq!(code(&request(Method::POST, true)), Some("ADMIN_LOCAL_ONLY"));
        assert_eq!(code(&request(Method::DELETE, true)), Some("ADMIN_LOCAL_ONLY"));
        assert_eq!(code(&request(Method::GET, true)), None, "reads are served to everyone");
        assert_eq!(code(&request(Method::POST, false)), None, "local POSTs are served");
        let mut from_a_page = request(Method::POST, false);
        from_a_page
            .headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static("https://evil.example"));
        assert_eq!(code(&from_a_page), Some("ORIGIN_NOT_ALLOWED"));
    }
}
