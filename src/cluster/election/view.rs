//! What the elector tells the rest of the proxy: this replica's standing ([`LeaderView`]) behind a read-only
//! watch ([`Leadership`]) that also judges the step-down deadline by itself.

use tokio::{sync::watch, time::Instant};

use super::Role;

/// This replica's standing, as last known.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct LeaderView {
    pub(crate) role: Role,
    /// The Lease's holder as last read (`None`: free, or not read yet).
    pub(crate) leader: Option<String>,
    /// `leaseTransitions` as last read.
    pub(crate) transitions: i32,
    /// False when the last Lease call failed because the API did not answer.
    pub(crate) api_reachable: bool,
    /// This replica stepped down only because its renewals could not reach the API.
    pub(crate) lost_for_api_only: bool,
    /// While leading: the monotonic instant at which it must step down unless a renewal succeeds. Judged by the
    /// reader too, so that a process that was stopped (SIGSTOP, a paused VM) stops refreshing the moment it
    /// wakes, before its elector task has run.
    pub(crate) lead_until: Option<Instant>,
}

/// A read-only handle on the elector's [`LeaderView`].
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    rx: watch::Receiver<LeaderView>,
}

// === impl Role ===

impl Role {
    /// The contract's spelling, for `/status`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Leader => "leader",
            Role::Follower => "follower",
            Role::Candidate => "candidate",
        }
    }
}

// === impl Leadership ===

impl Leadership {
    /// The view, judged now: past its step-down deadline a leader is shown as the elector will show it once it
    /// runs (a candidate, lost for the API alone if the API did not answer), so `/status` and the last-resort
    /// decision agree with [`Self::is_leader`].
    pub(crate) fn view(&self) -> LeaderView {
        let mut view = self.rx.borrow().clone();
        if view.role == Role::Leader && view.lead_until.is_none_or(|until| Instant::now() >= until) {
            view.role = Role::Candidate;
            view.lost_for_api_only = !view.api_reachable;
        }
        view
    }

    /// Leading, and not past the step-down deadline by this process's monotonic clock.
    pub(crate) fn is_leader(&self) -> bool {
        self.view().role == Role::Leader
    }

    /// Waits for the next change of the view; never returns once the elector has ended.
    #[cfg(test)]
    pub(crate) async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub(super) fn new(rx: watch::Receiver<LeaderView>) -> Self {
        Leadership { rx }
    }

    /// A handle whose view the test sets through the returned sender.
    #[cfg(test)]
    pub(crate) fn fixed(view: LeaderView) -> (watch::Sender<LeaderView>, Leadership) {
        let (tx, rx) = watch::channel(view);
        (tx, Leadership { rx })
    }
}
