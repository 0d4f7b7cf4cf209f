//! Untrusted text as it goes into a message: an error's, a log line's. The
//! one rule for showing what a client or a file sent, so that no message
//! carries control characters or an unbounded length from outside.

/// How many characters of untrusted text a message shows.
const SHOWN_CHARS: usize = 64;

/// `raw` as it goes into a message: its first 64 characters, escaped
/// (`char::escape_default`), with `…` when it was longer.
pub fn printable(raw: &str) -> String {
    let mut out: String = raw
        .chars()
        .take(SHOWN_CHARS)
        .flat_map(char::escape_default)
        .collect();
    if raw.chars().count() > SHOWN_CHARS {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_is_escaped_and_cut() {
        assert_eq!(printable("a\nb\"c"), "a\\nb\\\"c");
        let long = "x".repeat(70);
        assert_eq!(printable(&long), format!("{}…", "x".repeat(64)));
    }
}
