//! Resource limits: the one parser for quantities (`512Mi`, `1G`, `0.5` or
//! `500m` CPUs) and the `[limits]` every binder and service gets unless its
//! binding says otherwise.
//!
//! Quantities are read as Kubernetes reads them, everywhere: the quota, the
//! Docker and process backends and the Kubernetes pod all see the same
//! number of bytes. A memory value whose meaning differs between binderd's
//! old reading and Kubernetes' (`512m` is 512 MB to Docker, 0.512 bytes to
//! Kubernetes) is refused with a suggestion; bindings stored before that rule
//! are read as they were ([`legacy_memory`]) and reported at start.

use serde::{Deserialize, Serialize};

use crate::text::printable;

/// Why a quantity or a limit was refused. Becomes a 400 (or a config error).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct InvalidQuantity(pub String);

const KI: f64 = 1024.0;

/// Bytes of a Kubernetes memory quantity: plain (`1073741824`), decimal
/// (`1k`, `1M`, `1G`, `1T`, `1P`, `1E`), binary (`1Ki` … `1Ei`) or with an
/// exponent (`1e9`). `field` names it in errors.
pub fn memory(field: &str, raw: &str) -> Result<u64, InvalidQuantity> {
    let shown = printable(raw);
    let (number, suffix) = split_number(raw);
    let value: f64 = number
        .parse()
        .ok()
        .filter(|n: &f64| n.is_finite() && *n >= 0.0 && !number.is_empty())
        .ok_or_else(|| InvalidQuantity(format!("invalid {field} '{shown}'")))?;
    let factor = match suffix {
        "" => 1.0,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => KI,
        "Mi" => KI.powi(2),
        "Gi" => KI.powi(3),
        "Ti" => KI.powi(4),
        "Pi" => KI.powi(5),
        "Ei" => KI.powi(6),
        s if s.starts_with(['e', 'E']) && s[1..].parse::<i32>().is_ok() => {
            10f64.powi(s[1..].parse().unwrap_or(0))
        }
        other => return Err(misspelt(field, &shown, number, other)),
    };
    let bytes = value * factor;
    if !(4.0 * KI * KI..=KI.powi(5)).contains(&bytes) {
        return Err(InvalidQuantity(format!(
            "{field} '{shown}' must be between 4Mi and 1Pi"
        )));
    }
    Ok(bytes as u64)
}

/// The suggestion for a memory suffix Kubernetes does not read as the
/// writer meant: `m` is milli (thousandths of a byte), and Docker's `g`,
/// `mb`, `MB` are not quantities at all.
fn misspelt(field: &str, shown: &str, number: &str, suffix: &str) -> InvalidQuantity {
    let binary = match suffix {
        "m" | "mb" | "MB" | "Mb" => Some("Mi"),
        "g" | "gb" | "GB" | "Gb" => Some("Gi"),
        "K" | "kb" | "KB" | "Kb" => Some("Ki"),
        "t" | "tb" | "TB" => Some("Ti"),
        _ => None,
    };
    InvalidQuantity(match binary {
        Some(unit) => format!(
            "{field} '{shown}' is ambiguous (Kubernetes reads '{suffix}' differently from Docker): write '{number}{unit}'"
        ),
        None => format!(
            "invalid {field} '{shown}': use a Kubernetes quantity such as '512Mi' or '1Gi'"
        ),
    })
}

/// Bytes of a memory value as binderd read it before quantities were
/// Kubernetes' (`512m` and `512mb` meant 512 MB, `1g` 1 GB): for bindings
/// stored then, so that none silently changes meaning.
pub fn legacy_memory(raw: &str) -> Option<u64> {
    let (number, suffix) = split_number(raw);
    let value: f64 = number.parse().ok()?;
    let factor = match suffix {
        "m" => 1e6,
        "g" => 1e9,
        "K" => 1e3,
        "kb" | "KB" => KI,
        "mb" | "MB" => KI * KI,
        "gb" | "GB" => KI.powi(3),
        _ => return None,
    };
    Some((value * factor) as u64)
}

/// Thousandths of a CPU (millicpus) of a Kubernetes CPU quantity: `0.5`,
/// `2`, `500m`.
pub fn cpu(field: &str, raw: &str) -> Result<u64, InvalidQuantity> {
    let bad = || {
        InvalidQuantity(format!(
            "invalid {field} '{}': e.g. '0.5', '2' or '500m'",
            printable(raw)
        ))
    };
    let cpus: f64 = match raw.strip_suffix('m') {
        Some(milli) => milli.parse::<f64>().map_err(|_| bad())? / 1000.0,
        None => raw.parse().map_err(|_| bad())?,
    };
    if !cpus.is_finite() || !(0.001..=1024.0).contains(&cpus) {
        return Err(bad());
    }
    Ok((cpus * 1000.0).round() as u64)
}

fn split_number(raw: &str) -> (&str, &str) {
    let split = raw
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(raw.len());
    raw.split_at(split)
}

/// `[limits]` in the config: what every binder and service gets unless its
/// binding's `resources` says otherwise. A binding may lower these with any
/// key; only admin keys may raise them.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    #[serde(default = "LimitsConfig::default_memory")]
    pub memory: String,
    #[serde(default = "LimitsConfig::default_cpu")]
    pub cpu: String,
    #[serde(default = "LimitsConfig::default_pids")]
    pub pids: u32,
    #[serde(default = "LimitsConfig::default_nofile")]
    pub nofile: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            memory: Self::default_memory(),
            cpu: Self::default_cpu(),
            pids: Self::default_pids(),
            nofile: Self::default_nofile(),
        }
    }
}

impl LimitsConfig {
    fn default_memory() -> String {
        "1Gi".into()
    }
    fn default_cpu() -> String {
        "1".into()
    }
    fn default_pids() -> u32 {
        512
    }
    fn default_nofile() -> u32 {
        1024
    }

    /// The checked numbers.
    pub fn check(&self) -> Result<Limits, InvalidQuantity> {
        let limits = Limits {
            memory_bytes: memory("limits.memory", &self.memory)?,
            millicpus: cpu("limits.cpu", &self.cpu)?,
            pids: self.pids,
            nofile: self.nofile,
        };
        check_counts("limits", limits.pids, limits.nofile)?;
        Ok(limits)
    }
}

fn check_counts(table: &str, pids: u32, nofile: u32) -> Result<(), InvalidQuantity> {
    if !(16..=1 << 22).contains(&pids) {
        return Err(InvalidQuantity(format!(
            "{table}.pids is {pids}; it must be between 16 and 4194304"
        )));
    }
    if !(64..=1 << 20).contains(&nofile) {
        return Err(InvalidQuantity(format!(
            "{table}.nofile is {nofile}; it must be between 64 and 1048576"
        )));
    }
    Ok(())
}

/// What a binding asks for, in numbers; `None` takes the server's limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Wanted {
    pub memory_bytes: Option<u64>,
    pub millicpus: Option<u64>,
    pub pids: Option<u32>,
    pub nofile: Option<u32>,
}

/// Limits in numbers: what a backend applies to one container.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub millicpus: u64,
    /// Processes (and threads) at once.
    pub pids: u32,
    /// Open files per process.
    pub nofile: u32,
}

impl Default for Limits {
    fn default() -> Self {
        LimitsConfig::default()
            .check()
            .expect("the default limits are valid")
    }
}

impl Limits {
    /// These limits with what a binding asks for laid over them.
    pub fn with(&self, wanted: Wanted) -> Limits {
        Limits {
            memory_bytes: wanted.memory_bytes.unwrap_or(self.memory_bytes),
            millicpus: wanted.millicpus.unwrap_or(self.millicpus),
            pids: wanted.pids.unwrap_or(self.pids),
            nofile: wanted.nofile.unwrap_or(self.nofile),
        }
    }

    /// What `wanted` sets above these limits (what only an admin key may
    /// do), one sentence each.
    pub fn raised_by(&self, wanted: Wanted) -> Vec<String> {
        let w = self.with(wanted);
        [
            ("memory", w.memory_bytes, self.memory_bytes, " bytes"),
            ("cpu", w.millicpus, self.millicpus, "m"),
            ("pids", w.pids.into(), self.pids.into(), ""),
            ("nofile", w.nofile.into(), self.nofile.into(), ""),
        ]
        .into_iter()
        .filter(|(_, asked, limit, _)| asked > limit)
        .map(|(name, asked, limit, unit)| {
            format!("resources.{name} ({asked}{unit}) is above the server's limits.{name} ({limit}{unit})")
        })
        .collect()
    }

    /// Kubernetes' spelling of the memory limit, meaning to the kubelet
    /// exactly what it means here: the largest binary unit that divides it
    /// (`512Mi`), else bytes.
    pub fn memory_quantity(&self) -> String {
        let b = self.memory_bytes;
        for (shift, unit) in [(40, "Ti"), (30, "Gi"), (20, "Mi"), (10, "Ki")] {
            if b >= 1 << shift && b.is_multiple_of(1 << shift) {
                return format!("{}{unit}", b >> shift);
            }
        }
        b.to_string()
    }

    /// Kubernetes' spelling of the CPU limit.
    pub fn cpu_quantity(&self) -> String {
        format!("{}m", self.millicpus)
    }

    /// Billionths of a CPU, as Docker's `NanoCpus`.
    pub fn nano_cpus(&self) -> i64 {
        (self.millicpus as i64).saturating_mul(1_000_000)
    }
}

/// Checks a binding's own `pids` and `nofile`, if given.
pub fn check_binding_counts(pids: Option<u32>, nofile: Option<u32>) -> Result<(), InvalidQuantity> {
    check_counts(
        "resources",
        pids.unwrap_or(LimitsConfig::default_pids()),
        nofile.unwrap_or(LimitsConfig::default_nofile()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_reads_kubernetes_quantities() {
        let m = |s: &str| memory("m", s);
        assert_eq!(m("512Mi"), Ok(512 << 20));
        assert_eq!(m("1Gi"), Ok(1 << 30));
        assert_eq!(m("1G"), Ok(1_000_000_000));
        assert_eq!(m("1.5Gi"), Ok(3 << 29));
        assert_eq!(m("64M"), Ok(64_000_000));
        assert_eq!(m("1e9"), Ok(1_000_000_000));
        assert_eq!(m("134217728"), Ok(134_217_728));
        assert!(m("1Ki").unwrap_err().0.contains("between 4Mi"));
        for bad in ["", "Mi", "-5Mi", "1.2.3Gi", "12 Mi", "1Zi", "NaNGi"] {
            assert!(m(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ambiguous_memory_is_refused_with_the_binary_spelling() {
        let e = memory("resources.memory", "512m").unwrap_err().0;
        assert!(e.contains("write '512Mi'"), "{e}");
        let e = memory("resources.memory", "1g").unwrap_err().0;
        assert!(e.contains("write '1Gi'"), "{e}");
        let e = memory("resources.memory", "256MB").unwrap_err().0;
        assert!(e.contains("write '256Mi'"), "{e}");
        // What they meant before, for stored bindings.
        assert_eq!(legacy_memory("512m"), Some(512_000_000));
        assert_eq!(legacy_memory("1g"), Some(1_000_000_000));
        assert_eq!(legacy_memory("256MB"), Some(256 << 20));
        assert_eq!(legacy_memory("512Mi"), None);
    }

    #[test]
    fn cpu_reads_cores_and_millicores() {
        assert_eq!(cpu("c", "0.5"), Ok(500));
        assert_eq!(cpu("c", "2"), Ok(2000));
        assert_eq!(cpu("c", "250m"), Ok(250));
        for bad in ["", "0", "-1", "2k", "1e400", "inf", "m"] {
            assert!(cpu("c", bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_binding_lowers_freely_and_raising_is_named() {
        let limits = Limits::default();
        assert_eq!(limits.memory_bytes, 1 << 30);
        assert_eq!(limits.millicpus, 1000);
        let lower = Wanted {
            memory_bytes: Some(256 << 20),
            pids: Some(64),
            ..Wanted::default()
        };
        assert!(limits.raised_by(lower).is_empty());
        let eff = limits.with(lower);
        assert_eq!(eff.memory_bytes, 256 << 20);
        assert_eq!(eff.pids, 64);
        assert_eq!(eff.nofile, 1024);
        let higher = Wanted {
            memory_bytes: Some(4 << 30),
            millicpus: Some(2000),
            ..Wanted::default()
        };
        let raised = limits.raised_by(higher);
        assert_eq!(raised.len(), 2, "{raised:?}");
        assert!(raised[0].contains("limits.memory"));
        assert_eq!(limits.with(higher).memory_quantity(), "4Gi");
        let odd = Wanted {
            memory_bytes: Some(1_000_000_000),
            ..Wanted::default()
        };
        assert_eq!(limits.with(odd).memory_quantity(), "1000000000");
        assert_eq!(limits.cpu_quantity(), "1000m");
        assert_eq!(limits.nano_cpus(), 1_000_000_000);
    }

    #[test]
    fn the_limits_table_is_checked() {
        let bad = LimitsConfig {
            memory: "512m".into(),
            ..LimitsConfig::default()
        };
        assert!(bad.check().unwrap_err().0.contains("512Mi"));
        let bad = LimitsConfig {
            pids: 3,
            ..LimitsConfig::default()
        };
        assert!(bad.check().unwrap_err().0.contains("limits.pids"));
    }
}
