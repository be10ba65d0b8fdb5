//! The `npm` built-in plugin: runs an npm script of the service (by default the one named like
//! the operation), optionally after installing its dependencies (`npm ci` with a lockfile, `npm
//! install` without one), and reports test counts for tests (node:test, jest, vitest, ava,
//! mocha, TAP).
//!
//! ```toml
//! build = { plugin = "npm", config = { ci = true } }               # npm ci (or install), then npm run build
//! build = { plugin = "npm", config = { install = "install" } }     # npm install, then npm run build
//! test  = { plugin = "npm", config = { args = ["--runInBand"] } }   # npm test -- --runInBand
//! lint  = { plugin = "npm", config = { script = "lint:ci" } }       # npm run lint:ci
//!
//! [plugins.npm]
//! grants = { exec = ["npm"], env = ["PATH", "HOME"] }
//! ```

use nestr_sdk::{
    Error, FsAccess, Output, Plugin, PluginInfo, Report, Request, StepResult, TestCounts, exec,
    info, parse,
};
use serde::Deserialize;

/// The longest npm error line quoted in a failure summary, in characters.
const MAX_DETAIL_CHARS: usize = 200;

/// The npm plugin's `config` table.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// The package.json script to run (default: the operation's name).
    script: Option<String>,
    /// Install dependencies first, as `install = "auto"` (default false).
    #[serde(default)]
    ci: bool,
    /// auto (npm ci with a lockfile, else npm install), ci, install or none.
    install: Option<Mode>,
    /// Arguments for the script, passed after `--`.
    #[serde(default)]
    args: Vec<String>,
}

#[derive(Deserialize, schemars::JsonSchema, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum Mode {
    Auto,
    Ci,
    Install,
    None,
}

/// The lockfiles `npm ci` installs from.
const LOCKFILES: [&str; 2] = ["package-lock.json", "npm-shrinkwrap.json"];

struct Npm;

impl Plugin for Npm {
    type Config = Config;

    fn describe() -> PluginInfo {
        PluginInfo::new(
            "npm",
            env!("CARGO_PKG_VERSION"),
            "Runs an npm script (default: the operation's name), optionally after npm ci",
        )
        .exec(["npm"])
        .env(["PATH", "HOME", "*"])
        .fs(FsAccess::ReadOnly)
    }

    fn run(request: Request, config: Config) -> Result<Report, Error> {
        let script = config.script.as_deref().unwrap_or(&request.operation);
        if script.trim().is_empty() || script.starts_with('-') {
            return Err(Error::InvalidConfig(format!(
                "`script` must name a script of package.json, got {script:?}"
            )));
        }

        let mut total_ms: u64 = 0;
        let install = match (config.install, config.ci) {
            (Some(i), _) => i,
            (None, true) => Mode::Auto,
            (None, false) => Mode::None,
        };
        let install = match install {
            Mode::Auto if has_lockfile(&request) => Mode::Ci,
            Mode::Auto => Mode::Install,
            other => other,
        };
        let step = match install {
            Mode::Ci => Some(("npm ci", vec!["ci", "--no-fund", "--no-audit"])),
            // Without a lockfile none is written into the service's folder.
            Mode::Install => Some((
                "npm install",
                vec!["install", "--no-fund", "--no-audit", "--no-package-lock"],
            )),
            Mode::Auto | Mode::None => None,
        };
        if let Some((label, args)) = step {
            let cmd = exec("npm").args(args);
            info!("$ {}", cmd.display());
            let out = cmd.run()?;
            total_ms = total_ms.saturating_add(out.duration_ms);
            if !out.success() {
                return Err(Error::failed(failure_line(&out, label))
                    .metric("install_duration_ms", out.duration_ms));
            }
        }
        let wired = wire(&request)?;

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

        let testish = |n: &str| n == "test" || n.starts_with("test:") || n.starts_with("test-");
        let is_test = testish(&request.operation) || testish(script);
        let report = match is_test.then(|| parse::js_test(&out.tail)).flatten() {
            Some(counts) => test_report(&out, &label, counts),
            None if out.success() => Ok(Report::success(format!(
                "{label} succeeded in {} ms",
                out.duration_ms
            ))),
            None => Err(Error::failed(failure_line(&out, &label))),
        };
        report
            .metric("duration_ms", total_ms)
            .metric("wired", wired)
    }
}

/// Links each wired dependency's checkout into `node_modules` (`npm install --no-save
/// --no-package-lock FOLDER`: a symbolic link; package.json and the lockfile are not touched),
/// each reported in the step log with its commit. How many were linked.
fn wire(request: &Request) -> Result<usize, Error> {
    let mut linked = 0;
    for dep in request.wired() {
        let named = exec("npm")
            .args(["pkg", "get", "name", "version", "--json", "--prefix"])
            .arg(dep.folder.as_str())
            .capture()
            .run()?;
        let what = serde_json::from_str::<serde_json::Value>(&named.stdout)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "{} {}",
                    v.get("name")?.as_str()?,
                    v.get("version").and_then(|v| v.as_str()).unwrap_or("")
                ))
            })
            .ok_or_else(|| {
                Error::failed(format!(
                    "cannot wire `{}`: no package.json with a name in {}",
                    dep.service, dep.folder
                ))
            })?;
        let cmd = exec("npm")
            .args([
                "install",
                "--no-save",
                "--no-package-lock",
                "--no-fund",
                "--no-audit",
            ])
            .arg(dep.folder.as_str());
        info!("$ {}", cmd.display());
        let out = cmd.run()?;
        if !out.success() {
            return Err(Error::failed(format!(
                "cannot wire `{}`: {}",
                dep.service,
                failure_line(&out, "npm install")
            )));
        }
        let commit = dep
            .commit
            .as_deref()
            .map_or("no commit", |c| &c[..c.len().min(12)]);
        info!(
            "wired {} → {} ({} at {commit})",
            what.trim(),
            dep.folder,
            dep.service
        );
        linked += 1;
    }
    Ok(linked)
}

/// A test run with counts: failed when a test failed or npm did.
fn test_report(out: &Output, label: &str, counts: TestCounts) -> Result<Report, Error> {
    if counts.failed > 0 {
        let total = counts.passed.saturating_add(counts.failed);
        Err(Error::failed(format!(
            "{} of {total} test{} failed{}",
            counts.failed,
            if total == 1 { "" } else { "s" },
            if counts.skipped > 0 {
                format!(", {} skipped", counts.skipped)
            } else {
                String::new()
            }
        ))
        .with_tests(counts))
    } else if !out.success() {
        Err(Error::failed(failure_line(out, label)).with_tests(counts))
    } else {
        Ok(Report::success(format!(
            "{} passed, {} failed, {} skipped",
            counts.passed, counts.failed, counts.skipped
        ))
        .with_tests(counts))
    }
}

/// Whether the service folder has a lockfile `npm ci` can use.
fn has_lockfile(request: &Request) -> bool {
    LOCKFILES
        .iter()
        .any(|f| std::path::Path::new(&request.path(f)).is_file())
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
