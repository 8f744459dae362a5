//! Polling a future only when its own wakers fired, not every time its task wakes.
//!
//! A connection's task polls hyper's connection and, beside it, the watchdog (an interval and the shutdown
//! signal). The task wakes several times per request for hyper; the watchdog is due a few times per second at
//! most. [`OnWake`] gives the watchdog a waker of its own, which sets a flag and then wakes the task, and skips
//! the watchdog's poll while the flag is down (about 700 instructions per request on a small GET,
//! bench/README.md).

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Context, Poll, Wake, Waker},
};

use futures_util::task::AtomicWaker;

/// The flag and the task to wake, shared by the waker handed to the inner future.
#[derive(Debug, Default)]
struct Flag {
    woken: AtomicBool,
    task: AtomicWaker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

/// One flag and its waker, made once per connection.
#[derive(Debug)]
pub(super) struct WakeFilter {
    flag: Arc<Flag>,
    waker: Waker,
}

impl WakeFilter {
    pub(super) fn new() -> Self {
        let flag = Arc::new(Flag::default());
        let waker = Waker::from(flag.clone());
        Self { flag, waker }
    }

    /// `fut`, polled on its first poll and then only after one of its wakers fired.
    pub(super) fn on_wake<F: Future>(&self, fut: F) -> OnWake<'_, F> {
        self.flag.woken.store(true, Ordering::Release);
        OnWake { fut, filter: self }
    }
}

pin_project_lite::pin_project! {
    /// See [`WakeFilter::on_wake`].
    pub(super) struct OnWake<'a, F> {
        #[pin]
        fut: F,
        filter: &'a WakeFilter,
    }
}

impl<F: Future> Future for OnWake<'_, F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        // Registered before the flag is read: a wake in between still reaches the task.
        this.filter.flag.task.register(cx.waker());
        if !this.filter.flag.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        this.fut.poll(&mut Context::from_waker(&this.filter.waker))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_inner_future_runs_on_its_own_wakes_only() {
        let wakes = WakeFilter::new();
        let polls = std::cell::Cell::new(0);
        let sleep = tokio::time::sleep(Duration::from_secs(1));
        tokio::pin!(sleep);
        let inner = std::future::poll_fn(|cx| {
            polls.set(polls.get() + 1);
            sleep.as_mut().poll(cx)
        });
        let guarded = wakes.on_wake(inner);
        tokio::pin!(guarded);
        let noise = Waker::noop();
        let mut cx = Context::from_waker(noise);
        assert!(guarded.as_mut().poll(&mut cx).is_pending());
        assert_eq!(polls.get(), 1, "the first poll reaches it");
        for _ in 0..10 {
            assert!(guarded.as_mut().poll(&mut cx).is_pending());
        }
        assert_eq!(polls.get(), 1, "the task's other wakes do not");
        // Its timer fires: the next poll reaches it, and it is done.
        guarded.as_mut().await;
        assert_eq!(polls.get(), 2);
    }
}
