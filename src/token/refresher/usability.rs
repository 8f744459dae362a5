//! The moment requests start (or stop) failing for want of a token, logged once per change: ERROR with what to
//! do when the token becomes unusable (revoked, expired, revoke deadline passed, missing), INFO when a usable one
//! is back. Without this, a proxy whose refreshes fail says nothing at `warn` when its answers turn to 503.

use crate::token::cell::Unusable;

/// Why requests get 503 `TOKEN_UNAVAILABLE`, as far as the log tells it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Down {
    /// The upstream refused the token (refresh answered 401/403).
    Revoked,
    /// Cluster mode: no usable token until the chain's newest link is read from the state Secret.
    AwaitingChain,
    /// Not usable for another reason.
    Unusable(Unusable),
}

/// A change the log must report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Down(Down),
    Up,
}

/// Remembers what was last reported. Starts as "usable": a start without a token is reported too.
#[derive(Debug, Default)]
pub(super) struct Watch {
    down: Option<Down>,
}

// === impl Watch ===

impl Watch {
    /// Compare `now` with what was last reported; `Some` when it changed (a different reason counts: what to do
    /// differs).
    pub(super) fn observe(&mut self, now: Option<Down>) -> Option<Change> {
        if self.down == now {
            return None;
        }
        self.down = now;
        Some(now.map_or(Change::Up, Change::Down))
    }
}

/// Log a change: once, at ERROR with what to do, or at INFO when requests are served again. `shared`: the chain
/// is kept with other replicas (cluster mode), where a new administrator token goes in `cluster.secret`.
pub(super) fn log(change: Change, fingerprint: Option<String>, shared: bool) {
    let Change::Down(down) = change else {
        tracing::info!(
            event = "token_usable",
            fingerprint,
            "a usable token is held again: requests are forwarded"
        );
        return;
    };
    let (reason, what_to_do) = explain(down, shared);
    tracing::error!(
        event = "token_unusable",
        reason,
        fingerprint,
        "requests now fail with 503 TOKEN_UNAVAILABLE: {reason}; {what_to_do}"
    );
}

/// Why requests fail, and what an operator does about it.
fn explain(down: Down, shared: bool) -> (&'static str, String) {
    let new_token = if shared {
        "cluster.secret (the administrator's Secret; the leader checks it and starts a new chain)"
    } else {
        "token.file (or token.env, then restart)"
    };
    match down {
        Down::Revoked => (
            "the upstream refused the token (revoked)",
            format!("put a new administrator-issued token in {new_token}"),
        ),
        Down::AwaitingChain => (
            "no usable token from the shared chain",
            "check that the Kubernetes API answers and the state Secret (cluster.state_secret) holds the chain; \
             a new administrator-issued token goes in cluster.secret"
                .to_owned(),
        ),
        Down::Unusable(Unusable::Missing) => (
            "no token is loaded",
            format!("put an administrator-issued token in {new_token}"),
        ),
        Down::Unusable(Unusable::Expired) => (
            "the token's exp has passed",
            format!("an administrator must issue a new token; put it in {new_token}"),
        ),
        Down::Unusable(Unusable::DeadlinePassed) => (
            "the token was not refreshed before its revoke deadline (token.revoke_after)",
            format!(
                "make upstream.base_url reachable (see the token_refresh warnings); if the upstream has revoked \
                 the token meanwhile, put a new one in {new_token}"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_is_reported_once() {
        let mut w = Watch::default();
        assert_eq!(w.observe(None), None, "usable, as assumed");
        let deadline = Down::Unusable(Unusable::DeadlinePassed);
        assert_eq!(w.observe(Some(deadline)), Some(Change::Down(deadline)));
        assert_eq!(w.observe(Some(deadline)), None, "once");
        assert_eq!(w.observe(Some(Down::Revoked)), Some(Change::Down(Down::Revoked)));
        assert_eq!(w.observe(None), Some(Change::Up));
        assert_eq!(w.observe(None), None);
    }

    #[test]
    fn the_advice_names_where_a_new_token_goes_in_each_mode() {
        for down in [
            Down::Revoked,
            Down::Unusable(Unusable::Expired),
            Down::Unusable(Unusable::DeadlinePassed),
        ] {
            let (_, alone) = explain(down, false);
            assert!(
                alone.contains("token.file") && !alone.contains("cluster.secret"),
                "{alone}"
            );
            let (_, shared) = explain(down, true);
            assert!(
                shared.contains("cluster.secret") && !shared.contains("token.file"),
                "{shared}"
            );
        }
    }

    #[test]
    fn a_start_without_a_token_is_reported() {
        let mut w = Watch::default();
        let missing = Down::Unusable(Unusable::Missing);
        assert_eq!(w.observe(Some(missing)), Some(Change::Down(missing)));
    }
}
