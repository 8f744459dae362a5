//! The background refresher: the only writer of the token cell. It refreshes on schedule, on demand
//! ([`RefreshHandle`], single flight), adopts a changed token file, persists to the state file, backs off on
//! failures until the revoke deadline, and never dies on an error.

use std::{future::Future, path::PathBuf, sync::Arc, time::Duration, time::SystemTime};

use tokio::{
    sync::{mpsc, oneshot},
    time::Instant,
};

use super::{
    cell::{Current, Stamp, TokenCell, Unusable},
    refresh::{RefreshClient, RefreshError, Refreshed},
    schedule,
    source::FileWatch,
    store::{Authority, ChainEvent, ChainStore, Sole, StateFileStore},
};
use crate::{clock::rfc3339, metrics::Metrics};

/// What asked for a refresh (logged with every attempt).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trigger {
    Startup,
    Schedule,
    Upstream401,
    Admin,
    File,
    /// A new administrator token offered through the cluster's Secret.
    Secret,
    /// A last-resort refresh by a replica cut off from the Kubernetes API.
    LastResort,
}

impl Trigger {
    fn as_str(self) -> &'static str {
        match self {
            Trigger::Startup => "startup",
            Trigger::Schedule => "schedule",
            Trigger::Upstream401 => "401",
            Trigger::Admin => "admin",
            Trigger::File => "file",
            Trigger::Secret => "secret",
            Trigger::LastResort => "last_resort",
        }
    }
}

/// The answer to [`RefreshHandle::refresh_now`].
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    /// The token current after the refresh.
    pub(crate) current: Arc<Current>,
    /// Whether a refresh call succeeded for this request (false: the token had already changed, or it was
    /// confirmed less than `min_refresh_gap` ago).
    pub(crate) refreshed: bool,
}

struct Waiter {
    trigger: Trigger,
    /// The generation the caller's request used; a newer current token answers it without a call.
    seen: Option<u64>,
    reply: oneshot::Sender<Result<Outcome, RefreshError>>,
}

/// Asks the refresher for a refresh; joins one already in flight. Cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct RefreshHandle {
    tx: mpsc::Sender<Waiter>,
}

impl std::fmt::Debug for Waiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Waiter").field("trigger", &self.trigger).finish()
    }
}

impl RefreshHandle {
    /// Refresh now, or join the refresh in flight. `seen` is the generation of the token the caller used.
    pub(crate) async fn refresh_now(&self, trigger: Trigger, seen: Option<u64>) -> Result<Outcome, RefreshError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Waiter { trigger, seen, reply })
            .await
            .map_err(|_| RefreshError::Transient("the refresher has stopped".into()))?;
        rx.await
            .unwrap_or_else(|_| Err(RefreshError::Transient("the refresher has stopped".into())))
    }

    /// Ask for a refresh after an upstream 401 without waiting for it (the request is answered at once): no
    /// task, no wait. It joins a refresh in flight like any request, and is skipped like one within
    /// `min_refresh_gap` or when the token changed since `seen`. A full queue drops it: refreshes are pending.
    pub(crate) fn nudge(&self, seen: u64) {
        let (reply, _) = oneshot::channel();
        let _ = self.tx.try_send(Waiter {
            trigger: Trigger::Upstream401,
            seen: Some(seen),
            reply,
        });
    }
}

/// Timing and storage settings of the refresher.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) refresh_interval: Duration,
    pub(crate) revoke_after: Duration,
    pub(crate) refresh_before_expiry: Duration,
    pub(crate) session_ttl: Duration,
    pub(crate) min_refresh_gap: Duration,
    pub(crate) token_file: Option<PathBuf>,
    pub(crate) state_file: Option<PathBuf>,
}

/// The refresher task's state.
pub(crate) struct Refresher<C> {
    settings: Settings,
    cell: Arc<TokenCell>,
    client: C,
    rx: mpsc::Receiver<Waiter>,
    metrics: Arc<Metrics>,
    file: Option<FileWatch>,
    jitter: Box<dyn FnMut() -> f64 + Send + Sync>,
    failures: u32,
    retry_at: Option<Instant>,
    warnings_logged: usize,
    /// The current token's last refresh time is unknown (a start-up source, a changed token file): what to log
    /// as the trigger of the refresh that confirms it, due at once.
    unconfirmed: Option<Trigger>,
    /// Why the last state-file write failed, if it did (shown as `last_error`).
    persist_error: Option<String>,
    /// Why the token file's current content was refused, until a file token is adopted (shown as `last_error`
    /// while no refresh has failed since).
    file_refused: Option<String>,
    /// Whether requests can be served, as last logged.
    usability: usability::Watch,
    /// Where the chain is kept, and who may refresh it (see [`super::store`]).
    store: Box<dyn ChainStore>,
    authority: Box<dyn Authority>,
    /// What others wrote to the store, and administrator tokens offered (cluster mode).
    events: Option<mpsc::Receiver<ChainEvent>>,
    /// The store's generation of the current token (0: nothing written or adopted yet).
    chain_generation: u64,
    /// A link the store did not take (the API did not answer): retried until it does, or a newer one appears.
    unsaved: Option<super::state_file::Persisted>,
    /// A new administrator token waiting for its check by the upstream (the last try failed transiently).
    offered: Option<Offer>,
    /// When a follower last re-read the store on demand (at most once per `min_refresh_gap`).
    last_resync: Option<Instant>,
    /// How long the last refresh call took: a last-resort refresh must start this much earlier.
    last_latency: Duration,
    /// A shared chain whose token the upstream refused: until when a newer link may still arrive before the
    /// chain is treated as revoked ([`Authority::handover_grace`]).
    awaiting_link_until: Option<Instant>,
}

/// A new administrator token, checked locally, waiting for the upstream to accept it.
#[derive(Debug, Clone)]
pub(super) struct Offer {
    pub(super) token: super::Token,
    pub(super) claims: super::jwt::Claims,
    /// Where it came from, for messages (`token.file /path`, `cluster.secret name`).
    pub(super) from: String,
    pub(super) trigger: Trigger,
    /// When to try the check again after a transient failure.
    pub(super) retry_at: Instant,
    pub(super) failures: u32,
}

impl<C> std::fmt::Debug for Refresher<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher")
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

/// How many refresh requests may queue while one is in flight.
const QUEUE: usize = 1024;

// === impl Refresher ===

impl<C: RefreshClient> Refresher<C> {
    /// A refresher for `cell`, and the handle that asks it for refreshes.
    pub(crate) fn new(
        settings: Settings,
        cell: Arc<TokenCell>,
        client: C,
        metrics: Arc<Metrics>,
    ) -> (Self, RefreshHandle) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let file = settings.token_file.clone().map(FileWatch::new);
        let store = Box::new(StateFileStore {
            path: settings.state_file.clone(),
        });
        let me = Self {
            settings,
            cell,
            client,
            rx,
            metrics,
            file,
            jitter: Box::new(rand::random::<f64>),
            failures: 0,
            retry_at: None,
            warnings_logged: 0,
            unconfirmed: None,
            persist_error: None,
            file_refused: None,
            usability: usability::Watch::default(),
            store,
            authority: Box::new(Sole),
            events: None,
            chain_generation: 0,
            unsaved: None,
            offered: None,
            last_resync: None,
            last_latency: Duration::ZERO,
            awaiting_link_until: None,
        };
        (me, RefreshHandle { tx })
    }

    /// Keep the chain in `store`, refresh only while `authority` allows, and take in `events` (cluster mode).
    pub(crate) fn with_chain(
        mut self,
        store: Box<dyn ChainStore>,
        authority: Box<dyn Authority>,
        events: mpsc::Receiver<ChainEvent>,
    ) -> Self {
        self.store = store;
        self.authority = authority;
        self.events = Some(events);
        self
    }

    /// Replace the jitter source (tests make backoff deterministic).
    #[cfg(test)]
    pub(crate) fn with_jitter(mut self, jitter: impl FnMut() -> f64 + Send + Sync + 'static) -> Self {
        self.jitter = Box::new(jitter);
        self
    }

    /// Run until `shutdown` completes.
    pub(crate) async fn run(mut self, shutdown: impl Future<Output = ()>) {
        tokio::pin!(shutdown);
        if self.cell.load().is_none() {
            self.cell
                .update_status(|s| s.last_error = Some("no token loaded".into()));
        }
        // The file and session checks keep their own pace: refresh requests arriving meanwhile do not put them off.
        let mut next_poll = Instant::now();
        loop {
            let now = Instant::now();
            let wake = self.due_in(&Stamp::now()).map_or(next_poll, |d| next_poll.min(now + d));
            tokio::select! {
                biased;
                () = &mut shutdown => return,
                waiter = self.rx.recv() => match waiter {
                    Some(w) => {
                        let trigger = w.trigger;
                        if let Some(waiters) = self.answer_without_call(w) {
                            self.refresh(waiters, trigger).await;
                        }
                    }
                    None => return,
                },
                Some(event) = next_event(&mut self.events) => self.on_event(event).await,
                () = tokio::time::sleep_until(wake) => {
                    if Instant::now() >= next_poll {
                        next_poll = Instant::now() + schedule::POLL;
                        self.poll_file().await;
                        self.retry_offer().await;
                        self.retry_unsaved().await;
                        self.settle_refusal().await;
                        self.warn_session();
                    }
                    if self.due_in(&Stamp::now()) == Some(Duration::ZERO) {
                        let trigger = self.unconfirmed.take().unwrap_or(Trigger::Schedule);
                        let trigger = if self.authority.may_refresh() { trigger } else { Trigger::LastResort };
                        self.refresh(Vec::new(), trigger).await;
                    }
                }
            }
            self.watch_usability();
        }
    }

    /// Log, once, the moment requests start to fail for want of a usable token, and the moment they stop.
    fn watch_usability(&mut self) {
        let current = self.cell.load();
        let down = match &current {
            None if self.cell.status().revoked => Some(usability::Down::Revoked),
            None if self.authority.shared() => Some(usability::Down::AwaitingChain),
            None => Some(usability::Down::Unusable(Unusable::Missing)),
            Some(c) => c.check(&Stamp::now()).err().map(usability::Down::Unusable),
        };
        if let Some(change) = self.usability.observe(down) {
            let fingerprint = current
                .map(|c| c.token().fingerprint())
                .or_else(|| self.cell.status().last_fingerprint.clone());
            usability::log(change, fingerprint, self.authority.shared());
        }
    }

    /// How long until the next refresh attempt; `None` when there is nothing to refresh, or nothing this
    /// process may refresh (a follower, unless its token would otherwise die: [`Authority::last_resort`]).
    fn due_in(&self, now: &Stamp) -> Option<Duration> {
        let current = self.cell.load()?;
        if !self.authority.may_refresh() {
            let remaining = current
                .revoke_after
                .saturating_sub(current.confirmed.elapsed(now))
                .saturating_sub(self.last_latency);
            if !(self.authority.last_resort(remaining) && current.check(now).is_ok()) {
                return None;
            }
        }
        if let Some(at) = self.retry_at {
            return Some(at.saturating_duration_since(now.mono));
        }
        // Measured from the confirmation on both clocks, like the revoke deadline.
        let since = current.confirmed.elapsed(now);
        let lifetime = current
            .expires_at
            .map(|exp| exp.duration_since(current.confirmed.wall).unwrap_or_default());
        Some(schedule::refresh_due_in(
            since,
            self.settings.refresh_interval,
            lifetime,
            self.settings.refresh_before_expiry,
        ))
    }

    /// Answer a waiter at once when no call is needed; else return it to join a refresh.
    fn answer_without_call(&mut self, w: Waiter) -> Option<Vec<Waiter>> {
        let Some(current) = self.cell.load() else {
            let _ = w.reply.send(Err(RefreshError::NoToken));
            return None;
        };
        let newer = w.seen.is_some_and(|g| current.generation > g);
        // A 401 asks for a refresh only when the token is older than `min_refresh_gap`, and never sooner than
        // the back-off after a failed refresh: a stream of 401s during an outage is not a stream of refreshes.
        // A follower re-reads the chain instead, at most once per `min_refresh_gap`, however new its token is.
        let too_soon = w.trigger == Trigger::Upstream401
            && if self.authority.may_refresh() {
                current.confirmed.elapsed(&Stamp::now()) < self.settings.min_refresh_gap
                    || self.retry_at.is_some_and(|at| at > Instant::now())
            } else {
                self.last_resync
                    .is_some_and(|at| at.elapsed() < self.settings.min_refresh_gap)
            };
        if newer || too_soon {
            let _ = w.reply.send(Ok(Outcome {
                current,
                refreshed: newer,
            }));
            return None;
        }
        Some(vec![w])
    }

    /// One refresh call; every waiter that arrives meanwhile joins it.
    async fn refresh(&mut self, mut waiters: Vec<Waiter>, trigger: Trigger) {
        if !self.authority.may_refresh() && trigger != Trigger::LastResort {
            // A follower never calls the refresh endpoint: it re-reads the chain the leader keeps.
            let outcome = self.resync().await;
            for w in waiters {
                let _ = w.reply.send(outcome.clone());
            }
            return;
        }
        let Some(old) = self.cell.load() else {
            for w in waiters {
                let _ = w.reply.send(Err(RefreshError::NoToken));
            }
            return;
        };
        self.cell.update_status(|s| s.refreshing = true);
        let started = Instant::now();
        let result = {
            let call = self.client.refresh(old.token());
            tokio::pin!(call);
            loop {
                tokio::select! {
                    r = &mut call => break r,
                    Some(w) = self.rx.recv() => waiters.push(w),
                }
            }
        };
        let latency = started.elapsed();
        let failed_before = self.failures;
        self.last_latency = latency;
        let result = match result {
            Ok(Refreshed::New { token, expires_at }) => self.adopt_refreshed(&old, token, expires_at).await,
            Ok(Refreshed::Kept) => self.confirm(&old).await,
            // Shared chain: someone else may have refreshed it (a new leader, a last-resort refresh): a newer
            // link in the store answers instead.
            Err(RefreshError::Revoked(code)) if self.authority.shared() => match self.newer_stored().await {
                Some(current) => Ok(current),
                None => Err(RefreshError::Revoked(code)),
            },
            Err(e) => Err(e),
        };
        let outcome = match &result {
            Ok(current) => {
                if trigger == Trigger::LastResort {
                    tracing::warn!(event = "last_resort_refresh", fingerprint = %current.token().fingerprint(), "refreshed without the Lease: the Kubernetes API cannot be reached and the token's revoke deadline was near");
                }
                self.failures = 0;
                self.retry_at = None;
                self.metrics.token_refresh("success");
                let standing = self.standing_error();
                self.cell.update_status(|s| {
                    s.refreshing = false;
                    s.revoked = false;
                    s.consecutive_failures = 0;
                    s.last_error = standing;
                    s.last_refresh_at = Some(SystemTime::now());
                });
                Ok(Outcome {
                    current: current.clone(),
                    refreshed: true,
                })
            }
            Err(e) => {
                self.metrics.token_refresh(e.result_label());
                self.fail(&old, e);
                Err(e.clone())
            }
        };
        self.publish_schedule();
        let new = result.as_ref().ok();
        // A failed attempt is a warning (the token may still be usable: see `watch_usability` for the moment it is
        // not); a success is routine.
        macro_rules! refresh_line {
            ($level:ident) => {
                tracing::$level!(
                    event = "token_refresh",
                    trigger = trigger.as_str(),
                    outcome = match &result { Ok(_) => "ok", Err(e) => e.result_label() },
                    error = result.as_ref().err().map(|e| e.to_string()),
                    latency_ms = latency.as_millis() as u64,
                    old_fingerprint = %old.token().fingerprint(),
                    new_fingerprint = new.map(|c| c.token().fingerprint()),
                    next_refresh_at = self.cell.status().next_refresh_at.map(rfc3339),
                    revoke_deadline = new.map(|c| rfc3339(c.revoke_deadline())),
                    consecutive_failures = self.failures,
                    "token refresh"
                )
            };
        }
        if result.is_ok() {
            refresh_line!(info);
            if failed_before > 0 {
                tracing::info!(
                    event = "token_refresh_recovered",
                    failed_attempts = failed_before,
                    "the token refresh succeeded again after {failed_before} failed attempts"
                );
            }
        } else {
            refresh_line!(warn);
        }
        self.watch_usability();
        for w in waiters {
            let _ = w.reply.send(outcome.clone());
        }
    }

    fn fail(&mut self, old: &Current, e: &RefreshError) {
        if let RefreshError::Revoked(_) = e {
            self.failures = 0;
            self.retry_at = None;
            let fingerprint = old.token().fingerprint();
            // The moment requests start to fail is logged at ERROR, with what to do, by `watch_usability`.
            let (revoked, why) = if self.authority.shared() {
                // Someone else may have refreshed the shared chain (a new leader, a last-resort refresh): not
                // usable here, but not revoked either, until the store says more (see `settle_refusal`).
                let grace = self.authority.handover_grace();
                self.awaiting_link_until = Some(Instant::now() + grace);
                tracing::warn!(
                    event = "token_refused",
                    fingerprint = %fingerprint,
                    grace_ms = grace.as_millis() as u64,
                    "the upstream refused the token; waiting for the chain's newest link in the state Secret"
                );
                (false, format!("{e}; waiting for a newer link in the state Secret"))
            } else {
                (true, e.to_string())
            };
            self.cell.store(None);
            self.cell.update_status(|s| {
                s.refreshing = false;
                s.revoked = revoked;
                s.last_error = Some(why);
                s.last_fingerprint = Some(fingerprint);
            });
            return;
        }
        self.failures += 1;
        let now = Stamp::now();
        let until_deadline = self.settings.revoke_after.saturating_sub(old.confirmed.elapsed(&now));
        let delay = schedule::retry_delay(self.failures, (self.jitter)(), until_deadline);
        self.retry_at = Some(now.mono + delay);
        let failures = self.failures;
        self.cell.update_status(|s| {
            s.refreshing = false;
            s.consecutive_failures = failures;
            s.last_error = Some(e.to_string());
        });
    }

    /// The chain is revoked: requests are refused until an administrator issues a new token.
    fn revoke(&mut self, why: String) {
        self.awaiting_link_until = None;
        self.cell.update_status(|s| {
            s.revoked = true;
            s.last_error = Some(why);
        });
    }

    /// Publish the next refresh time on the wall clock for `/status`.
    fn publish_schedule(&self) {
        let now = Stamp::now();
        let next = self.due_in(&now).map(|d| now.wall + d);
        self.cell.update_status(|s| s.next_refresh_at = next);
    }
}

/// The next event, or never when there is no event source (mode `off`).
async fn next_event(events: &mut Option<mpsc::Receiver<ChainEvent>>) -> Option<ChainEvent> {
    match events {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

mod adopt;
mod chain;
#[cfg(test)]
mod tests;
mod usability;
