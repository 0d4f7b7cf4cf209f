//! The fast path's request head: parsed with `httparse` and, when it is a
//! plain request for an assigned binder, rewritten for the container in the
//! connection's reused buffer. Which binder it reaches is
//! [`api::user::reach`]'s decision, the same the routes make.
//!
//! [`api::user::reach`]: crate::api::user::reach

use crate::api::user::{reach, Reach};
use crate::api::App;
use crate::pool::Entry;
use crate::proxy::exchange::{connection_tokens, is_hop_by_hop, Outgoing};

/// Longest request head taken on the fast path (hyper takes longer ones).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Headers a fast-path request may have (hyper takes more).
const MAX_HEADERS: usize = 64;

/// What to do with the head at the start of the buffer.
pub(super) enum Plan {
    Partial,
    HandOver,
    Go(Go),
}

pub(super) struct Go {
    pub(super) req: Outgoing,
    pub(super) entry: Entry,
    pub(super) head_len: usize,
    pub(super) html: bool,
}

/// Parses the head at the start of `buf` and, if it is a fast-path
/// request, rewrites it for the container: the path without the prefix
/// when the binding strips it, hop-by-hop headers (and those `Connection`
/// names) and binderd's own key left out, the client's address added to
/// `X-Forwarded-For` (`forwarded`, which ends the head). The head goes
/// into `out`.
pub(super) fn plan(app: &App, buf: &[u8], out: &mut Vec<u8>, forwarded: &[u8]) -> Plan {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut headers);
    let head_len = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Plan::Partial,
        Err(_) => return Plan::HandOver,
    };
    let (Some(method), Some(target), Some(1)) = (r.method, r.path, r.version) else {
        return Plan::HandOver;
    };
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    // Doubled slashes are folded by the routes first.
    if !path.starts_with("/user/") || path.contains("//") {
        return Plan::HandOver;
    }
    // Anything but an assigned binder's plain request is the routes' to
    // answer, with the same decision.
    // The host matters only when every binder has one of its own.
    let host = match app.config.binder_host {
        Some(_) => r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("host"))
            .and_then(|h| std::str::from_utf8(h.value).ok()),
        None => None,
    };
    let Ok(Reach {
        entry,
        rest,
        kernel: None,
        channels: false,
    }) = reach(app, method, host, path)
    else {
        return Plan::HandOver;
    };
    let named = connection_tokens(r.headers);
    // An upgrade (a WebSocket) keeps its `Connection: upgrade` and
    // `Upgrade` for the container; the connection becomes a tunnel if the
    // container agrees.
    let upgrade = if named.iter().any(|t| t.eq_ignore_ascii_case("upgrade")) {
        match r
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        {
            Some(h) => Some(h.value),
            None => return Plan::HandOver,
        }
    } else {
        None
    };
    let client_close = named.iter().any(|t| t.eq_ignore_ascii_case("close"));

    let strip = entry.pool.current().binding.strip_prefix;
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    out.extend_from_slice(if strip { rest } else { path }.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut body_len: Option<u64> = None;
    let mut host = false;
    let mut html = false;
    let mut forwarded_for: Option<&[u8]> = None;
    for h in r.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("expect") {
            return Plan::HandOver; // chunked uploads, 100-continue: hyper's
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, body_len) {
                (Some(n), None) => body_len = Some(n),
                (Some(n), Some(m)) if n == m => continue,
                _ => return Plan::HandOver, // hyper answers 400
            }
        } else if name.eq_ignore_ascii_case("host") {
            host = true;
        } else if name.eq_ignore_ascii_case("accept") {
            html |= h.value.windows(9).any(|w| w == b"text/html");
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for.get_or_insert(h.value);
            continue;
        } else if name.eq_ignore_ascii_case("authorization") && app.keys.is_own_key(h.value) {
            continue; // binderd's own key is not the container's business
        }
        if is_hop_by_hop(name) || named.iter().any(|t| t.eq_ignore_ascii_case(name)) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    if !host {
        return Plan::HandOver; // HTTP/1.1 needs one: hyper answers
    }
    if let Some(protocol) = upgrade {
        if body_len.is_some_and(|n| n > 0) {
            return Plan::HandOver;
        }
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(protocol);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(forwarded);
    let idempotent = matches!(method, "GET" | "HEAD" | "OPTIONS");
    Plan::Go(Go {
        req: Outgoing {
            body_len: body_len.unwrap_or(0),
            head_method: method == "HEAD",
            idempotent,
            client_close,
            upgrade: upgrade.is_some(),
        },
        entry,
        head_len,
        html,
    })
}
