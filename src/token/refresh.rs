//! One refresh call: `POST {base_url}/oauth-token/refresh` with the current token, and
//! [`parse_refresh_response`], which reads every response shape the contract lists (pure).

use std::{future::Future, time::SystemTime};

use http::{Method, StatusCode};
use serde_json::Value;

use super::secret::{Token, TokenError};

/// A successful refresh.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Refreshed {
    /// A new token, with the expiry the response stated (if any).
    New {
        token: Token,
        expires_at: Option<SystemTime>,
    },
    /// 200/204 without a token: the current token stays and counts as refreshed.
    Kept,
}

/// A failed refresh.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RefreshError {
    /// 401 or 403: the token is revoked.
    #[error("refresh answered {0}: the token is revoked")]
    Revoked(u16),
    /// 5xx, 429, time-out, connection failure, or an unexpected answer: retry with backoff.
    #[error("{0}")]
    Transient(String),
    /// The response carried a token that cannot be used.
    #[error("the refresh response carried an unusable token: {0}")]
    BadToken(TokenError),
    /// There is no token to refresh.
    #[error("no token to refresh")]
    NoToken,
}

impl RefreshError {
    /// Label for `issettled_proxy_token_refresh_total{result}`.
    pub(crate) fn result_label(&self) -> &'static str {
        match self {
            RefreshError::Revoked(_) => "revoked",
            RefreshError::Transient(_) => "transient_error",
            RefreshError::BadToken(_) => "bad_response",
            RefreshError::NoToken => "no_token",
        }
    }
}

/// Performs the refresh call. Generic so the refresher is tested with a scripted fake and a paused clock.
pub(crate) trait RefreshClient: Send + Sync + 'static {
    /// Exchange `token` for a fresh one.
    fn refresh(&self, token: &Token) -> impl Future<Output = Result<Refreshed, RefreshError>> + Send;
}

/// Field names that may carry the new token, at the top level or inside `data`.
const TOKEN_KEYS: [&str; 4] = ["access_token", "token", "accessToken", "jwt"];

/// Interpret a refresh response (status and body).
pub(crate) fn parse_refresh_response(
    status: StatusCode,
    body: &[u8],
    now: SystemTime,
) -> Result<Refreshed, RefreshError> {
    match status.as_u16() {
        401 | 403 => return Err(RefreshError::Revoked(status.as_u16())),
        200..=299 => {}
        other => return Err(RefreshError::Transient(format!("refresh answered {other}"))),
    }
    let body = without_bom(body);
    // Text that is not JSON (empty, or `OK`) carries no token: the contract counts that as refreshed. JSON that
    // does not parse (cut short, a trailing comma) may have carried one, so it is a failure, retried.
    if is_plain_text(body) {
        return Ok(Refreshed::Kept);
    }
    let Ok(json) = serde_json::from_slice::<Value>(body) else {
        return Err(RefreshError::Transient(
            "refresh answered JSON that does not parse".into(),
        ));
    };
    for scope in [Some(&json), json.get("data")].into_iter().flatten() {
        let Some(text) = TOKEN_KEYS.iter().find_map(|k| scope.get(*k).and_then(Value::as_str)) else {
            continue;
        };
        let token = Token::parse(text).map_err(RefreshError::BadToken)?;
        return Ok(Refreshed::New {
            token,
            expires_at: expiry(scope, now).or_else(|| expiry(&json, now)),
        });
    }
    Ok(Refreshed::Kept)
}

/// Whether a refresh answer's body is text that is not JSON (nor meant to be): not starting with `{`, `[` or
/// `"`, after any byte order mark. An empty body counts as text.
pub(crate) fn is_plain_text(body: &[u8]) -> bool {
    !matches!(without_bom(body).trim_ascii_start().first(), Some(b'{' | b'[' | b'"'))
}

/// `body` without a leading UTF-8 byte order mark (which some servers write before JSON).
fn without_bom(body: &[u8]) -> &[u8] {
    body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body)
}

/// `expires_at` (RFC 3339 or epoch seconds/ms) or `expires_in` (seconds) of one JSON object.
fn expiry(scope: &Value, now: SystemTime) -> Option<SystemTime> {
    if let Some(at) = scope.get("expires_at").and_then(crate::clock::parse_timestamp) {
        return Some(at);
    }
    let secs = scope.get("expires_in")?;
    let secs = secs.as_f64().or_else(|| secs.as_str()?.trim().parse().ok())?;
    (0.0..1e9)
        .contains(&secs)
        .then(|| now + std::time::Duration::from_secs_f64(secs))
}

/// The real refresh call over reqwest (rustls, no redirects, no proxy variables, time-outs set).
#[derive(Debug, Clone)]
pub(crate) struct HttpRefreshClient {
    client: reqwest::Client,
    url: String,
    method: Method,
    /// The outbound proxy the client tunnels through (shown without credentials), named in its failures.
    through: Option<String>,
}

/// The most of a refresh response body that is read.
const MAX_RESPONSE: usize = 64 * 1024;

impl HttpRefreshClient {
    /// `url` is `base_url` + `token.refresh_path`.
    pub(crate) fn new(client: reqwest::Client, url: String, method: Method) -> Self {
        Self {
            client,
            url,
            method,
            through: None,
        }
    }

    /// Failures name `proxy`, the outbound proxy `client` tunnels through (if any). Any such failure is
    /// transient like every failure to connect: retried with backoff, never taken for a revocation.
    #[must_use]
    pub(crate) fn through(mut self, proxy: Option<String>) -> Self {
        self.through = proxy;
        self
    }
}

impl RefreshClient for HttpRefreshClient {
    async fn refresh(&self, token: &Token) -> Result<Refreshed, RefreshError> {
        let mut response = self
            .client
            .request(self.method.clone(), &self.url)
            .header(http::header::AUTHORIZATION, token.bearer_header())
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::CONTENT_LENGTH, "0")
            .send()
            .await
            .map_err(|e| RefreshError::Transient(self.describe_send(&e)))?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| RefreshError::Transient(describe(&e)))?
        {
            if body.len() + chunk.len() > MAX_RESPONSE {
                return Err(RefreshError::Transient("refresh response body too large".into()));
            }
            body.extend_from_slice(&chunk);
        }
        let refreshed = parse_refresh_response(status, &body, SystemTime::now());
        if refreshed == Ok(Refreshed::Kept) && !body.trim_ascii().is_empty() && is_plain_text(&body) {
            tracing::warn!(
                event = "refresh_not_json",
                status = status.as_u16(),
                "the refresh call answered a body that is not JSON; counted as refreshed with the current token kept, as the contract says (check token.refresh_path if this is a web page)"
            );
        }
        refreshed
    }
}

impl HttpRefreshClient {
    /// A failed send as [`describe`] says it, naming the outbound proxy when the connection went through one
    /// (reqwest's tunnel says what went wrong, such as `proxy authorization required`, not where).
    fn describe_send(&self, e: &reqwest::Error) -> String {
        match &self.through {
            Some(proxy) if e.is_connect() => format!("{} (through the outbound proxy {proxy})", describe(e)),
            _ => describe(e),
        }
    }
}

/// A reqwest error without its URL (the URL is not secret, but the message stays short and stable).
fn describe(e: &reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else {
        "failed"
    };
    let detail = std::error::Error::source(e)
        .map(crate::upstream_error::explain)
        .unwrap_or_default();
    if detail.is_empty() {
        format!("refresh call {kind}")
    } else {
        format!("refresh call {kind}: {detail}")
    }
}

#[cfg(test)]
mod tests;
