//! A response body bounded by its exchange's deadline (`upstream.request_timeout` covers the whole upstream
//! exchange, body included). Once the head has gone to the app a 504 is no longer possible, so an upstream body
//! still unfinished at the deadline ends in an error, which the app sees as a truncated response. The timer is
//! created only if the body ever has to wait: a body that is already there costs no timer.

use std::{
    future::Future as _,
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

/// The upstream's response body did not finish before the exchange's deadline.
#[derive(Debug, thiserror::Error)]
#[error("the upstream response body did not finish within upstream.request_timeout")]
pub(crate) struct BodyTimeout;

/// `inner`, ending in [`BodyTimeout`] at `deadline`.
#[derive(Debug)]
pub(crate) struct Deadlined<B> {
    inner: B,
    deadline: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl<B> Deadlined<B> {
    pub(crate) fn new(inner: B, deadline: Instant) -> Self {
        Self {
            inner,
            deadline,
            timer: None,
        }
    }
}

impl<B> Body for Deadlined<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout.into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_ends_in_an_error_at_the_deadline_and_one_that_flows_does_not() {
        let stalled = StreamBody::new(futures_util::stream::pending::<Result<Frame<Bytes>, std::io::Error>>());
        let started = Instant::now();
        let mut body = Deadlined::new(stalled, started + Duration::from_secs(30));
        let frame = body.frame().await.expect("a frame");
        assert!(frame.unwrap_err().is::<BodyTimeout>());
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        let flowing = StreamBody::new(futures_util::stream::iter([Ok::<_, std::io::Error>(Frame::data(
            Bytes::from_static(b"ok"),
        ))]));
        let body = Deadlined::new(flowing, Instant::now() + Duration::from_secs(30));
        assert_eq!(body.collect().await.unwrap().to_bytes(), "ok");
    }
}
