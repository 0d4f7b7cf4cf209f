//! A WebSocket to a container that binderd opens and holds, idle, for a
//! client to take over later: a warm kernel's channels, opened (and nudged
//! by the server) before the handout, so the reader's first cell does not
//! wait for a new connection's set-up (`api::warm_kernel::join`).
//!
//! binderd speaks just enough of RFC 6455 to hold one: its own handshake,
//! offering no extension and no subprotocol (what follows the `101` is
//! plain frames, which any client can be handed), and a keeper task that,
//! while nobody has the socket, reads the server's frames, drops data
//! frames, answers pings (a server that pings would otherwise close an idle
//! connection), and stops at a frame boundary when the socket is taken:
//! the part of a frame it has already read goes to the taker first. A
//! socket taken in the middle of a frame or of a fragmented message, or
//! one the server closed, is not given (the taker connects the usual way).

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

/// Longest handshake answer read.
const MAX_HEAD: usize = 16 * 1024;
/// A data frame up to this long is held until it is whole (see [`keep`]).
const MAX_HELD_FRAME: u64 = 64 * 1024;
/// How long a keeper may take to stop when its socket is taken.
const TAKE_TIMEOUT: Duration = Duration::from_secs(1);
/// How long the handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum HoldError {
    #[error("connecting: {0}")]
    Io(#[from] std::io::Error),
    #[error("the server did not accept the WebSocket: {0}")]
    Refused(String),
    #[error("the WebSocket handshake took too long")]
    Timeout,
}

/// An open WebSocket, held by its keeper until [`Held::take`].
#[derive(Debug)]
pub struct Held {
    stop: oneshot::Sender<()>,
    keeper: JoinHandle<Option<Taken>>,
}

/// A held socket, taken at a frame boundary: `read` is what has arrived
/// of the next frame (the taker's client must get it before anything else).
#[derive(Debug)]
pub struct Taken {
    pub stream: TcpStream,
    pub read: BytesMut,
}

/// Opens a WebSocket to `addr` at `path_and_query` (origin-form, as sent)
/// and holds it.
pub async fn open(addr: SocketAddr, path_and_query: &str) -> Result<Held, HoldError> {
    let (stream, read) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(addr, path_and_query))
        .await
        .map_err(|_| HoldError::Timeout)??;
    let (stop, stopped) = oneshot::channel();
    let keeper = tokio::spawn(keep(stream, read, stopped));
    Ok(Held { stop, keeper })
}

impl Held {
    /// Stops the keeper and gives its socket, or `None` when the server
    /// closed it, or it cannot be given at a frame boundary.
    /// A keeper stuck writing a pong to a server that reads nothing is
    /// given up on after [`TAKE_TIMEOUT`].
    pub async fn take(mut self) -> Option<Taken> {
        let _ = self.stop.send(());
        match tokio::time::timeout(TAKE_TIMEOUT, &mut self.keeper).await {
            Ok(taken) => taken.ok().flatten(),
            Err(_) => {
                self.keeper.abort();
                None
            }
        }
    }

    /// True while the keeper holds the socket (the server has not closed it).
    pub fn is_open(&self) -> bool {
        !self.keeper.is_finished()
    }
}

/// The client's half of the opening handshake. Answers the stream and what
/// came after the server's head.
async fn handshake(addr: SocketAddr, target: &str) -> Result<(TcpStream, BytesMut), HoldError> {
    if target.contains(['\r', '\n', ' ']) || !target.starts_with('/') {
        return Err(HoldError::Refused(format!(
            "not a request target: {target:?}"
        )));
    }
    let mut stream = super::connect(addr).await?;
    let key = generate_key();
    let head = format!(
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: binderd-kernels\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(HoldError::Refused("closed before answering".into()));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        let len = match resp.parse(&buf) {
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => continue,
            Ok(httparse::Status::Partial) => {
                return Err(HoldError::Refused("an answer head too long".into()))
            }
            Err(e) => return Err(HoldError::Refused(e.to_string())),
        };
        if resp.code != Some(101) {
            return Err(HoldError::Refused(format!(
                "answered {}",
                resp.code.unwrap_or_default()
            )));
        }
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| h.value)
        };
        if header("sec-websocket-accept") != Some(derive_accept_key(key.as_bytes()).as_bytes()) {
            return Err(HoldError::Refused("a wrong Sec-WebSocket-Accept".into()));
        }
        // Neither was offered: frames with either could not be handed to
        // a client that negotiated neither.
        for offered_none in ["sec-websocket-extensions", "sec-websocket-protocol"] {
            if header(offered_none).is_some() {
                return Err(HoldError::Refused(format!("an unasked {offered_none}")));
            }
        }
        buf.advance(len);
        return Ok((stream, buf));
    }
}

/// A frame's head, as far as the keeper needs it.
#[derive(Debug, PartialEq, Eq)]
enum Head {
    /// Not all of it has arrived.
    Partial,
    /// Not a frame a server may send here (masked, reserved bits, a long
    /// control frame, an unknown opcode).
    Bad,
    Frame {
        fin: bool,
        opcode: u8,
        /// Bytes of the head (before the payload).
        len: usize,
        payload: u64,
    },
}

fn head(buf: &[u8]) -> Head {
    let (Some(&b0), Some(&b1)) = (buf.first(), buf.get(1)) else {
        return Head::Partial;
    };
    let (fin, rsv, opcode) = (b0 & 0x80 != 0, b0 & 0x70, b0 & 0x0f);
    if rsv != 0 || b1 & 0x80 != 0 || !matches!(opcode, 0x0..=0x2 | 0x8..=0xa) {
        return Head::Bad;
    }
    let (len, payload) = match b1 & 0x7f {
        126 => match buf.get(2..4) {
            Some(b) => (4, u64::from(u16::from_be_bytes([b[0], b[1]]))),
            None => return Head::Partial,
        },
        127 => match buf.get(2..10) {
            Some(b) => (10, u64::from_be_bytes(b.try_into().unwrap_or_default())),
            None => return Head::Partial,
        },
        n => (2, u64::from(n)),
    };
    if opcode >= 0x8 && (payload > 125 || !fin) {
        return Head::Bad;
    }
    Head::Frame {
        fin,
        opcode,
        len,
        payload,
    }
}

/// A client's pong (masked, as every client frame is) carrying `payload`.
fn pong(payload: &[u8]) -> Vec<u8> {
    let mask: [u8; 4] = rand::random();
    let mut frame = Vec::with_capacity(6 + payload.len());
    frame.push(0x8a);
    frame.push(0x80 | payload.len() as u8);
    frame.extend_from_slice(&mask);
    frame.extend(payload.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    frame
}

/// Holds `stream` until told to stop (see the module's docs).
async fn keep(
    mut stream: TcpStream,
    mut buf: BytesMut,
    mut stop: oneshot::Receiver<()>,
) -> Option<Taken> {
    // Bytes still to come of a data frame being dropped.
    let mut skip: u64 = 0;
    // A data frame without FIN came: the message goes on.
    let mut mid_message = false;
    loop {
        loop {
            if skip > 0 {
                let n = skip.min(buf.len() as u64) as usize;
                buf.advance(n);
                skip -= n as u64;
                if skip > 0 {
                    break;
                }
            }
            match head(&buf) {
                Head::Partial => break,
                Head::Bad => return None,
                Head::Frame {
                    fin,
                    opcode,
                    len,
                    payload,
                } => match opcode {
                    // Dropped once whole, so that a frame partly come
                    // when the socket is taken goes to the taker whole; a
                    // big one is dropped as it comes (not held in memory).
                    0x0..=0x2 => {
                        let whole = len as u64 + payload <= buf.len() as u64;
                        if !whole && payload < MAX_HELD_FRAME {
                            break;
                        }
                        mid_message = !fin;
                        buf.advance(len);
                        skip = payload;
                    }
                    // Close: the server is going.
                    0x8 => return None,
                    _ => {
                        let end = len + payload as usize;
                        if buf.len() < end {
                            break;
                        }
                        if opcode == 0x9 {
                            let answer = pong(&buf[len..end]);
                            stream.write_all(&answer).await.ok()?;
                        }
                        buf.advance(end);
                    }
                },
            }
        }
        tokio::select! {
            biased;
            _ = &mut stop => {
                return (skip == 0 && !mid_message).then_some(Taken { stream, read: buf });
            }
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => crate::tcp::quick_ack(&stream),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server frame (unmasked).
    fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        match payload.len() {
            n if n < 126 => f.push(n as u8),
            n if n <= 0xffff => {
                f.push(126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn heads_are_read_as_servers_send_them() {
        assert_eq!(head(&[0x81]), Head::Partial);
        assert_eq!(
            head(&frame(true, 1, b"hi")),
            Head::Frame {
                fin: true,
                opcode: 1,
                len: 2,
                payload: 2
            }
        );
        let long = frame(false, 2, &[0; 300]);
        assert_eq!(head(&long[..3]), Head::Partial);
        assert_eq!(
            head(&long),
            Head::Frame {
                fin: false,
                opcode: 2,
                len: 4,
                payload: 300
            }
        );
        let huge = frame(true, 1, &vec![0; 70_000]);
        assert!(matches!(
            head(&huge),
            Head::Frame {
                len: 10,
                payload: 70_000,
                ..
            }
        ));
        assert_eq!(head(&[0x81, 0x82]), Head::Bad, "masked");
        assert_eq!(head(&[0xc1, 0x02]), Head::Bad, "compressed (RSV1)");
        assert_eq!(head(&[0x83, 0x00]), Head::Bad, "reserved opcode");
        assert_eq!(head(&[0x09, 0x00]), Head::Bad, "a fragmented ping");
        assert_eq!(head(&[0x89, 126, 0, 200]), Head::Bad, "a long ping");
    }

    #[test]
    fn a_pong_is_masked_and_carries_the_ping() {
        let p = pong(b"abc");
        assert_eq!(p[..2], [0x8a, 0x83]);
        let mask = &p[2..6];
        let unmasked: Vec<u8> = p[6..]
            .iter()
            .zip(mask.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"abc");
    }

    /// A keeper on one end of a loopback connection; the other end plays
    /// the server.
    async fn kept(already: &[u8]) -> (Held, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (stop, stopped) = oneshot::channel();
        let keeper = tokio::spawn(keep(client.unwrap(), BytesMut::from(already), stopped));
        (Held { stop, keeper }, server.unwrap().0)
    }

    /// Waits until the keeper has read everything sent so far (it answers a
    /// ping sent last).
    async fn settle(server: &mut TcpStream) {
        server.write_all(&frame(true, 9, b"s")).await.unwrap();
        let mut got = [0u8; 7];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(got[..2], [0x8a, 0x81], "a pong");
        assert_eq!(got[6] ^ got[2], b's');
    }

    #[tokio::test]
    async fn data_is_dropped_pings_answered_and_the_next_frame_kept_whole() {
        let first = frame(true, 1, b"before the handshake's end");
        let (held, mut server) = kept(&first).await;
        let mut sent = frame(true, 1, &[b'x'; 5000]);
        sent.extend(frame(false, 1, b"part one"));
        sent.extend(frame(true, 0, b"part two"));
        sent.extend(frame(true, 2, &[7; 200]));
        server.write_all(&sent).await.unwrap();
        settle(&mut server).await;
        // Half of the next frame has come when the socket is taken.
        let next = frame(true, 1, b"{\"for\": \"the reader\"}");
        server.write_all(&next[..5]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut taken = held.take().await.expect("taken at a frame boundary");
        assert_eq!(&taken.read[..], &next[..5]);
        server.write_all(&next[5..]).await.unwrap();
        let mut rest = vec![0u8; next.len() - 5];
        taken.stream.read_exact(&mut rest).await.unwrap();
        assert_eq!(rest, next[5..]);
        // The taker writes; the server reads it as sent.
        taken.stream.write_all(b"from the reader").await.unwrap();
        let mut got = [0u8; 15];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"from the reader");
    }

    #[tokio::test]
    async fn a_socket_in_the_middle_of_a_frame_or_message_is_not_given() {
        // Mid-frame: the keeper dropped the start of a frame's payload.
        let (held, mut server) = kept(&[]).await;
        let big = frame(true, 1, &vec![b'y'; 100_000]);
        server.write_all(&big[..70_000]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(held.is_open());
        assert!(held.take().await.is_none());

        // Mid-message: the first fragment came, the last has not.
        let (held, mut server) = kept(&[]).await;
        server.write_all(&frame(false, 1, b"one")).await.unwrap();
        settle(&mut server).await;
        assert!(held.take().await.is_none());

        // Closed by the server.
        let (held, server) = kept(&[]).await;
        drop(server);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!held.is_open());
        assert!(held.take().await.is_none());

        // A server that floods pings and reads nothing: the keeper's
        // pongs stall; taking the socket gives up in time.
        let (held, mut server) = kept(&[]).await;
        let pings: Vec<u8> = (0..200_000)
            .flat_map(|_| frame(true, 9, &[1; 125]))
            .collect();
        let _ = tokio::time::timeout(Duration::from_secs(2), server.write_all(&pings)).await;
        let began = std::time::Instant::now();
        assert!(held.take().await.is_none());
        assert!(began.elapsed() < Duration::from_secs(3));

        // A close frame.
        let (held, mut server) = kept(&[]).await;
        server.write_all(&frame(true, 8, b"")).await.unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(held.take().await.is_none());
    }

    #[tokio::test]
    async fn the_handshake_checks_the_answer() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let serve = |answer: fn(&str) -> String| {
            let listener = &listener;
            async move {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap();
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let key = req
                    .lines()
                    .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
                    .unwrap()
                    .to_owned();
                s.write_all(answer(&key).as_bytes()).await.unwrap();
                s.write_all(&frame(true, 1, b"hello")).await.unwrap();
                (s, req)
            }
        };
        let good = |key: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
        };
        let (held, (mut server, req)) =
            tokio::join!(open(addr, "/k/channels?session_id=s"), serve(good));
        assert!(
            req.starts_with("GET /k/channels?session_id=s HTTP/1.1\r\n"),
            "{req}"
        );
        let held = held.unwrap();
        settle(&mut server).await;
        assert!(
            held.take().await.unwrap().read.is_empty(),
            "hello was dropped"
        );

        let refused = |_: &str| "HTTP/1.1 403 Forbidden\r\ncontent-length: 0\r\n\r\n".to_owned();
        let (held, _) = tokio::join!(open(addr, "/k"), serve(refused));
        assert!(matches!(held, Err(HoldError::Refused(m)) if m.contains("403")));
        let wrong = |_: &str| {
            "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n".to_owned()
        };
        let (held, _) = tokio::join!(open(addr, "/k"), serve(wrong));
        assert!(matches!(held, Err(HoldError::Refused(m)) if m.contains("Accept")));
        let deflate = |key: &str| {
            format!(
                "HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
        };
        let (held, _) = tokio::join!(open(addr, "/k"), serve(deflate));
        assert!(matches!(held, Err(HoldError::Refused(m)) if m.contains("extensions")));
        assert!(matches!(
            open(addr, "/k HTTP/1.1\r\nX: y").await,
            Err(HoldError::Refused(_))
        ));
    }
}
