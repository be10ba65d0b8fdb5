//! Manifest validation: every error case in `tests/manifest-errors/NAME.toml` is loaded by the
//! real binary, must exit 2, and must print exactly `NAME.stderr` (the temp folder shown as
//! `[WS]`). `NESTR_BLESS=1 cargo test manifest` rewrites the expected files after a deliberate
//! change; review the diff before committing it.

use std::path::{Path, PathBuf};

use crate::support::{Sandbox, TestResult};

fn cases() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/manifest-errors");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("tests/manifest-errors exists")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    cases.sort();
    cases
}

#[test]
fn every_manifest_error_is_reported_with_location_and_help() -> TestResult {
    let bless = std::env::var_os("NESTR_BLESS").is_some();
    let sb = Sandbox::new();
    let mut failures = Vec::new();
    let cases = cases();
    assert!(
        cases.len() >= 40,
        "expected the whole set of cases, found {}",
        cases.len()
    );
    for case in &cases {
        let name = case.file_stem().and_then(|s| s.to_str()).ok_or("name")?;
        let ws = sb.path().join(name);
        std::fs::create_dir_all(&ws)?;
        std::fs::copy(case, ws.join("nestr.toml"))?;
        let run = sb.nestr(&ws, &["services"]);
        let shown = run
            .stderr
            .replace(&ws.to_string_lossy().into_owned(), "[WS]");
        let expected_path = case.with_extension("stderr");
        if run.code != 2 {
            failures.push(format!("{name}: exit {} (want 2)\n{shown}", run.code));
            continue;
        }
        if !shown.contains("[WS]/nestr.toml:") {
            failures.push(format!("{name}: no file:line in\n{shown}"));
        }
        if !shown.contains("help:") {
            failures.push(format!("{name}: no help in\n{shown}"));
        }
        // Every problem in one format: each opens with `×` and its location, none is set
        // apart with an `Error:` prefix.
        if shown.lines().any(|l| l.trim_start().starts_with("Error:")) {
            failures.push(format!("{name}: a problem in another format in\n{shown}"));
        }
        if bless {
            std::fs::write(&expected_path, &shown)?;
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != shown {
            failures.push(format!(
                "{name}: output differs\n--- expected\n{expected}\n--- got\n{shown}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}

#[test]
fn a_valid_manifest_from_the_design_loads() -> TestResult {
    let text = r#"
[workspace]
name = "shop"

[repos.api]
url = "https://git.example.com/acme/api.git"
branch = "main"
path = "repos/api"

[repos.shared]
url = "git@git.example.com:acme/shared.git"
rev = "0123456789ABCDEF0123456789abcdef01234567"

[services.api]
repo = "api"
path = "."
depends_on = ["shared"]
tags = ["backend"]

[services.shared]
repo = "shared"
path = "lib/"

[services.api.operations]
build  = { plugin = "command", config = { run = [["make", "build"]] } }
test   = { plugin = "cargo" }
deploy = { plugin = "http-deploy", config = { url = "https://deploy.example.com/hooks/api" } }

[operations.lint]
plugin = "command"
config = { run = [["make", "lint"]], when = 1979-05-27T07:32:00Z }
concurrency = 1

[plugins.command]
grants = { exec = ["make", "sh", { program = "cargo", args = ["build", "test*"] }], env = ["PATH", "HOME"] }

[plugins.my-lint]
path = "tools/my-lint.wasm"
sha256 = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
grants = { exec = ["/usr/bin/eslint"], secrets = ["NPM_TOKEN"], http = ["https://Deploy.example.com:8443/"], fs = "read-write", memory_mb = 128, timeout = "5m" }
"#;
    let m = nestr::manifest::parse(Path::new("/ws/nestr.toml"), text)?;
    assert_eq!(m.root, Path::new("/ws"));
    assert_eq!(m.repos[0].path, Path::new("repos/api"));
    assert_eq!(
        m.repos[1].pin,
        nestr::manifest::Pin::Rev("0123456789abcdef0123456789abcdef01234567".into())
    );
    assert_eq!(m.services[1].path, Path::new("lib"));
    let api = m.service("api").ok_or("api")?;
    assert_eq!(m.operation_names(api), ["build", "test", "deploy", "lint"]);
    assert_eq!(
        m.operation(api, "lint").map(|o| o.concurrency),
        Some(Some(1))
    );
    assert_eq!(m.operations["lint"].config["when"], "1979-05-27T07:32:00Z");
    let lint = &m.plugins["my-lint"];
    assert_eq!(lint.grants.http, ["https://deploy.example.com:8443"]);
    assert_eq!(
        lint.grants.timeout,
        Some(std::time::Duration::from_secs(300))
    );
    assert_eq!(lint.grants.fs, nestr::manifest::FsGrant::ReadWrite);
    assert_eq!(m.plugins["command"].grants.exec[2].args, ["build", "test*"]);
    assert!(
        matches!(&lint.source, nestr::manifest::PluginSource::File { sha256: Some(s), .. } if s == &"a".repeat(64))
    );
    Ok(())
}
