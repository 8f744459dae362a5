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
    Json, Router,
};

use crate::{
    errors::{json_response, AdminError, ErrorContext},
    metrics::{Metrics, TokenGauges},
    server::FromElsewhere,
    shutdown::{Phase, Shutdown, ShutdownSignal},
    token::{self, refresh::RefreshError, RefreshHandle, TokenCell, Trigger},
};
pub(crate) use status::{status_json, token_json, ClusterReport, ClusterStatus};

/// What the admin handlers read.
#[derive(Debug)]
pub(crate) struct AdminState {
    pub token: Arc<TokenCell>,
    pub refresh: RefreshHandle,
    pub metrics: Arc<Metrics>,
    pub signal: ShutdownSignal,
    /// Present only with `shutdown.enable_quit_endpoint`.
    pub quit: Option<Shutdown>,
    /// `base_url`, for `/status`.
    pub upstream: String,
    /// The outbound proxy (no credentials), for `/status`.
    pub upstream_proxy: Option<String>,
    /// Cluster mode's election view; `None` in mode `off`.
    pub cluster: Option<Arc<dyn ClusterReport>>,
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
        .with_state(state)
        .layer(middleware::from_fn(refuse_foreign_posts))
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
async fn refuse_foreign_posts(request: Request, next: Next) -> Response {
    if let Some(error) = foreign_post(&request) {
        let ctx = ErrorContext {
            endpoint_url: Some(request.uri().path()),
            ..ErrorContext::default()
        };
        return error.to_response(&ctx);
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
        Ok(()) => Json(serde_json::json!({"ready": true})).into_response(),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"ready": false, "reason": reason})),
        )
            .into_response(),
    }
}

async fn status(State(state): State<Arc<AdminState>>) -> Response {
    let snap = token::snapshot(&state.token);
    let ready = readiness(&state, &snap).is_ok();
    let cluster = state.cluster.as_ref().map(|c| c.report());
    Json(status_json(
        &snap,
        ready,
        &state.upstream,
        state.upstream_proxy.as_deref(),
        cluster.as_ref(),
    ))
    .into_response()
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

async fn refresh(State(state): State<Arc<AdminState>>) -> Response {
    match state.refresh.refresh_now(Trigger::Admin, None).await {
        Ok(_) => Json(token_json(&token::snapshot(&state.token))).into_response(),
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
            let ctx = ErrorContext {
                endpoint_url: Some("/refresh"),
                ..ErrorContext::default()
            };
            let mut body = error.body(&ctx);
            body.extra
                .insert("token".into(), token_json(&token::snapshot(&state.token)));
            json_response(error.status_and_code().0, body.to_json())
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
    Json(serde_json::json!({"shutting_down": true})).into_response()
}

async fn method_not_allowed() -> Response {
    AdminError::MethodNotAllowed.to_response(&ErrorContext::default())
}

async fn not_found() -> Response {
    AdminError::NotFound.to_response(&ErrorContext::default())
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
