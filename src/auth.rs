//! API keys, callers, owners and who may do what. Every permission rule of
//! the API is a function here, so the rules can be read (and tested) in one
//! place. A leaf: it knows no other module of binderd.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Who a binder was handed to: an API key's name, or nobody in particular.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "name")]
pub enum Owner {
    Anonymous,
    Key(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Admin,
    User,
}

/// A configured API key. `Debug` never shows the secret.
#[derive(Clone)]
pub struct ApiKey {
    pub name: String,
    key: String,
    pub role: Role,
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("key", &"<redacted>")
            .field("role", &self.role)
            .finish()
    }
}

impl ApiKey {
    pub fn new(name: impl Into<String>, key: impl Into<String>, role: Role) -> ApiKey {
        ApiKey {
            name: name.into(),
            key: key.into(),
            role,
        }
    }
}

/// Who is calling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    Anonymous,
    Key { name: Arc<str>, role: Role },
}

impl Caller {
    pub fn is_admin(&self) -> bool {
        matches!(
            self,
            Caller::Key {
                role: Role::Admin,
                ..
            }
        )
    }

    pub fn key_name(&self) -> Option<&str> {
        match self {
            Caller::Anonymous => None,
            Caller::Key { name, .. } => Some(name),
        }
    }

    pub fn owner(&self) -> Owner {
        match self {
            Caller::Anonymous => Owner::Anonymous,
            Caller::Key { name, .. } => Owner::Key(name.to_string()),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    #[error("invalid API key")]
    InvalidKey,
    #[error("this needs an API key (Authorization: Bearer <key>)")]
    Required,
    #[error("{0}")]
    Forbidden(String),
}

/// The set of configured keys.
#[derive(Debug, Default)]
pub struct Keys {
    keys: Vec<ApiKey>,
}

impl Keys {
    pub fn new(keys: Vec<ApiKey>) -> Keys {
        Keys { keys }
    }

    /// True if an `Authorization` value carries one of binderd's own keys
    /// (the proxy keeps those from containers).
    pub fn is_own_key(&self, header: &[u8]) -> bool {
        self.authenticate(Some(header))
            .is_ok_and(|c| c.key_name().is_some())
    }

    /// Reads `Authorization: <key>`, `Bearer <key>` or `token <key>`.
    /// No header is an anonymous caller; a header with an unknown key is 401.
    pub fn authenticate(&self, header: Option<&[u8]>) -> Result<Caller, AuthError> {
        let Some(raw) = header else {
            return Ok(Caller::Anonymous);
        };
        let raw = trim(raw);
        let presented = strip_scheme(raw, b"bearer ")
            .or_else(|| strip_scheme(raw, b"token "))
            .unwrap_or(raw);
        let presented = trim(presented);
        if presented.is_empty() {
            return Err(AuthError::InvalidKey);
        }
        // Compare against every key, in constant time per key, and do not
        // stop at the first match.
        let mut found: Option<&ApiKey> = None;
        for key in &self.keys {
            if bool::from(key.key.as_bytes().ct_eq(presented)) {
                found = Some(key);
            }
        }
        found
            .map(|k| Caller::Key {
                name: k.name.as_str().into(),
                role: k.role,
            })
            .ok_or(AuthError::InvalidKey)
    }
}

fn trim(raw: &[u8]) -> &[u8] {
    let start = raw.iter().position(|b| *b != b' ').unwrap_or(raw.len());
    let end = raw
        .iter()
        .rposition(|b| *b != b' ')
        .map_or(start, |e| e + 1);
    &raw[start..end.max(start)]
}

fn strip_scheme<'a>(raw: &'a [u8], scheme: &[u8]) -> Option<&'a [u8]> {
    (raw.len() > scheme.len() && raw[..scheme.len()].eq_ignore_ascii_case(scheme))
        .then(|| &raw[scheme.len()..])
}

/// The parts of a binding that decide access.
pub struct Access<'a> {
    pub owner: &'a str,
    pub administrators: &'a [String],
    pub public: bool,
}

impl Access<'_> {
    /// Owner, a listed administrator, or an admin key.
    pub fn administers(&self, caller: &Caller) -> bool {
        caller.is_admin()
            || caller
                .key_name()
                .is_some_and(|n| n == self.owner || self.administrators.iter().any(|a| a == n))
    }

    /// May read the binding and spawn from it. Others get a 404 so that
    /// private names do not leak.
    pub fn visible_to(&self, caller: &Caller) -> bool {
        self.public || self.administers(caller)
    }

    /// Delete or replace the binding: its owner or an admin.
    pub fn owned_by(&self, caller: &Caller) -> bool {
        caller.is_admin() || caller.key_name() == Some(self.owner)
    }
}

/// Who may create bindings: any key; on the process backend (which runs the
/// command on the host) only admins.
pub fn may_create_binding(caller: &Caller, runs_on_host: bool) -> Result<(), AuthError> {
    match caller {
        Caller::Anonymous => Err(AuthError::Required),
        c if runs_on_host && !c.is_admin() => Err(AuthError::Forbidden(
            "the process backend runs commands on the host: only admin keys may create or change bindings".into(),
        )),
        _ => Ok(()),
    }
}

/// A binder's owner (`owner`: whom it was handed to) or an admin may stop it
/// and read its logs.
pub fn owns_binder(caller: &Caller, owner: Option<&Owner>) -> bool {
    caller.is_admin()
        || matches!((caller.key_name(), owner), (Some(n), Some(Owner::Key(o))) if n == o)
}

/// Who may stop a binder: for one handed to nobody in particular (an
/// anonymous spawn), whoever holds its id, the capability binderd handed out
/// (so an embedded page can give its binder back when the reader leaves);
/// for a key's binder, its owner or an admin (401 without a key, 403 with
/// another).
pub fn may_stop_binder(caller: &Caller, owner: Option<&Owner>) -> Result<(), AuthError> {
    if matches!(owner, Some(Owner::Anonymous)) || owns_binder(caller, owner) {
        return Ok(());
    }
    if caller.key_name().is_none() {
        return Err(AuthError::Required);
    }
    Err(AuthError::Forbidden(
        "only the binder's owner or an admin may stop it".into(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> Keys {
        Keys::new(vec![
            ApiKey::new("admin", "s3cret-admin", Role::Admin),
            ApiKey::new("alice", "alice-key", Role::User),
        ])
    }

    #[test]
    fn every_header_shape_is_accepted() {
        let k = keys();
        for h in [
            "alice-key",
            "Bearer alice-key",
            "bearer alice-key",
            "token alice-key",
            "Token  alice-key ",
        ] {
            let c = k.authenticate(Some(h.as_bytes())).unwrap();
            assert_eq!(c.key_name(), Some("alice"), "{h}");
            assert!(!c.is_admin());
        }
        assert!(k.authenticate(Some(b"s3cret-admin")).unwrap().is_admin());
        assert_eq!(k.authenticate(None).unwrap(), Caller::Anonymous);
    }

    #[test]
    fn wrong_or_empty_keys_are_refused() {
        let k = keys();
        for h in [
            "",
            "Bearer ",
            "alice-ke",
            "alice-key2",
            "Bearer wrong",
            "\0",
        ] {
            assert_eq!(
                k.authenticate(Some(h.as_bytes())),
                Err(AuthError::InvalidKey),
                "{h:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let text = format!("{:?}", keys());
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn access_rules() {
        let admins = vec!["bob".to_string()];
        let private = Access {
            owner: "alice",
            administrators: &admins,
            public: false,
        };
        let key = |n: &str, role| Caller::Key {
            name: n.into(),
            role,
        };
        assert!(!private.visible_to(&Caller::Anonymous));
        assert!(private.visible_to(&key("bob", Role::User)));
        assert!(!private.visible_to(&key("carol", Role::User)));
        assert!(private.visible_to(&key("root", Role::Admin)));
        assert!(private.administers(&key("bob", Role::User)));
        assert!(!private.owned_by(&key("bob", Role::User)));
        assert!(private.owned_by(&key("alice", Role::User)));
        assert_eq!(
            may_create_binding(&Caller::Anonymous, false),
            Err(AuthError::Required)
        );
        assert!(may_create_binding(&key("alice", Role::User), true).is_err());
        assert!(may_create_binding(&key("alice", Role::User), false).is_ok());
        assert!(may_create_binding(&key("root", Role::Admin), true).is_ok());

        // Stopping: an anonymous binder's id is enough; a key's binder is
        // its owner's (or an admin's).
        let anon = Some(&Owner::Anonymous);
        let alices = Owner::Key("alice".into());
        assert!(may_stop_binder(&Caller::Anonymous, anon).is_ok());
        assert!(may_stop_binder(&key("bob", Role::User), anon).is_ok());
        assert_eq!(
            may_stop_binder(&Caller::Anonymous, Some(&alices)),
            Err(AuthError::Required)
        );
        assert!(matches!(
            may_stop_binder(&key("bob", Role::User), Some(&alices)),
            Err(AuthError::Forbidden(_))
        ));
        assert!(may_stop_binder(&key("alice", Role::User), Some(&alices)).is_ok());
        assert!(may_stop_binder(&key("root", Role::Admin), Some(&alices)).is_ok());
    }
}

/// `[security]`: what user keys (not admins) may create. Bindings are
/// code and images anyone's readers will run, so a user key gets a small
/// share by default and names only images the operator allowed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecurityConfig {
    /// Images a user key's binding (and its services) may name: patterns
    /// where `*` matches any run of characters (`registry.example.org/*`,
    /// `jupyter/*:2024-*`). Empty (the default): none; only admins name
    /// images.
    #[serde(default)]
    pub allowed_images: Vec<String>,
    /// Bindings one user key may own.
    #[serde(default = "SecurityConfig::default_max_bindings")]
    pub user_max_bindings: u32,
    /// The largest `pool.max` (and `pool.min`) a user key may set, at
    /// creation or by a resize.
    #[serde(default = "SecurityConfig::default_max_pool")]
    pub user_max_pool: u32,
}

impl SecurityConfig {
    fn default_max_bindings() -> u32 {
        10
    }
    fn default_max_pool() -> u32 {
        20
    }

    /// Whether a user key may name `image`.
    pub fn image_allowed(&self, image: &str) -> bool {
        self.allowed_images.iter().any(|p| wildcard(p, image))
    }
}

impl Default for SecurityConfig {
    fn default() -> Self {
        SecurityConfig {
            allowed_images: Vec::new(),
            user_max_bindings: Self::default_max_bindings(),
            user_max_pool: Self::default_max_pool(),
        }
    }
}

/// `pattern` with `*` matching any run of characters (and nothing else
/// special) matches all of `text`.
pub fn wildcard(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty(); // no `*`: the whole text
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod wildcard_tests {
    use super::*;

    #[test]
    fn image_patterns_match_whole_names() {
        assert!(wildcard(
            "registry.example.org/*",
            "registry.example.org/a/b:1"
        ));
        assert!(!wildcard(
            "registry.example.org/*",
            "evil.org/registry.example.org/x"
        ));
        assert!(wildcard(
            "jupyter/*:2024-*",
            "jupyter/base-notebook:2024-01"
        ));
        assert!(!wildcard(
            "jupyter/*:2024-*",
            "jupyter/base-notebook:latest"
        ));
        assert!(wildcard("python:3.12", "python:3.12"));
        assert!(!wildcard("python:3.12", "python:3.12-slim"));
        assert!(wildcard("*", "anything"));
        assert!(!wildcard("a*a", "a"));
        let s = SecurityConfig::default();
        assert!(!s.image_allowed("python:3.12"), "none by default");
    }
}
