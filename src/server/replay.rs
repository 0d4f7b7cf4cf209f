//! A connection handed to hyper: what the fast path read of it first, then
//! the rest, from the socket. Its writes time out: a client that takes no
//! bytes for the write timeout gets an error instead of holding the
//! connection (and, for a tunnel, the container's) for good. The timer is
//! made only when a write has to wait.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// A connection handed to hyper: what was read of it first, then the rest.
pub(super) struct Replay {
    read: BytesMut,
    stream: TcpStream,
    write_timeout: Duration,
    /// Since when a write has been waiting (none while writes go through).
    stalled: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Replay {
    pub(super) fn new(read: BytesMut, stream: TcpStream) -> Replay {
        Replay {
            read,
            stream,
            write_timeout: Duration::MAX,
            stalled: None,
        }
    }

    /// Writes that wait `timeout` without progress fail.
    pub(super) fn with_write_timeout(mut self, timeout: Duration) -> Replay {
        self.write_timeout = timeout;
        self
    }

    /// `poll` of a write, failing once writes have waited the timeout.
    fn timed<T>(
        &mut self,
        cx: &mut Context<'_>,
        poll: impl FnOnce(Pin<&mut TcpStream>, &mut Context<'_>) -> Poll<std::io::Result<T>>,
    ) -> Poll<std::io::Result<T>> {
        match poll(Pin::new(&mut self.stream), cx) {
            Poll::Ready(done) => {
                self.stalled = None;
                Poll::Ready(done)
            }
            Poll::Pending => {
                let timeout = self.write_timeout;
                if timeout == Duration::MAX {
                    return Poll::Pending;
                }
                let stalled = self
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client took no bytes within the write timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    /// Out of this runtime's reactor, to move to another.
    pub(super) fn into_std(self) -> std::io::Result<(BytesMut, std::net::TcpStream)> {
        Ok((self.read, self.stream.into_std()?))
    }

    /// Into the current runtime's reactor.
    pub(super) fn from_std(read: BytesMut, stream: std::net::TcpStream) -> std::io::Result<Replay> {
        Ok(Replay::new(read, TcpStream::from_std(stream)?))
    }
}

impl AsyncRead for Replay {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if this.read.is_empty() {
            return Pin::new(&mut this.stream).poll_read(cx, buf);
        }
        let n = this.read.len().min(buf.remaining());
        buf.put_slice(&this.read[..n]);
        this.read.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Replay {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut().timed(cx, |s, cx| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.get_mut()
            .timed(cx, |s, cx| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        // (A TCP flush is immediate: only writes wait.)
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
