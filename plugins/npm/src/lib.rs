//! The `npm` built-in plugin: runs an npm script of the service (by default the one named like
//! the operation), optionally after `npm ci`, and reports test counts for tests.
//!
//! ```toml
//! build = { plugin = "npm", config = { ci = true } }               # npm ci, then npm run build
//! test  = { plugin = "npm", config = { args = ["--runInBand"] } }   # npm test -- --runInBand
//! lint  = { plugin = "npm", config = { script = "lint:ci" } }       # npm run lint:ci
//!
//! [plugins.npm]
//! grants = { exec = ["npm"], env = ["PATH", "HOME"] }
//! ```

use nestr_sdk::{
    Error, FsAccess, Output, Plugin, PluginInfo, Report, Request, TestCounts, exec, info, parse,
};
use serde::Deserialize;

/// The longest npm error line quoted in a failure summary, in characters.
const MAX_DETAIL_CHARS: usize = 200;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The script of package.json to run (default: the operation's name).
    script: Option<String>,
    /// Run `npm ci` first.
    #[serde(default)]
    ci: bool,
    /// Arguments for the script, passed after `--`.
    #[serde(default)]
    args: Vec<String>,
}

struct Npm;

impl Plugin for Npm {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "npm",
            env!("CARGO_PKG_VERSION"),
            "Runs an npm script (default: the operation's name), optionally after npm ci",
        )
        .exec(["npm"])
        .env(["PATH", "HOME", "*"])
        .fs(FsAccess::None)
        .field(
            "script",
            "string",
            false,
            "the package.json script to run (default: the operation's name)",
        )
        .field("ci", "bool", false, "run `npm ci` first (default false)")
        .field(
            "args",
            "array",
            false,
            "arguments for the script, passed after `--`",
        )
    }

    fn run(request: Request) -> Result<Report, Error> {
        let config: Config = request.config()?;
        let script = config.script.as_deref().unwrap_or(&request.operation);
        if script.trim().is_empty() || script.starts_with('-') {
            return Err(Error::InvalidConfig(format!(
                "`script` must name a script of package.json, got {script:?}"
            )));
        }

        let mut total_ms: u64 = 0;
        if config.ci {
            let cmd = exec("npm").args(["ci", "--no-fund", "--no-audit"]);
            info!("$ {}", cmd.display());
            let out = cmd.run()?;
            total_ms = total_ms.saturating_add(out.duration_ms);
            if !out.success() {
                return Ok(Report::failure(failure_line(&out, "npm ci"))
                    .metric("ci_duration_ms", out.duration_ms));
            }
        }

        let mut cmd = if script == "test" {
            exec("npm").arg("test")
        } else {
            exec("npm").args(["run", script])
        };
        if !config.args.is_empty() {
            cmd = cmd.arg("--").args(config.args.iter().cloned());
        }
        let label = if script == "test" {
            "npm test".to_string()
        } else {
            format!("npm run {script}")
        };
        info!("$ {}", cmd.display());
        let out = cmd.run()?;
        total_ms = total_ms.saturating_add(out.duration_ms);

        let is_test = request.operation == "test" || script == "test";
        let report = match is_test.then(|| test_counts(&out.tail)).flatten() {
            Some(counts) => test_report(&out, &label, counts),
            None if out.success() => {
                Report::success(format!("{label} succeeded in {} ms", out.duration_ms))
            }
            None => Report::failure(failure_line(&out, &label)),
        };
        Ok(report.metric("duration_ms", total_ms))
    }
}

/// Counts from the first format that matches: node's test runner summary, mocha's, TAP, or a
/// `N passed, N failed` line (jest, vitest and others).
fn test_counts(tail: &str) -> Option<TestCounts> {
    node_summary(tail)
        .or_else(|| mocha_summary(tail))
        .or_else(|| parse::tap(tail))
        .or_else(|| parse::passed_failed(tail))
}

/// The closing block of `node --test` (`# pass 4` / `ℹ pass 4`, `fail`, `cancelled`, `skipped`,
/// `todo`), which counts nested subtests once; plain TAP counting would count them with their
/// parents. When several runs printed one, the last wins.
fn node_summary(tail: &str) -> Option<TestCounts> {
    let (mut pass, mut fail, mut cancelled, mut skipped, mut todo) = (None, None, 0, 0, 0);
    for line in tail.lines() {
        let line = line.trim();
        let Some(rest) = line.strip_prefix("# ").or_else(|| line.strip_prefix("ℹ ")) else {
            continue;
        };
        let mut words = rest.split_whitespace();
        let (Some(key), Some(value), None) = (words.next(), words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = value.parse::<u32>() else {
            continue;
        };
        match key {
            "pass" => pass = Some(n),
            "fail" => fail = Some(n),
            "cancelled" => cancelled = n,
            "skipped" => skipped = n,
            "todo" => todo = n,
            _ => {}
        }
    }
    Some(TestCounts {
        passed: pass?,
        failed: fail?.saturating_add(cancelled),
        skipped: skipped.saturating_add(todo),
    })
}

/// mocha's `7 passing (12ms)`, `2 failing`, `1 pending`.
fn mocha_summary(tail: &str) -> Option<TestCounts> {
    let count = |word: &str| {
        tail.lines().rev().find_map(|line| {
            let mut words = line.split_whitespace();
            let n = words.next()?.parse::<u32>().ok()?;
            (words.next()? == word).then_some(n)
        })
    };
    Some(TestCounts {
        passed: count("passing")?,
        failed: count("failing").unwrap_or(0),
        skipped: count("pending").unwrap_or(0),
    })
}

/// A test run with counts: failed when a test failed or npm did.
fn test_report(out: &Output, label: &str, counts: TestCounts) -> Report {
    let report = if counts.failed > 0 {
        let total = counts.passed.saturating_add(counts.failed);
        Report::failure(format!(
            "{} of {total} test{} failed{}",
            counts.failed,
            if total == 1 { "" } else { "s" },
            if counts.skipped > 0 {
                format!(", {} skipped", counts.skipped)
            } else {
                String::new()
            }
        ))
    } else if !out.success() {
        Report::failure(failure_line(out, label))
    } else {
        Report::success(format!(
            "{} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        ))
    };
    report.with_tests(counts)
}

/// `npm run build exited with code 1: Missing script: "build"`.
fn failure_line(out: &Output, label: &str) -> String {
    match npm_error(&out.tail) {
        Some(error) => format!("{label} {}: {error}", out.describe()),
        None => format!("{label} {}", out.describe()),
    }
}

/// The first line npm itself printed about the failure (`npm error …`, `npm ERR! …` before npm
/// 10) that says more than the exit code, path and log file.
fn npm_error(tail: &str) -> Option<String> {
    const NOISE: [&str; 10] = [
        "code ",
        "errno ",
        "path ",
        "command ",
        "signal ",
        "workspace ",
        "location ",
        "Lifecycle script",
        "A complete log",
        "Log files were not written",
    ];
    tail.lines()
        .filter_map(|line| {
            let line = line.trim();
            line.strip_prefix("npm error ")
                .or_else(|| line.strip_prefix("npm ERR! "))
        })
        .map(str::trim)
        .find(|msg| !msg.is_empty() && !NOISE.iter().any(|n| msg.starts_with(n)))
        .map(|msg| shorten(msg, MAX_DETAIL_CHARS))
}

/// `text` cut to at most `max` characters, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

nestr_sdk::export!(Npm);
