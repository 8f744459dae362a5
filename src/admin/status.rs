//! The `/status` JSON, built from a token [`Snapshot`]: times in RFC 3339, null where unknown, no secret.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::{clock::rfc3339, token::Snapshot};

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// The `token` object of `/status` (also the answer of `POST /refresh`).
pub fn token_json(s: &Snapshot) -> Value {
    json!({
        "state": s.state.as_str(),
        "fingerprint": s.fingerprint,
        "source": s.source,
        "obtained_at": time(s.obtained_at),
        "last_refresh_at": time(s.last_refresh_at),
        "next_refresh_at": time(s.next_refresh_at),
        "revoke_deadline": time(s.revoke_deadline),
        "expires_at": time(s.expires_at),
        "session_expires_at": time(s.session_expires_at),
        "consecutive_failures": s.consecutive_failures,
        "last_error": s.last_error,
    })
}

/// The whole `/status` document. `upstream_proxy` is the outbound proxy every call goes through (no
/// credentials), if any.
pub fn status_json(s: &Snapshot, ready: bool, upstream: &str, upstream_proxy: Option<&str>) -> Value {
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": ready,
        "upstream": upstream,
        "upstream_proxy": upstream_proxy,
        "token": token_json(s),
    })
}
