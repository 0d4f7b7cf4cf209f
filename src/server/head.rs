//! The fast path's request head: parsed with `httparse` and, when it is a
//! plain request for an assigned binder, rewritten for the container in the
//! connection's reused buffer. Which binder it reaches is
//! [`api::user::reach`]'s decision, the same the routes make.
//!
//! [`api::user::reach`]: crate::api::user::reach

use crate::api::user::{reach, Reach};
use crate::api::App;
use crate::pool::Entry;
use crate::proxy::exchange::{connection_tokens, Outgoing};
use crate::proxy::onward;

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
    let headers: &[httparse::Header<'_>] = r.headers;
    let Some((path, query)) = user_target(target) else {
        return Plan::HandOver;
    };
    // Anything but an assigned binder's plain request is the routes' to
    // answer, with the same decision.
    let Ok(Reach {
        entry,
        rest,
        kernel: None,
        channels: false,
    }) = reach(app, method, binder_host(app, headers), path)
    else {
        return Plan::HandOver;
    };
    let named = connection_tokens(headers);
    let Some(upgrade) = upgrade_protocol(headers, &named) else {
        return Plan::HandOver;
    };
    let client_close = onward::names(&named, "close");

    let strip = entry.pool.current().binding.strip_prefix;
    write_request_line(out, method, &entry.binder.token, rest, strip, query);
    let Some(copied) = copy_headers(app, headers, &named, out) else {
        return Plan::HandOver;
    };
    if !copied.host {
        return Plan::HandOver; // HTTP/1.1 needs one: hyper answers
    }
    if let Some(protocol) = upgrade {
        if copied.body_len.is_some_and(|n| n > 0) {
            return Plan::HandOver;
        }
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(protocol);
        out.extend_from_slice(b"\r\n");
    }
    let earlier = onward::earlier_forwarded_for(copied.forwarded_for, &named);
    write_forwarded_for(out, earlier, forwarded);
    Plan::Go(Go {
        req: Outgoing {
            body_len: copied.body_len.unwrap_or(0),
            head_method: method == "HEAD",
            idempotent: matches!(method, "GET" | "HEAD" | "OPTIONS"),
            client_close,
            upgrade: upgrade.is_some(),
        },
        entry,
        head_len,
        html: copied.html,
    })
}

/// The path and query of a target under `/user/`, or `None` for one the
/// routes take (any other path, or one with doubled slashes, which the
/// routes fold first).
#[inline]
fn user_target(target: &str) -> Option<(&str, Option<&str>)> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (target, None),
    };
    (path.starts_with("/user/") && !path.contains("//")).then_some((path, query))
}

/// The `Host` header, read only when every binder has a host of its own
/// (otherwise the host does not choose the binder).
#[inline]
fn binder_host<'h>(app: &App, headers: &[httparse::Header<'h>]) -> Option<&'h str> {
    app.config.binder_host.as_ref()?;
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
}

/// An upgrade (a WebSocket) keeps its `Connection: upgrade` and `Upgrade`
/// for the container; the connection becomes a tunnel if the container
/// agrees. `Some(None)`: no upgrade asked; `Some(Some(protocol))`: the
/// `Upgrade` value; `None`: `Connection` names an upgrade but there is no
/// `Upgrade` header (hyper's to answer).
#[inline]
fn upgrade_protocol<'h>(
    headers: &[httparse::Header<'h>],
    named: &[&[u8]],
) -> Option<Option<&'h [u8]>> {
    if !onward::names(named, "upgrade") {
        return Some(None);
    }
    headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("upgrade"))
        .map(|h| Some(h.value))
}

/// Starts `out` afresh with the request line for the container.
#[inline]
fn write_request_line(
    out: &mut Vec<u8>,
    method: &str,
    token: &str,
    rest: &str,
    strip: bool,
    query: Option<&str>,
) {
    out.clear();
    out.extend_from_slice(method.as_bytes());
    out.push(b' ');
    onward::write_target(out, token, rest, strip, query);
    out.extend_from_slice(b" HTTP/1.1\r\n");
}

/// What [`copy_headers`] learnt from the client's headers on the way.
struct Copied<'h> {
    /// The `Content-Length`, when there is one (all copies agreeing).
    body_len: Option<u64>,
    /// Whether there is a `Host` header.
    host: bool,
    /// Whether an `Accept` header names `text/html`.
    html: bool,
    /// The first `X-Forwarded-For` value, which is not copied as it is.
    forwarded_for: Option<&'h [u8]>,
}

/// Copies the client's headers the container may see into `out`:
/// hop-by-hop headers, those `Connection` names, `X-Forwarded-For` and
/// binderd's own key left out. `None` when the request is hyper's to
/// answer: a chunked upload, `Expect`, or a bad or disagreeing
/// `Content-Length`.
#[inline]
fn copy_headers<'h>(
    app: &App,
    headers: &[httparse::Header<'h>],
    named: &[&[u8]],
    out: &mut Vec<u8>,
) -> Option<Copied<'h>> {
    let mut seen = Copied {
        body_len: None,
        host: false,
        html: false,
        forwarded_for: None,
    };
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("expect") {
            return None; // chunked uploads, 100-continue: hyper's
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(h.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, seen.body_len) {
                (Some(n), None) => seen.body_len = Some(n),
                (Some(n), Some(m)) if n == m => continue,
                _ => return None, // hyper answers 400
            }
        } else if name.eq_ignore_ascii_case("host") {
            seen.host = true;
        } else if name.eq_ignore_ascii_case("accept") {
            seen.html |= h.value.windows(9).any(|w| w == b"text/html");
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            seen.forwarded_for.get_or_insert(h.value);
            continue;
        } else if name.eq_ignore_ascii_case("authorization") && app.keys.is_own_key(h.value) {
            continue; // binderd's own key is not the container's business
        }
        if !onward::passes(name, named) {
            continue;
        }
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(h.value);
        out.extend_from_slice(b"\r\n");
    }
    Some(seen)
}

/// Ends the head with `X-Forwarded-For`: the client's earlier value, if
/// any, then `forwarded` (the client's address and the head's end).
#[inline]
fn write_forwarded_for(out: &mut Vec<u8>, prev: Option<&[u8]>, forwarded: &[u8]) {
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = prev {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(forwarded);
}
