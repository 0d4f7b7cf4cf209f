//! Where a process binder's server listens: a loopback port binderd picks
//! (or, for a binder with a network namespace of its own, the listener
//! binderd holds on the host side).

use std::net::{Ipv4Addr, TcpListener};

use crate::backend::BackendError;

/// Where a binder's `{port}` comes from: below Linux's default ephemeral
/// range (32768–60999). The port is free when it is picked, but the server
/// binds it only once it has started (a second or more for a real one);
/// a port from the ephemeral range could meanwhile be given to any outgoing
/// connection — binderd's own readiness checks and proxied requests make
/// thousands — and the server would then fail to start.
const PORTS: std::ops::Range<u16> = 20_000..32_768;

/// A binder's port, and the host-side listener binderd holds for it when it
/// has a network namespace of its own (`own_network`): the listener is
/// handed to the sandbox helper, which relays into the namespace (the same
/// port number inside). Otherwise the server binds the host's loopback port
/// itself.
pub(super) fn binder_port(own_network: bool) -> Result<(u16, Option<TcpListener>), BackendError> {
    if own_network {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        Ok((listener.local_addr()?.port(), Some(listener)))
    } else {
        Ok((free_port()?, None))
    }
}

/// The next port to try, as an offset into [`PORTS`]: one cursor for the
/// whole process, starting at a random place, so concurrent starts (of one
/// backend or several) never pick the same port while a server is still
/// on its way to binding it.
fn next_port() -> u16 {
    static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
    let len = u32::from(PORTS.end - PORTS.start);
    let next = NEXT.get_or_init(|| rand::random::<u32>().into());
    let offset = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % len;
    PORTS.start + offset as u16
}

/// A loopback port nothing is bound to (a live binder's server holds its
/// own, so it is skipped).
fn free_port() -> Result<u16, BackendError> {
    free_port_from(next_port)
}

fn free_port_from(mut next: impl FnMut() -> u16) -> Result<u16, BackendError> {
    for _ in PORTS {
        let port = next();
        if TcpListener::bind((Ipv4Addr::LOCALHOST, port)).is_ok() {
            return Ok(port);
        }
    }
    Err(BackendError::Start(format!(
        "no free loopback port in {}–{}",
        PORTS.start,
        PORTS.end - 1
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_come_from_below_the_ephemeral_range_once_each_and_held_ones_are_skipped() {
        // Other processes on the machine may take a port between its pick
        // and a bind here (that is the race a server start can lose, and
        // why the picks stay below the ephemeral range): so the picks are
        // checked without holding them, and the port held for the skip
        // check is whichever pick this test binds first.
        let mut seen = std::collections::HashSet::new();
        for _ in 0..300 {
            let port = free_port().unwrap();
            assert!(PORTS.contains(&port), "{port}");
            assert!(seen.insert(port), "{port} picked twice");
        }
        let held = std::iter::repeat_with(|| free_port().unwrap())
            .take(20)
            .find_map(|port| TcpListener::bind((Ipv4Addr::LOCALHOST, port)).ok())
            .expect("one of 20 free picks could be bound");
        let taken = held.local_addr().unwrap().port();
        let mut offered = Vec::new();
        let picked = free_port_from(|| {
            let port = if offered.is_empty() {
                taken
            } else {
                next_port()
            };
            offered.push(port);
            port
        })
        .unwrap();
        assert_eq!(offered[0], taken);
        assert_ne!(picked, taken, "a port something holds is passed over");
        assert_eq!(offered.last(), Some(&picked));
    }
}
