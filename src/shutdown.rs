//! Graceful shutdown: one [`Shutdown`] controller and cheap [`ShutdownSignal`] readers.
//!
//! Phases: running → draining (SIGTERM seen: `/readyz` 503, still serving normally for `shutdown.delay`, like
//! pingora's two-phase grace, so endpoints are removed before the listener closes) → stopping (listeners closed,
//! late requests on open connections get 503 `SHUTTING_DOWN`, in-flight requests get `shutdown.grace`).

use std::sync::{
    atomic::{AtomicU8, Ordering},
    Arc,
};

use tokio::sync::watch;

/// Where the process is in its shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Phase {
    Running = 0,
    Draining = 1,
    Stopping = 2,
}

/// Moves the phases forward. Owned by the app.
#[derive(Debug, Clone)]
pub(crate) struct Shutdown {
    tx: Arc<watch::Sender<Phase>>,
    phase: Arc<AtomicU8>,
}

/// Reads the phase: an atomic load on the hot path, a future for tasks.
#[derive(Debug, Clone)]
pub(crate) struct ShutdownSignal {
    rx: watch::Receiver<Phase>,
    phase: Arc<AtomicU8>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Running.
    pub(crate) fn new() -> Self {
        let (tx, _) = watch::channel(Phase::Running);
        Self {
            tx: Arc::new(tx),
            phase: Arc::new(AtomicU8::new(Phase::Running as u8)),
        }
    }

    /// A reader.
    pub(crate) fn signal(&self) -> ShutdownSignal {
        ShutdownSignal {
            rx: self.tx.subscribe(),
            phase: self.phase.clone(),
        }
    }

    /// Move forward to `phase` (never backward).
    pub(crate) fn advance(&self, phase: Phase) {
        self.phase.fetch_max(phase as u8, Ordering::SeqCst);
        self.tx.send_if_modified(|p| {
            let changed = *p < phase;
            if changed {
                *p = phase;
            }
            changed
        });
    }
}

impl ShutdownSignal {
    /// The current phase.
    pub(crate) fn phase(&self) -> Phase {
        match self.phase.load(Ordering::Relaxed) {
            0 => Phase::Running,
            1 => Phase::Draining,
            _ => Phase::Stopping,
        }
    }

    /// Resolves once the phase reaches `phase`.
    pub(crate) async fn reached(&self, phase: Phase) {
        let mut rx = self.rx.clone();
        let _ = rx.wait_for(|p| *p >= phase).await;
    }
}

/// SIGTERM and SIGINT as they arrive, counted: the first starts the graceful shutdown, a second cuts it short
/// (what operators expect of a second Ctrl-C). Each is logged with its name.
#[derive(Debug, Clone)]
pub(crate) struct OsSignals {
    count: watch::Receiver<u32>,
}

// === impl OsSignals ===

impl OsSignals {
    /// Install the handlers now, not when a future is first polled: a SIGTERM that arrives while the servers
    /// start must not kill the process outright. Call within the runtime.
    pub(crate) fn install() -> Self {
        use tokio::signal::unix::{signal, SignalKind};
        let handlers = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()));
        let (tx, count) = watch::channel(0);
        tokio::spawn(async move {
            let (Ok(mut term), Ok(mut int)) = handlers else {
                tracing::error!("cannot install signal handlers");
                // Keep the sender: no signal ever arrives.
                return std::future::pending().await;
            };
            for n in 1.. {
                let name = tokio::select! {
                    _ = term.recv() => "SIGTERM",
                    _ = int.recv() => "SIGINT",
                };
                if n == 1 {
                    tracing::info!(event = "shutdown_signal", signal = name, "shutting down gracefully");
                } else {
                    tracing::warn!(
                        event = "second_signal",
                        signal = name,
                        "a second signal: skipping the rest of shutdown.delay and shutdown.grace"
                    );
                }
                tx.send_replace(n);
            }
        });
        Self { count }
    }

    /// Resolves once the `n`th signal has arrived (1: the first).
    pub(crate) fn nth(&self, n: u32) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut count = self.count.clone();
        async move {
            if count.wait_for(|c| *c >= n).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn phases_only_move_forward() {
        let s = Shutdown::new();
        let sig = s.signal();
        assert_eq!(sig.phase(), Phase::Running);
        s.advance(Phase::Stopping);
        s.advance(Phase::Draining);
        assert_eq!(sig.phase(), Phase::Stopping);
        sig.reached(Phase::Draining).await;
    }
}
