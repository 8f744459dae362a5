//! Bodies on their way through the proxy: the app's request body going upstream ([`RequestBody`]: bounded by
//! `policy.max_body_bytes`, its failure recorded for the handler) and the rule both directions share: trailer
//! fields are not forwarded ([`poll_data`]).
//!
//! Why trailers go: the proxy decides which fields reach the upstream (the app's `Authorization` never does) and
//! which reach the app, and it does so on header sections. A chunked HTTP/1.1 request's trailer section
//! (RFC 9112 §7.1.2) becomes a trailers frame in hyper, and hyper's HTTP/2 client sends it on, so an app's
//! `Authorization` trailer would reach an HTTP/2 upstream unchecked. RFC 9110 §6.5.1 lets a recipient discard
//! trailer fields; `Trailer` and `TE` are dropped as hop-by-hop already ([`super::headers`]).

use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU8, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Poll `body` for its next data frame; trailer frames (and any other kind) are dropped, never passed on.
pub(crate) fn poll_data<B>(body: Pin<&mut B>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
where
    B: HttpBody<Data = Bytes> + ?Sized,
{
    let mut body = body;
    loop {
        match ready!(body.as_mut().poll_frame(cx)) {
            Some(Ok(frame)) if !frame.is_data() => continue,
            other => return Poll::Ready(other),
        }
    }
}

/// Why the app's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFailure {
    /// More than `policy.max_body_bytes` arrived (413).
    TooLarge,
    /// The app's body broke off or was malformed, such as a bad chunk size (400).
    Broken,
}

/// Where a [`RequestBody`] records its failure, once, for the handler: hyper's HTTP/2 client only logs a body
/// error and resets the stream, so the error the handler gets back no longer says whose fault it was.
#[derive(Debug, Default)]
pub(crate) struct Failure(AtomicU8);

impl Failure {
    const NONE: u8 = 0;
    const TOO_LARGE: u8 = 1;
    const BROKEN: u8 = 2;

    /// The first failure recorded, if any.
    pub(crate) fn get(&self) -> Option<BodyFailure> {
        match self.0.load(Ordering::Acquire) {
            Self::TOO_LARGE => Some(BodyFailure::TooLarge),
            Self::BROKEN => Some(BodyFailure::Broken),
            _ => None,
        }
    }

    fn set(&self, failure: BodyFailure) {
        let value = match failure {
            BodyFailure::TooLarge => Self::TOO_LARGE,
            BodyFailure::Broken => Self::BROKEN,
        };
        let _ = self
            .0
            .compare_exchange(Self::NONE, value, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The error a [`RequestBody`] ends in.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestBodyError {
    /// Over `policy.max_body_bytes`.
    #[error("the request body exceeds policy.max_body_bytes")]
    TooLarge,
    /// The app's body failed.
    #[error("the request body is malformed or broke off: {0}")]
    Broken(#[source] axum::Error),
}

/// The app's request body as the upstream gets it: data only, at most `limit` bytes, and a failure recorded in
/// the [`Failure`] the handler holds. Unboxed (the pool sends this type), so the one allocation is the
/// [`Failure`]'s, and only for a body that is not empty: a bodiless request allocates nothing here.
#[derive(Debug)]
pub(crate) struct RequestBody {
    inner: Body,
    /// Bytes still allowed.
    remaining: u64,
    failure: Option<Arc<Failure>>,
}

impl RequestBody {
    /// No body.
    pub(crate) fn empty() -> Self {
        Self {
            inner: Body::empty(),
            remaining: 0,
            failure: None,
        }
    }

    /// `inner`, bounded to `limit` bytes; returns the body and, unless it is already at its end, where its
    /// failure will be recorded.
    pub(crate) fn new(inner: Body, limit: u64) -> (Self, Option<Arc<Failure>>) {
        let failure = (!inner.is_end_stream()).then(Arc::default);
        let body = Self {
            inner,
            remaining: limit,
            failure: failure.clone(),
        };
        (body, failure)
    }

    fn fail(&self, failure: BodyFailure) {
        if let Some(f) = &self.failure {
            f.set(failure);
        }
    }
}

impl HttpBody for RequestBody {
    type Data = Bytes;
    type Error = RequestBodyError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let polled = ready!(poll_data(Pin::new(&mut self.inner), cx));
        Poll::Ready(match polled {
            None => None,
            Some(Ok(frame)) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                if len > self.remaining {
                    self.remaining = 0;
                    self.fail(BodyFailure::TooLarge);
                    Some(Err(RequestBodyError::TooLarge))
                } else {
                    self.remaining -= len;
                    Some(Ok(frame))
                }
            }
            Some(Err(e)) => {
                self.fail(BodyFailure::Broken);
                Some(Err(RequestBodyError::Broken(e)))
            }
        })
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
    use http::HeaderMap;
    use http_body_util::{BodyExt as _, StreamBody};

    use super::*;

    fn frames(frames: Vec<Result<Frame<Bytes>, std::io::Error>>) -> Body {
        Body::new(StreamBody::new(futures_util::stream::iter(frames)))
    }

    fn trailers() -> Frame<Bytes> {
        let mut t = HeaderMap::new();
        t.insert(http::header::AUTHORIZATION, "Bearer app".parse().unwrap());
        Frame::trailers(t)
    }

    #[tokio::test]
    async fn trailers_are_dropped_and_data_passes() {
        let inner = frames(vec![Ok(Frame::data(Bytes::from_static(b"ab"))), Ok(trailers())]);
        let (mut body, failure) = RequestBody::new(inner, 1024);
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(frame.is_data(), "a trailers frame was passed on");
            seen.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(seen, b"ab");
        assert_eq!(failure.unwrap().get(), None);
    }

    #[tokio::test]
    async fn over_the_limit_and_broken_bodies_record_why() {
        let big = frames((0..2).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 600])))).collect());
        let (body, failure) = RequestBody::new(big, 1024);
        let e = body.collect().await.unwrap_err();
        assert!(matches!(e, RequestBodyError::TooLarge));
        assert_eq!(failure.unwrap().get(), Some(BodyFailure::TooLarge));

        let broken = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("invalid chunk size")),
        ]);
        let (body, failure) = RequestBody::new(broken, 1024);
        let e = body.collect().await.unwrap_err();
        assert!(matches!(e, RequestBodyError::Broken(_)));
        assert_eq!(failure.unwrap().get(), Some(BodyFailure::Broken));

        // At the limit exactly, it passes; an empty body has nothing to record.
        let exact = frames(vec![Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))]);
        let (body, failure) = RequestBody::new(exact, 1024);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1024);
        assert_eq!(failure.unwrap().get(), None);
        assert!(RequestBody::new(Body::empty(), 0).1.is_none());
    }

    #[test]
    fn the_first_failure_is_kept() {
        let f = Failure::default();
        f.set(BodyFailure::Broken);
        f.set(BodyFailure::TooLarge);
        assert_eq!(f.get(), Some(BodyFailure::Broken));
    }
}
