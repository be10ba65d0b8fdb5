//! `nestr plugin`: list the plugins a workspace can use (built-in and declared) with their digest,
//! declared capabilities and grants; inspect one (`describe()`); check a `.wasm` file against the
//! contract; scaffold a new plugin crate.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand};

use super::render::{self, Tone, Ui};
use super::{CliError, ExitCode};
use crate::manifest::BUILTIN_PLUGINS;
use crate::plugin::caps::grants_line;
use crate::plugin::{Host, LoadedPlugin, PluginInfo};
use crate::workspace::{Location, Workspace};

#[derive(Debug, Args)]
pub struct PluginArgs {
    #[command(subcommand)]
    pub command: PluginCommand,
}

#[derive(Debug, Subcommand)]
pub enum PluginCommand {
    /// Built-in and declared plugins: source, digest, declared capabilities, grants.
    List {
        /// Print the plugins as JSON: what `GET /api/plugins` answers (name, source, digest,
        /// version, declared, grants, error).
        #[arg(long)]
        json: bool,
    },
    /// What a plugin says about itself (describe()).
    Inspect {
        name: String,
        /// Print `{"digest", "info"}` as JSON, `info` being what describe() returned.
        #[arg(long)]
        json: bool,
    },
    /// Validates a .wasm file against the plugin contract and prints what it declares.
    Check {
        file: PathBuf,
        /// Print `{"digest", "info"}` as JSON, `info` being what describe() returned.
        #[arg(long)]
        json: bool,
    },
    /// Creates a new plugin crate in ./NAME (or --dir).
    New {
        name: String,
        /// Where to create it (default: ./NAME).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Depend on the nestr-sdk at this path (a nestr checkout's sdk/) instead of vendoring the
        /// copy this nestr carries into NAME/vendor/nestr-sdk.
        #[arg(long, value_name = "PATH")]
        sdk: Option<PathBuf>,
    },
}

fn runtime() -> Result<tokio::runtime::Runtime, CliError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the async runtime: {e}")))
}

fn host() -> Result<std::sync::Arc<Host>, CliError> {
    Host::shared().map_err(|message| CliError::Plain {
        message,
        help: None,
        code: ExitCode::Failed,
    })
}

pub fn run(at: &Location, args: PluginArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    match args.command {
        PluginCommand::New { name, dir, sdk } => new(at, &name, dir, sdk, ui),
        PluginCommand::Check { file, json } => check(at, &file, json, ui),
        PluginCommand::List { json } => {
            let ws = Workspace::load(at)?;
            list(&ws, json, ui)
        }
        PluginCommand::Inspect { name, json } => {
            // A built-in plugin needs no workspace; a declared one is looked up in it.
            match Workspace::load(at) {
                Ok(ws) => inspect(Some(&ws), &name, json, ui),
                Err(crate::workspace::WorkspaceError::Manifest(
                    crate::manifest::ManifestError::NotFound { .. },
                )) if BUILTIN_PLUGINS.contains(&name.as_str()) => inspect(None, &name, json, ui),
                Err(e) => Err(e.into()),
            }
        }
    }
}

fn load(
    ws: &Workspace,
    rt: &tokio::runtime::Runtime,
    host: &Host,
    name: &str,
) -> Result<LoadedPlugin, String> {
    crate::plugin::load_plugin(rt, host, &ws.manifest, name)
}

fn list(ws: &Workspace, json: bool, ui: &Ui) -> Result<ExitCode, CliError> {
    let rows = crate::views::plugins(&ws.manifest).map_err(|e| CliError::Plain {
        message: e,
        help: None,
        code: ExitCode::Failed,
    })?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&rows).map_err(|e| CliError::usage(e.to_string()))?
        );
    } else {
        let cells: Vec<Vec<(String, Option<Tone>)>> = rows
            .iter()
            .map(|r| {
                let declared = r
                    .declared
                    .as_ref()
                    .map_or_else(|| r.error.clone().unwrap_or_default(), describe_caps);
                vec![
                    (r.name.clone(), Some(Tone::Bold)),
                    (r.version.clone().unwrap_or_else(|| "-".into()), None),
                    (r.source.clone(), None),
                    (
                        r.digest
                            .as_deref()
                            .map_or("-".into(), |d| d[..12].to_string()),
                        Some(Tone::Dim),
                    ),
                    (
                        declared,
                        if r.error.is_some() {
                            Some(Tone::Bad)
                        } else {
                            None
                        },
                    ),
                    (r.grants.clone(), None),
                ]
            })
            .collect();
        print!(
            "{}",
            render::table(
                &["PLUGIN", "VERSION", "SOURCE", "SHA256", "NEEDS", "GRANTED"],
                &cells,
                ui.color_out
            )
        );
    }
    Ok(if rows.iter().any(|r| r.error.is_some()) {
        ExitCode::Failed
    } else {
        ExitCode::Ok
    })
}

fn describe_caps(d: &crate::plugin::caps::Declared) -> String {
    let mut parts = Vec::new();
    for (k, v) in [
        ("exec", &d.exec),
        ("env", &d.env),
        ("secrets", &d.secrets),
        ("http", &d.http),
    ] {
        if !v.is_empty() {
            parts.push(format!("{k} {}", v.join(",")));
        }
    }
    parts.push(format!(
        "fs {}",
        serde_json::to_value(d.fs)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    ));
    parts.join("; ")
}

fn print_info(info: &PluginInfo, digest: &str, json: bool, ui: &Ui) -> Result<(), CliError> {
    if json {
        let v = serde_json::json!({"digest": digest, "info": info});
        println!(
            "{}",
            serde_json::to_string_pretty(&v).map_err(|e| CliError::usage(e.to_string()))?
        );
        return Ok(());
    }
    // Everything below but the digest is the plugin's own text.
    let safe = |t: &str| render::untrusted(t, false);
    println!(
        "{} {}  {}",
        ui.paint(Tone::Bold, &safe(&info.name)),
        safe(&info.version),
        ui.paint(Tone::Dim, &format!("sha256 {digest}"))
    );
    println!("{}", safe(&info.description));
    let ops = if info.operations.is_empty() {
        "any".to_string()
    } else {
        info.operations.join(", ")
    };
    println!("operations: {}", safe(&ops));
    println!("needs: {}", safe(&describe_caps(&info.capabilities)));
    if !info.config.is_empty() {
        println!("config:");
        for f in &info.config {
            let req = if f.required { "required" } else { "optional" };
            println!(
                "  {:<20} {:<8} {:<9} {}",
                safe(&f.name),
                safe(&f.ty),
                req,
                safe(&f.description)
            );
        }
    }
    Ok(())
}

fn inspect(ws: Option<&Workspace>, name: &str, json: bool, ui: &Ui) -> Result<ExitCode, CliError> {
    let declared = ws.is_some_and(|ws| ws.manifest.plugins.contains_key(name));
    if !BUILTIN_PLUGINS.contains(&name) && !declared {
        let others = ws
            .map(|ws| ws.manifest.plugins.keys().cloned().collect::<Vec<_>>())
            .unwrap_or_default();
        return Err(CliError::usage(format!(
            "there is no plugin `{name}`; built-in: {}; declared: {}",
            BUILTIN_PLUGINS.join(", "),
            if others.is_empty() {
                "none".to_string()
            } else {
                others.join(", ")
            }
        )));
    }
    let rt = runtime()?;
    let host = host()?;
    let failed = |message: String| CliError::Plain {
        message,
        help: None,
        code: ExitCode::Failed,
    };
    let plugin = match ws {
        Some(ws) => load(ws, &rt, &host, name).map_err(failed)?,
        None => {
            let bytes =
                Host::builtin(name).ok_or_else(|| failed(format!("`{name}` is not built in")))?;
            rt.block_on(host.load(name, "builtin", bytes))
                .map_err(|e| failed(e.to_string()))?
        }
    };
    print_info(&plugin.info, &plugin.digest, json, ui)?;
    Ok(ExitCode::Ok)
}

fn check(at: &Location, file: &Path, json: bool, ui: &Ui) -> Result<ExitCode, CliError> {
    let path = at.cwd.join(file);
    let name = path.file_stem().map_or_else(
        || "plugin".to_string(),
        |s| s.to_string_lossy().into_owned(),
    );
    let rt = runtime()?;
    let host = host()?;
    let fail = |message: String| CliError::Plain {
        message,
        help: Some(
            "build plugins with `cargo build --release --target wasm32-wasip2` against nestr-sdk"
                .into(),
        ),
        code: ExitCode::Failed,
    };
    let bytes = Host::read_file(&name, &path, None).map_err(|e| fail(e.to_string()))?;
    let plugin = rt
        .block_on(host.load(&name, &path.display().to_string(), &bytes))
        .map_err(|e| fail(e.to_string()))?;
    check_workspace_config(at, &path, &plugin)?;
    print_info(&plugin.info, &plugin.digest, json, ui)?;
    if !json {
        let d = &plugin.info.capabilities;
        let concrete = |v: &[String]| v.iter().filter(|x| *x != "*").cloned().collect::<Vec<_>>();
        let grants = crate::manifest::Grants {
            exec: concrete(&d.exec)
                .into_iter()
                .map(|p| crate::manifest::ExecGrant {
                    program: p,
                    args: vec![],
                })
                .collect(),
            env: concrete(&d.env),
            secrets: concrete(&d.secrets),
            http: concrete(&d.http),
            fs: d.fs,
            ..Default::default()
        };
        ui.note(&format!(
            "\n{} is a valid nestr plugin. Use it from nestr.toml (`path` may also be relative to \
             nestr.toml's folder):\n\
             [plugins.{}]\npath = \"{}\"\nsha256 = \"{}\"\n{}",
            path.display(),
            plugin.info.name,
            path.display(),
            plugin.digest,
            grants_line(&grants)
        ));
    }
    Ok(ExitCode::Ok)
}

/// Inside a workspace whose manifest declares this file as a plugin, checks the `config` of
/// every operation that uses it against the fields the file documents.
fn check_workspace_config(
    at: &Location,
    file: &Path,
    plugin: &LoadedPlugin,
) -> Result<(), CliError> {
    let Ok(path) = at.manifest_path() else {
        return Ok(());
    };
    let Ok(manifest) = crate::manifest::load(&path) else {
        return Ok(());
    };
    let same = |p: &Path| {
        let a = std::fs::canonicalize(manifest.root.join(p)).ok();
        a.is_some() && a == std::fs::canonicalize(file).ok()
    };
    let names: Vec<&str> = manifest
        .plugins
        .values()
        .filter(
            |d| matches!(&d.source, crate::manifest::PluginSource::File { path, .. } if same(path)),
        )
        .map(|d| d.name.as_str())
        .collect();
    manifest
        .check_config(&|name| names.contains(&name).then(|| plugin.info.doc()))
        .map_err(|e| CliError::Manifest(Box::new(e)))
}

/// nestr-sdk as `plugin new` vendors it: its sources and the contract, embedded in the binary,
/// so that a new plugin builds wherever nestr is installed (no checkout, no registry).
const SDK_FILES: &[(&str, &str)] = &[
    ("src/lib.rs", include_str!("../../../sdk/src/lib.rs")),
    ("src/types.rs", include_str!("../../../sdk/src/types.rs")),
    ("src/schema.rs", include_str!("../../../sdk/src/schema.rs")),
    ("src/http.rs", include_str!("../../../sdk/src/http.rs")),
    ("src/tape.rs", include_str!("../../../sdk/src/tape.rs")),
    (
        "src/testing.rs",
        include_str!("../../../sdk/src/testing.rs"),
    ),
    ("src/wit.rs", include_str!("../../../sdk/src/wit.rs")),
    ("src/parse.rs", include_str!("../../../sdk/src/parse.rs")),
    ("wit/plugin.wit", include_str!("../../../wit/plugin.wit")),
];

/// The SDK's Cargo.toml with the values it inherits from nestr's workspace written out.
fn vendored_sdk_manifest() -> String {
    let v = env!("CARGO_PKG_VERSION");
    include_str!("../../../sdk/Cargo.toml")
        .replace(
            "\nversion.workspace = true",
            &format!("\nversion = \"{v}\""),
        )
        .replace("edition.workspace = true", "edition = \"2024\"")
        .replace("rust-version.workspace = true", "rust-version = \"1.95\"")
        .replace(
            "license.workspace = true",
            "license = \"Apache-2.0\"\npublish = false",
        )
        .replace("\n[lints]\nworkspace = true\n", "\n")
}

fn new(
    at: &Location,
    name: &str,
    dir: Option<PathBuf>,
    sdk: Option<PathBuf>,
    ui: &Ui,
) -> Result<ExitCode, CliError> {
    if !crate::manifest::valid_name(name) {
        return Err(CliError::usage(format!(
            "`{name}` is not a valid plugin name: use lower-case letters, digits, `-` and `_`"
        )));
    }
    let dir = at.cwd.join(dir.unwrap_or_else(|| PathBuf::from(name)));
    if dir.exists() {
        return Err(CliError::usage(format!(
            "{} already exists; nothing was written",
            dir.display()
        )));
    }
    let sdk = match sdk {
        Some(p) => {
            let p = at.cwd.join(p);
            let real = std::fs::canonicalize(&p).map_err(|_| {
                CliError::usage(format!(
                    "nestr-sdk is not at {}; pass --sdk PATH to a nestr checkout's sdk/, or \
                     leave --sdk out to vendor the SDK this nestr carries",
                    p.display()
                ))
            })?;
            Some(real)
        }
        None => None,
    };
    let crate_name = name.replace('-', "_");
    let sdk_path = sdk.as_ref().map_or_else(
        || "vendor/nestr-sdk".to_string(),
        |p| p.display().to_string(),
    );
    let cargo_toml = format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\npublish = false\n\n\
         [lib]\n# cdylib: the component; rlib: for integration tests under tests/.\n\
         crate-type = [\"cdylib\", \"rlib\"]\n\n[dependencies]\nnestr-sdk = {{ path = {sdk_path:?} }}\n\
         schemars = \"1\"\nserde = {{ version = \"1\", features = [\"derive\"] }}\nserde_json = \"1\"\n\n\
         [profile.release]\nopt-level = \"s\"\nstrip = true\n\n# A plugin builds on its own.\n[workspace]\n"
    );
    let lib = include_str!("plugin_template.rs").replace("{{name}}", name);
    let write = |p: PathBuf, text: &str| {
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| CliError::usage(format!("cannot create {}: {e}", parent.display())))?;
        }
        std::fs::write(&p, text)
            .map_err(|e| CliError::usage(format!("cannot write {}: {e}", p.display())))
    };
    write(dir.join("Cargo.toml"), &cargo_toml)?;
    write(dir.join("src/lib.rs"), &lib)?;
    write(dir.join(".gitignore"), "/target\n")?;
    if sdk.is_none() {
        let vendor = dir.join("vendor/nestr-sdk");
        write(vendor.join("Cargo.toml"), &vendored_sdk_manifest())?;
        for (file, text) in SDK_FILES {
            write(vendor.join(file), text)?;
        }
    }
    let rel = dir
        .strip_prefix(&at.cwd)
        .unwrap_or(&dir)
        .display()
        .to_string();
    let sdk_note = match &sdk {
        Some(p) => format!("nestr-sdk: {}", p.display()),
        None => format!(
            "nestr-sdk {} is vendored in {rel}/vendor/nestr-sdk (for {})",
            env!("CARGO_PKG_VERSION"),
            crate::plugin::CONTRACT
        ),
    };
    ui.note(&format!(
        "created the plugin crate {rel} ({sdk_note})\n\ntest it natively, then build the component:\n  \
         cd {rel} && cargo test && cargo build --release --target wasm32-wasip2\n\n\
         use it from nestr.toml (one table):\n  [plugins.{name}]\n  path = \"{rel}/target/wasm32-wasip2/release/{crate_name}.wasm\"\n  \
         grants = {{ exec = [\"echo\"] }}\n\nthen give a service an operation:  greet = {{ plugin = \"{name}\" }}"
    ));
    Ok(ExitCode::Ok)
}

#[cfg(test)]
mod tests {
    use super::{SDK_FILES, vendored_sdk_manifest};

    #[test]
    fn every_sdk_source_is_vendored_and_its_manifest_stands_alone() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../sdk/src");
        for entry in std::fs::read_dir(dir).expect("sdk/src") {
            let name = entry.expect("entry").file_name();
            let file = format!("src/{}", name.to_string_lossy());
            assert!(
                SDK_FILES.iter().any(|(f, _)| *f == file),
                "sdk/{file} is not in SDK_FILES: `plugin new` would vendor an SDK without it"
            );
        }
        let manifest = vendored_sdk_manifest();
        assert!(!manifest.contains("workspace"), "{manifest}");
        let parsed: toml::Value = toml::from_str(&manifest).expect("TOML");
        assert_eq!(
            parsed["package"]["version"].as_str(),
            Some(env!("CARGO_PKG_VERSION"))
        );
    }
}
