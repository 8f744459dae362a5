//! The simulated IsSettled upstream: the one fake upstream behind `demo` and every integration test.
//! This file owns the public API, the shared state and the knobs; the token ledger, the API and refresh
//! handlers and the error routes live in `sim/`.
//!
//! The sim enforces the upstream's rules: every API call needs a valid Bearer token, a token not refreshed
//! within `revoke_after` is revoked, and a session ends `session_ttl` after the administrator issued it.

use std::{
    collections::{HashSet, VecDeque},
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderMap, Method};
use tokio::sync::watch;

mod errors;
mod refresh;
mod routes;
#[cfg(test)]
mod tests;
mod tokens;

use self::tokens::TokenBook;

/// A JSON answer ending with a newline, as the proxy's own answers do (`curl` in a terminal then leaves the prompt
/// on a line of its own: the demo's upstream is this simulation).
#[derive(Debug)]
struct JsonLine<T>(T);

impl<T: serde::Serialize> axum::response::IntoResponse for JsonLine<T> {
    fn into_response(self) -> axum::response::Response {
        let mut body = serde_json::to_vec(&self.0).unwrap_or_else(|_| b"{}".to_vec());
        body.push(b'\n');
        ([(http::header::CONTENT_TYPE, "application/json")], body).into_response()
    }
}

/// How the simulated upstream is set up.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Path prefix the API (refresh included) is served under: `""` or e.g. `"/api/v1"`.
    pub prefix: String,
    /// Lifetime of a minted JWT: `exp = iat + token_ttl`.
    pub token_ttl: Duration,
    /// A token neither issued nor refreshed within this long is revoked.
    pub revoke_after: Duration,
    /// Lifetime of a session, counted from the administrator's issuance ([`Sim::mint_admin_token`]).
    pub session_ttl: Duration,
    /// The member the tokens belong to (`sub`) and the errors name (`member_identification`).
    pub member_id: String,
    /// When set, a token that was refreshed into a successor stops being valid this long after (as an upstream
    /// that invalidates a refreshed-away token would): two refreshers on one chain then break it.
    pub retire_refreshed_after: Option<Duration>,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            prefix: String::new(),
            token_ttl: Duration::from_secs(15 * 60),
            revoke_after: Duration::from_secs(15 * 60),
            session_ttl: Duration::from_secs(24 * 60 * 60),
            member_id: "demoBank".to_owned(),
            retire_refreshed_after: None,
        }
    }
}

/// A scripted answer to one refresh call (see [`Sim::script_refresh`]). Scripted answers change no token state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptedResponse {
    /// This status; a nine-field error body for 4xx/5xx, `{}` for other statuses (none for 204 and 304).
    /// A number that is not a valid status code answers 500.
    Status(u16),
    /// This status with this body, `Content-Type: application/json`.
    StatusBody(u16, String),
    /// Never answers (sleeps one hour, then 504).
    Hang,
}

/// How a successful refresh answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RefreshShape {
    /// `{"access_token": .., "expires_in": <token_ttl secs>, "token_type": "Bearer"}`.
    #[default]
    AccessToken,
    /// `{"token": ..}`.
    Token,
    /// `{"accessToken": ..}`.
    AccessTokenCamel,
    /// `{"jwt": ..}`.
    Jwt,
    /// `{"data": {"token": .., "expires_at": "<RFC 3339>"}}`.
    DataToken,
    /// 204, empty body: no new token; the current one stays valid and counts as refreshed.
    NoContent,
    /// 200 `{"status":"ok"}`: no new token; the current one stays valid and counts as refreshed.
    OkNoToken,
}

/// One request as the simulated upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// The request method.
    pub method: Method,
    /// The path and query as received.
    pub path_and_query: String,
    /// The HTTP version the request came in (HTTP/2 when TLS negotiated it).
    pub version: http::Version,
    /// All request headers.
    pub headers: HeaderMap,
    /// The whole body (empty for `POST /upload`, which is only counted: see [`Sim::upload_progress`]).
    pub body: Bytes,
    /// The request's trailer fields, if its body carried any (HTTP/1.1 chunked trailers, HTTP/2 trailers).
    pub trailers: HeaderMap,
    /// The `Authorization: Bearer` value, if any.
    pub token: Option<String>,
    /// Whether the sim accepted the token: valid and, on API routes, not refused by [`Sim::reject_api_token`].
    /// Judged when the request arrived.
    pub token_valid: bool,
    /// When the request arrived.
    pub at: Instant,
}

/// The simulated IsSettled. Cheap to clone; every clone shares the same state.
#[derive(Clone)]
pub struct Sim {
    shared: Arc<Shared>,
}

/// State shared by the handle and the handlers. No lock is held across an `.await`.
struct Shared {
    cfg: SimConfig,
    tokens: Mutex<TokenBook>,
    log: Mutex<Log>,
    knobs: Mutex<Knobs>,
    /// Bytes received so far by the current `POST /upload`.
    upload: watch::Sender<u64>,
    /// Next payment number (`PAY-1001`, ..).
    next_payment: AtomicU64,
}

/// The request log. API records carry a sequence number so a body read after arrival lands in its record.
#[derive(Default)]
struct Log {
    next_seq: u64,
    requests: Vec<(u64, RecordedRequest)>,
    refresh_calls: Vec<RecordedRequest>,
}

/// What the tests can change at run time.
#[derive(Default)]
struct Knobs {
    script: VecDeque<ScriptedResponse>,
    shape: RefreshShape,
    rejected: HashSet<String>,
    refresh_latency: Duration,
}

// === impl Sim ===

impl Sim {
    /// A simulated upstream with no sessions yet. A prefix like `"api/v1/"` is read as `"/api/v1"`.
    pub fn new(mut cfg: SimConfig) -> Sim {
        let trimmed = cfg.prefix.trim_matches('/');
        cfg.prefix = if trimmed.is_empty() {
            String::new()
        } else {
            format!("/{trimmed}")
        };
        let mut tokens = TokenBook::new(&cfg.member_id, cfg.token_ttl, cfg.revoke_after, cfg.session_ttl);
        tokens.retire_refreshed_after = cfg.retire_refreshed_after;
        let shared = Shared {
            cfg,
            tokens: Mutex::new(tokens),
            log: Mutex::new(Log::default()),
            knobs: Mutex::new(Knobs::default()),
            upload: watch::Sender::new(0),
            next_payment: AtomicU64::new(1001),
        };
        Sim {
            shared: Arc::new(shared),
        }
    }

    /// The whole upstream (API, refresh and error routes), state included.
    pub fn router(&self) -> axum::Router {
        routes::router(Arc::clone(&self.shared))
    }

    /// Refresh `token` as a refresh call would (unrecorded): what another process of the same chain did.
    pub fn refresh_directly(&self, token: &str) -> String {
        let minted = lock(&self.shared.tokens).refresh(token, true);
        minted
            .ok()
            .flatten()
            .map(|n| n.token)
            .expect("a valid token to refresh")
    }

    /// Start a new session and return its first token: what an administrator issues in the Web Office.
    pub fn mint_admin_token(&self) -> String {
        lock(&self.shared.tokens).mint_session()
    }

    /// Every API request (refresh calls excepted), in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// Every refresh call, in arrival order.
    pub fn refresh_calls(&self) -> Vec<RecordedRequest> {
        lock(&self.shared.log).refresh_calls.clone()
    }

    /// Every token this sim ever minted, in minting order (tests search logs for them).
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.shared.tokens).issued()
    }

    /// Whether `token` is valid now (minted here, not revoked or expired, session alive).
    #[cfg(test)]
    pub(crate) fn is_valid(&self, token: &str) -> bool {
        lock(&self.shared.tokens).check(token).is_ok()
    }

    /// Forget the recorded requests and refresh calls (tokens and knobs stay).
    pub fn clear_log(&self) {
        let mut log = lock(&self.shared.log);
        log.requests.clear();
        log.refresh_calls.clear();
    }

    /// The next refresh calls get these answers, in order (replacing any script not yet used), then normal
    /// behaviour resumes.
    pub fn script_refresh(&self, responses: Vec<ScriptedResponse>) {
        lock(&self.shared.knobs).script = responses.into();
    }

    /// How successful refreshes answer from now on.
    pub fn set_refresh_shape(&self, shape: RefreshShape) {
        lock(&self.shared.knobs).shape = shape;
    }

    /// API calls with this token get 401 from now on; refreshing with it still works.
    pub fn reject_api_token(&self, token: &str) {
        lock(&self.shared.knobs).rejected.insert(token.to_owned());
    }

    /// Revoke this token: refused everywhere (API and refresh answer 401).
    pub fn revoke(&self, token: &str) {
        lock(&self.shared.tokens).revoke(token);
    }

    /// Delay every refresh answer by this much.
    pub fn set_refresh_latency(&self, d: Duration) {
        lock(&self.shared.knobs).refresh_latency = d;
    }

    /// Bytes received so far by the current `POST /upload` (reset to 0 when one starts).
    pub fn upload_progress(&self) -> watch::Receiver<u64> {
        self.shared.upload.subscribe()
    }
}

impl fmt::Debug for Sim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let log = lock(&self.shared.log);
        let (requests, refresh_calls) = (log.requests.len(), log.refresh_calls.len());
        drop(log);
        f.debug_struct("Sim")
            .field("cfg", &self.shared.cfg)
            .field("tokens_issued", &lock(&self.shared.tokens).len())
            .field("requests", &requests)
            .field("refresh_calls", &refresh_calls)
            .finish()
    }
}

// === impl Shared ===

impl Shared {
    /// Append an API request to the log; returns its sequence number for [`Shared::set_body`].
    fn record_request(&self, request: RecordedRequest) -> u64 {
        let mut log = lock(&self.log);
        let seq = log.next_seq;
        log.next_seq += 1;
        log.requests.push((seq, request));
        seq
    }

    /// Fill in the body and trailers of a recorded API request once read (a no-op after `clear_log`).
    fn set_body(&self, seq: u64, body: Bytes, trailers: Option<&HeaderMap>) {
        let mut log = lock(&self.log);
        if let Some((_, r)) = log.requests.iter_mut().rev().find(|(s, _)| *s == seq) {
            r.body = body;
            r.trailers = trailers.cloned().unwrap_or_default();
        }
    }

    fn record_refresh(&self, request: RecordedRequest) {
        lock(&self.log).refresh_calls.push(request);
    }

    fn next_payment_id(&self) -> String {
        format!("PAY-{}", self.next_payment.fetch_add(1, Ordering::Relaxed))
    }
}

/// Lock a mutex, ignoring poisoning: every critical section leaves the state consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
