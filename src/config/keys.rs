//! API keys: `BINDERD_API_KEYS` (`name:key[:role],...`) or the file's
//! `[[api_keys]]`, and the quotas the file gives them.

use std::collections::{HashMap, HashSet};

use super::file::FileKey;
use super::ConfigError;
use crate::auth::{ApiKey, Role};
use crate::quota::QuotaSpec;

/// The keys (`BINDERD_API_KEYS` replaces the file's, it does not extend
/// them) and the file's quotas by key name.
pub(super) fn load(
    env: Option<String>,
    file_keys: Vec<FileKey>,
) -> Result<(Vec<ApiKey>, HashMap<String, QuotaSpec>), ConfigError> {
    let quotas: HashMap<String, QuotaSpec> = file_keys
        .iter()
        .filter_map(|k| Some((k.name.clone(), k.quota.clone()?)))
        .collect();
    crate::quota::Quotas::new(quotas.clone()).map_err(|e| ConfigError::Invalid(e.0))?;
    let keys = match env {
        Some(spec) if !spec.trim().is_empty() => parse_key_list(&spec)?,
        _ => file_keys
            .into_iter()
            .map(file_key)
            .collect::<Result<_, _>>()?,
    };
    check_keys(&keys)?;
    Ok((keys, quotas))
}

/// `name:key[:role],...`
fn parse_key_list(spec: &str) -> Result<Vec<ApiKey>, ConfigError> {
    spec.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|entry| {
            let mut parts = entry.splitn(3, ':');
            let name = parts.next().unwrap_or_default();
            let key = parts.next().unwrap_or_default();
            let role = match parts.next() {
                None | Some("user") => Role::User,
                Some("admin") => Role::Admin,
                Some(other) => {
                    return Err(ConfigError::Invalid(format!(
                        "BINDERD_API_KEYS: key '{name}' has unknown role '{other}' (admin or user)"
                    )))
                }
            };
            if name.is_empty() || key.is_empty() {
                return Err(ConfigError::Invalid(
                    "BINDERD_API_KEYS: entries are name:key[:role]".into(),
                ));
            }
            Ok(ApiKey::new(name, key, role))
        })
        .collect()
}

fn file_key(k: FileKey) -> Result<ApiKey, ConfigError> {
    let key = match (k.key, k.key_file) {
        (Some(key), None) => key,
        (None, Some(path)) => std::fs::read_to_string(&path)
            .map_err(|source| ConfigError::Read { path, source })?
            .trim()
            .to_owned(),
        _ => {
            return Err(ConfigError::Invalid(format!(
                "api key '{}': give exactly one of key or key_file",
                k.name
            )))
        }
    };
    Ok(ApiKey::new(k.name, key, k.role.unwrap_or(Role::User)))
}

fn check_keys(keys: &[ApiKey]) -> Result<(), ConfigError> {
    let mut names = HashSet::new();
    for k in keys {
        if k.name.is_empty() || !names.insert(k.name.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "api key name '{}' is empty or used twice",
                k.name
            )));
        }
    }
    Ok(())
}
