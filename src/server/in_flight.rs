//! Requests in flight across the listeners served together, and the moment during shutdown when there are none.
//!
//! Once the listeners stop, an idle keep-alive connection stays open while any request is still in flight, so a
//! late request on it is answered (503 `SHUTTING_DOWN`, `Connection: close`) rather than met by a closed socket;
//! when the last one finishes, idle connections close and the drain ends without waiting out the grace.

use std::sync::{
    atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    Arc,
};

use tokio::sync::Notify;

use crate::shutdown::{Phase, ShutdownSignal};

/// The count, shared by every connection of the listeners served together.
#[derive(Debug, Clone)]
pub(super) struct RequestsInFlight(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    count: AtomicUsize,
    /// Someone waits for the count to reach zero. Only then does reaching zero notify (which takes a lock), so
    /// the request path costs two atomic operations and no lock before shutdown.
    watched: AtomicBool,
    zero: Notify,
    stop: ShutdownSignal,
}

impl RequestsInFlight {
    /// None in flight yet; `stop` is the shutdown of the listeners counted.
    pub(super) fn new(stop: ShutdownSignal) -> Self {
        Self(Arc::new(Shared {
            count: AtomicUsize::new(0),
            watched: AtomicBool::new(false),
            zero: Notify::new(),
            stop,
        }))
    }

    /// The shutdown signal of the listeners counted.
    pub(super) fn signal(&self) -> &ShutdownSignal {
        &self.0.stop
    }

    /// Whether the listeners have stopped: responses from now on close their connection.
    pub(super) fn stopping(&self) -> bool {
        self.0.stop.phase() == Phase::Stopping
    }

    /// A request began.
    pub(super) fn begin(&self) {
        self.0.count.fetch_add(1, SeqCst);
    }

    /// A request ended (its response handed to the socket in full, or abandoned).
    pub(super) fn end(&self) {
        // SeqCst with `none`: either it sees this decrement's zero, or this sees `watched` and wakes it.
        if self.0.count.fetch_sub(1, SeqCst) == 1 && self.0.watched.load(SeqCst) {
            self.0.zero.notify_waiters();
        }
    }

    /// Resolves once the listeners have stopped and no request is in flight.
    pub(super) async fn stopped_and_drained(&self) {
        self.0.stop.reached(Phase::Stopping).await;
        self.0.watched.store(true, SeqCst);
        loop {
            let notified = self.0.zero.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.0.count.load(SeqCst) == 0 {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::shutdown::Shutdown;

    #[tokio::test(start_paused = true)]
    async fn drained_once_stopped_and_the_last_request_ends() {
        let shutdown = Shutdown::new();
        let in_flight = RequestsInFlight::new(shutdown.signal());
        in_flight.begin();
        in_flight.begin();
        let waiter = {
            let in_flight = in_flight.clone();
            tokio::spawn(async move { in_flight.stopped_and_drained().await })
        };
        in_flight.end();
        in_flight.end();
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "idle but not stopped");
        in_flight.begin();
        shutdown.advance(Phase::Stopping);
        assert!(in_flight.stopping());
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert!(!waiter.is_finished(), "stopped, one request in flight");
        in_flight.end();
        tokio::time::timeout(Duration::from_secs(1), waiter)
            .await
            .unwrap()
            .unwrap();
        // Stopped and idle: at once.
        in_flight.stopped_and_drained().await;
    }
}
