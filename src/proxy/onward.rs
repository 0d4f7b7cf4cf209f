//! What goes upstream: the one set of rules both ways of proxying follow
//! (the connection's fast path in `server::head`, on raw bytes, and hyper's
//! in [`super::Proxy::forward`], on a `HeaderMap`), so a request reaches the
//! container the same whichever path took it. `tests/proxy.rs` sends each
//! case both ways.
//!
//! - the path: `/user/{token}{rest}`, or `rest` alone where the binding
//!   strips the prefix (`/user/{token}` with no slash goes as `.../`);
//! - hop-by-hop headers (RFC 9110 §7.6.1) and every header a `Connection`
//!   value names are this hop's: they stop here, names read from the raw
//!   bytes (a value that is not UTF-8 names what it names);
//! - `X-Forwarded-For`: the client's first value, if `Connection` does not
//!   name it and it is visible ASCII, then the client's address;
//! - binderd's own key is dropped too, by `api` (which knows the keys), with
//!   the one predicate `Keys::is_own_key` on both paths.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// RFC 9110 §7.6.1 connection-specific headers, and the old ones like them.
pub const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "proxy-authorization",
    "proxy-authenticate",
];

pub fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The path (and query) the container is sent, appended to `out`.
pub fn write_target(out: &mut Vec<u8>, token: &str, rest: &str, strip: bool, query: Option<&str>) {
    if !strip {
        out.extend_from_slice(b"/user/");
        out.extend_from_slice(token.as_bytes());
    }
    out.extend_from_slice(rest.as_bytes());
    if let Some(q) = query {
        out.push(b'?');
        out.extend_from_slice(q.as_bytes());
    }
}

/// The names every `Connection` value lists (comma-separated, trimmed),
/// from `values`, the values of the `Connection` headers.
pub fn connection_names<'h>(values: impl IntoIterator<Item = &'h [u8]>) -> Vec<&'h [u8]> {
    values
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b','))
        .map(|t| t.trim_ascii())
        .filter(|t| !t.is_empty())
        .collect()
}

/// Whether `named` (from [`connection_names`]) lists `name`.
pub fn names(named: &[&[u8]], name: &str) -> bool {
    named
        .iter()
        .any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Whether a request header goes to the container as the client sent it
/// (`X-Forwarded-For` never does: [`earlier_forwarded_for`] decides).
pub fn passes(name: &str, named: &[&[u8]]) -> bool {
    !(is_hop_by_hop(name) || names(named, name) || name.eq_ignore_ascii_case("x-forwarded-for"))
}

/// The client's own `X-Forwarded-For` (its first value) to keep before its
/// address: not when `Connection` names it, nor when it is not visible
/// ASCII.
pub fn earlier_forwarded_for<'h>(first: Option<&'h [u8]>, named: &[&[u8]]) -> Option<&'h [u8]> {
    let v = first?;
    let visible = v.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
    (visible && !names(named, "x-forwarded-for")).then_some(v)
}

/// `headers` for the container, on hyper's path: hop-by-hop and named
/// headers gone, `X-Forwarded-For` ending with `client`.
pub fn request_headers(headers: &mut HeaderMap, client: IpAddr) {
    let (named, earlier) = {
        let named = connection_names(
            headers
                .get_all(header::CONNECTION)
                .iter()
                .map(HeaderValue::as_bytes),
        );
        let first = headers.get("x-forwarded-for").map(HeaderValue::as_bytes);
        let earlier = earlier_forwarded_for(first, &named).map(<[u8]>::to_vec);
        let named: Vec<HeaderName> = named
            .into_iter()
            .filter_map(|t| HeaderName::from_bytes(t).ok())
            .collect();
        (named, earlier)
    };
    strip(headers, named);
    headers.remove("x-forwarded-for");
    let mut value = earlier.map(|mut v| {
        v.extend_from_slice(b", ");
        v
    });
    let value = value.get_or_insert_with(Vec::new);
    value.extend_from_slice(client.to_string().as_bytes());
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert("x-forwarded-for", v);
    }
}

/// Removes hop-by-hop headers and those a `Connection` value names (an
/// answer's on its way back, on hyper's path).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = connection_names(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    )
    .into_iter()
    .filter_map(|t| HeaderName::from_bytes(t).ok())
    .collect();
    strip(headers, named);
}

fn strip(headers: &mut HeaderMap, named: Vec<HeaderName>) {
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// The protocol of an upgrade request (`Connection` names `upgrade`, and
/// an `Upgrade` header).
pub fn upgrade_protocol(headers: &HeaderMap) -> Option<HeaderValue> {
    let named = connection_names(
        headers
            .get_all(header::CONNECTION)
            .iter()
            .map(HeaderValue::as_bytes),
    );
    names(&named, "upgrade")
        .then(|| headers.get(header::UPGRADE).cloned())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_names_are_read_from_bytes() {
        let values: [&[u8]; 2] = [b"close, X-A", b" keep-alive,,\xe9t\xe9, x-b"];
        let named = connection_names(values);
        assert_eq!(
            named,
            vec![&b"close"[..], b"X-A", b"keep-alive", b"\xe9t\xe9", b"x-b"]
        );
        assert!(names(&named, "x-a") && names(&named, "X-B"));
        assert!(!passes("x-a", &named) && passes("accept", &named));
        assert!(!passes("Keep-Alive", &[]) && !passes("X-Forwarded-For", &[]));
    }

    #[test]
    fn the_target_keeps_or_strips_the_prefix() {
        let mut out = Vec::new();
        write_target(&mut out, "tok", "/", false, None);
        assert_eq!(out, b"/user/tok/");
        out.clear();
        write_target(&mut out, "tok", "/api", true, Some("a=1"));
        assert_eq!(out, b"/api?a=1");
    }

    #[test]
    fn an_earlier_forwarded_for_is_kept_only_when_plain_and_not_named() {
        assert_eq!(
            earlier_forwarded_for(Some(b"10.0.0.1"), &[]),
            Some(&b"10.0.0.1"[..])
        );
        assert_eq!(earlier_forwarded_for(Some(b"\xff1.2"), &[]), None);
        assert_eq!(earlier_forwarded_for(Some(b"1.2\r"), &[]), None);
        assert_eq!(
            earlier_forwarded_for(Some(b"10.0.0.1"), &[b"X-Forwarded-For"]),
            None
        );
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, HeaderValue::from_static("x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        request_headers(&mut h, "127.0.0.1".parse().unwrap());
        assert_eq!(h.len(), 2);
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.1");
    }
}
