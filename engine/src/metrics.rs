//! The process's Prometheus metrics (the `prometheus` crate): one registry holding the HTTP
//! metrics the API middleware updates, the run, step and plugin metrics the scheduler and the
//! plugin host update, the repository drift gauges, and the process collector (CPU, memory, open
//! files). `render()` is what `GET /metrics` serves.

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric of the process.
pub struct Metrics {
    registry: Registry,
    pub http_requests_total: IntCounterVec,
    pub http_request_duration_seconds: HistogramVec,
    pub http_requests_in_flight: IntGauge,
    pub runs_total: IntCounterVec,
    pub runs_active: IntGauge,
    pub runs_queued: IntGauge,
    pub step_duration_seconds: HistogramVec,
    pub plugin_instantiate_seconds: Histogram,
    pub exec_denied_total: IntCounterVec,
    pub repo_ahead: IntGaugeVec,
    pub repo_behind: IntGaugeVec,
    pub sync_failures_total: IntCounterVec,
}

/// Step and request durations span milliseconds to many minutes.
const STEP_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Instantiation takes microseconds (pooling) to milliseconds.
const INSTANTIATE_BUCKETS: &[f64] = &[
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.005, 0.01, 0.05,
];

impl Metrics {
    fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new();
        let m = Metrics {
            http_requests_total: IntCounterVec::new(
                Opts::new("http_requests_total", "HTTP requests answered."),
                &["method", "route", "status"],
            )?,
            http_request_duration_seconds: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Time to answer an HTTP request (to the response head).",
                ),
                &["method", "route"],
            )?,
            http_requests_in_flight: IntGauge::new(
                "http_requests_in_flight",
                "HTTP requests being answered now.",
            )?,
            runs_total: IntCounterVec::new(
                Opts::new("nestr_runs_total", "Runs finished by this process."),
                &["operation", "status"],
            )?,
            runs_active: IntGauge::new("nestr_runs_active", "Runs this process is executing.")?,
            runs_queued: IntGauge::new(
                "nestr_runs_queued",
                "Runs waiting for one of the server's run slots.",
            )?,
            step_duration_seconds: HistogramVec::new(
                HistogramOpts::new("nestr_step_duration_seconds", "Duration of finished steps.")
                    .buckets(STEP_BUCKETS.to_vec()),
                &["operation", "plugin"],
            )?,
            plugin_instantiate_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "nestr_plugin_instantiate_seconds",
                    "Time to instantiate a plugin for a step.",
                )
                .buckets(INSTANTIATE_BUCKETS.to_vec()),
            )?,
            exec_denied_total: IntCounterVec::new(
                Opts::new(
                    "nestr_exec_denied_total",
                    "Capability requests of plugins that were refused.",
                ),
                &["plugin", "capability"],
            )?,
            repo_ahead: IntGaugeVec::new(
                Opts::new(
                    "nestr_repo_ahead",
                    "Commits the checked-out branch has that its upstream has not.",
                ),
                &["repo"],
            )?,
            repo_behind: IntGaugeVec::new(
                Opts::new(
                    "nestr_repo_behind",
                    "Commits the upstream has that the checked-out branch has not.",
                ),
                &["repo"],
            )?,
            sync_failures_total: IntCounterVec::new(
                Opts::new(
                    "nestr_sync_failures_total",
                    "Repositories whose assemble or sync failed.",
                ),
                &["repo"],
            )?,
            registry,
        };
        let r = &m.registry;
        r.register(Box::new(m.http_requests_total.clone()))?;
        r.register(Box::new(m.http_request_duration_seconds.clone()))?;
        r.register(Box::new(m.http_requests_in_flight.clone()))?;
        r.register(Box::new(m.runs_total.clone()))?;
        r.register(Box::new(m.runs_active.clone()))?;
        r.register(Box::new(m.runs_queued.clone()))?;
        r.register(Box::new(m.step_duration_seconds.clone()))?;
        r.register(Box::new(m.plugin_instantiate_seconds.clone()))?;
        r.register(Box::new(m.exec_denied_total.clone()))?;
        r.register(Box::new(m.repo_ahead.clone()))?;
        r.register(Box::new(m.repo_behind.clone()))?;
        r.register(Box::new(m.sync_failures_total.clone()))?;
        #[cfg(target_os = "linux")]
        r.register(Box::new(Process(
            prometheus::process_collector::ProcessCollector::for_self(),
        )))?;
        Ok(m)
    }

    /// Every metric in the Prometheus text format.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "could not encode the metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The `prometheus` crate's process collector, with `process_cpu_seconds_total` to the
/// microsecond (the crate's counts whole seconds: a server that used 0.9 s of CPU showed 0).
#[cfg(target_os = "linux")]
struct Process(prometheus::process_collector::ProcessCollector);

#[cfg(target_os = "linux")]
impl prometheus::core::Collector for Process {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.0.desc()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut families = self.0.collect();
        let cpu = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
            .ok()
            .map(|u| {
                let secs = |t: nix::sys::time::TimeVal| {
                    t.tv_sec() as f64 + f64::from(i32::try_from(t.tv_usec()).unwrap_or(0)) / 1e6
                };
                secs(u.user_time()) + secs(u.system_time())
            });
        if let Some(cpu) = cpu {
            for f in families
                .iter_mut()
                .filter(|f| f.name() == "process_cpu_seconds_total")
            {
                for m in f.mut_metric().iter_mut() {
                    let mut c = prometheus::proto::Counter::default();
                    c.set_value(cpu);
                    m.set_counter(c);
                }
            }
        }
        families
    }
}

/// The process's metrics (created on first use). `None` only if the metric definitions are
/// invalid, which the tests rule out.
pub fn global() -> Option<&'static Metrics> {
    static METRICS: OnceLock<Option<Metrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| match Metrics::new() {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::error!(error = %e, "metrics unavailable");
                None
            }
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_metric_is_defined_and_rendered() {
        let m = super::global().expect("metrics");
        m.runs_total
            .with_label_values(&["build", "succeeded"])
            .inc();
        let text = m.render();
        for name in [
            "nestr_runs_total",
            "nestr_runs_active",
            "nestr_runs_queued",
            "http_requests_in_flight",
            "nestr_plugin_instantiate_seconds",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
