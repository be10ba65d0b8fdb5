//! The engine's health gate after a deploy step, judged by the host once the plugin succeeded (`health = { url, passes, interval, timeout,
//! failures }` in an environment): the URL is polled every `interval`; `passes` 2xx answers in a
//! row are a **pass**, `failures` non-2xx answers in a row a **fail**; no verdict by `timeout`
//! (no answer, or answers that never settle) is **inconclusive**, and the apply pauses for a
//! human (`nestr deploy resume|abort`). A connection that fails is no verdict either way: the
//! service may still be starting.

use std::time::{Duration, Instant};

use serde::Serialize;

/// The gate of one service in one environment.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthGate {
    /// With `{service}` replaced by the service's name.
    pub url: String,
    pub passes: u32,
    pub failures: u32,
    pub interval: Duration,
    pub timeout: Duration,
}

impl From<crate::manifest::HealthSpec> for HealthGate {
    fn from(h: crate::manifest::HealthSpec) -> Self {
        HealthGate {
            url: h.url,
            passes: h.passes,
            failures: h.failures,
            interval: h.interval,
            timeout: h.timeout,
        }
    }
}

/// What a gate concluded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Pass,
    Fail,
    Inconclusive,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Pass => "pass",
            Verdict::Fail => "fail",
            Verdict::Inconclusive => "inconclusive",
        }
    }
}

/// The summary a step gets when its gate was inconclusive (how an apply tells that from any
/// other step that timed out).
pub const INCONCLUSIVE: &str = "health gate inconclusive";

impl HealthGate {
    /// Polls until a verdict or the timeout (or `cancelled`), each check written with `note`.
    /// Blocking: call it off the async runtime.
    pub fn judge(&self, note: &dyn Fn(String), cancelled: &dyn Fn() -> bool) -> (Verdict, String) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(self.interval.max(Duration::from_millis(500))))
            .http_status_as_error(false)
            .max_redirects(0)
            .user_agent(concat!("nestr-health/", env!("CARGO_PKG_VERSION")))
            .build()
            .into();
        let started = Instant::now();
        let (mut passes, mut failures, mut checks) = (0u32, 0u32, 0u32);
        let mut last = String::from("no check ran");
        note(format!(
            "[nestr: health gate: {} — {} passes in a row within {}]",
            self.url,
            self.passes,
            humantime::format_duration(self.timeout)
        ));
        while started.elapsed() < self.timeout {
            if cancelled() {
                return (Verdict::Inconclusive, "cancelled".into());
            }
            checks += 1;
            match agent.get(&self.url).call() {
                Ok(r) if r.status().is_success() => {
                    passes += 1;
                    failures = 0;
                    last = format!("{}", r.status());
                }
                Ok(r) => {
                    failures += 1;
                    passes = 0;
                    last = format!("{}", r.status());
                }
                Err(e) => {
                    passes = 0;
                    last = format!("no answer ({e})");
                }
            }
            note(format!(
                "[nestr: health check {checks}: {last} ({passes}/{} passes, {failures}/{} failures)]",
                self.passes, self.failures
            ));
            if passes >= self.passes {
                return (
                    Verdict::Pass,
                    format!(
                        "health gate passed: {passes} passes in a row in {} ms",
                        started.elapsed().as_millis()
                    ),
                );
            }
            if failures >= self.failures {
                return (
                    Verdict::Fail,
                    format!("health gate failed: {failures} failures in a row; last {last}"),
                );
            }
            let left = self.timeout.saturating_sub(started.elapsed());
            std::thread::sleep(self.interval.min(left));
        }
        (
            Verdict::Inconclusive,
            format!(
                "{INCONCLUSIVE}: no verdict within {} ({checks} checks; last {last})",
                humantime::format_duration(self.timeout)
            ),
        )
    }
}
