//! Per-connection activity: the I/O wrapper notes bytes moving, the service notes requests in flight, and the
//! watchdog's [`Activity::verdict`] tells a slow request head from an idle keep-alive connection.

use std::{
    io,
    pin::Pin,
    sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed},
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};

/// What the watchdog should do with a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    Keep,
    HeaderTimeout,
    Idle,
}

/// Shared between a connection's I/O, its service and its watchdog. Times are ms since `epoch`, plus one
/// (0 means "never").
#[derive(Debug)]
pub(super) struct Activity {
    epoch: Instant,
    last_io: AtomicU64,
    head_started: AtomicU64,
    in_flight: AtomicU32,
}

/// Marks a request in flight until dropped.
#[derive(Debug)]
pub(super) struct InRequest(std::sync::Arc<Activity>);

impl Drop for InRequest {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Relaxed);
        self.0.last_io.store(self.0.now(), Relaxed);
    }
}

impl Activity {
    pub(super) fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last_io: AtomicU64::new(1),
            // A new connection owes its first request head within the header timeout.
            head_started: AtomicU64::new(1),
            in_flight: AtomicU32::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn read(&self) {
        let now = self.now();
        self.last_io.store(now, Relaxed);
        if self.in_flight.load(Relaxed) == 0 && self.head_started.load(Relaxed) == 0 {
            self.head_started.store(now, Relaxed);
        }
    }

    fn wrote(&self) {
        self.last_io.store(self.now(), Relaxed);
    }

    /// A request head is complete: it is in flight until the guard drops.
    pub(super) fn begin(self: &std::sync::Arc<Self>) -> InRequest {
        self.in_flight.fetch_add(1, Relaxed);
        self.head_started.store(0, Relaxed);
        InRequest(self.clone())
    }

    pub(super) fn verdict(&self, header_timeout: Duration, idle_timeout: Duration) -> Verdict {
        if self.in_flight.load(Relaxed) > 0 {
            return Verdict::Keep;
        }
        let now = self.now();
        let head = self.head_started.load(Relaxed);
        if head != 0 && now.saturating_sub(head) >= header_timeout.as_millis() as u64 {
            return Verdict::HeaderTimeout;
        }
        if now.saturating_sub(self.last_io.load(Relaxed)) >= idle_timeout.as_millis() as u64 {
            return Verdict::Idle;
        }
        Verdict::Keep
    }
}

/// An I/O object that reports its reads and writes to an [`Activity`].
#[derive(Debug)]
pub(super) struct Tracked<I> {
    inner: I,
    activity: std::sync::Arc<Activity>,
}

impl<I> Tracked<I> {
    pub(super) fn new(inner: I, activity: std::sync::Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        result
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(result, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.wrote();
        }
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tells_a_slow_head_from_an_idle_connection() {
        let a = std::sync::Arc::new(Activity::new());
        let (head, idle) = (Duration::from_secs(10), Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(
            a.verdict(head, idle),
            Verdict::HeaderTimeout,
            "a new connection that sends nothing"
        );
        drop(a.begin());
        a.read();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.verdict(head, idle), Verdict::Keep);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(a.verdict(head, idle), Verdict::HeaderTimeout);
        {
            let _r = a.begin();
            tokio::time::advance(Duration::from_secs(100)).await;
            assert_eq!(a.verdict(head, idle), Verdict::Keep, "request in flight");
        }
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(a.verdict(head, idle), Verdict::Keep);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.verdict(head, idle), Verdict::Idle);
    }
}
