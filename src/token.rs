//! Owns "the current token": where it comes from, the lock-free cell requests read it from, and the background
//! refresher that keeps it fresh. Everyone outside this module reads; only the refresher writes.

pub(crate) mod cell;
pub mod jwt;
pub(crate) mod refresh;
pub(crate) mod refresher;
pub(crate) mod schedule;
pub mod secret;
pub(crate) mod source;
pub(crate) mod state_file;
pub(crate) mod store;

use std::time::SystemTime;

pub(crate) use cell::{Current, Stamp, TokenCell, Unusable};
pub(crate) use refresher::{RefreshHandle, Refresher, Settings, Trigger};
pub(crate) use secret::Token;

use crate::config::TokenConfig;
use cell::Source;
use source::{Candidate, EnvToken, EnvTokenError};

/// The token's state as `/status` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenState {
    Valid,
    Refreshing,
    Revoked,
    Missing,
    Expired,
}

impl TokenState {
    /// The contract's spelling.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            TokenState::Valid => "valid",
            TokenState::Refreshing => "refreshing",
            TokenState::Revoked => "revoked",
            TokenState::Missing => "missing",
            TokenState::Expired => "expired",
        }
    }
}

/// Everything `/status`, `/readyz` and the gauges say about the token, taken at one instant. No secret in it.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) state: TokenState,
    /// Why it is not usable, when it is not.
    pub(crate) unusable: Option<Unusable>,
    pub(crate) fingerprint: Option<String>,
    pub(crate) source: Option<&'static str>,
    pub(crate) obtained_at: Option<SystemTime>,
    pub(crate) last_refresh_at: Option<SystemTime>,
    pub(crate) next_refresh_at: Option<SystemTime>,
    pub(crate) revoke_deadline: Option<SystemTime>,
    pub(crate) expires_at: Option<SystemTime>,
    pub(crate) session_expires_at: Option<SystemTime>,
    pub(crate) consecutive_failures: u32,
    pub(crate) last_error: Option<String>,
    /// The chain's generation this process knows, and when it last received it from the store (cluster mode).
    pub(crate) chain_generation: u64,
    pub(crate) last_sync_at: Option<SystemTime>,
}

/// Take a snapshot of the cell now.
pub(crate) fn snapshot(cell: &TokenCell) -> Snapshot {
    let now = Stamp::now();
    let status = cell.status();
    let current = cell.load();
    let unusable = match &current {
        Some(c) => c.check(&now).err(),
        None => Some(Unusable::Missing),
    };
    let state = match (&current, unusable) {
        (None, _) if status.revoked => TokenState::Revoked,
        (None, _) => TokenState::Missing,
        (Some(_), Some(_)) => TokenState::Expired,
        (Some(_), None) if status.refreshing => TokenState::Refreshing,
        (Some(_), None) => TokenState::Valid,
    };
    Snapshot {
        state,
        unusable,
        fingerprint: current
            .as_ref()
            .map(|c| c.token().fingerprint())
            .or_else(|| status.last_fingerprint.clone()),
        source: current.as_ref().map(|c| c.source.as_str()),
        obtained_at: current.as_ref().map(|c| c.obtained.wall),
        last_refresh_at: status.last_refresh_at,
        next_refresh_at: current.as_ref().and(status.next_refresh_at),
        revoke_deadline: current.as_ref().map(|c| c.revoke_deadline()),
        expires_at: current.as_ref().and_then(|c| c.expires_at),
        session_expires_at: current.as_ref().map(|c| c.session_expires_at),
        consecutive_failures: status.consecutive_failures,
        last_error: status.last_error.clone(),
        chain_generation: status.chain_generation,
        last_sync_at: status.last_sync_at,
    }
}

/// Find the token to start with: the newest usable one among the state file and the configured source
/// (the token file if it holds a usable token, else the environment). Refusals are logged with a reason.
pub(crate) fn initial_candidate(cfg: &TokenConfig) -> Option<Candidate> {
    let now = SystemTime::now();
    let mut found = Vec::new();
    let usable = |token: Token, what: &str| match source::check(&token, now) {
        Ok(claims) => Some((token, claims)),
        Err(e) => {
            tracing::warn!(event = "token_refused", fingerprint = %token.fingerprint(), error = %e, "refusing the token from {what}");
            None
        }
    };
    let configured = cfg.file.as_ref().and_then(|path| match source::read_file(path) {
        Ok(Some((token, modified))) => usable(token, "token.file").map(|(token, claims)| Candidate {
            source: Source::File,
            claims,
            modified: Some(modified),
            confirmed_at: None,
            session_started_at: None,
            origin: Some(token.fingerprint()),
            token,
        }),
        Ok(None) => {
            tracing::warn!(
                event = "token_missing",
                "token.file {} does not exist (yet)",
                path.display()
            );
            None
        }
        Err(e) => {
            tracing::warn!(event = "token_refused", error = %e, "cannot use token.file");
            None
        }
    });
    let configured = configured.or_else(|| {
        let env = EnvToken::parse(cfg.env.as_ref()?);
        let token = match &env.value {
            Ok(token) => token.clone(),
            Err(EnvTokenError::NotSet) => {
                tracing::warn!(event = "token_missing", "token.env {} is not set", env.name);
                return None;
            }
            Err(e @ EnvTokenError::Refused(_)) => {
                tracing::warn!(event = "token_refused", error = %e, "cannot use the token in token.env {}", env.name);
                return None;
            }
        };
        usable(token, "token.env").map(|(token, claims)| Candidate {
            source: Source::Env,
            claims,
            modified: None,
            confirmed_at: None,
            session_started_at: None,
            origin: Some(token.fingerprint()),
            token,
        })
    });
    found.extend(configured);
    if let Some(path) = &cfg.state_file {
        match state_file::read(path) {
            Ok(Some(p)) => {
                if let Some((token, claims)) = usable(p.token, "token.state_file") {
                    found.push(Candidate {
                        token,
                        source: Source::StateFile,
                        claims,
                        modified: Some(p.confirmed_at),
                        confirmed_at: Some(p.confirmed_at),
                        session_started_at: p.session_started_at,
                        origin: p.origin,
                    });
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(event = "token_refused", error = %e, "cannot use token.state_file"),
        }
    }
    source::choose(found)
}
