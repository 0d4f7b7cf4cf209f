//! Bindings: the templates binders are made from.
//!
//! A [`Binding`] is what users send and read back as JSON (and what operators
//! write as TOML in `config/bindings/`). Validation lives here so that every
//! entry point (API, config files, the store on restart) applies the same rules.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

mod fields;
mod profile;

use fields::{check_capabilities, check_env, check_packages, check_text};
pub use profile::{Profile, MAX_PROFILES};

/// Largest `maxPool` accepted unless the config raises it.
pub const DEFAULT_MAX_POOL_LIMIT: u32 = 10_000;

/// What a binding name matches (before it is folded to lower case): the
/// one spelling of the rule, for [`BindingName::parse`]'s errors and the
/// OpenAPI document's patterns.
pub const NAME_PATTERN: &str = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$";

/// A binding name, normalised to lower case (names are case-insensitive).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct BindingName(String);

impl BindingName {
    /// Checks [`NAME_PATTERN`] and folds to lower case.
    pub fn parse(raw: &str) -> Result<Self, InvalidBinding> {
        let bytes = raw.as_bytes();
        let ok = !bytes.is_empty()
            && bytes.len() <= 63
            && bytes[0].is_ascii_alphanumeric()
            && bytes
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if ok {
            Ok(BindingName(raw.to_ascii_lowercase()))
        } else {
            Err(InvalidBinding(format!(
                "invalid binding name '{}': names match {NAME_PATTERN}",
                printable(raw)
            )))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for BindingName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The repository a `repo` URL names, as `host/path` in lower case without
/// scheme, user, `.git` or trailing slash: `https://github.com/Org/Repo.git`
/// and `github.com/org/repo/` are both `github.com/org/repo`. Only the
/// authority's user is dropped: an `@` in the path is the path's, so
/// `https://evil.example/x@github.com/org/repo` is `evil.example/...`, the
/// host git would fetch from (launch patterns match what is fetched).
pub fn repo_key(url: &str) -> String {
    let s = url.trim();
    let s = s.split_once("://").map_or(s, |(_, rest)| rest);
    let (authority, path) = s.split_once('/').map_or((s, ""), |(a, p)| (a, p));
    let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let s = format!("{host}/{path}");
    let s = s.trim_end_matches('/');
    let s = s.strip_suffix(".git").unwrap_or(s);
    s.to_ascii_lowercase()
}

/// Shortens and escapes user input before it goes into an error message;
/// named here too for the modules that show a binding's fields.
pub use crate::text::printable;

/// Why a binding was refused. Becomes a 400.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidBinding(pub String);

fn default_port() -> u16 {
    8888
}
fn is_false(b: &bool) -> bool {
    !*b
}

/// The binding template, as sent and stored.
///
/// Unknown fields are refused. The answer-only fields (`owner`, `created_at`,
/// `status`) are accepted and ignored on input so that a document read with
/// GET can be sent back with PUT.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Binding {
    // Matches NAME_PATTERN (the OpenAPI document's modifier says so).
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default = "default_port")]
    #[schema(minimum = 1)]
    pub port: u16,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub resources: Resources,
    /// Linux capabilities given back to the container (Docker, Kubernetes);
    /// every other one is dropped. Only those of [`GRANTABLE_CAPABILITIES`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// What the binder may reach besides binderd (binders never reach each
    /// other directly, whatever this says).
    #[serde(default, skip_serializing_if = "Network::is_default")]
    pub network: Network,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<Service>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repo: Option<String>,
    /// The branch, tag or commit of `repo` (default: its default branch).
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub git_ref: Option<String>,
    /// The commit `ref` named when the binding was created or last put
    /// (filled by binderd; ignored on input).
    #[serde(
        default,
        rename = "resolvedRef",
        skip_serializing_if = "Option::is_none"
    )]
    pub resolved_ref: Option<String>,
    /// Where the binders' files come from: `repo` (the default with a
    /// `repo`: fetched, `notebooks` copied into every binder) or `image`
    /// (the image has them; `repo` only matches launch links).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content: Option<Content>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requirements: Option<String>,
    /// Packages from the package index (pip requirement specifiers, e.g.
    /// `jupyterlab>=4`), built into the binders' environment once, as a
    /// repository's `requirements` are (with them when both are given).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(example = json!(["jupyterlab", "ipykernel"]))]
    pub packages: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notebooks: Option<String>,
    #[serde(default)]
    pub pool: PoolSize,
    /// A Jupyter kernel kept running (and warmed up) in every pooled binder,
    /// given to the first client that asks for one after the handout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    #[serde(default)]
    pub cull: Cull,
    #[serde(default)]
    pub public: bool,
    #[serde(default)]
    pub administrators: Vec<String>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub strip_prefix: bool,
    /// How long a container may take to answer on its port before the start
    /// counts as failed.
    #[serde(default = "Binding::default_start_timeout")]
    #[schema(minimum = 1, maximum = 3600)]
    pub start_timeout_seconds: u64,
    /// Options chosen at launch (`{"profile": "large"}`), each with its own
    /// warm pool; the binding's own pool serves the default one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<Profile>,
    // Answer-only fields: accepted and dropped on input (see `validate`),
    // filled in answers.
    /// (answer only) The API key that created it, or `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub owner: Option<serde_json::Value>,
    /// (answer only) Unix seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>)]
    pub created_at: Option<serde_json::Value>,
    /// (answer only) `ready`, or `error` with a `message`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub status: Option<serde_json::Value>,
    /// (answer only) Why the last start failed, with `status: error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub message: Option<serde_json::Value>,
}

/// Where a binding's files come from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Content {
    pub from: ContentFrom,
    /// With `from: launch`: the repositories a launch link may name, as
    /// `host/path` patterns where `*` matches any run of characters
    /// (`github.com/org/*`; `gh/` and `gl/` stand for github.com and
    /// gitlab.com).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub repos: Vec<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentFrom {
    /// Fetched from `repo` at `ref`.
    Repo,
    /// In the image already (or no files at all).
    Image,
    /// Given at launch: a `/build` or `/v2` link naming a repository that
    /// `repos` accepts (and no binding serves) gets a warm binder of this
    /// binding with that repository's files put in at handout.
    Launch,
}

impl Content {
    /// Whether a launch may bring the repository `key` (as
    /// [`repo_key`] spells it).
    pub fn accepts(&self, key: &str) -> bool {
        self.from == ContentFrom::Launch
            && self.repos.iter().any(|p| {
                let pattern = if let Some(rest) = p.strip_prefix("gh/") {
                    format!("github.com/{rest}")
                } else if let Some(rest) = p.strip_prefix("gl/") {
                    format!("gitlab.com/{rest}")
                } else {
                    p.clone()
                };
                crate::auth::wildcard(&repo_key(&pattern), key)
            })
    }
}

/// A warm kernel: started through the server's Jupyter API once the server
/// answers, `warmup` run in it, before the binder counts as available.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    /// The kernel spec's name, as `GET api/kernelspecs` lists it.
    #[schema(example = "python3")]
    pub name: String,
    /// Code run in the kernel before handout (e.g. `import numpy`); what it
    /// defines is there for the first cell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warmup: Option<String>,
}

/// Memory, CPU, process and open-file limits, as Kubernetes writes them
/// (`512Mi`, `0.5`). What is left out comes from the server's `[limits]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "512Mi")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(example = "0.5")]
    pub cpu: Option<String>,
    /// Processes and threads at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pids: Option<u32>,
    /// Open files per process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nofile: Option<u32>,
}

impl Resources {
    /// Checks every field as a new binding must have it: Kubernetes
    /// quantities, no ambiguous memory spelling.
    pub fn check(&self) -> Result<(), InvalidBinding> {
        let err = |e: crate::limits::InvalidQuantity| InvalidBinding(e.0);
        if let Some(m) = &self.memory {
            crate::limits::memory("resources.memory", m).map_err(err)?;
        }
        if let Some(c) = &self.cpu {
            crate::limits::cpu("resources.cpu", c).map_err(err)?;
        }
        crate::limits::check_binding_counts(self.pids, self.nofile).map_err(err)
    }

    /// `memory` in bytes (a stored binding's old spelling as it was read
    /// then), or `None` when not given.
    pub fn memory_bytes(&self) -> Option<u64> {
        let raw = self.memory.as_deref()?;
        crate::limits::memory("resources.memory", raw)
            .ok()
            .or_else(|| crate::limits::legacy_memory(raw))
    }

    /// `cpu` in thousandths of a CPU, or `None` when not given.
    pub fn millicpus(&self) -> Option<u64> {
        crate::limits::cpu("resources.cpu", self.cpu.as_deref()?).ok()
    }

    /// What these resources ask for, in numbers.
    pub fn wanted(&self) -> crate::limits::Wanted {
        crate::limits::Wanted {
            memory_bytes: self.memory_bytes(),
            millicpus: self.millicpus(),
            pids: self.pids,
            nofile: self.nofile,
        }
    }

    /// Rewrites a memory value in a spelling binderd no longer accepts
    /// (`512m`: 512 MB to Docker, 0.512 bytes to Kubernetes) into the bytes
    /// it meant when it was stored, and says so; `None` when nothing changed.
    pub fn upgrade_legacy(&mut self) -> Option<String> {
        let raw = self.memory.clone()?;
        if crate::limits::memory("resources.memory", &raw).is_ok() {
            return None;
        }
        let bytes = crate::limits::legacy_memory(&raw)?;
        self.memory = Some(bytes.to_string());
        Some(format!(
            "resources.memory '{}' is read as {bytes} bytes, as before; write it as a Kubernetes quantity (e.g. '{}Mi')",
            printable(&raw),
            bytes >> 20
        ))
    }
}

/// A service container started beside each binder (e.g. Postgres).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schema(value_type = Object)]
    pub params: BTreeMap<String, serde_json::Value>,
    /// Capabilities given back to this service (a database image that
    /// starts as root and changes user needs `CHOWN`, `SETUID`, `SETGID`,
    /// `DAC_OVERRIDE`, `FOWNER`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
}

/// A binding's network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Network {
    #[serde(default)]
    pub egress: Egress,
}

impl Network {
    fn is_default(&self) -> bool {
        *self == Network::default()
    }
}

/// `open`: the internet (never the cluster's or private ranges where the
/// backend can keep them out); `none`: nothing but binderd.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Egress {
    #[default]
    Open,
    None,
}

/// The capabilities a binding may give back: what images commonly need to
/// start as root and step down, none that reach past the container.
pub const GRANTABLE_CAPABILITIES: &[&str] = &[
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "NET_BIND_SERVICE",
];

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolSize {
    #[serde(default = "PoolSize::default_min")]
    #[schema(maximum = 10000)]
    pub min: u32,
    #[serde(default = "PoolSize::default_max")]
    #[schema(minimum = 1, maximum = 10000)]
    pub max: u32,
    /// The share of handouts to serve warm, in (0, 1]: binderd then sizes
    /// the warm pool itself between `min` and `max` (see `pool::demand`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(exclusive_minimum = 0.0, maximum = 1.0)]
    pub warm_target: Option<f64>,
    /// With `warm_target`: how long the pool stays grown after its last
    /// rise before it shrinks back (default 60).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cooldown_seconds: Option<u64>,
}

impl PoolSize {
    fn default_min() -> u32 {
        1
    }
    fn default_max() -> u32 {
        10
    }
}

impl Default for PoolSize {
    fn default() -> Self {
        PoolSize {
            min: Self::default_min(),
            max: Self::default_max(),
            warm_target: None,
            cooldown_seconds: None,
        }
    }
}

/// Culling: tmpnb's defaults (idle one hour, at most four hours after handout).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Cull {
    #[serde(default = "Cull::default_idle")]
    #[schema(minimum = 1)]
    pub idle_seconds: u64,
    #[serde(default = "Cull::default_max_age")]
    #[schema(minimum = 1)]
    pub max_age_seconds: u64,
    /// A binder handed out but never visited (no request proxied to it) is
    /// reclaimed this long after the handout; 0 never reclaims. A page that
    /// failed, or retried, would otherwise hold warm binders nobody uses.
    #[serde(default = "Cull::default_unvisited")]
    pub unvisited_seconds: u64,
}

impl Cull {
    fn default_idle() -> u64 {
        3600
    }
    fn default_max_age() -> u64 {
        14400
    }
    fn default_unvisited() -> u64 {
        300
    }
}

impl Default for Cull {
    fn default() -> Self {
        Cull {
            idle_seconds: Self::default_idle(),
            max_age_seconds: Self::default_max_age(),
            unvisited_seconds: Self::default_unvisited(),
        }
    }
}

impl Binding {
    fn default_start_timeout() -> u64 {
        60
    }

    /// Where this binding's files come from: what `content` says, else the
    /// repository when there is a `repo`.
    pub fn content_from(&self) -> ContentFrom {
        match (&self.content, &self.repo) {
            (Some(c), _) => c.from,
            (None, Some(_)) => ContentFrom::Repo,
            (None, None) => ContentFrom::Image,
        }
    }

    /// Checks every field and returns the normalised name.
    ///
    /// `needs_command` is true on the `process` backend, which runs `command`
    /// and has no image to fall back on.
    pub fn validate(
        &mut self,
        needs_command: bool,
        max_pool_limit: u32,
    ) -> Result<BindingName, InvalidBinding> {
        let name = BindingName::parse(&self.name)?;
        self.name = name.as_str().to_owned();
        // Answer-only fields are not part of the template.
        self.owner = None;
        self.created_at = None;
        self.status = None;
        self.message = None;
        if self.profiles.is_empty() {
            // With profiles, each profile's template is checked instead
            // (the image or command may be theirs).
            self.check_what_runs(needs_command)?;
        }
        self.pool.check(max_pool_limit)?;
        if self.start_timeout_seconds == 0 || self.start_timeout_seconds > 3600 {
            return Err(InvalidBinding(
                "'start_timeout_seconds' must be between 1 and 3600".into(),
            ));
        }
        if self.cull.idle_seconds == 0 || self.cull.max_age_seconds == 0 {
            return Err(InvalidBinding(
                "'cull' times must be at least 1 second".into(),
            ));
        }
        self.check_services()?;
        if let Some(content) = &self.content {
            if content.from == ContentFrom::Launch && content.repos.is_empty() {
                return Err(InvalidBinding(
                    "'content.from' is 'launch': list the repositories it accepts in 'content.repos' (e.g. \"gh/org/*\")".into(),
                ));
            }
            if content.repos.len() > 64 {
                return Err(InvalidBinding("at most 64 'content.repos'".into()));
            }
            for pattern in &content.repos {
                check_text("content.repos", pattern)?;
            }
        }
        check_capabilities("capabilities", &self.capabilities)?;
        self.resources.check()?;
        if let Some(kernel) = &self.kernel {
            kernel.check()?;
        }
        for admin in &self.administrators {
            check_text("administrators", admin)?;
        }
        check_packages(&self.packages)?;
        for (field, value) in [
            ("repo", &self.repo),
            ("requirements", &self.requirements),
            ("ref", &self.git_ref),
            ("resolvedRef", &self.resolved_ref),
            ("notebooks", &self.notebooks),
            ("resources.memory", &self.resources.memory),
            ("resources.cpu", &self.resources.cpu),
        ] {
            if let Some(v) = value {
                check_text(field, v)?;
            }
        }
        if !self.profiles.is_empty() {
            self.check_profiles(|t| t.validate(needs_command, max_pool_limit).map(|_| ()))?;
        }
        Ok(name)
    }

    /// Whether binders need an environment or files made before they start:
    /// a repository's content, or `packages`.
    pub fn makes_content(&self) -> bool {
        self.content_from() == ContentFrom::Repo || !self.packages.is_empty()
    }

    /// The image or command, the port, the environment.
    fn check_what_runs(&self, needs_command: bool) -> Result<(), InvalidBinding> {
        let bad = |msg: String| Err(InvalidBinding(msg));
        if self.image.is_none() && self.command.is_empty() {
            return bad("a binding needs an 'image' or a 'command'".into());
        }
        if needs_command && self.command.is_empty() {
            return bad("the process backend runs 'command': give one".into());
        }
        if let Some(image) = &self.image {
            if image.is_empty() || image.len() > 512 || image.contains(char::is_whitespace) {
                return bad(format!("invalid image '{}'", printable(image)));
            }
        }
        if self.command.len() > 256 {
            return bad("'command' has more than 256 arguments".into());
        }
        for arg in &self.command {
            check_text("command", arg)?;
        }
        if self.port == 0 {
            return bad("'port' must be between 1 and 65535".into());
        }
        check_env(&self.env)
    }

    fn check_services(&self) -> Result<(), InvalidBinding> {
        if self.services.len() > 16 {
            return Err(InvalidBinding("at most 16 'services'".into()));
        }
        for service in &self.services {
            BindingName::parse(&service.name).map_err(|_| {
                InvalidBinding(format!(
                    "invalid service name '{}'",
                    printable(&service.name)
                ))
            })?;
            check_env(&service.env)?;
            check_capabilities("services.capabilities", &service.capabilities)?;
        }
        Ok(())
    }
}

impl PoolSize {
    /// `min <= max`, `1 <= max <= limit`, a `warm_target` in (0, 1].
    fn check(&self, max_pool_limit: u32) -> Result<(), InvalidBinding> {
        let bad = |msg: String| Err(InvalidBinding(msg));
        if self.max == 0 {
            return bad("'pool.max' must be at least 1".into());
        }
        if self.max > max_pool_limit {
            return bad(format!(
                "'pool.max' is {}; this server allows at most {max_pool_limit}",
                self.max
            ));
        }
        if let Some(w) = self.warm_target {
            if !(w > 0.0 && w <= 1.0) {
                return bad(format!(
                    "'pool.warm_target' is {w}; it is the share of handouts to serve warm, in (0, 1]"
                ));
            }
        }
        if self.min > self.max {
            return bad(format!(
                "'pool.min' ({}) is larger than 'pool.max' ({})",
                self.min, self.max
            ));
        }
        Ok(())
    }
}

impl Kernel {
    /// A kernel name as Jupyter spells them; a warm-up without NUL, ≤ 64 KiB.
    fn check(&self) -> Result<(), InvalidBinding> {
        let ok = !self.name.is_empty()
            && self.name.len() <= 128
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(InvalidBinding(format!(
                "invalid kernel.name '{}': kernel names are letters, digits, '.', '_' and '-'",
                printable(&self.name)
            )));
        }
        if let Some(code) = &self.warmup {
            if code.contains('\0') || code.len() > 64 * 1024 {
                return Err(InvalidBinding(
                    "'kernel.warmup' holds a NUL byte or is longer than 64 KiB".into(),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repo_urls_compare_by_host_and_path() {
        for url in [
            "https://github.com/Org/Repo",
            "https://github.com/org/repo.git",
            "http://github.com/org/repo/",
            "github.com/org/repo",
            "https://user@github.com/org/repo",
        ] {
            assert_eq!(repo_key(url), "github.com/org/repo", "{url}");
        }
        assert_ne!(
            repo_key("https://gitlab.com/org/repo"),
            "github.com/org/repo"
        );
    }

    #[test]
    fn a_launch_pattern_cannot_be_passed_with_an_at_sign_in_the_path() {
        // git fetches these from evil.example and 169.254.169.254: they are
        // not github.com/org's repositories, whatever follows the `@`.
        let content = Content {
            from: ContentFrom::Launch,
            repos: vec!["gh/org/*".into()],
        };
        for url in [
            "https://evil.example/x@github.com/org/repo",
            "http://169.254.169.254/latest@github.com/org/repo",
            "git://evil.example/@github.com/org/repo",
        ] {
            assert!(!content.accepts(&repo_key(url)), "{url}: {}", repo_key(url));
        }
        assert!(content.accepts(&repo_key("https://github.com/org/repo")));
        assert!(content.accepts(&repo_key("https://token@github.com/org/repo")));
    }

    fn parse(json: &str) -> Result<Binding, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn names_fold_case_and_reject_bad_shapes() {
        assert_eq!(
            BindingName::parse("CodeNeuro-notebooks").unwrap().as_str(),
            "codeneuro-notebooks"
        );
        for bad in ["", "-x", ".x", "a/b", "..", "a\0b", "é", &"a".repeat(64)] {
            assert!(BindingName::parse(bad).is_err(), "{bad:?} accepted");
        }
        assert!(BindingName::parse(&"a".repeat(63)).is_ok());
        assert!(BindingName::parse("a..b").is_ok());
    }

    #[test]
    fn unknown_fields_are_refused_and_answer_fields_ignored() {
        assert!(parse(r#"{"name":"x","command":["a"],"colour":"red"}"#).is_err());
        let mut b =
            parse(r#"{"name":"x","command":["a"],"owner":"bob","status":{"state":"ready"}}"#)
                .unwrap();
        assert!(b.owner.is_some());
        b.validate(true, 10).unwrap();
        let out = serde_json::to_value(&b).unwrap();
        assert!(out.get("owner").is_none() && out.get("status").is_none());
    }

    #[test]
    fn validation_catches_each_rule() {
        let ok = || parse(r#"{"name":"X","command":["a"]}"#).unwrap();
        let mut b = ok();
        assert_eq!(b.validate(true, 100).unwrap().as_str(), "x");
        assert_eq!(b.name, "x");

        let mut b = parse(r#"{"name":"x","image":"i"}"#).unwrap();
        assert!(b.validate(true, 100).is_err());
        assert!(b.validate(false, 100).is_ok());

        let mut b = ok();
        b.pool = PoolSize {
            min: 5,
            max: 2,
            ..PoolSize::default()
        };
        assert!(b.validate(true, 100).unwrap_err().0.contains("pool.min"));

        let mut b = ok();
        b.pool = PoolSize {
            min: 1,
            max: 101,
            ..PoolSize::default()
        };
        assert!(b.validate(true, 100).unwrap_err().0.contains("at most 100"));

        let mut b = ok();
        b.env.insert("BAD-KEY".into(), "v".into());
        assert!(b.validate(true, 100).is_err());

        let mut b = ok();
        b.env.insert("BINDERD_TOKEN".into(), "v".into());
        assert!(b.validate(true, 100).unwrap_err().0.contains("reserved"));

        let mut b = ok();
        b.command.push("a\0b".into());
        assert!(b.validate(true, 100).is_err());

        for (kernel, fine) in [
            (r#"{"name":"python3","warmup":"import numpy"}"#, true),
            (r#"{"name":"ir"}"#, true),
            (r#"{"name":""}"#, false),
            (r#"{"name":"py/../x"}"#, false),
            (r#"{"name":"python3","warmup":"a\u0000b"}"#, false),
        ] {
            let mut b = ok();
            b.kernel = Some(serde_json::from_str(kernel).unwrap());
            assert_eq!(b.validate(true, 100).is_ok(), fine, "{kernel}");
        }
        assert!(parse(r#"{"name":"x","command":["a"],"kernel":{"name":"p","colour":1}}"#).is_err());
    }

    #[test]
    fn resources_are_kubernetes_quantities_and_old_spellings_keep_their_meaning() {
        let r = |m: &str, c: &str| Resources {
            memory: Some(m.into()),
            cpu: Some(c.into()),
            ..Resources::default()
        };
        assert_eq!(r("512Mi", "0.5").memory_bytes(), Some(512 << 20));
        assert_eq!(r("1G", "1").memory_bytes(), Some(1_000_000_000));
        assert_eq!(r("1Gi", "500m").millicpus(), Some(500));
        assert!(r("512Mi", "0.5").check().is_ok());
        let e = r("512m", "1").check().unwrap_err().0;
        assert!(e.contains("'512Mi'"), "{e}");
        for bad in ["lots", "1Q", "-5Mi", "1", "99999Ti"] {
            assert!(r(bad, "1").check().is_err(), "{bad}");
        }
        for bad in ["fast", "0", "-1", "5000"] {
            assert!(r("1Gi", bad).check().is_err(), "{bad}");
        }
        // A stored `512m` is still 512 MB, and is rewritten so to say so.
        let mut old = r("512m", "1");
        assert_eq!(old.memory_bytes(), Some(512_000_000));
        let said = old.upgrade_legacy().unwrap();
        assert!(said.contains("512000000 bytes"), "{said}");
        assert_eq!(old.memory.as_deref(), Some("512000000"));
        assert!(old.check().is_ok());
        assert!(old.upgrade_legacy().is_none());
    }

    #[test]
    fn capabilities_come_from_the_short_list_and_egress_is_open_or_none() {
        let mut b =
            parse(r#"{"name":"x","command":["a"],"capabilities":["CHOWN","CAP_SETUID"]}"#).unwrap();
        assert!(b.validate(true, 10).is_ok());
        let mut b2 = parse(r#"{"name":"x","command":["a"],"capabilities":["SYS_ADMIN"]}"#).unwrap();
        let e = b2.validate(true, 10).unwrap_err().0;
        assert!(
            e.contains("SYS_ADMIN") && e.contains("NET_BIND_SERVICE"),
            "{e}"
        );
        let mut b3 = parse(
            r#"{"name":"x","command":["a"],"services":[{"name":"db","image":"p","capabilities":["NET_ADMIN"]}]}"#,
        )
        .unwrap();
        assert!(b3.validate(true, 10).is_err());
        let closed = parse(r#"{"name":"x","command":["a"],"network":{"egress":"none"}}"#).unwrap();
        assert_eq!(closed.network.egress, Egress::None);
        assert!(parse(r#"{"name":"x","command":["a"],"network":{"egress":"some"}}"#).is_err());
        // Open is the default and is not written out.
        let open = parse(r#"{"name":"x","command":["a"]}"#).unwrap();
        assert!(!serde_json::to_string(&open).unwrap().contains("network"));
    }

    #[test]
    fn huge_numbers_are_a_parse_error_not_a_wrap() {
        assert!(parse(r#"{"name":"x","command":["a"],"pool":{"min":99999999999}}"#).is_err());
        assert!(parse(r#"{"name":"x","command":["a"],"port":70000}"#).is_err());
    }
}
