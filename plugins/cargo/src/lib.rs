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
    Error, FsAccess, Output, Plugin, PluginInfo, Report, Request, StepResult, TestCounts, exec,
    info, warn,
};
use serde::Deserialize;

/// The operations this plugin runs; each is the cargo subcommand of the same name.
const OPERATIONS: [&str; 4] = ["build", "test", "check", "clippy"];

/// The longest first-error line quoted in a failure summary, in characters.
const MAX_DETAIL_CHARS: usize = 200;

/// How many failed tests a failure summary names.
const NAMES_SHOWN: usize = 3;

/// The cargo plugin's `config` table.
#[derive(Deserialize, schemars::JsonSchema, Default)]
#[serde(deny_unknown_fields)]
struct Config {
    /// Build with --release (default false).
    #[serde(default)]
    release: bool,
    /// Features to enable, e.g. ["postgres"].
    #[serde(default)]
    features: Vec<String>,
    /// Pass --all-features (default false).
    #[serde(default)]
    all_features: bool,
    /// The workspace package to build (-p).
    package: Option<String>,
    /// Extra arguments after the plugin's own; may contain "--".
    #[serde(default)]
    args: Vec<String>,
    /// clippy only: fail on warnings (default true).
    deny_warnings: Option<bool>,
    /// The registry wired dependencies replace (default crates-io).
    registry: Option<String>,
}

struct Cargo;

impl Plugin for Cargo {
    type Config = Config;

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
    }

    fn run(request: Request, config: Config) -> Result<Report, Error> {
        let op = request.operation.as_str();
        if !OPERATIONS.contains(&op) {
            return Err(Error::InvalidConfig(format!(
                "the cargo plugin has no operation `{op}`; it runs {}",
                OPERATIONS.join(", ")
            )));
        }
        let label = label(op, &config);
        let registry = config.registry.as_deref().unwrap_or("crates-io");
        let wired = wire(&request, registry)?;
        // `--config` is cargo's own option: before the subcommand.
        let patches: Vec<String> = wired
            .iter()
            .flat_map(|(_, patch)| ["--config".to_string(), patch.clone()])
            .collect();
        // A lockfile that pins a published version newer than the checkout's would leave the
        // patch unused: let cargo resolve each wired package again, the patch in force.
        for (name, _) in &wired {
            let update =
                exec("cargo")
                    .args(patches.iter().cloned())
                    .args(["update", "-p", name.as_str()]);
            info!("$ {}", update.display());
            let out = update.run()?;
            if !out.success() {
                warn!(
                    "`cargo update -p {name}` {}; building with the lockfile as it is",
                    out.describe()
                );
            }
        }
        let mut args = patches.clone();
        args.extend(cargo_args(op, &config)?);

        let cmd = exec("cargo").args(args);
        info!("$ {}", cmd.display());
        let out = cmd.run()?;

        let report = if op == "test" {
            test_report(&out, &label)
        } else {
            plain_report(&out, &label)
        };
        report
            .metric("duration_ms", out.duration_ms)
            .metric("wired", wired.len())
    }
}

/// What `cargo metadata --no-deps` says of a checkout.
#[derive(Deserialize)]
struct Metadata {
    packages: Vec<Package>,
}

#[derive(Deserialize)]
struct Package {
    name: String,
    version: String,
    manifest_path: String,
}

/// The `--config` values that patch each wired dependency's packages (found with `cargo
/// metadata` in its checkout) over `registry`, by package name, each reported in the step log
/// with its commit.
fn wire(request: &Request, registry: &str) -> Result<Vec<(String, String)>, Error> {
    let mut patches = Vec::new();
    for dep in request.wired() {
        let manifest = format!("{}/Cargo.toml", dep.folder.trim_end_matches('/'));
        let out = exec("cargo")
            .args([
                "metadata",
                "--no-deps",
                "--format-version",
                "1",
                "--offline",
            ])
            .args(["--manifest-path", manifest.as_str()])
            .capture()
            .run()?;
        if !out.success() {
            return Err(Error::failed(format!(
                "cannot wire `{}`: `cargo metadata` in {} {}",
                dep.service,
                dep.folder,
                out.describe()
            )));
        }
        let meta: Metadata = serde_json::from_str(&out.stdout).map_err(|e| {
            Error::failed(format!(
                "cannot wire `{}`: `cargo metadata` printed something unexpected: {e}",
                dep.service
            ))
        })?;
        let commit = dep
            .commit
            .as_deref()
            .map_or("no commit", |c| &c[..c.len().min(12)]);
        if meta.packages.is_empty() {
            warn!("wired `{}`: no package in {}", dep.service, dep.folder);
        }
        for p in meta.packages {
            let dir = p
                .manifest_path
                .strip_suffix("/Cargo.toml")
                .unwrap_or(&p.manifest_path)
                .to_string();
            info!(
                "wired {} {} → {} ({} at {commit})",
                p.name, p.version, dir, dep.service
            );
            let path = serde_json::to_string(&dir).unwrap_or_default();
            let patch = format!("patch.{registry}.{}.path={path}", p.name);
            patches.push((p.name, patch));
        }
    }
    Ok(patches)
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
fn plain_report(out: &Output, label: &str) -> Result<Report, Error> {
    if out.success() {
        Ok(Report::success(format!(
            "{label} succeeded in {} ms",
            out.duration_ms
        )))
    } else {
        Err(Error::failed(failure_line(out, label)))
    }
}

/// test: the counts from the `test result:` lines, failing when a test failed or cargo did.
fn test_report(out: &Output, label: &str) -> Result<Report, Error> {
    let Some(counts) = nestr_sdk::parse::cargo_test(&out.tail) else {
        if out.success() {
            warn!("cargo test succeeded but printed no `test result:` line; no test counts");
            return Ok(Report::success(format!(
                "{label} succeeded in {} ms (no test results found)",
                out.duration_ms
            )));
        }
        return Err(Error::failed(failure_line(out, label)));
    };
    if out.tail_truncated {
        warn!(
            "the test output is longer than the tail the engine keeps; the counts cover only the \
             test binaries whose results are in its last part"
        );
    }
    if counts.failed > 0 {
        Err(
            Error::failed(failed_tests_line(&counts, &failed_test_names(&out.tail)))
                .with_tests(counts),
        )
    } else if !out.success() {
        // Every counted test passed, yet cargo failed: a test binary crashed, a doctest did not
        // compile, or the run timed out.
        Err(Error::failed(failure_line(out, label)).with_tests(counts))
    } else {
        Ok(Report::success(format!(
            "{} passed, {} failed, {} ignored",
            counts.passed, counts.failed, counts.skipped
        ))
        .with_tests(counts))
    }
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
