//! How the refresher keeps one chain with others: the checked hand-over of a new administrator token (a token
//! file in mode `off`, the administrator's Secret in cluster mode), what the store reports (a follower adopts
//! each link the leader writes), re-reads on demand, and writes the store did not take.

use std::{sync::Arc, time::SystemTime};

use tokio::time::Instant;

use super::{Offer, Outcome, Refresher, Trigger};
use crate::{
    clock::rfc3339,
    token::{
        cell::{Adoption, Current, Source, Stamp},
        refresh::{RefreshClient, RefreshError, Refreshed},
        schedule, source,
        state_file::Persisted,
        store::ChainEvent,
    },
};

/// How long a replica waiting for a newer link pauses before it reads a store that could not be read again.
const UNREADABLE_RETRY: std::time::Duration = std::time::Duration::from_secs(2);

// === impl Refresher (chain) ===

impl<C: RefreshClient> Refresher<C> {
    /// A new administrator token, checked locally. While the current token is usable it replaces it only once a
    /// refresh made with it succeeds (an operator's typo must never cost a working chain); with no usable token
    /// it is used at once. A follower keeps it for when it leads.
    pub(super) async fn offer(&mut self, offer: Offer) {
        let now = Stamp::now();
        let current = self.cell.load();
        let fp = offer.token.fingerprint();
        if current
            .as_ref()
            .is_some_and(|c| c.token() == &offer.token || c.origin.as_deref() == Some(fp.as_str()))
        {
            self.offered = None;
            return;
        }
        if !self.authority.may_refresh() {
            self.offered = Some(offer);
            return;
        }
        let usable = current.as_ref().is_some_and(|c| c.check(&now).is_ok());
        if usable {
            self.check_offer(offer).await;
        } else {
            self.adopt_offer_at_once(offer);
        }
    }

    /// No usable token: the offered one is used at once, and confirmed by a refresh due now.
    fn adopt_offer_at_once(&mut self, offer: Offer) {
        let now = Stamp::now();
        let session_start = offer.claims.auth_time.or(offer.claims.iat).unwrap_or(now.wall);
        let source = if offer.trigger == Trigger::File {
            Source::File
        } else {
            Source::Secret
        };
        let fp = offer.token.fingerprint();
        let current = Arc::new(Current::new(Adoption {
            token: offer.token,
            generation: self.cell.next_generation(),
            source,
            claims: offer.claims,
            expires_at: None,
            confirmed: now,
            revoke_after: self.settings.revoke_after,
            session_expires_at: session_start + self.settings.session_ttl,
            origin: Some(fp.clone()),
        }));
        self.cell.store(Some(current.clone()));
        self.offered = None;
        self.failures = 0;
        self.retry_at = Some(Instant::now());
        self.unconfirmed = Some(offer.trigger);
        self.warnings_logged = 0;
        self.file_refused = None;
        let standing = self.standing_error();
        self.cell.update_status(|s| {
            s.revoked = false;
            s.consecutive_failures = 0;
            s.last_error = standing;
        });
        self.publish_schedule();
        tracing::info!(
            event = "token_adopted",
            source = source.as_str(),
            fingerprint = %fp,
            revoke_deadline = %rfc3339(current.revoke_deadline()),
            "adopted a new token from {} at once: there was no usable token", offer.from
        );
    }

    /// Ask the upstream about the offered token: a refresh made with it. Accepted: its successor (or itself, if
    /// the upstream kept it) becomes the chain's next link. Refused: the current token stays. A transient
    /// failure: asked again later, the current token in use meanwhile.
    async fn check_offer(&mut self, mut offer: Offer) {
        let fp = offer.token.fingerprint();
        let answer = self.client.refresh(&offer.token).await;
        let now = Stamp::now();
        let session_start = offer.claims.auth_time.or(offer.claims.iat).unwrap_or(now.wall);
        let adoption = |token, source, claims, expires_at| Adoption {
            token,
            generation: self.cell.next_generation(),
            source,
            claims,
            expires_at,
            confirmed: now,
            revoke_after: self.settings.revoke_after,
            session_expires_at: session_start + self.settings.session_ttl,
            origin: Some(fp.clone()),
        };
        let accepted = match answer {
            Ok(Refreshed::New { token, expires_at }) => match source::check(&token, now.wall) {
                Ok(claims) => Ok(adoption(token, Source::Refresh, claims, expires_at)),
                Err(e) => Err(RefreshError::BadToken(e)),
            },
            Ok(Refreshed::Kept) => {
                let source = if offer.trigger == Trigger::File {
                    Source::File
                } else {
                    Source::Secret
                };
                Ok(adoption(offer.token.clone(), source, offer.claims, None))
            }
            Err(e) => Err(e),
        };
        match accepted {
            Ok(adoption) => {
                self.offered = None;
                let Ok(current) = self.put(Current::new(adoption)).await else {
                    return;
                };
                self.warnings_logged = 0;
                self.file_refused = None;
                self.usable_again(|s| s.last_refresh_at = Some(SystemTime::now()));
                self.metrics.token_refresh(if offer.trigger == Trigger::File {
                    "file"
                } else {
                    "success"
                });
                tracing::info!(
                    event = "token_handover",
                    trigger = offer.trigger.as_str(),
                    outcome = "ok",
                    offered_fingerprint = %fp,
                    new_fingerprint = %current.token().fingerprint(),
                    revoke_deadline = %rfc3339(current.revoke_deadline()),
                    "the upstream accepted the new token from {}: the chain continues from it", offer.from
                );
            }
            Err(RefreshError::Transient(e)) => {
                offer.failures += 1;
                let delay = schedule::retry_delay(offer.failures, (self.jitter)(), self.settings.revoke_after);
                offer.retry_at = Instant::now() + delay;
                tracing::warn!(
                    event = "token_handover",
                    trigger = offer.trigger.as_str(),
                    outcome = "transient_error",
                    error = %e,
                    offered_fingerprint = %fp,
                    retry_in_ms = delay.as_millis() as u64,
                    "could not check the new token from {} with the upstream; the current token stays in use", offer.from
                );
                self.offered = Some(offer);
            }
            Err(e) => {
                self.offered = None;
                self.metrics.token_handover_refused();
                let current = self.cell.load().map(|c| c.token().fingerprint());
                let reason = match &e {
                    RefreshError::Revoked(code) => format!("the upstream refused it ({code})"),
                    other => other.to_string(),
                };
                tracing::warn!(
                    event = "token_handover_refused",
                    trigger = offer.trigger.as_str(),
                    error = %reason,
                    refused_fingerprint = %fp,
                    current_fingerprint = current,
                    "the new token from {} was refused; keeping the current token and its chain", offer.from
                );
                let text = format!("{} was refused ({reason}); the current token stays", offer.from);
                self.file_refused = Some(text.clone());
                self.cell.update_status(|s| s.last_error = Some(text));
            }
        }
    }

    /// An offer whose check failed transiently, asked again when due (and only by who may refresh).
    pub(super) async fn retry_offer(&mut self) {
        let due = self.offered.as_ref().is_some_and(|o| o.retry_at <= Instant::now()) && self.authority.may_refresh();
        if let Some(offer) = self.offered.take_if(|_| due) {
            self.offer(offer).await;
        }
    }

    /// A link the store did not take, written again; a newer link in the store meanwhile wins instead.
    pub(super) async fn retry_unsaved(&mut self) {
        let Some(link) = self.unsaved.clone() else { return };
        match self.store.save(&link).await {
            Ok(()) => {
                tracing::info!(
                    event = "state_written",
                    key = self.store.key(),
                    generation = link.generation,
                    "wrote the token kept while the store did not answer"
                );
                self.set_unsaved(None);
                self.persist_error = None;
                let standing = self.standing_error();
                self.cell.update_status(|s| s.last_error = standing);
            }
            Err(crate::token::store::SaveError::Conflict(newer)) => {
                self.set_unsaved(None);
                let _ = self.adopt_conflicting(newer);
            }
            Err(crate::token::store::SaveError::Failed(_)) => {}
        }
    }

    /// What the store or the administrator's Secret reports.
    pub(super) async fn on_event(&mut self, event: ChainEvent) {
        match event {
            ChainEvent::Stored(Some(link)) => self.take_stored(link),
            ChainEvent::Stored(None) => self.write_back(),
            ChainEvent::Offered(Ok(token)) => {
                let claims = match source::check(&token, SystemTime::now()) {
                    Ok(claims) => claims,
                    Err(e) => return self.refuse_offered(&token.fingerprint(), &e.to_string()),
                };
                self.offer(Offer {
                    token,
                    claims,
                    from: "the administrator's Secret".into(),
                    trigger: Trigger::Secret,
                    retry_at: Instant::now(),
                    failures: 0,
                })
                .await;
            }
            ChainEvent::Offered(Err(e)) => self.refuse_offered("unknown", &e.to_string()),
        }
        self.cell.update_status(|s| s.last_sync_at = Some(SystemTime::now()));
    }

    fn refuse_offered(&mut self, fp: &str, reason: &str) {
        self.metrics.token_handover_refused();
        tracing::warn!(event = "token_handover_refused", trigger = "secret", error = %reason, refused_fingerprint = %fp, "the administrator's Secret holds a token that cannot be used; keeping the current token");
        let text = format!("the administrator's Secret was refused ({reason}); the current token stays");
        self.file_refused = Some(text.clone());
        self.cell.update_status(|s| s.last_error = Some(text));
    }

    /// A link the store holds: adopted when it is newer than what this process knows.
    fn take_stored(&mut self, link: Persisted) {
        if let Some(unsaved) = &self.unsaved {
            if link.generation < unsaved.generation {
                // Ours is newer and not yet written: the next retry writes it over this one.
                return;
            }
            self.set_unsaved(None);
        }
        if link.generation <= self.chain_generation {
            return;
        }
        self.adopt_stored(link);
    }

    /// The store lost its link (a secret store rewrote the Secret, a person emptied it): whoever may refresh
    /// writes the current one back with a higher generation, never restarting the count.
    fn write_back(&mut self) {
        if !self.authority.may_refresh() {
            return;
        }
        if let Some(current) = self.cell.load() {
            let link = self.next_link(&current);
            tracing::warn!(
                event = "state_restored",
                key = self.store.key(),
                generation = link.generation,
                "the store holds no chain: writing the current token back"
            );
            self.set_unsaved(Some(link));
        }
    }

    /// Use `link`'s token now.
    fn adopt_stored(&mut self, link: Persisted) -> Arc<Current> {
        let now = Stamp::now();
        let claims = source::check(&link.token, now.wall).unwrap_or_default();
        let age = now.wall.duration_since(link.confirmed_at).unwrap_or_default();
        let confirmed = Stamp {
            mono: now.mono.checked_sub(age).unwrap_or(now.mono),
            wall: link.confirmed_at,
        };
        let session_expires_at = link
            .session_started_at
            .or(claims.auth_time)
            .or(claims.iat)
            .unwrap_or(now.wall)
            + self.settings.session_ttl;
        let fp = link.token.fingerprint();
        let current = Arc::new(Current::new(Adoption {
            token: link.token,
            generation: self.cell.next_generation(),
            source: Source::StateSecret,
            claims,
            expires_at: None,
            confirmed,
            revoke_after: self.settings.revoke_after,
            session_expires_at,
            origin: link.origin,
        }));
        self.cell.store(Some(current.clone()));
        self.set_chain_generation(link.generation);
        self.usable_again(|s| s.last_sync_at = Some(SystemTime::now()));
        tracing::info!(
            event = "token_adopted",
            source = "state_secret",
            generation = link.generation,
            fingerprint = %fp,
            revoke_deadline = %rfc3339(current.revoke_deadline()),
            "adopted the chain's newest token"
        );
        current
    }

    /// After a write conflict: adopt what the store holds (never overwrite it).
    pub(super) fn adopt_conflicting(&mut self, newer: Option<Persisted>) -> Result<Arc<Current>, RefreshError> {
        tracing::warn!(
            event = "state_conflict",
            key = self.store.key(),
            "another writer updated the chain first: adopting its token"
        );
        match newer {
            Some(link) if link.generation > self.chain_generation => Ok(self.adopt_stored(link)),
            _ => Err(RefreshError::Transient(format!(
                "{} changed under this write and could not be re-read",
                self.store.key()
            ))),
        }
    }

    /// A newer link in the store than the current token, adopted; `None` when there is none.
    pub(super) async fn newer_stored(&mut self) -> Option<Arc<Current>> {
        let link = self.store.load().await.ok()??;
        (link.generation > self.chain_generation).then(|| self.adopt_stored(link))
    }

    /// A follower's refresh: re-read the store (at most once per `min_refresh_gap`) and adopt a newer link.
    pub(super) async fn resync(&mut self) -> Result<Outcome, RefreshError> {
        let recent = self
            .last_resync
            .is_some_and(|at| at.elapsed() < self.settings.min_refresh_gap);
        if !recent {
            self.last_resync = Some(Instant::now());
            match self.store.load().await {
                Ok(Some(link)) if link.generation > self.chain_generation => {
                    let current = self.adopt_stored(link);
                    return Ok(Outcome {
                        current,
                        refreshed: true,
                    });
                }
                Ok(_) => self.cell.update_status(|s| s.last_sync_at = Some(SystemTime::now())),
                Err(e) => {
                    return Err(RefreshError::Transient(format!(
                        "cannot read {}: {e}",
                        self.store.key()
                    )))
                }
            }
        }
        match self.cell.load() {
            Some(current) => Ok(Outcome {
                current,
                refreshed: false,
            }),
            None => Err(RefreshError::NoToken),
        }
    }

    /// A shared chain whose token the upstream refused: once [`Authority::handover_grace`] has passed with no
    /// newer link, the store is read once more, and with still nothing newer there the chain is revoked. While
    /// the store cannot be read the wait goes on (a last-resort refresher cut off from the API cannot know).
    ///
    /// [`Authority::handover_grace`]: crate::token::store::Authority::handover_grace
    pub(super) async fn settle_refusal(&mut self) {
        let Some(until) = self.awaiting_link_until else { return };
        if self.cell.load().is_some() {
            self.awaiting_link_until = None;
            return;
        }
        if Instant::now() < until {
            return;
        }
        match self.store.load().await {
            Ok(Some(link)) if link.generation > self.chain_generation => {
                self.awaiting_link_until = None;
                self.adopt_stored(link);
            }
            Ok(_) => {
                tracing::warn!(
                    event = "token_revoked",
                    key = self.store.key(),
                    generation = self.chain_generation,
                    "no newer link reached the store after the upstream refused the token: the chain is revoked"
                );
                self.revoke(format!(
                    "the upstream refused the token and {} holds no newer link: the chain is revoked",
                    self.store.key()
                ));
            }
            // Read again after a pause, not at every poll: each read may wait for the API's time-out.
            Err(_) => self.awaiting_link_until = Some(Instant::now() + UNREADABLE_RETRY),
        }
    }

    /// The link waiting for the store, if any; `/status` readers and the elector see whether there is one.
    pub(super) fn set_unsaved(&mut self, link: Option<Persisted>) {
        let pending = link.is_some();
        self.unsaved = link;
        if self.cell.status().unsaved != pending {
            self.cell.update_status(|s| s.unsaved = pending);
        }
    }

    pub(super) fn set_chain_generation(&mut self, generation: u64) {
        self.chain_generation = generation;
        self.cell.update_status(|s| s.chain_generation = generation);
    }
}
