//! Reading a request's query string, and `%XX` decoding (of query values
//! and of path segments).

/// The value of query parameter `name` (`%XX` and `+` decoded), the first
/// if it is given more than once.
pub(super) fn param(query: &str, name: &str) -> Option<String> {
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| decode(&v.replace('+', " ")).unwrap_or_default())
    })
}

/// Whether `name` is set true in the query (`name=true`, `name=1` or bare).
pub(super) fn flag(query: &str, name: &str) -> bool {
    query.split('&').any(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, "true"));
        k == name && matches!(v.to_ascii_lowercase().as_str(), "true" | "1" | "yes")
    })
}

/// `%XX` decoding of one path segment or query value.
pub(super) fn decode(s: &str) -> std::result::Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad escape in '{}'", crate::text::printable(s)))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "the repository is not UTF-8".into())
}
