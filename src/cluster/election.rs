//! The leader-election loop: drives the pure [`Election`] against `Api<Lease>` (get, then update with the
//! resourceVersion read; never create, patch or delete: deploy ships the Lease), publishes this replica's standing
//! as a [`Leadership`] watch, and releases the Lease on stop.

use std::{
    future::Future,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{api::PostParams, Api};
use tokio::{sync::watch, time::Instant};
use tracing::{debug, info, warn};

mod view;

pub(crate) use super::lease::Role;
use super::lease::{Action, Election, LeaseRecord, Loss};
pub(crate) use view::{LeaderView, Leadership};

/// The election's timing and names (client-go semantics: lease_duration > renew_deadline > retry_period).
#[derive(Clone, Debug)]
pub(crate) struct LeaseSettings {
    /// The Lease's name, in the client's namespace.
    pub(crate) name: String,
    /// This replica's `holderIdentity`.
    pub(crate) identity: String,
    /// How long others wait, from the last change they saw, before taking a Lease that is not renewed.
    pub(crate) lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal.
    pub(crate) renew_deadline: Duration,
    /// The pause between attempts (candidates add up to 50 % jitter).
    pub(crate) retry_period: Duration,
}

/// Called with the operation (`lease_get`, `lease_update`) of each failed Lease call, for the metrics.
pub(crate) type OnApiError = Arc<dyn Fn(&'static str) + Send + Sync>;

/// Runs the election for one replica; see [`Elector::run`].
pub(crate) struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    election: Election,
    /// The Lease object as last read or written: updates keep its metadata (labels, owners) and send its spec.
    lease: Option<Lease>,
    tx: watch::Sender<LeaderView>,
    lead_until: Arc<Mutex<Option<Instant>>>,
    on_api_error: OnApiError,
    /// The fraction of `retry_period` a candidate adds to its pause, in [0, 0.5].
    jitter: Box<dyn FnMut() -> f64 + Send + Sync>,
    /// Whether this replica holds a link the state Secret has not taken yet (a last-resort refresh made while the
    /// API did not answer): it writes that first, and does not compete for the Lease meanwhile.
    hold: Box<dyn Fn() -> bool + Send + Sync>,
    /// Since when the API has answered while this replica held off.
    held_since: Option<Instant>,
    /// Whether this hold has been given up (said once).
    held_too_long: bool,
}

/// Why one call failed.
#[derive(Debug)]
enum CallError {
    /// 409: someone else wrote first; read before writing again.
    Conflict,
    /// The Lease does not exist.
    NotFound,
    /// Any other failure; `unreachable`: the API did not answer (network, timeout, 5xx, 429).
    Failed { unreachable: bool, reason: String },
}

// === impl Elector ===

impl Elector {
    pub(crate) fn new(api: Api<Lease>, settings: LeaseSettings, on_api_error: OnApiError) -> (Elector, Leadership) {
        let initial = LeaderView {
            role: Role::Candidate,
            leader: None,
            transitions: 0,
            api_reachable: true,
            lost_for_api_only: false,
        };
        let (tx, rx) = watch::channel(initial);
        let lead_until = Arc::new(Mutex::new(Some(Instant::now())));
        let election = Election::new(
            settings.identity.clone(),
            settings.lease_duration,
            settings.renew_deadline,
        );
        let elector = Elector {
            api,
            settings,
            election,
            lease: None,
            tx,
            lead_until: lead_until.clone(),
            on_api_error,
            jitter: Box::new(|| rand::random::<f64>() * 0.5),
            hold: Box::new(|| false),
            held_since: None,
            held_too_long: false,
        };
        (elector, Leadership::new(rx, lead_until))
    }

    /// Replaces the random jitter (tests).
    #[cfg(test)]
    pub(crate) fn with_jitter(mut self, jitter: impl FnMut() -> f64 + Send + Sync + 'static) -> Self {
        self.jitter = Box::new(jitter);
        self
    }

    /// Do not compete for the Lease while `hold` says this replica has a link to write first (for at most
    /// `lease_duration` of an answering API: a store that keeps refusing the write must not keep it out for good;
    /// the state Secret's fence keeps the higher generation either way).
    pub(crate) fn with_hold(mut self, hold: impl Fn() -> bool + Send + Sync + 'static) -> Self {
        self.hold = Box::new(hold);
        self
    }

    /// Run until `stop` completes; then, if leading, release the Lease (holderIdentity cleared,
    /// leaseDurationSeconds = 1, written with the resourceVersion last read) and return.
    ///
    /// An attempt in flight when `stop` completes finishes first (each call is bounded), so the release is
    /// written with what that attempt learnt.
    pub(crate) async fn run(mut self, stop: impl Future<Output = ()>) {
        let mut stop = std::pin::pin!(stop);
        info!(lease = %self.settings.name, identity = %self.settings.identity, "leader election started");
        loop {
            self.attempt().await;
            self.publish();
            let wake = self.next_attempt_at(Instant::now());
            tokio::select! {
                biased;
                () = &mut stop => break,
                () = tokio::time::sleep_until(wake) => {}
            }
        }
        self.release().await;
    }

    /// One round of client-go's `tryAcquireOrRenew`: a leader updates straight from the Lease it last wrote; on a
    /// conflict, and for everyone else, read, decide, write.
    async fn attempt(&mut self) {
        self.check_deadline();
        if !self.election.is_leader() && (self.hold)() {
            // Read only (the view stays current), until the link is written or the hold has lasted long enough.
            // The bound counts from the first answer (not reset by a later failure: a flaky API cannot stretch it).
            if self.read().await.is_ok() && self.held_long_enough() {
                let _ = self.write_decision().await;
            }
        } else {
            (self.held_since, self.held_too_long) = (None, false);
            if !self.election.is_leader() || matches!(self.write_decision().await, Err(CallError::Conflict)) {
                // A failed write was logged and counted where it failed; the next attempt retries.
                if self.read().await.is_ok() {
                    let _ = self.write_decision().await;
                }
            }
        }
        self.check_deadline();
    }

    /// Whether a replica holding off (see [`Elector::with_hold`]) has done so for `lease_duration` of an
    /// answering API.
    fn held_long_enough(&mut self) -> bool {
        let name = &self.settings.name;
        let since = *self.held_since.get_or_insert_with(|| {
            info!(lease = %name, "not competing for the lease until the token kept during the outage is written to the state Secret");
            Instant::now()
        });
        let long_enough = since.elapsed() >= self.settings.lease_duration;
        if long_enough && !self.held_too_long {
            self.held_too_long = true;
            warn!(lease = %name, "the token kept during the outage is still not written to the state Secret; competing for the lease anyway");
        }
        long_enough
    }

    /// Reads the Lease into the election.
    async fn read(&mut self) -> Result<(), CallError> {
        let result = self.bounded(self.api.get(&self.settings.name)).await;
        match result {
            Ok(lease) => {
                let record = record(&lease);
                let before = self.election.observed().map(|r| r.holder.clone());
                self.lease = Some(lease);
                if let Some(loss) = self.election.observe(record.clone(), Instant::now()) {
                    self.lost(loss, Some(&record.holder));
                } else if before.as_deref() != Some(record.holder.as_str())
                    && !record.holder.is_empty()
                    && record.holder != self.settings.identity
                {
                    info!(lease = %self.settings.name, leader = %record.holder, "the lease is held by another replica");
                }
                Ok(())
            }
            Err(error) => {
                self.failed("lease_get", &error);
                Err(error)
            }
        }
    }

    /// Writes what the election decides, if anything.
    async fn write_decision(&mut self) -> Result<(), CallError> {
        let Action::Write(record) = self.election.decide(Instant::now(), Timestamp::now()) else {
            return Ok(());
        };
        let sent_at = Instant::now();
        match self.update(&record).await {
            Ok(stored) => {
                let stored = record_of(stored, &mut self.lease);
                let transitions = stored.transitions;
                if self.election.wrote(stored, sent_at) {
                    info!(lease = %self.settings.name, identity = %self.settings.identity, transitions, "became leader");
                }
                Ok(())
            }
            Err(error) => {
                self.failed("lease_update", &error);
                Err(error)
            }
        }
    }

    /// Updates the Lease to `record`, keeping the rest of the object as last read.
    async fn update(&self, record: &LeaseRecord) -> Result<Lease, CallError> {
        let mut lease = self.lease.clone().unwrap_or_default();
        lease.metadata.name = Some(self.settings.name.clone());
        lease.metadata.resource_version = Some(record.resource_version.clone());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = Some(record.holder.clone());
        spec.lease_duration_seconds = Some(record.lease_duration_seconds);
        spec.acquire_time = record.acquire_time.map(MicroTime);
        spec.renew_time = record.renew_time.map(MicroTime);
        spec.lease_transitions = Some(record.transitions);
        self.bounded(self.api.replace(&self.settings.name, &PostParams::default(), &lease))
            .await
    }

    /// `call`, bounded so that no call outlives a leader's renew deadline (nor, for others, a renew deadline).
    async fn bounded<T>(&self, call: impl Future<Output = Result<T, kube::Error>>) -> Result<T, CallError> {
        let now = Instant::now();
        let until = self
            .election
            .step_down_at()
            .unwrap_or(now + self.settings.renew_deadline)
            .max(now);
        match tokio::time::timeout_at(until, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(error)) => Err(classify(&error)),
            Err(_) => Err(CallError::Failed {
                unreachable: true,
                reason: format!("no answer within {:?}", until - now),
            }),
        }
    }

    fn failed(&mut self, op: &'static str, error: &CallError) {
        let name = &self.settings.name;
        match error {
            CallError::Conflict => {
                // Not an API failure: another replica wrote first. Read before writing again.
                self.election.failed(false);
                debug!(lease = %name, "lease update conflicted; reading it again");
            }
            CallError::NotFound => {
                (self.on_api_error)(op);
                self.election.failed(false);
                let namespace = self.api.resource_url();
                warn!(
                    lease = %name,
                    path = %namespace,
                    "the Lease does not exist: the proxy creates nothing; apply the Lease from deploy/ (cluster \
                     variant) in this namespace or set cluster.lease to the existing one; retrying"
                );
            }
            CallError::Failed { unreachable, reason } => {
                (self.on_api_error)(op);
                self.election.failed(*unreachable);
                warn!(lease = %name, op, unreachable, error = %reason, "Kubernetes API call failed");
            }
        }
    }

    fn check_deadline(&mut self) {
        if let Some(loss) = self.election.check_deadline(Instant::now()) {
            self.lost(loss, None);
            self.publish();
        }
    }

    fn lost(&self, loss: Loss, holder: Option<&str>) {
        let (name, identity) = (&self.settings.name, &self.settings.identity);
        match loss {
            Loss::TakenOver => {
                info!(lease = %name, identity = %identity, leader = holder.unwrap_or(""), "lost the lease: another replica holds it")
            }
            Loss::Deadline { api_only } => info!(
                lease = %name,
                identity = %identity,
                api_only,
                renew_deadline = ?self.settings.renew_deadline,
                "lost the lease: no renewal succeeded within renew_deadline"
            ),
        }
    }

    /// Sends the current view to the [`Leadership`] handles when it changed.
    fn publish(&self) {
        let now = Instant::now();
        // The bound first: a view that says leader is never read without it.
        *self.lead_until.lock().unwrap_or_else(PoisonError::into_inner) =
            Some(self.election.step_down_at().unwrap_or(now));
        let view = self.view(now);
        self.tx.send_if_modified(|current| {
            let changed = *current != view;
            *current = view;
            changed
        });
    }

    fn view(&self, now: Instant) -> LeaderView {
        let observed = self.election.observed();
        LeaderView {
            role: self.election.role(now),
            leader: observed.map(|r| r.holder.clone()).filter(|h| !h.is_empty()),
            transitions: observed.map_or(0, |r| r.transitions),
            api_reachable: self.election.api_reachable(),
            lost_for_api_only: self.election.lost_for_api_only(),
        }
    }

    /// A leader renews every `retry_period`; others add up to 50 % jitter, so candidates do not move in step.
    fn next_attempt_at(&mut self, now: Instant) -> Instant {
        let retry = self.settings.retry_period;
        if self.election.is_leader() {
            return now + retry;
        }
        now + retry.mul_f64(1.0 + (self.jitter)().clamp(0.0, 0.5))
    }

    /// Gives the Lease up if it is ours: no longer leader first (the view says so before the write), then the
    /// update that clears the holder; on a conflict, once more if a fresh read still names us.
    async fn release(&mut self) {
        let was_leader = self.election.is_leader();
        for _ in 0..2 {
            let Some(record) = self.election.release(Timestamp::now()) else {
                break;
            };
            self.publish();
            match self.update(&record).await {
                Ok(stored) => {
                    let stored = record_of(stored, &mut self.lease);
                    self.election.observe(stored, Instant::now());
                    info!(lease = %self.settings.name, identity = %self.settings.identity, "released the lease");
                    break;
                }
                Err(CallError::Conflict) => {
                    if self.read().await.is_err() {
                        break;
                    }
                }
                Err(error) => {
                    self.failed("lease_update", &error);
                    if was_leader {
                        warn!(lease = %self.settings.name, "could not release the lease; another replica takes it when it expires");
                    }
                    break;
                }
            }
        }
        self.publish();
        info!(lease = %self.settings.name, identity = %self.settings.identity, "leader election stopped");
    }
}

impl std::fmt::Debug for Elector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Elector")
            .field("settings", &self.settings)
            .field("election", &self.election)
            .finish()
    }
}

/// The record in a Lease as the API returned it.
fn record(lease: &Lease) -> LeaseRecord {
    let spec = lease.spec.clone().unwrap_or_default();
    LeaseRecord {
        holder: spec.holder_identity.unwrap_or_default(),
        lease_duration_seconds: spec.lease_duration_seconds.unwrap_or(0),
        acquire_time: spec.acquire_time.map(|t| t.0),
        renew_time: spec.renew_time.map(|t| t.0),
        transitions: spec.lease_transitions.unwrap_or(0),
        resource_version: lease.metadata.resource_version.clone().unwrap_or_default(),
    }
}

/// Keeps `stored` as the object last seen and returns its record.
fn record_of(stored: Lease, last: &mut Option<Lease>) -> LeaseRecord {
    let record = record(&stored);
    *last = Some(stored);
    record
}

fn classify(error: &kube::Error) -> CallError {
    match error {
        kube::Error::Api(status) if status.code == 409 => CallError::Conflict,
        kube::Error::Api(status) if status.code == 404 => CallError::NotFound,
        kube::Error::Api(status) => CallError::Failed {
            unreachable: status.code == 429 || status.code >= 500,
            reason: format!("{} {}", status.code, status.reason),
        },
        // The API answered, but not with a Lease.
        kube::Error::SerdeError(_) => CallError::Failed {
            unreachable: false,
            reason: error.to_string(),
        },
        _ => CallError::Failed {
            unreachable: true,
            reason: error.to_string(),
        },
    }
}

#[cfg(test)]
mod tests;
