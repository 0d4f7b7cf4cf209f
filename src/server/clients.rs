//! Each client's share of the connection cap: one client (an IPv4 address,
//! an IPv6 /64) holding connections must not starve the rest. A connection
//! over its client's share is answered 429 at once and closed.

use std::net::IpAddr;
use std::sync::Arc;

use dashmap::DashMap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::ratelimit::client_key;

/// Connections held, by client.
pub(super) struct Clients {
    held: DashMap<IpAddr, usize>,
    cap: usize,
}

/// One connection's place in its client's share; given back when dropped.
pub(super) struct Share {
    clients: Arc<Clients>,
    key: IpAddr,
}

impl Clients {
    pub(super) fn new(cap: usize) -> Clients {
        Clients {
            held: DashMap::new(),
            cap: cap.max(1),
        }
    }

    /// A place for a connection from `peer`, unless its client holds its
    /// whole share.
    pub(super) fn admit(self: &Arc<Self>, peer: IpAddr) -> Option<Share> {
        let key = client_key(peer);
        let mut held = self.held.entry(key).or_insert(0);
        if *held >= self.cap {
            return None;
        }
        *held += 1;
        Some(Share {
            clients: self.clone(),
            key,
        })
    }
}

impl Drop for Share {
    fn drop(&mut self) {
        if let dashmap::mapref::entry::Entry::Occupied(mut e) = self.clients.held.entry(self.key) {
            *e.get_mut() -= 1;
            if *e.get() == 0 {
                e.remove();
            }
        }
    }
}

const REFUSED: &[u8] = b"HTTP/1.1 429 Too Many Requests\r\n\
content-type: application/json\r\nretry-after: 5\r\nconnection: close\r\n\
content-length: 79\r\n\r\n\
{\"error\":{\"code\":429,\"message\":\"too many open connections from this address\"}}\n";

/// Answers a connection over its client's share and closes it.
pub(super) fn refuse(mut stream: TcpStream) {
    tokio::spawn(async move {
        let _ = stream.write_all(REFUSED).await;
        let _ = stream.shutdown().await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_is_per_client_and_given_back() {
        let clients = Arc::new(Clients::new(2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let (x, y) = (clients.admit(a).unwrap(), clients.admit(a).unwrap());
        assert!(clients.admit(a).is_none());
        assert!(clients.admit("10.0.0.2".parse().unwrap()).is_some());
        let v6 = |s: &str| s.parse::<IpAddr>().unwrap();
        let _p = clients.admit(v6("2001:db8::1")).unwrap();
        let _q = clients.admit(v6("2001:db8::2")).unwrap();
        assert!(clients.admit(v6("2001:db8::3")).is_none(), "one /64");
        drop(x);
        assert!(clients.admit(a).is_some());
        drop(y);
        let body = &REFUSED[REFUSED.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
        assert_eq!(body.len(), 79);
        assert!(serde_json::from_slice::<serde_json::Value>(body).is_ok());
    }
}
