//! The `/status` JSON, built from a token [`Snapshot`]: times in RFC 3339, null where unknown, no secret.

use std::time::SystemTime;

use serde_json::{json, Value};

use crate::{clock::rfc3339, token::Snapshot};

fn time(t: Option<SystemTime>) -> Value {
    t.map_or(Value::Null, |t| Value::String(rfc3339(t)))
}

/// The `token` object of `/status` (also the answer of `POST /refresh`).
pub(crate) fn token_json(s: &Snapshot) -> Value {
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

/// What cluster mode reports about this replica's place in the election (no secret in it).
#[derive(Debug, Clone, Default)]
pub(crate) struct ClusterStatus {
    /// `leader`, `follower` or `candidate`.
    pub(crate) role: &'static str,
    pub(crate) identity: String,
    /// The Lease holder as last read.
    pub(crate) leader: Option<String>,
    pub(crate) lease_transitions: i64,
}

/// Where `/status` and `/metrics` read cluster mode's view from (implemented by the cluster module).
pub(crate) trait ClusterReport: Send + Sync + std::fmt::Debug {
    /// The election as this replica sees it now.
    fn report(&self) -> ClusterStatus;
}

/// The `cluster` object of `/status`.
fn cluster_json(c: &ClusterStatus, s: &Snapshot) -> Value {
    json!({
        "mode": "kubernetes",
        "role": c.role,
        "identity": c.identity,
        "leader": c.leader,
        "lease_transitions": c.lease_transitions,
        "state_generation": s.chain_generation,
        "last_sync_at": time(s.last_sync_at),
    })
}

/// The whole `/status` document. `upstream_proxy` is the outbound proxy every call goes through (no
/// credentials), if any.
pub(crate) fn status_json(
    s: &Snapshot,
    ready: bool,
    upstream: &str,
    upstream_proxy: Option<&str>,
    cluster: Option<&ClusterStatus>,
) -> Value {
    let cluster = cluster.map_or_else(|| json!({ "mode": "off" }), |c| cluster_json(c, s));
    json!({
        "version": env!("CARGO_PKG_VERSION"),
        "ready": ready,
        "upstream": upstream,
        "upstream_proxy": upstream_proxy,
        "token": token_json(s),
        "cluster": cluster,
    })
}
