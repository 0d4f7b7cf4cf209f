//! TCP tuning binderd applies to the sockets it reads containers from: ACKs
//! at once, `TCP_QUICKACK` re-armed after every read.
//!
//! A Jupyter server (tornado) leaves Nagle's algorithm on for WebSockets, so
//! of two small frames it sends in a row the second waits until the first is
//! acknowledged; a Linux receiver delays that ACK by up to 40 ms. Each kernel
//! message pair of a cell (`status: busy`, then the input, the output, the
//! reply) pays it: `print(6*7)` takes ~45 ms on a warm kernel instead of ~4.
//! binderd is the receiver of everything a container sends, so it can take
//! that stall away for every reader without touching the image or the page:
//! in quick-ACK mode the kernel acknowledges each segment as it arrives. The
//! mode is not sticky (Linux leaves it after a few segments when traffic
//! looks interactive), hence one `setsockopt` after each read that returned
//! bytes. `TCP_NODELAY`, set on every socket binderd opens, is the other
//! half: binderd's own small writes never wait for an ACK either.
//!
//! A leaf: the proxy's connections (`upstream`, `proxy`), the kernel
//! client and the process sandbox's relay all use it.

use std::io;
use std::os::fd::AsFd;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Asks the kernel to acknowledge what arrives on `socket` at once. Errors
/// are ignored: on a socket that is not TCP this is only a lost speed-up.
pub fn quick_ack(socket: &impl AsFd) {
    let _ = rustix::net::sockopt::set_tcp_quickack(socket, true);
}

/// A stream that re-arms [`quick_ack`] after every read that returned bytes.
#[derive(Debug)]
pub struct QuickAck<S>(pub S);

/// What [`QuickAck`] can wrap: a TCP stream or a read half of one.
pub trait OnTcp {
    fn tcp(&self) -> &TcpStream;
}

impl OnTcp for TcpStream {
    fn tcp(&self) -> &TcpStream {
        self
    }
}

impl OnTcp for tokio::net::tcp::ReadHalf<'_> {
    fn tcp(&self) -> &TcpStream {
        self.as_ref()
    }
}

impl<S: AsyncRead + OnTcp + Unpin> AsyncRead for QuickAck<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.0).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            quick_ack(self.0.tcp());
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for QuickAck<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Whether Linux has `socket` in quick-ACK mode now (`TCP_QUICKACK` as
    /// `getsockopt` reads it: not in "pingpong", the delayed-ACK mode it
    /// enters once traffic goes both ways).
    fn in_quick_mode(socket: &TcpStream) -> bool {
        rustix::net::sockopt::tcp_quickack(socket).unwrap()
    }

    /// The mechanism, not a timing: after request/answer exchanges (which
    /// put a plain socket in delayed-ACK mode), a socket read through
    /// [`QuickAck`] is in quick-ACK mode after each answer; the plain one,
    /// the control, is not.
    #[tokio::test]
    async fn reads_leave_the_socket_acking_at_once() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        for wrapped in [false, true] {
            let client = TcpStream::connect(addr).await.unwrap();
            let (mut server, _) = listener.accept().await.unwrap();
            let mut client = QuickAck(client);
            let mut buf = [0u8; 64];
            let mut quick_after_answers = 0;
            for _ in 0..20 {
                client.0.write_all(b"request").await.unwrap();
                server.read_exact(&mut buf[..7]).await.unwrap();
                server.write_all(b"answer").await.unwrap();
                if wrapped {
                    client.read_exact(&mut buf[..6]).await.unwrap();
                } else {
                    client.0.read_exact(&mut buf[..6]).await.unwrap();
                }
                quick_after_answers += usize::from(in_quick_mode(&client.0));
            }
            if wrapped {
                assert_eq!(quick_after_answers, 20, "a read left delayed ACKs on");
            } else {
                assert!(
                    quick_after_answers < 20,
                    "the control never left quick-ACK mode: the check proves nothing here"
                );
            }
        }
    }
}
