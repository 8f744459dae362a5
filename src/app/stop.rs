//! The shutdown sequence, one named step at a time: wait for the stop signal, drain (not ready, still serving
//! for `shutdown.delay`), stop (listeners closed, in-flight requests get `shutdown.grace`), then the admin port,
//! the refresher and the [`Flush`] hook get their last words. A second signal cuts the sequence short: what is
//! left of the delay and the grace is skipped, the refresher and the flush get at most [`HURRIED_BACKGROUND_GRACE`],
//! and the app ends with [`AppError::SecondSignal`] (exit 1).

use std::{future::Future, pin::Pin, time::Duration};

use tokio::{sync::watch, task::JoinHandle, time::Instant};

use super::AppError;
use crate::{
    config::ShutdownConfig,
    shutdown::{Phase, Shutdown},
};

/// How long the admin server and the refresher get to finish once the proxy has drained.
const BACKGROUND_GRACE: Duration = Duration::from_secs(1);

/// After a second signal: the most the refresher (a refresh in flight reaching the state file) and the flush
/// may still take.
const HURRIED_BACKGROUND_GRACE: Duration = Duration::from_secs(2);

/// Work that must end before the process exits, after the refresher has stopped: the hook for what outlives a
/// refresh, such as releasing the cluster mode's Lease. It gets the same last words as the refresher (at most
/// [`HURRIED_BACKGROUND_GRACE`] after a second signal); the exit does not wait for it past them.
pub(crate) type Flush = Pin<Box<dyn Future<Output = ()> + Send>>;

/// The running servers and tasks, as [`super::App::serve`] left them.
pub(crate) struct Serving {
    pub(super) proxies: Vec<JoinHandle<()>>,
    pub(super) admin: JoinHandle<()>,
    pub(super) refresher: JoinHandle<()>,
    pub(super) proxy_phase: Shutdown,
    pub(super) admin_phase: Shutdown,
    pub(super) timing: ShutdownConfig,
    pub(super) flush: Option<Flush>,
}

/// A second signal, seen by every step after it arrives.
#[derive(Clone)]
struct Hurry(watch::Receiver<bool>);

// === impl Serving ===

impl std::fmt::Debug for Serving {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serving")
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl Serving {
    /// Serve until `signal` completes or `POST /quitquitquit` asks to stop.
    pub(crate) async fn until(self, signal: impl Future<Output = ()>) -> Self {
        let quit = self.proxy_phase.signal();
        tokio::select! {
            () = signal => {},
            () = quit.reached(Phase::Draining) => {},
        }
        self
    }

    /// The shutdown sequence. `second_signal` cuts it short.
    pub(crate) async fn shut_down(
        self,
        second_signal: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), AppError> {
        let hurry = Hurry::on(second_signal);
        drain(&self.proxy_phase, self.timing.delay, &hurry).await;
        let grace_ends = Instant::now() + self.timing.grace;
        let result = stop_proxy(&self.proxy_phase, self.proxies, grace_ends, &hurry).await;
        self.admin_phase.advance(Phase::Stopping);
        let _ = tokio::time::timeout(BACKGROUND_GRACE, self.admin).await;
        let end = grace_ends.max(Instant::now() + BACKGROUND_GRACE);
        finish_background(self.refresher, self.flush, &hurry, end).await;
        if hurry.now() {
            tracing::error!(event = "stopped_early", "issettled-proxy stopped by a second signal");
            return Err(AppError::SecondSignal);
        }
        tracing::info!(event = "stopped", "issettled-proxy stopped");
        result
    }
}

/// Running → draining: `/readyz` answers 503 while requests are still served, for `shutdown.delay`.
async fn drain(proxy_phase: &Shutdown, delay: Duration, hurry: &Hurry) {
    proxy_phase.advance(Phase::Draining);
    tracing::info!(
        event = "draining",
        delay_ms = delay.as_millis() as u64,
        "not ready; still serving for shutdown.delay"
    );
    tokio::select! {
        () = tokio::time::sleep(delay) => {},
        () = hurry.requested() => {},
    }
}

/// Draining → stopping: close the listeners, let in-flight requests finish until `grace_ends`.
async fn stop_proxy(
    proxy_phase: &Shutdown,
    proxies: Vec<JoinHandle<()>>,
    grace_ends: Instant,
    hurry: &Hurry,
) -> Result<(), AppError> {
    proxy_phase.advance(Phase::Stopping);
    tokio::select! {
        drained = tokio::time::timeout_at(grace_ends, futures_util::future::join_all(proxies)) => match drained {
            Ok(results) => results
                .into_iter()
                .try_for_each(|r| r.map_err(|e| AppError::Task(e.to_string()))),
            Err(_) => {
                tracing::warn!(
                    event = "grace_expired",
                    "shutdown.grace passed with requests still in flight; closing them"
                );
                Ok(())
            }
        },
        () = hurry.requested() => Ok(()),
    }
}

/// The refresher stops (a refresh call in flight may finish, so a token the upstream has just issued reaches the
/// state file) until `end`, then the flush runs for [`BACKGROUND_GRACE`]: an upstream that hangs must not hold
/// the exit. After a second signal, neither waits past [`HURRIED_BACKGROUND_GRACE`] from it.
async fn finish_background(refresher: JoinHandle<()>, flush: Option<Flush>, hurry: &Hurry, end: Instant) {
    tokio::select! {
        _ = refresher => {},
        () = hurry.clone().deadline(end) => tracing::warn!(
            event = "refresh_abandoned",
            "shutdown.grace passed with a token refresh still in flight; exiting without its answer"
        ),
    }
    if let Some(flush) = flush {
        tokio::select! {
            () = flush => {},
            () = hurry.clone().deadline(Instant::now() + BACKGROUND_GRACE) => {
                tracing::warn!(event = "flush_abandoned", "exiting before the last work was done");
            }
        }
    }
}

// === impl Hurry ===

impl Hurry {
    /// Watch for `second_signal`.
    fn on(second_signal: impl Future<Output = ()> + Send + 'static) -> Self {
        let (tx, rx) = watch::channel(false);
        tokio::spawn(async move {
            tokio::select! {
                () = second_signal => { tx.send_replace(true); },
                () = tx.closed() => {},
            }
        });
        Self(rx)
    }

    /// Whether it has arrived.
    fn now(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves at `end`, or [`HURRIED_BACKGROUND_GRACE`] after the second signal if that is sooner.
    async fn deadline(self, end: Instant) {
        let hurried = async {
            self.requested().await;
            tokio::time::sleep(HURRIED_BACKGROUND_GRACE).await;
        };
        tokio::select! {
            () = tokio::time::sleep_until(end) => {},
            () = hurried => {},
        }
    }

    /// Resolves once it arrives (never, if it does not).
    async fn requested(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|h| *h).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}
