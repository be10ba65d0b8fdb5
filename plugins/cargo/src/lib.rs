//! The `cargo` built-in plugin: runs `cargo build`, `cargo test`, `cargo check` or
//! `cargo clippy` in the service folder and turns the result into a one-line report (with test
//! counts for `test`).
//!
//! ```toml
//! test   = { plugin = "cargo", config = { features = ["postgres"] } }
//! build  = { plugin = "cargo", config = { release = true, package = "api" } }
//! clippy = { plugin = "cargo", config = { deny_warnings = true } }
//!
//! [plugins.cargo]
//! grants = { exec = ["cargo"], env = ["PATH", "HOME"] }
//! ```

use nestr_sdk::{
    Error, FsAccess, Output, Plugin, PluginInfo, Report, Request, TestCounts, exec, info, warn,
};
use serde::Deserialize;

/// The operations this plugin runs; each is the cargo subcommand of the same name.
const OPERATIONS: [&str; 4] = ["build", "test", "check", "clippy"];

/// The longest first-error line quoted in a failure summary, in characters.
const MAX_DETAIL_CHARS: usize = 200;

/// How many failed tests a failure summary names.
const NAMES_SHOWN: usize = 3;

/// The size of the output tail the engine keeps; a tail this long may have lost earlier lines.
const TAIL_CAP_BYTES: usize = 64 * 1024;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// `--release`.
    #[serde(default)]
    release: bool,
    /// `--features a,b`.
    #[serde(default)]
    features: Vec<String>,
    /// `--all-features`.
    #[serde(default)]
    all_features: bool,
    /// `-p NAME`.
    package: Option<String>,
    /// Extra arguments, placed after the plugin's own (they may contain a `--`).
    #[serde(default)]
    args: Vec<String>,
    /// clippy only: `-- -D warnings` (default true).
    deny_warnings: Option<bool>,
}

struct Cargo;

impl Plugin for Cargo {
    fn describe() -> PluginInfo {
        PluginInfo::new(
            "cargo",
            env!("CARGO_PKG_VERSION"),
            "Runs cargo build, test, check or clippy in the service folder",
        )
        .operations(OPERATIONS)
        .exec(["cargo"])
        .env(["PATH", "HOME", "*"])
        .fs(FsAccess::None)
        .field(
            "release",
            "bool",
            false,
            "build with --release (default false)",
        )
        .field(
            "features",
            "array",
            false,
            "features to enable, e.g. [\"postgres\"]",
        )
        .field(
            "all_features",
            "bool",
            false,
            "pass --all-features (default false)",
        )
        .field(
            "package",
            "string",
            false,
            "the workspace package to build (-p)",
        )
        .field(
            "args",
            "array",
            false,
            "extra arguments after the plugin's own; may contain \"--\"",
        )
        .field(
            "deny_warnings",
            "bool",
            false,
            "clippy only: fail on warnings (default true)",
        )
    }

    fn run(request: Request) -> Result<Report, Error> {
        let op = request.operation.as_str();
        if !OPERATIONS.contains(&op) {
            return Err(Error::InvalidConfig(format!(
                "the cargo plugin has no operation `{op}`; it runs {}",
                OPERATIONS.join(", ")
            )));
        }
        let config: Config = request.config()?;
        let args = cargo_args(op, &config)?;
        let label = label(op, &config);

        let cmd = exec("cargo").args(args);
        info!("$ {}", cmd.display());
        let out = cmd.run()?;

        let report = if op == "test" {
            test_report(&out, &label)
        } else {
            plain_report(&out, &label)
        };
        Ok(report.metric("duration_ms", out.duration_ms))
    }
}

/// The arguments after `cargo`.
fn cargo_args(op: &str, config: &Config) -> Result<Vec<String>, Error> {
    let mut args = vec![op.to_string(), "--color".to_string(), "never".to_string()];
    if config.release {
        args.push("--release".to_string());
    }
    if let Some(package) = &config.package {
        if package.trim().is_empty() || package.starts_with('-') {
            return Err(Error::InvalidConfig(format!(
                "`package` must name a package of the workspace, got {package:?}"
            )));
        }
        args.extend(["-p".to_string(), package.clone()]);
    }
    if !config.features.is_empty() {
        if let Some(bad) = config
            .features
            .iter()
            .find(|f| f.is_empty() || f.starts_with('-') || f.contains([',', ' ', '\t']))
        {
            return Err(Error::InvalidConfig(format!(
                "`features` lists {bad:?}; list each feature as its own string, e.g. [\"a\", \"b\"]"
            )));
        }
        args.extend(["--features".to_string(), config.features.join(",")]);
    }
    if config.all_features {
        args.push("--all-features".to_string());
    }
    args.extend(config.args.iter().cloned());
    if op == "clippy" && config.deny_warnings.unwrap_or(true) {
        // Lint flags go after the `--` that separates cargo's arguments from clippy's; reuse the
        // one in `args` when there is one.
        if !config.args.iter().any(|a| a == "--") {
            args.push("--".to_string());
        }
        args.extend(["-D".to_string(), "warnings".to_string()]);
    }
    Ok(args)
}

/// How the command is named in summaries: `cargo build --release -p api`.
fn label(op: &str, config: &Config) -> String {
    let mut label = format!("cargo {op}");
    if config.release {
        label.push_str(" --release");
    }
    if let Some(package) = &config.package {
        label.push_str(" -p ");
        label.push_str(package);
    }
    label
}

/// build, check, clippy: succeeded in N ms, or the exit status and the first error.
fn plain_report(out: &Output, label: &str) -> Report {
    if out.success() {
        Report::success(format!("{label} succeeded in {} ms", out.duration_ms))
    } else {
        Report::failure(failure_line(out, label))
    }
}

/// test: the counts from the `test result:` lines, failing when a test failed or cargo did.
fn test_report(out: &Output, label: &str) -> Report {
    let Some(counts) = nestr_sdk::parse::cargo_test(&out.tail) else {
        if out.success() {
            warn!("cargo test succeeded but printed no `test result:` line; no test counts");
            return Report::success(format!(
                "{label} succeeded in {} ms (no test results found)",
                out.duration_ms
            ));
        }
        return Report::failure(failure_line(out, label));
    };
    if out.tail.len() >= TAIL_CAP_BYTES - 1024 {
        warn!(
            "the test output is longer than the tail the engine keeps; the counts cover only the \
             test binaries whose results are in the last {} KiB",
            TAIL_CAP_BYTES / 1024
        );
    }
    let report = if counts.failed > 0 {
        Report::failure(failed_tests_line(&counts, &failed_test_names(&out.tail)))
    } else if !out.success() {
        // Every counted test passed, yet cargo failed: a test binary crashed, a doctest did not
        // compile, or the run timed out.
        Report::failure(failure_line(out, label))
    } else {
        Report::success(format!(
            "{} passed, {} failed, {} ignored",
            counts.passed, counts.failed, counts.skipped
        ))
    };
    report.with_tests(counts)
}

/// `2 of 9 tests failed, 1 ignored: tests::a, tests::b`.
fn failed_tests_line(counts: &TestCounts, names: &[&str]) -> String {
    let total = counts.passed.saturating_add(counts.failed);
    let mut line = format!(
        "{} of {total} test{} failed",
        counts.failed,
        if total == 1 { "" } else { "s" }
    );
    if counts.skipped > 0 {
        line.push_str(&format!(", {} ignored", counts.skipped));
    }
    if !names.is_empty() {
        line.push_str(": ");
        line.push_str(
            &names
                .iter()
                .take(NAMES_SHOWN)
                .copied()
                .collect::<Vec<_>>()
                .join(", "),
        );
        if names.len() > NAMES_SHOWN {
            line.push_str(&format!(" and {} more", names.len() - NAMES_SHOWN));
        }
    }
    line
}

/// Names from the `test NAME ... FAILED` lines, each once, in order.
fn failed_test_names(tail: &str) -> Vec<&str> {
    let mut names: Vec<&str> = Vec::new();
    for line in tail.lines() {
        let Some(rest) = line.trim().strip_prefix("test ") else {
            continue;
        };
        let Some(name) = rest.strip_suffix(" ... FAILED") else {
            continue;
        };
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// `cargo build exited with code 101: error[E0425]: cannot find value `x` in this scope`.
fn failure_line(out: &Output, label: &str) -> String {
    match first_error(&out.tail) {
        Some(error) => format!("{label} {}: {error}", out.describe()),
        None => format!("{label} {}", out.describe()),
    }
}

/// The first `error…` line of the output that says more than "could not compile", shortened to
/// [`MAX_DETAIL_CHARS`]; the "could not compile" line when there is no other.
fn first_error(tail: &str) -> Option<String> {
    let errors = || {
        tail.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("error[") || l.starts_with("error:"))
    };
    let generic = |l: &&str| {
        l.starts_with("error: could not compile")
            || l.starts_with("error: aborting due to")
            || l.starts_with("error: test failed")
            || l.starts_with("error: 1 target failed")
            || l.contains("targets failed")
    };
    let line = errors().find(|l| !generic(l)).or_else(|| errors().next())?;
    Some(shorten(line, MAX_DETAIL_CHARS))
}

/// `text` cut to at most `max` characters, with `…` when cut.
fn shorten(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &text[..at]),
        None => text.to_string(),
    }
}

nestr_sdk::export!(Cargo);
