//! Bodies on their way through the proxy: the app's request body going upstream ([`RequestBody`]: bounded by
//! `policy.max_body_bytes`, its errors tagged as the app's) and the rule both directions share: trailer fields
//! are not forwarded ([`poll_data`]).
//!
//! Why trailers go: the proxy decides which fields reach the upstream (the app's `Authorization` never does) and
//! which reach the app, and it does so on header sections. A chunked HTTP/1.1 request's trailer section
//! (RFC 9112 §7.1.2) becomes a trailers frame in hyper, and hyper's HTTP/2 client sends it on, so an app's
//! `Authorization` trailer would reach an HTTP/2 upstream unchecked. RFC 9110 §6.5.1 lets a recipient discard
//! trailer fields; `Trailer` and `TE` are dropped as hop-by-hop already ([`super::headers`]).

use std::{
    pin::Pin,
    task::{ready, Context, Poll},
};

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// Poll `body` for its next data frame; trailer frames (and any other kind) are dropped, never passed on.
pub fn poll_data<B>(body: Pin<&mut B>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, B::Error>>>
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

/// The error a [`RequestBody`] ends in.
#[derive(Debug, thiserror::Error)]
pub enum RequestBodyError {
    /// Over `policy.max_body_bytes`.
    #[error("the request body exceeds policy.max_body_bytes")]
    TooLarge,
    /// The app's body failed.
    #[error("the request body is malformed or broke off: {0}")]
    Broken(#[source] axum::Error),
}

/// The app's request body as the upstream gets it: data only, at most `limit` bytes, errors tagged as the app's
/// ([`RequestBodyError`]). Unboxed: the pool sends this type, so wrapping costs no allocation.
#[derive(Debug)]
pub struct RequestBody {
    inner: Body,
    /// Bytes still allowed.
    remaining: u64,
}

impl RequestBody {
    /// No body.
    pub fn empty() -> Self {
        Self {
            inner: Body::empty(),
            remaining: 0,
        }
    }

    /// `inner`, bounded to `limit` bytes.
    pub fn new(inner: Body, limit: u64) -> Self {
        Self {
            inner,
            remaining: limit,
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
                    Some(Err(RequestBodyError::TooLarge))
                } else {
                    self.remaining -= len;
                    Some(Ok(frame))
                }
            }
            Some(Err(e)) => Some(Err(RequestBodyError::Broken(e))),
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
        let mut body = RequestBody::new(inner, 1024);
        let mut seen = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.unwrap();
            assert!(frame.is_data(), "a trailers frame was passed on");
            seen.extend_from_slice(frame.data_ref().unwrap());
        }
        assert_eq!(seen, b"ab");
    }

    #[tokio::test]
    async fn over_the_limit_and_broken_bodies_end_in_their_errors() {
        let big = frames((0..2).map(|_| Ok(Frame::data(Bytes::from(vec![b'x'; 600])))).collect());
        let e = RequestBody::new(big, 1024).collect().await.unwrap_err();
        assert!(matches!(e, RequestBodyError::TooLarge));
        let broken = frames(vec![
            Ok(Frame::data(Bytes::from_static(b"ab"))),
            Err(std::io::Error::other("invalid chunk size")),
        ]);
        let e = RequestBody::new(broken, 1024).collect().await.unwrap_err();
        assert!(matches!(e, RequestBodyError::Broken(_)));
        // At the limit exactly, it passes.
        let exact = frames(vec![Ok(Frame::data(Bytes::from(vec![b'x'; 1024])))]);
        let body = RequestBody::new(exact, 1024);
        assert_eq!(body.collect().await.unwrap().to_bytes().len(), 1024);
    }
}
