//! What the elector tells the rest of the proxy: this replica's standing ([`LeaderView`]) behind a read-only
//! watch ([`Leadership`]) that also judges the step-down deadline by itself.

use std::sync::{Arc, Mutex, PoisonError};

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
}

/// A read-only handle on the elector's [`LeaderView`].
#[derive(Clone, Debug)]
pub(crate) struct Leadership {
    rx: watch::Receiver<LeaderView>,
    /// Until when the view's `Leader` holds (the renew deadline): past it, this replica is no leader even if the
    /// elector has not run since (a process woken from SIGSTOP, a starved task). `None`: no bound (`fixed`).
    lead_until: Arc<Mutex<Option<Instant>>>,
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
    pub(crate) fn view(&self) -> LeaderView {
        let mut view = self.rx.borrow().clone();
        let lead_until = *self.lead_until.lock().unwrap_or_else(PoisonError::into_inner);
        if view.role == Role::Leader && lead_until.is_some_and(|until| Instant::now() >= until) {
            // What the elector will say when it runs: stepped down, for the API alone if it did not answer.
            view.role = Role::Candidate;
            view.lost_for_api_only = !view.api_reachable;
        }
        view
    }

    pub(crate) fn is_leader(&self) -> bool {
        self.view().role == Role::Leader
    }

    /// Waits for the next change of the view; never returns once the elector has ended. (Test-only until a caller
    /// needs it: the refresher asks `is_leader` when it is about to refresh.)
    #[cfg(test)]
    pub(crate) async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    pub(super) fn new(rx: watch::Receiver<LeaderView>, lead_until: Arc<Mutex<Option<Instant>>>) -> Self {
        Leadership { rx, lead_until }
    }

    /// A handle whose view the test sets through the returned sender.
    #[cfg(test)]
    pub(crate) fn fixed(view: LeaderView) -> (watch::Sender<LeaderView>, Leadership) {
        let (tx, rx) = watch::channel(view);
        (
            tx,
            Leadership {
                rx,
                lead_until: Arc::new(Mutex::new(None)),
            },
        )
    }
}
