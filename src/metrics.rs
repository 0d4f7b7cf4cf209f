//! Prometheus metrics (`GET /metrics`), through the `metrics` facade and
//! `metrics-exporter-prometheus`.
//!
//! Events are counted where they happen (handouts, starts, failed starts,
//! culls, proxied requests, API answers by status); the pools' sizes are
//! gauges the caller hands to [`render`] at scrape time, so nothing runs when
//! nobody scrapes. A leaf: it knows no other module of binderd. The recorder is process-wide: one is installed the first
//! time it is needed and shared by every binderd running in the process.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

pub const HANDOUTS: &str = "binderd_handouts_total";
pub const STARTS: &str = "binderd_starts_total";
pub const FAILED_STARTS: &str = "binderd_failed_starts_total";
pub const CULLED: &str = "binderd_culled_total";
pub const PROXIED: &str = "binderd_proxied_requests_total";
pub const RESPONSES: &str = "binderd_api_responses_total";
pub const HANDOUT_SECONDS: &str = "binderd_handout_seconds";
pub const READY_SECONDS: &str = "binderd_time_to_ready_seconds";
pub const WARM_SHARE: &str = "binderd_pool_warm_share";
pub const WARM_KERNELS: &str = "binderd_warm_kernels_given_total";
pub const WARM_CHANNELS: &str = "binderd_warm_channels_given_total";
pub const LOST_CLAIMS: &str = "binderd_lost_claims_total";

/// Histogram buckets (seconds): from a warm handout's tens of microseconds
/// to a slow image's minute.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        PrometheusBuilder::new()
            .set_buckets(BUCKETS)
            .unwrap_or_else(|_| PrometheusBuilder::new())
            .install_recorder()
            .unwrap_or_else(|e| {
                // Another recorder owns the process (an embedding program):
                // serve an empty page rather than fail.
                tracing::warn!(error = %e, "metrics recorder not installed");
                PrometheusBuilder::new().build_recorder().handle()
            })
    })
}

/// Counts one API answer by status. The counter handles are registered once
/// per status code, so the request path does no lookup or allocation.
pub fn count_response(status: u16) {
    static COUNTERS: OnceLock<Vec<OnceLock<metrics::Counter>>> = OnceLock::new();
    let counters = COUNTERS.get_or_init(|| (0..600).map(|_| OnceLock::new()).collect());
    if let Some(slot) = counters.get(usize::from(status)) {
        slot.get_or_init(|| metrics::counter!(RESPONSES, "status" => status.to_string()))
            .increment(1);
    }
}

/// Counts one proxied request (handle registered once).
pub fn count_proxied() {
    static COUNTER: OnceLock<metrics::Counter> = OnceLock::new();
    COUNTER
        .get_or_init(|| metrics::counter!(PROXIED))
        .increment(1);
}

/// A binding's counters, registered once when its pool is made.
#[derive(Debug, Clone)]
pub struct PoolCounters {
    pub warm_handouts: metrics::Counter,
    pub cold_handouts: metrics::Counter,
    pub starts: metrics::Counter,
    pub failed_starts: metrics::Counter,
    pub culled: metrics::Counter,
    pub warm_kernels_given: metrics::Counter,
    pub warm_channels_given: metrics::Counter,
    pub lost_claims: metrics::Counter,
    pub warm_handout_seconds: metrics::Histogram,
    pub cold_handout_seconds: metrics::Histogram,
    pub time_to_ready: metrics::Histogram,
}

impl PoolCounters {
    /// `profile`: a profile's own pool (series labelled `profile` too).
    pub fn new(binding: &str, profile: Option<&str>) -> PoolCounters {
        init();
        let labels = |extra: Option<(&'static str, &'static str)>| {
            let mut l = vec![metrics::Label::new("binding", binding.to_owned())];
            if let Some(p) = profile {
                l.push(metrics::Label::new("profile", p.to_owned()));
            }
            if let Some((k, v)) = extra {
                l.push(metrics::Label::new(k, v));
            }
            l
        };
        let warm = Some(("warm", "true"));
        let cold = Some(("warm", "false"));
        PoolCounters {
            warm_handouts: metrics::counter!(HANDOUTS, labels(warm)),
            cold_handouts: metrics::counter!(HANDOUTS, labels(cold)),
            starts: metrics::counter!(STARTS, labels(None)),
            failed_starts: metrics::counter!(FAILED_STARTS, labels(None)),
            culled: metrics::counter!(CULLED, labels(None)),
            warm_kernels_given: metrics::counter!(WARM_KERNELS, labels(None)),
            warm_channels_given: metrics::counter!(WARM_CHANNELS, labels(None)),
            lost_claims: metrics::counter!(LOST_CLAIMS, labels(None)),
            warm_handout_seconds: metrics::histogram!(HANDOUT_SECONDS, labels(warm)),
            cold_handout_seconds: metrics::histogram!(HANDOUT_SECONDS, labels(cold)),
            time_to_ready: metrics::histogram!(READY_SECONDS, labels(None)),
        }
    }
}

/// Installs the recorder (idempotent) and describes every metric (the
/// `# HELP` lines). Called at start so that counters recorded before the
/// first scrape are kept.
pub fn init() {
    static DESCRIBED: std::sync::Once = std::sync::Once::new();
    let _ = handle();
    DESCRIBED.call_once(|| {
        use metrics::{describe_counter, describe_gauge, describe_histogram};
        describe_counter!(
            HANDOUTS,
            "Binders handed out, by binding; warm=true from the pool, false started for the caller"
        );
        describe_counter!(STARTS, "Container starts begun, by binding");
        describe_counter!(FAILED_STARTS, "Container starts that failed, by binding");
        describe_counter!(
            CULLED,
            "Handed-out binders stopped for idleness, age or never being visited, by binding"
        );
        describe_counter!(PROXIED, "Requests proxied to binders' containers");
        describe_counter!(
            WARM_KERNELS,
            "Kernel requests answered with the kernel warmed up before the handout, by binding"
        );
        describe_counter!(
            WARM_CHANNELS,
            "Kernel WebSockets joined to the warm kernel's channels held since before the handout, by binding"
        );
        describe_counter!(
            LOST_CLAIMS,
            "Shared mode: warm pods this replica popped but another replica claimed first, by binding"
        );
        describe_counter!(RESPONSES, "API answers, by HTTP status");
        describe_histogram!(
            HANDOUT_SECONDS,
            metrics::Unit::Seconds,
            "Time to hand out a binder (warm: from the pool; cold: until a start is under way), by binding"
        );
        describe_histogram!(
            READY_SECONDS,
            metrics::Unit::Seconds,
            "Time from a container's start until it is ready (its first HTTP answer, and its warm kernel if the binding has one), by binding"
        );
        for (gauge, help) in POOL_GAUGES {
            describe_gauge!(gauge, help);
        }
    });
}

/// The pool gauges and their help, set at scrape time.
const POOL_GAUGES: [(&str, &str); 8] = [
    (
        "binderd_pool_available",
        "Warm binders ready to hand out, by binding",
    ),
    (
        "binderd_pool_running",
        "Live binders (warm, starting, handed out, paused), by binding",
    ),
    ("binderd_pool_starting", "Binders starting, by binding"),
    ("binderd_pool_min", "The pool's minPool, by binding"),
    ("binderd_pool_max", "The pool's maxPool, by binding"),
    (
        "binderd_pool_target",
        "The warm pool size aimed at now (minPool, or more while demand asks), by binding",
    ),
    (
        WARM_SHARE,
        "The share of handouts served warm from the pool so far, by binding",
    ),
    (
        "binderd_pool_warm_binder_memory_bytes",
        "Resident memory of a pooled binder (server and warm kernel), last sampled when one became ready; 0 when the backend cannot tell, by binding",
    ),
];

/// One pool's sizes at scrape time.
#[derive(Debug, Clone, Copy)]
pub struct PoolGauges {
    pub available: u32,
    pub running: u32,
    pub starting: u32,
    pub min: u32,
    pub max: u32,
    pub target: u32,
    pub warm_share: f64,
    pub warm_binder_memory: u64,
}

/// The Prometheus text page, with each binding's pool gauges brought up to date.
///
/// Only the series of the pools `shown` names, by binding and profile
/// label, are kept (a series without a `binding` label always is): a
/// private binding's name must not reach a reader who may not see the
/// binding, nor a deleted one's, nor a removed profile's last counts.
pub fn render(
    pools: impl IntoIterator<Item = (String, Option<String>, PoolGauges)>,
    shown: impl Fn(&str, Option<&str>) -> bool,
) -> String {
    for (name, profile, g) in pools {
        let values = [
            f64::from(g.available),
            f64::from(g.running),
            f64::from(g.starting),
            f64::from(g.min),
            f64::from(g.max),
            f64::from(g.target),
            g.warm_share,
            g.warm_binder_memory as f64,
        ];
        for ((gauge, _), value) in POOL_GAUGES.iter().zip(values) {
            match &profile {
                Some(p) => {
                    metrics::gauge!(*gauge, "binding" => name.clone(), "profile" => p.clone())
                        .set(value)
                }
                None => metrics::gauge!(*gauge, "binding" => name.clone()).set(value),
            }
        }
    }
    let all = handle().render();
    let mut out = String::with_capacity(all.len());
    for line in all.lines() {
        let keep = match label(line, "binding") {
            None => true,
            Some(binding) => shown(binding, label(line, "profile")),
        };
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The value of a series line's label `name`.
fn label<'l>(line: &'l str, name: &str) -> Option<&'l str> {
    if line.starts_with('#') {
        return None;
    }
    let labels = &line[line.find('{')? + 1..line.find('}')?];
    let at = labels
        .split(',')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix("=\""))?;
    at.split('"').next()
}

#[cfg(test)]
fn binding_label(line: &str) -> Option<&str> {
    label(line, "binding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_told_apart_by_their_binding_label() {
        assert_eq!(
            binding_label("binderd_handouts_total{binding=\"secret\",warm=\"true\"} 3"),
            Some("secret")
        );
        assert_eq!(
            binding_label("binderd_x{warm=\"true\",binding=\"b-2\"} 1"),
            Some("b-2")
        );
        assert_eq!(
            binding_label("binderd_requests_total{status=\"200\"} 9"),
            None
        );
        assert_eq!(
            binding_label("# HELP binderd_handouts_total {binding=\"x\"}"),
            None
        );
        assert_eq!(binding_label("binderd_up 1"), None);
        let line = "binderd_starts_total{binding=\"b\",profile=\"large\"} 2";
        assert_eq!(label(line, "profile"), Some("large"));
        assert_eq!(label(line, "binding"), Some("b"));
        // A label whose name ends like another's is not it.
        assert_eq!(
            label("x{subbinding=\"a\",binding=\"b\"} 1", "binding"),
            Some("b")
        );
    }

    #[test]
    fn a_removed_profiles_series_are_not_shown() {
        init();
        let gauges = PoolGauges {
            available: 1,
            running: 1,
            starting: 0,
            min: 1,
            max: 2,
            target: 1,
            warm_share: 1.0,
            warm_binder_memory: 0,
        };
        let pools = vec![
            ("metric-p".to_string(), None, gauges),
            ("metric-p".to_string(), Some("gone".to_string()), gauges),
            ("metric-p".to_string(), Some("kept".to_string()), gauges),
        ];
        render(pools, |_, _| true);
        let page = render(Vec::new(), |b, p| b == "metric-p" && p != Some("gone"));
        let ours: Vec<&str> = page
            .lines()
            .filter(|l| l.starts_with("binderd_pool_available{") && l.contains("metric-p"))
            .collect();
        assert_eq!(ours.len(), 2, "{ours:?}");
        assert!(ours.iter().all(|l| !l.contains("gone")), "{ours:?}");
        assert!(ours.iter().any(|l| l.contains("kept")), "{ours:?}");
    }
}
