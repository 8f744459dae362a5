//! The token cell: one lock-free `ArcSwapOption<Current>` read on every request, written only by the refresher.
//!
//! `Current` carries everything derived from a token once (the `Authorization` value, claims, deadlines), so the
//! hot path does one atomic load and two clock reads.

// A panic aborts the process (`panic = "abort"`): nothing on the request path may unwrap or expect.
#![deny(clippy::expect_used, clippy::unwrap_used)]

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use tokio::time::Instant;

use super::{jwt::Claims, secret::Token};

/// Where a token came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    File,
    Env,
    StateFile,
    Refresh,
    /// The administrator's Secret (cluster mode).
    Secret,
    /// The chain's state Secret, written by the leader (cluster mode).
    StateSecret,
}

impl Source {
    /// Lower-case name for `/status` and logs.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::File => "file",
            Source::Env => "env",
            Source::StateFile => "state_file",
            Source::Refresh => "refresh",
            Source::Secret => "secret",
            Source::StateSecret => "state_secret",
        }
    }
}

/// A monotonic instant paired with the wall-clock time it was taken at. Deadlines are checked on both clocks,
/// so neither a suspended machine (monotonic time stops) nor a wall-clock jump makes a stale token look fresh.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Stamp {
    pub(crate) mono: Instant,
    pub(crate) wall: SystemTime,
}

impl Stamp {
    /// Now, on both clocks.
    pub(crate) fn now() -> Self {
        Self {
            mono: Instant::now(),
            wall: SystemTime::now(),
        }
    }

    /// Time elapsed since this stamp: the larger of the two clocks' readings.
    pub(crate) fn elapsed(&self, now: &Stamp) -> Duration {
        let mono = now.mono.saturating_duration_since(self.mono);
        let wall = now.wall.duration_since(self.wall).unwrap_or_default();
        mono.max(wall)
    }
}

/// One adopted token and what was derived from it.
#[derive(Debug)]
pub(crate) struct Current {
    token: Token,
    /// Increases with every adoption; tells whether the token changed since a request took it.
    pub(crate) generation: u64,
    pub(crate) claims: Claims,
    /// Expiry from the refresh response (`expires_in`/`expires_at`) when the token itself has no `exp`.
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) source: Source,
    /// When this token was adopted.
    pub(crate) obtained: Stamp,
    /// When the upstream last confirmed it (a refresh that kept it), or `obtained`.
    pub(crate) confirmed: Stamp,
    /// `upstream.revoke_after`, to derive the deadline.
    pub(crate) revoke_after: Duration,
    /// When the administrator-issued session ends.
    pub(crate) session_expires_at: SystemTime,
    /// Fingerprint of the file or environment token the refreshes started from (this token itself, if it came
    /// from there); persisted with it, so a restart can tell a token an operator supplied since from the
    /// original that was already refreshed.
    pub(crate) origin: Option<String>,
}

/// Why the current token may not be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unusable {
    Missing,
    Expired,
    DeadlinePassed,
}

impl Unusable {
    /// Reason text for errors and `/readyz`.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Unusable::Missing => "no token loaded (missing or revoked)",
            Unusable::Expired => "the token's exp has passed",
            Unusable::DeadlinePassed => "the token was not refreshed before its revoke deadline",
        }
    }
}

/// What a token is adopted with; [`Current::new`] derives the rest.
#[derive(Debug)]
pub(crate) struct Adoption {
    pub(crate) token: Token,
    pub(crate) generation: u64,
    pub(crate) source: Source,
    pub(crate) claims: Claims,
    /// Expiry stated by the refresh response (used when the token has no `exp`).
    pub(crate) expires_at: Option<SystemTime>,
    /// When the upstream last confirmed the token.
    pub(crate) confirmed: Stamp,
    pub(crate) revoke_after: Duration,
    pub(crate) session_expires_at: SystemTime,
    pub(crate) origin: Option<String>,
}

// === impl Current ===

impl Current {
    /// Derive everything once.
    pub(crate) fn new(a: Adoption) -> Self {
        let Adoption {
            token,
            generation,
            source,
            claims,
            expires_at,
            confirmed,
            revoke_after,
            session_expires_at,
            origin,
        } = a;
        let now = Stamp::now();
        Self {
            token,
            generation,
            claims,
            expires_at: claims.exp.or(expires_at),
            source,
            obtained: now,
            confirmed,
            revoke_after,
            session_expires_at,
            origin,
        }
    }

    /// The token (for the refresh call, the state file and scrubbing).
    pub(crate) fn token(&self) -> &Token {
        &self.token
    }

    /// `Bearer <token>`, sensitive, built once (with the [`Token`]).
    pub(crate) fn header(&self) -> &HeaderValue {
        self.token.bearer_header()
    }

    /// The revoke deadline on the wall clock.
    pub(crate) fn revoke_deadline(&self) -> SystemTime {
        self.confirmed.wall + self.revoke_after
    }

    /// Whether this token may be sent now.
    pub(crate) fn check(&self, now: &Stamp) -> Result<(), Unusable> {
        if self.expires_at.is_some_and(|exp| now.wall >= exp) {
            return Err(Unusable::Expired);
        }
        if self.confirmed.elapsed(now) >= self.revoke_after {
            return Err(Unusable::DeadlinePassed);
        }
        Ok(())
    }
}

/// What the refresher reports about itself, for `/status` and readiness.
#[derive(Debug, Clone, Default)]
pub(crate) struct RefreshStatus {
    pub(crate) revoked: bool,
    pub(crate) refreshing: bool,
    pub(crate) last_refresh_at: Option<SystemTime>,
    pub(crate) next_refresh_at: Option<SystemTime>,
    pub(crate) consecutive_failures: u32,
    pub(crate) last_error: Option<String>,
    /// Fingerprint of the last token, kept after it was revoked.
    pub(crate) last_fingerprint: Option<String>,
    /// The store's generation of the current token (cluster mode's `state` generation).
    pub(crate) chain_generation: u64,
    /// When this process last received the chain from the store (cluster mode).
    pub(crate) last_sync_at: Option<SystemTime>,
    /// A link the store has not taken yet (it did not answer): written before this process competes to lead.
    pub(crate) unsaved: bool,
}

/// The cell. Readers call [`TokenCell::load`]; only the refresher stores.
#[derive(Debug, Default)]
pub(crate) struct TokenCell {
    current: ArcSwapOption<Current>,
    status: ArcSwap<RefreshStatus>,
    generation: AtomicU64,
}

// === impl TokenCell ===

impl TokenCell {
    /// A new, empty cell.
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The current token, if any (one atomic load and a reference count).
    pub(crate) fn load(&self) -> Option<Arc<Current>> {
        self.current.load_full()
    }

    /// The current token if it may be sent now.
    pub(crate) fn usable(&self, now: &Stamp) -> Result<Arc<Current>, Unusable> {
        let current = self.current.load_full().ok_or(Unusable::Missing)?;
        current.check(now)?;
        Ok(current)
    }

    /// The refresher's status.
    pub(crate) fn status(&self) -> Arc<RefreshStatus> {
        self.status.load_full()
    }

    pub(super) fn next_generation(&self) -> u64 {
        self.generation.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(super) fn store(&self, current: Option<Arc<Current>>) {
        self.current.store(current);
    }

    pub(super) fn update_status(&self, f: impl FnOnce(&mut RefreshStatus)) {
        let mut next = (*self.status.load_full()).clone();
        f(&mut next);
        self.status.store(Arc::new(next));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(confirmed: Stamp, exp: Option<SystemTime>) -> Current {
        Current::new(Adoption {
            token: Token::parse("t").unwrap(),
            generation: 1,
            source: Source::Env,
            claims: Claims {
                exp,
                ..Claims::default()
            },
            expires_at: None,
            origin: None,
            confirmed,
            revoke_after: Duration::from_secs(900),
            session_expires_at: SystemTime::now() + Duration::from_secs(3600),
        })
    }

    #[test]
    fn deadlines_hold_on_both_clocks() {
        let now = Stamp::now();
        assert_eq!(current(now, None).check(&now), Ok(()));
        // A suspended machine: the monotonic clock stood still, the wall clock moved on 20 minutes.
        let woke = Stamp {
            mono: now.mono,
            wall: now.wall + Duration::from_secs(1200),
        };
        assert_eq!(current(now, None).check(&woke), Err(Unusable::DeadlinePassed));
        // The wall clock jumped back an hour: the monotonic clock still counts.
        let later = Stamp {
            mono: now.mono + Duration::from_secs(1200),
            wall: now.wall - Duration::from_secs(3600),
        };
        assert_eq!(current(now, None).check(&later), Err(Unusable::DeadlinePassed));
        assert_eq!(now.elapsed(&later), Duration::from_secs(1200));
        // A JWT past its exp is never sent.
        let exp = now.wall + Duration::from_secs(10);
        let after_exp = Stamp {
            mono: now.mono,
            wall: exp,
        };
        assert_eq!(current(now, Some(exp)).check(&after_exp), Err(Unusable::Expired));
    }

    #[test]
    fn the_cell_hands_out_usable_tokens_only() {
        let cell = TokenCell::new();
        let now = Stamp::now();
        assert_eq!(cell.usable(&now).unwrap_err(), Unusable::Missing);
        cell.store(Some(Arc::new(current(now, None))));
        assert_eq!(cell.usable(&now).unwrap().header(), "Bearer t");
        assert!(cell.usable(&now).unwrap().header().is_sensitive());
    }
}
