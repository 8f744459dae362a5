//! A connection's I/O object: it reports reads and writes to the connection's [`Activity`], and first yields
//! bytes already read from it (those read to tell HTTP/2 from HTTP/1, and a pipelined request hyper had buffered
//! when the connection was parked), so the next hyper connection sees them.

use std::{
    io,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use bytes::{Buf as _, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;

/// `inner`, tracked, with unread bytes in front.
#[derive(Debug)]
pub(super) struct ConnIo<I> {
    inner: I,
    activity: Arc<Activity>,
    unread: Bytes,
}

impl<I> ConnIo<I> {
    pub(super) fn new(inner: I, activity: Arc<Activity>) -> Self {
        Self {
            inner,
            activity,
            unread: Bytes::new(),
        }
    }

    pub(super) fn get_ref(&self) -> &I {
        &self.inner
    }

    /// Put `bytes` back in front of what is still to be read.
    pub(super) fn unread(&mut self, bytes: Bytes) {
        self.unread = match (self.unread.is_empty(), bytes.is_empty()) {
            // An empty `Bytes` cut from hyper's buffer would keep all of it alive.
            (_, true) => std::mem::take(&mut self.unread),
            (true, false) => bytes,
            (false, false) => [bytes, std::mem::take(&mut self.unread)].concat().into(),
        };
    }

    /// Whether bytes read earlier wait to be read again.
    pub(super) fn has_unread(&self) -> bool {
        !self.unread.is_empty()
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ConnIo<I> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if !self.unread.is_empty() {
            // Counted as activity when they were first read.
            let n = self.unread.len().min(buf.remaining());
            buf.put_slice(&self.unread[..n]);
            self.unread.advance(n);
            if self.unread.is_empty() {
                self.unread = Bytes::new();
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let result = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read();
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ConnIo<I> {
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn unread_bytes_come_first_then_the_stream() {
        let (mut near, far) = tokio::io::duplex(64);
        near.write_all(b" world").await.unwrap();
        drop(near);
        let mut io = ConnIo::new(
            far,
            Arc::new(Activity::new(super::super::in_flight::RequestsInFlight::new(
                crate::shutdown::Shutdown::new().signal(),
            ))),
        );
        io.unread(Bytes::from_static(b"llo"));
        io.unread(Bytes::from_static(b"he"));
        io.unread(Bytes::new());
        let mut small = [0u8; 3];
        assert_eq!(
            io.read(&mut small).await.unwrap(),
            3,
            "a short read buffer takes part of them"
        );
        let mut rest = Vec::new();
        io.read_to_end(&mut rest).await.unwrap();
        assert_eq!([&small[..], &rest].concat(), b"hello world");
        assert!(!io.has_unread());
    }
}
