//! The simulated `{prefix}/oauth-token/refresh` endpoint: recorded, then a scripted answer if one is queued,
//! else a new token in the same session (in the configured [`RefreshShape`]) for a valid Bearer token, else 401.

use std::{
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use axum::{
    extract::{Request, State},
    response::{IntoResponse, Response},
};
use http::{header, StatusCode};
use http_body_util::BodyExt;
use serde_json::json;

use super::{
    errors::{error_response, json_bytes, status_error},
    lock,
    routes::{bearer, path_and_query},
    RecordedRequest, RefreshShape, ScriptedResponse, Shared,
};

/// How long a [`ScriptedResponse::Hang`] keeps the caller waiting.
const HANG: Duration = Duration::from_secs(60 * 60);

/// Any method on the refresh path.
pub(super) async fn refresh(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let (body, trailers) = match body.collect().await {
        Ok(collected) => {
            let trailers = collected.trailers().cloned().unwrap_or_default();
            (collected.to_bytes(), trailers)
        }
        Err(_) => Default::default(),
    };
    let token = bearer(&parts.headers);
    let valid = token.as_deref().is_some_and(|t| lock(&shared.tokens).check(t).is_ok());
    shared.record_refresh(RecordedRequest {
        method: parts.method,
        path_and_query: path_and_query(&parts.uri),
        version: parts.version,
        headers: parts.headers,
        body,
        trailers,
        token: token.clone(),
        token_valid: valid,
        at: Instant::now(),
    });
    let path = parts.uri.path();
    let (scripted, shape, latency) = {
        let mut knobs = lock(&shared.knobs);
        (knobs.script.pop_front(), knobs.shape, knobs.refresh_latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(scripted) = scripted {
        return answer_scripted(&shared, scripted, path).await;
    }
    let Some(token) = token else {
        return unauthorized(&shared, "an Authorization: Bearer token is required", path);
    };
    let mints = !matches!(shape, RefreshShape::NoContent | RefreshShape::OkNoToken);
    let refreshed = lock(&shared.tokens).refresh(&token, mints);
    let new = match refreshed {
        Ok(new) => new,
        Err(reason) => return unauthorized(&shared, reason, path),
    };
    let ttl = shared.cfg.token_ttl.as_secs();
    let (token, exp) = new.map_or((String::new(), 0), |n| (n.token, n.exp));
    let body = match shape {
        RefreshShape::NoContent => return StatusCode::NO_CONTENT.into_response(),
        RefreshShape::OkNoToken => json!({"status": "ok"}),
        RefreshShape::AccessToken => json!({"access_token": token, "expires_in": ttl, "token_type": "Bearer"}),
        RefreshShape::Token => json!({"token": token}),
        RefreshShape::AccessTokenCamel => json!({"accessToken": token}),
        RefreshShape::Jwt => json!({"jwt": token}),
        RefreshShape::DataToken => {
            let at = UNIX_EPOCH
                .checked_add(Duration::from_secs(exp))
                .unwrap_or_else(SystemTime::now);
            json!({"data": {"token": token, "expires_at": humantime::format_rfc3339_seconds(at).to_string()}})
        }
    };
    (StatusCode::OK, super::JsonLine(body)).into_response()
}

async fn answer_scripted(shared: &Shared, scripted: ScriptedResponse, path: &str) -> Response {
    match scripted {
        ScriptedResponse::Status(n) => {
            let status = StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            match status.as_u16() {
                400.. => status_error(shared, status, path),
                204 | 304 => status.into_response(),
                _ => json_bytes(status, b"{}".to_vec()),
            }
        }
        ScriptedResponse::StatusBody(n, body) => {
            let status = StatusCode::from_u16(n).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        ScriptedResponse::Hang => {
            tokio::time::sleep(HANG).await;
            status_error(shared, StatusCode::GATEWAY_TIMEOUT, path)
        }
    }
}

fn unauthorized(shared: &Shared, reason: &str, path: &str) -> Response {
    error_response(
        shared,
        StatusCode::UNAUTHORIZED,
        "UNAUTHORIZED",
        "Unauthorized",
        reason,
        path,
    )
}
