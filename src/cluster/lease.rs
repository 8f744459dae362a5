//! client-go's `tryAcquireOrRenew` (tools/leaderelection) as a pure state machine: the Lease as read and a local
//! monotonic instant go in, the write to make comes out. No I/O and no clock of its own; `election` drives it.
//!
//! As client-go: a lease has expired when `leaseDurationSeconds` have passed on *our* monotonic clock since we last
//! saw the record change (`observed_at`), never by another pod's `renewTime`; every write is an update carrying the
//! resourceVersion last read; a released lease (no holder) may be taken at once. Unlike client-go, a leader steps
//! down as soon as it reads another holder, not only at its renew deadline.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use tokio::time::Instant;

/// A coordination.k8s.io/v1 Lease as the election reads and writes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct LeaseRecord {
    /// `spec.holderIdentity`; empty: nobody holds it.
    pub(crate) holder: String,
    pub(crate) lease_duration_seconds: i32,
    pub(crate) acquire_time: Option<Timestamp>,
    /// The holder's wall clock at its last renewal: written, shown, never used to judge expiry.
    pub(crate) renew_time: Option<Timestamp>,
    pub(crate) transitions: i32,
    /// `metadata.resourceVersion`: the fence every write carries.
    pub(crate) resource_version: String,
}

/// This replica's part in the election.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Holds the Lease and renewed it within `renew_deadline`: the one refresher.
    Leader,
    /// Another replica holds a Lease that has not expired.
    Follower,
    /// No live holder is known (free, expired, unread or unreachable): trying to acquire.
    Candidate,
}

/// Why a leader stopped leading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Loss {
    /// The Lease names another holder.
    TakenOver,
    /// No renewal succeeded within `renew_deadline`; `api_only`: the last failure was the API not answering.
    Deadline { api_only: bool },
}

/// The decision for one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Action {
    /// Update the Lease to this record (its `resource_version` is the one last read).
    Write(LeaseRecord),
    /// Another replica holds a live Lease: read again after `retry_period`.
    Wait,
}

/// The election's memory (client-go's `observedRecord`, `observedTime`) and this replica's standing.
#[derive(Debug)]
pub(crate) struct Election {
    identity: String,
    lease_duration: Duration,
    renew_deadline: Duration,
    /// The record as last read or written, with its resourceVersion.
    observed: Option<LeaseRecord>,
    /// Our monotonic time when `observed` last changed (resourceVersion aside).
    observed_at: Option<Instant>,
    /// While leading: when the last successful write was sent (sent, not answered: a conservative start).
    renewed_at: Option<Instant>,
    /// The last API call failed because the API did not answer (network, timeout, 5xx, 429).
    unreachable: bool,
    /// Stepped down only because renewals could not reach the API.
    lost_for_api_only: bool,
}

// === impl Election ===

impl Election {
    pub(crate) fn new(identity: String, lease_duration: Duration, renew_deadline: Duration) -> Self {
        Election {
            identity,
            lease_duration,
            renew_deadline,
            observed: None,
            observed_at: None,
            renewed_at: None,
            unreachable: false,
            lost_for_api_only: false,
        }
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.renewed_at.is_some()
    }

    /// The record as last read or written.
    pub(crate) fn observed(&self) -> Option<&LeaseRecord> {
        self.observed.as_ref()
    }

    /// A read of the Lease answered `record` at `now`. Returns the loss when it names another holder while we lead.
    pub(crate) fn observe(&mut self, record: LeaseRecord, now: Instant) -> Option<Loss> {
        let changed = self.observed.as_ref().is_none_or(|seen| !same_spec(seen, &record));
        if changed {
            self.observed_at = Some(now);
        }
        self.unreachable = false;
        let other = !record.holder.is_empty() && record.holder != self.identity;
        self.observed = Some(record);
        if other {
            self.lost_for_api_only = false;
            if self.renewed_at.take().is_some() {
                return Some(Loss::TakenOver);
            }
        }
        None
    }

    /// What to write now, given the record last read: client-go's steps 3 and 4.
    pub(crate) fn decide(&self, now: Instant, wall: Timestamp) -> Action {
        let Some(seen) = &self.observed else {
            return Action::Wait;
        };
        let ours = seen.holder == self.identity;
        if !seen.holder.is_empty() && !ours && self.unexpired(now) {
            return Action::Wait;
        }
        Action::Write(LeaseRecord {
            holder: self.identity.clone(),
            lease_duration_seconds: whole_seconds(self.lease_duration),
            acquire_time: if ours {
                seen.acquire_time.or(Some(wall))
            } else {
                Some(wall)
            },
            renew_time: Some(wall),
            transitions: if ours {
                seen.transitions
            } else {
                seen.transitions.saturating_add(1)
            },
            resource_version: seen.resource_version.clone(),
        })
    }

    /// Our write, sent at `sent_at`, succeeded; the API answered `stored` (with its new resourceVersion).
    /// Returns true when this made us leader.
    pub(crate) fn wrote(&mut self, stored: LeaseRecord, sent_at: Instant) -> bool {
        let became = self.renewed_at.is_none() && stored.holder == self.identity;
        self.observed = Some(stored);
        self.observed_at = Some(sent_at);
        self.unreachable = false;
        if self.observed.as_ref().is_some_and(|s| s.holder == self.identity) {
            self.renewed_at = Some(sent_at);
            self.lost_for_api_only = false;
        }
        became
    }

    /// A call failed; `unreachable`: because the API did not answer (as opposed to answering with an error, a
    /// conflict included: a 409 only means the next attempt must read first).
    pub(crate) fn failed(&mut self, unreachable: bool) {
        self.unreachable = unreachable;
    }

    /// When a leader that has not renewed by then must stop leading.
    pub(crate) fn step_down_at(&self) -> Option<Instant> {
        self.renewed_at.map(|at| at + self.renew_deadline)
    }

    /// Steps down when no renewal succeeded within `renew_deadline` of the last one.
    pub(crate) fn check_deadline(&mut self, now: Instant) -> Option<Loss> {
        if self.step_down_at().is_none_or(|at| now < at) {
            return None;
        }
        self.renewed_at = None;
        self.lost_for_api_only = self.unreachable;
        Some(Loss::Deadline {
            api_only: self.unreachable,
        })
    }

    /// Stops leading; the record that gives the Lease up (holder cleared, `leaseDurationSeconds` 1, so another
    /// replica takes it at its next attempt) when the Lease, as last seen, is ours.
    pub(crate) fn release(&mut self, wall: Timestamp) -> Option<LeaseRecord> {
        self.renewed_at = None;
        let seen = self.observed.as_ref().filter(|s| s.holder == self.identity)?;
        Some(LeaseRecord {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: seen.transitions,
            resource_version: seen.resource_version.clone(),
        })
    }

    /// This replica's standing at `now`.
    pub(crate) fn role(&self, now: Instant) -> Role {
        match &self.observed {
            _ if self.is_leader() => Role::Leader,
            Some(seen) if !seen.holder.is_empty() && seen.holder != self.identity && self.unexpired(now) => {
                Role::Follower
            }
            _ => Role::Candidate,
        }
    }

    /// Whether the last call reached the API.
    pub(crate) fn api_reachable(&self) -> bool {
        !self.unreachable
    }

    pub(crate) fn lost_for_api_only(&self) -> bool {
        self.lost_for_api_only
    }

    /// client-go's `isLeaseValid`: the record's own duration, counted on our clock from when we saw it change.
    fn unexpired(&self, now: Instant) -> bool {
        let (Some(seen), Some(at)) = (&self.observed, self.observed_at) else {
            return false;
        };
        let duration = Duration::from_secs(u64::try_from(seen.lease_duration_seconds).unwrap_or(0));
        at + duration > now
    }
}

/// The fields whose change restarts the expiry count: all but the resourceVersion (client-go compares the record).
fn same_spec(a: &LeaseRecord, b: &LeaseRecord) -> bool {
    (
        &a.holder,
        a.lease_duration_seconds,
        a.acquire_time,
        a.renew_time,
        a.transitions,
    ) == (
        &b.holder,
        b.lease_duration_seconds,
        b.acquire_time,
        b.renew_time,
        b.transitions,
    )
}

/// `leaseDurationSeconds` for `lease_duration`, rounded up: others must wait at least as long as we may lead.
fn whole_seconds(lease_duration: Duration) -> i32 {
    let secs = lease_duration.as_secs() + u64::from(lease_duration.subsec_nanos() > 0);
    i32::try_from(secs).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests;
