//! How the refresher takes in a token: at start, from a refresh, from a changed token file; the state file
//! written before the cell; and the warnings it logs about a token (clock skew, session ending).

use std::{sync::Arc, time::Duration, time::SystemTime};

use tokio::time::Instant;

use super::{Offer, Refresher, Trigger};
use crate::{
    clock::rfc3339,
    token::{
        cell::{Adoption, Current, Source, Stamp},
        refresh::{RefreshClient, RefreshError},
        schedule,
        secret::{fingerprint, Token, TokenError},
        source,
        state_file::Persisted,
        store::SaveError,
    },
};

// === impl Refresher (adoption) ===

impl<C: RefreshClient> Refresher<C> {
    /// Adopt the token a start-up source gave (see [`source::choose`]).
    pub(crate) fn adopt_initial(&mut self, c: source::Candidate) {
        let now = Stamp::now();
        let confirmed = c.confirmed_at.map_or(now, |wall| stamp_at(&now, wall));
        let session_start = c
            .session_started_at
            .or(c.claims.auth_time)
            .or(c.claims.iat)
            .unwrap_or(now.wall);
        self.warn_if_skewed(&c.token, &c.claims);
        let generation = self.cell.next_generation();
        let current = Current::new(Adoption {
            token: c.token,
            generation,
            source: c.source,
            claims: c.claims,
            expires_at: None,
            confirmed,
            revoke_after: self.settings.revoke_after,
            session_expires_at: session_start + self.settings.session_ttl,
            origin: c.origin,
        });
        tracing::info!(
            event = "token_adopted",
            source = c.source.as_str(),
            fingerprint = %current.token().fingerprint(),
            revoke_deadline = %rfc3339(current.revoke_deadline()),
            "adopted the initial token"
        );
        self.cell.store(Some(Arc::new(current)));
        // Its last refresh time is unknown (a Secret, an environment variable): refresh at once.
        self.retry_at = Some(Instant::now());
        self.unconfirmed = Some(Trigger::Startup);
        self.publish_schedule();
    }

    /// A new token from the upstream: check it, persist it, then put it in the cell. When the store holds a
    /// newer link (another writer came first), that one is adopted instead and ours abandoned.
    pub(super) async fn adopt_refreshed(
        &mut self,
        old: &Current,
        token: Token,
        expires_at: Option<SystemTime>,
    ) -> Result<Arc<Current>, RefreshError> {
        let now = SystemTime::now();
        let claims = source::check(&token, now).map_err(RefreshError::BadToken)?;
        self.warn_if_skewed(&token, &claims);
        let expires_at = stated_expiry(expires_at, now, &token);
        let session_expires_at = claims
            .auth_time
            .map_or(old.session_expires_at, |t| t + self.settings.session_ttl);
        let current = Current::new(Adoption {
            token,
            generation: self.cell.next_generation(),
            source: Source::Refresh,
            claims,
            expires_at,
            confirmed: Stamp::now(),
            revoke_after: self.settings.revoke_after,
            session_expires_at,
            origin: old.origin.clone(),
        });
        self.put(current).await
    }

    /// The same token, confirmed now (and persisted, so a restart knows it was confirmed). A stated expiry that
    /// has passed is dropped: the upstream has just accepted the token.
    pub(super) async fn confirm(&mut self, old: &Current) -> Result<Arc<Current>, RefreshError> {
        let now = Stamp::now();
        let mut current = Current::new(Adoption {
            token: old.token().clone(),
            generation: old.generation,
            source: old.source,
            claims: old.claims,
            expires_at: old.expires_at.filter(|exp| *exp > now.wall),
            confirmed: now,
            revoke_after: self.settings.revoke_after,
            session_expires_at: old.session_expires_at,
            origin: old.origin.clone(),
        });
        current.obtained = old.obtained;
        self.put(current).await
    }

    /// Persist `current`, then put it in the cell; on a conflict, adopt what the store holds instead.
    pub(super) async fn put(&mut self, current: Current) -> Result<Arc<Current>, RefreshError> {
        match self.persist(&current).await {
            Ok(()) => {
                let current = Arc::new(current);
                self.cell.store(Some(current.clone()));
                Ok(current)
            }
            Err(newer) => self.adopt_conflicting(newer),
        }
    }

    /// Persist durably before the token goes into the cell, as the next link of the chain. A store that did not
    /// answer is logged and kept for `/status` (`last_error`), and the write retried: the token is used anyway.
    /// `Err` carries what the store holds when another writer came first.
    pub(super) async fn persist(&mut self, current: &Current) -> Result<(), Option<Persisted>> {
        let link = self.next_link(current);
        match self.store.save(&link).await {
            Ok(()) => {
                self.persist_error = None;
                self.set_unsaved(None);
                self.set_chain_generation(link.generation);
                Ok(())
            }
            Err(SaveError::Conflict(newer)) => Err(newer),
            Err(SaveError::Failed(e)) => {
                let key = self.store.key();
                tracing::error!(event = "state_write_error", key, error = %e, "cannot persist the token to {key}; using it anyway and retrying the write");
                self.persist_error = Some(e);
                self.metrics.state_file_error();
                self.set_chain_generation(link.generation);
                self.set_unsaved(Some(link));
                Ok(())
            }
        }
    }

    /// `current` as the chain's next link.
    pub(super) fn next_link(&self, current: &Current) -> Persisted {
        Persisted {
            token: current.token().clone(),
            confirmed_at: current.confirmed.wall,
            session_started_at: current.session_expires_at.checked_sub(self.settings.session_ttl),
            origin: current.origin.clone(),
            generation: self.chain_generation + 1,
        }
    }

    /// A usable token again after failures or a refusal: the failure count, back-off and warnings start over,
    /// and `last_error` shows only what still stands; `also` adds to the status update.
    pub(super) fn usable_again(&mut self, also: impl FnOnce(&mut crate::token::cell::RefreshStatus)) {
        self.failures = 0;
        self.retry_at = None;
        self.unconfirmed = None;
        let standing = self.standing_error();
        self.cell.update_status(|s| {
            s.revoked = false;
            s.consecutive_failures = 0;
            s.last_error = standing;
            also(s);
        });
        self.publish_schedule();
    }

    /// Adopt a changed token file, after checking it; a refused file leaves the current token in place.
    pub(super) async fn poll_file(&mut self) {
        let Some(watch) = self.file.as_mut() else { return };
        let Some(read) = watch.poll().await else { return };
        let path = watch.path().display().to_string();
        let old = self.cell.load();
        let old_fp = old.as_ref().map(|c| c.token().fingerprint());
        let checked = read.and_then(|t| source::check(&t, SystemTime::now()).map(|claims| (t, claims)));
        let (token, claims) = match checked {
            Ok(ok) => ok,
            Err(e) => {
                let refused_fp = std::fs::read_to_string(watch.path())
                    .map(|t| fingerprint(t.trim()))
                    .ok();
                self.log_file_refused(&path, &e, refused_fp, old_fp);
                return;
            }
        };
        // The same token, or the one the current token was refreshed from (a token file that appears after
        // start with the original Secret, while the state file's refreshed token is in use): nothing new.
        let fp = token.fingerprint();
        if old
            .as_ref()
            .is_some_and(|c| c.token() == &token || c.origin.as_deref() == Some(fp.as_str()))
        {
            // A usable file again (a refused one put right): whatever was said about the file no longer holds.
            if self.file_refused.take().is_some() {
                let standing = self.standing_error();
                self.cell.update_status(|s| s.last_error = standing);
            }
            return;
        }
        self.warn_if_skewed(&token, &claims);
        self.offer(Offer {
            token,
            claims,
            from: format!("token.file {path}"),
            trigger: Trigger::File,
            retry_at: Instant::now(),
            failures: 0,
        })
        .await;
    }

    pub(super) fn log_file_refused(
        &mut self,
        path: &str,
        e: &TokenError,
        refused: Option<String>,
        current: Option<String>,
    ) {
        tracing::warn!(
            event = "token_file_refused",
            error = %e,
            refused_fingerprint = refused,
            current_fingerprint = current,
            "the token file {path} holds a token that cannot be used; keeping the current token"
        );
        // Also in /status, where an operator checking a rotation looks first; it stays there until the file
        // holds a usable token again (a refresh failure shows instead while there is one).
        let outcome = if self.cell.load().is_some() {
            "the current token stays"
        } else {
            "there is still no usable token"
        };
        let reason = format!("token.file {path} was refused ({e}); {outcome}");
        self.file_refused = Some(reason.clone());
        self.cell.update_status(|s| s.last_error = Some(reason));
    }

    /// The `last_error` that stands while refreshes succeed: a failed state-file write, else a refused token file.
    pub(super) fn standing_error(&self) -> Option<String> {
        self.persist_error.clone().or_else(|| self.file_refused.clone())
    }

    pub(super) fn warn_if_skewed(&self, token: &Token, claims: &crate::token::jwt::Claims) {
        if let Some(iat) = claims.iat {
            if let Ok(ahead) = iat.duration_since(SystemTime::now()) {
                if ahead > Duration::from_secs(60) {
                    tracing::warn!(
                        event = "clock_skew",
                        fingerprint = %token.fingerprint(),
                        ahead_secs = ahead.as_secs(),
                        "the token's iat lies in the future: this machine's clock may be behind"
                    );
                }
            }
        }
    }

    pub(super) fn warn_session(&mut self) {
        let Some(current) = self.cell.load() else { return };
        let remaining = current
            .session_expires_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        if let Some(index) = schedule::session_warning_due(remaining, self.warnings_logged) {
            self.warnings_logged = index + 1;
            tracing::warn!(
                event = "session_ending",
                remaining_secs = remaining.as_secs(),
                session_expires_at = %rfc3339(current.session_expires_at),
                "the token session ends soon: an administrator must issue a new token"
            );
        }
    }
}

/// The expiry a refresh response stated, if it lies in the future. One already past (`"expires_in": 0`, which
/// some servers send for "no expiry", or a skewed clock) would make a token just issued unusable at once and
/// due for refresh in a loop; it is ignored, with a warning.
fn stated_expiry(stated: Option<SystemTime>, now: SystemTime, token: &Token) -> Option<SystemTime> {
    let exp = stated?;
    if exp > now {
        return Some(exp);
    }
    tracing::warn!(
        event = "expiry_ignored",
        fingerprint = %token.fingerprint(),
        expires_at = %rfc3339(exp),
        "the refresh response states an expiry that has already passed; ignoring it"
    );
    None
}

/// The monotonic instant matching a wall-clock time in the past (now minus its age).
fn stamp_at(now: &Stamp, wall: SystemTime) -> Stamp {
    let age = now.wall.duration_since(wall).unwrap_or_default();
    Stamp {
        mono: now.mono.checked_sub(age).unwrap_or(now.mono),
        wall,
    }
}
