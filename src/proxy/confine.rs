//! What a binder's answer may not do to the rest of binderd's origin. Every
//! binder is served from binderd's own host, under `/user/{token}/`, so a
//! header a container sends applies to the whole origin unless the proxy
//! confines it:
//!
//! - `Service-Worker-Allowed` is dropped: without it a service worker a
//!   binder's page registers can control only its own `/user/{token}/`,
//!   never the dashboard's requests or another binder's.
//! - `Set-Cookie` is kept to the binder's path: any `Domain` attribute is
//!   removed (no cookie for other hosts) and the `Path` is the binder's
//!   location unless it already lies within it, so a cookie set by one
//!   binder is never sent to binderd's API or to another binder.
//!
//! A page that must not share an origin with other binders at all needs a
//! host of its own (docs/security.md says when).

/// Headers a binder's answer never passes on.
pub const DROPPED: [&str; 1] = ["service-worker-allowed"];

/// Whether an answer header named `name` is dropped.
pub fn dropped(name: &str) -> bool {
    DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name))
}

/// `value` (a `Set-Cookie`) kept to `location` (`/user/{token}/`): no
/// `Domain`, a `Path` within the location.
pub fn cookie(value: &[u8], location: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(value.len() + location.len() + 8);
    let mut parts = value.split(|b| *b == b';');
    // The name=value pair, as it came.
    out.extend_from_slice(parts.next().unwrap_or_default());
    let within = |path: &[u8]| {
        let path = std::str::from_utf8(path).unwrap_or("");
        path.starts_with(location) || path == location.trim_end_matches('/')
    };
    let mut path_kept = false;
    for attr in parts {
        let trimmed = attr.trim_ascii_start();
        let name_end = trimmed
            .iter()
            .position(|b| *b == b'=')
            .unwrap_or(trimmed.len());
        let name = &trimmed[..name_end];
        if name.eq_ignore_ascii_case(b"domain") {
            continue;
        }
        if name.eq_ignore_ascii_case(b"path") {
            let path = trimmed.get(name_end + 1..).unwrap_or_default().trim_ascii();
            if path_kept || !within(path) {
                continue;
            }
            path_kept = true;
        }
        out.push(b';');
        out.extend_from_slice(attr);
    }
    if !path_kept {
        out.extend_from_slice(b"; Path=");
        out.extend_from_slice(location.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn confined(v: &str) -> String {
        String::from_utf8(cookie(v.as_bytes(), "/user/abc/")).unwrap()
    }

    #[test]
    fn cookies_stay_under_the_binders_path() {
        assert_eq!(confined("a=1; Path=/"), "a=1; Path=/user/abc/");
        assert_eq!(confined("a=1"), "a=1; Path=/user/abc/");
        assert_eq!(
            confined("a=1; Path=/user/abc/lab; HttpOnly"),
            "a=1; Path=/user/abc/lab; HttpOnly"
        );
        assert_eq!(confined("a=1; path=/user/abc"), "a=1; path=/user/abc");
        assert_eq!(
            confined("a=1; Path=/user/other/; Secure"),
            "a=1; Secure; Path=/user/abc/"
        );
        assert_eq!(
            confined("a=1; Domain=example.org; Path=/user/abc/"),
            "a=1; Path=/user/abc/"
        );
        assert_eq!(
            confined("a=1; Path=/user/abcdef/"),
            "a=1; Path=/user/abc/",
            "a prefix of another token is not within"
        );
        assert_eq!(
            confined("a=1; Path=/user/abc/; Path=/"),
            "a=1; Path=/user/abc/"
        );
        assert!(dropped("Service-Worker-Allowed"));
        assert!(!dropped("Content-Type"));
    }
}
