//! Profiles: options a binding offers at launch ("small" and "large",
//! "python" and "r"), each a few overrides of the binding's template and
//! each with its own warm pool.
//!
//! A profile overrides `image`, `command`, `env` (entries added over the
//! binding's), `resources` (field by field), `kernel` and `pool`; everything
//! else is the binding's. [`Binding::with_profile`] makes the template a
//! profile's pool starts from; the binding's own pool serves its default
//! profile (the one marked `default`, else the first).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{check_env, check_text, printable, Binding, BindingName, InvalidBinding};
use super::{Kernel, PoolSize, Resources};

/// The most profiles a binding may list.
pub const MAX_PROFILES: usize = 32;

/// One option offered at launch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    /// Chosen by this name (`{"profile": "large"}`, `?profile=large`);
    /// names are case-insensitive, like binding names.
    #[schema(pattern = "^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
    pub name: String,
    /// Shown to whoever chooses (e.g. "2 CPUs, 4 GiB").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// The profile a launch without a choice gets (at most one; none
    /// marked: the first).
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub default: bool,
    /// Only callers with an API key may choose it (anonymous: 403).
    #[serde(default, skip_serializing_if = "super::is_false")]
    pub keys_only: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Added over the binding's `env` (same name: the profile's value).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Each field given replaces the binding's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<Kernel>,
    /// This profile's warm pool (default: the binding's `pool`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolSize>,
}

impl Binding {
    /// The profile a launch without a choice gets: the one marked
    /// `default`, else the first; `None` without profiles.
    pub fn default_profile(&self) -> Option<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.default)
            .or_else(|| self.profiles.first())
    }

    /// The profile named `name` (case-insensitive).
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles
            .iter()
            .find(|p| p.name.eq_ignore_ascii_case(name))
    }

    /// The profiles' names, for an error listing the choices.
    pub fn profile_names(&self) -> String {
        self.profiles
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The template a profile's pool starts from: this binding with the
    /// profile's overrides, without `profiles`.
    pub fn with_profile(&self, profile: &Profile) -> Binding {
        let mut b = Binding {
            profiles: Vec::new(),
            ..self.clone()
        };
        if let Some(image) = &profile.image {
            b.image = Some(image.clone());
        }
        if !profile.command.is_empty() {
            b.command = profile.command.clone();
        }
        for (k, v) in &profile.env {
            b.env.insert(k.clone(), v.clone());
        }
        if let Some(r) = &profile.resources {
            let base = &mut b.resources;
            base.memory = r.memory.clone().or(base.memory.take());
            base.cpu = r.cpu.clone().or(base.cpu.take());
            base.pids = r.pids.or(base.pids);
            base.nofile = r.nofile.or(base.nofile);
        }
        if let Some(kernel) = &profile.kernel {
            b.kernel = Some(kernel.clone());
        }
        if let Some(pool) = profile.pool {
            b.pool = pool;
        }
        b
    }

    /// The template of the binding's own pool: its default profile's, or
    /// the binding itself without profiles.
    pub fn default_template(&self) -> Binding {
        match self.default_profile() {
            Some(p) => self.with_profile(p),
            None => self.clone(),
        }
    }

    /// Names normalised, unique, at most one default; each profile's
    /// template checked as a binding is (`check` runs the binding's rules).
    pub(super) fn check_profiles(
        &mut self,
        check: impl Fn(&mut Binding) -> Result<(), InvalidBinding>,
    ) -> Result<(), InvalidBinding> {
        if self.profiles.len() > MAX_PROFILES {
            return Err(InvalidBinding(format!("at most {MAX_PROFILES} 'profiles'")));
        }
        let mut seen = std::collections::BTreeSet::new();
        for p in &mut self.profiles {
            let name = BindingName::parse(&p.name).map_err(|_| {
                InvalidBinding(format!(
                    "invalid profile name '{}': names match ^[A-Za-z0-9][A-Za-z0-9._-]{{0,62}}$",
                    printable(&p.name)
                ))
            })?;
            p.name = name.as_str().to_owned();
            if !seen.insert(p.name.clone()) {
                return Err(InvalidBinding(format!(
                    "two profiles are named '{}'",
                    p.name
                )));
            }
            if let Some(d) = &p.description {
                check_text("profiles.description", d)?;
            }
            check_env(&p.env)?;
        }
        if self.profiles.iter().filter(|p| p.default).count() > 1 {
            return Err(InvalidBinding(
                "more than one profile is marked 'default': mark one".into(),
            ));
        }
        for p in &self.profiles {
            let mut template = self.with_profile(p);
            check(&mut template)
                .map_err(|e| InvalidBinding(format!("profile '{}': {}", p.name, e.0)))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(json: serde_json::Value) -> Binding {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn a_profile_overrides_what_it_names_and_keeps_the_rest() {
        let b = binding(serde_json::json!({
            "name": "course", "command": ["serve"], "env": {"A": "1", "B": "2"},
            "resources": {"memory": "1Gi", "cpu": "1"},
            "pool": {"min": 2, "max": 5},
            "profiles": [
                {"name": "small", "default": true},
                {"name": "large", "command": ["serve", "--big"], "env": {"B": "3"},
                 "resources": {"memory": "4Gi"}, "pool": {"min": 0, "max": 2}}
            ]
        }));
        let small = b.with_profile(b.profile("small").unwrap());
        assert_eq!(small.command, vec!["serve"]);
        assert_eq!(small.resources.memory.as_deref(), Some("1Gi"));
        assert_eq!(small.pool.min, 2);
        assert!(small.profiles.is_empty());
        let large = b.with_profile(b.profile("LARGE").unwrap());
        assert_eq!(large.command, vec!["serve", "--big"]);
        assert_eq!(large.env["A"], "1");
        assert_eq!(large.env["B"], "3");
        assert_eq!(large.resources.memory.as_deref(), Some("4Gi"));
        assert_eq!(large.resources.cpu.as_deref(), Some("1"));
        assert_eq!((large.pool.min, large.pool.max), (0, 2));
        assert_eq!(large.name, "course");
    }

    #[test]
    fn the_default_is_the_marked_one_else_the_first() {
        let mut b = binding(serde_json::json!({
            "name": "b", "command": ["x"],
            "profiles": [{"name": "a"}, {"name": "b", "default": true}]
        }));
        assert_eq!(b.default_profile().unwrap().name, "b");
        b.profiles[1].default = false;
        assert_eq!(b.default_profile().unwrap().name, "a");
        b.profiles.clear();
        assert!(b.default_profile().is_none());
        assert_eq!(b.default_template(), b);
    }

    #[test]
    fn bad_profiles_are_refused_naming_the_profile() {
        for (profiles, says) in [
            (
                serde_json::json!([{"name": "a"}, {"name": "A"}]),
                "two profiles",
            ),
            (
                serde_json::json!([{"name": "a", "default": true}, {"name": "b", "default": true}]),
                "more than one",
            ),
            (serde_json::json!([{"name": "-x"}]), "invalid profile name"),
            (
                serde_json::json!([{"name": "big", "pool": {"min": 5, "max": 2}}]),
                "profile 'big'",
            ),
            (
                serde_json::json!([{"name": "big", "resources": {"memory": "512m"}}]),
                "profile 'big'",
            ),
            (
                serde_json::json!([{"name": "e", "env": {"BINDERD_KEY": "x"}}]),
                "reserved",
            ),
            (
                serde_json::json!([{"name": "k", "kernel": {"name": "py 3"}}]),
                "profile 'k'",
            ),
        ] {
            let mut b = binding(serde_json::json!({
                "name": "b", "command": ["x"], "profiles": profiles
            }));
            let err = b.validate(true, 100).unwrap_err();
            assert!(err.0.contains(says), "{profiles}: {}", err.0);
        }
        let many: Vec<_> = (0..=MAX_PROFILES)
            .map(|i| serde_json::json!({"name": format!("p{i}")}))
            .collect();
        let mut b = binding(serde_json::json!({"name": "b", "command": ["x"], "profiles": many}));
        assert!(b.validate(true, 100).is_err());
    }

    #[test]
    fn names_are_folded_to_lower_case() {
        let mut b = binding(serde_json::json!({
            "name": "b", "command": ["x"], "profiles": [{"name": "Large"}]
        }));
        b.validate(true, 100).unwrap();
        assert_eq!(b.profiles[0].name, "large");
    }
}
