//! Build script: compiles the plugins workspace (`plugins/`: built-in plugins and test fixtures)
//! for wasm32-wasip2 and embeds the built-in plugins in the `nestr` binary.
//!
//! A fresh clone needs no manual step: when the wasm32-wasip2 target is missing, this script runs
//! `rustup target add wasm32-wasip2`, and stops with that exact instruction if it cannot.
//! The plugins are built in release mode into `<target dir>/plugins`, a target directory of their
//! own, so the nested cargo never waits on the outer one's lock. Also makes cargo rebuild the
//! engine when a migration is added or changed (they are embedded with `include_dir!`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const BUILTINS: &[(&str, &str)] = &[
    ("command", "command"),
    ("cargo", "cargo"),
    ("npm", "npm"),
    ("http-deploy", "http_deploy"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("engine/ has a parent")
        .to_path_buf();
    println!("cargo:rerun-if-changed=../migrations");
    for dir in ["plugins", "sdk", "wit"] {
        println!("cargo:rerun-if-changed=../{dir}");
    }

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    let target_dir = plugin_target_dir(&out_dir, &root);
    ensure_target();
    build_plugins(&root, &target_dir);

    let built = target_dir.join(TARGET).join("release");
    let mut embedded = String::from(
        "/// Built-in plugins compiled from plugins/ (name, component bytes).\n\
         pub static BUILTIN_WASM: &[(&str, &[u8])] = &[\n",
    );
    for (name, file) in BUILTINS {
        let wasm = built.join(format!("{file}.wasm"));
        let copy = out_dir.join(format!("{file}.wasm"));
        std::fs::copy(&wasm, &copy)
            .unwrap_or_else(|e| panic!("built plugin {} is missing: {e}", wasm.display()));
        embedded.push_str(&format!(
            "    ({name:?}, include_bytes!(concat!(env!(\"OUT_DIR\"), \"/{file}.wasm\"))),\n"
        ));
    }
    embedded.push_str("];\n");
    std::fs::write(out_dir.join("builtin_plugins.rs"), embedded).expect("write builtin_plugins.rs");
    // Tests and benchmarks load the fixture plugins from here.
    println!("cargo:rustc-env=NESTR_PLUGIN_WASM_DIR={}", built.display());
}

/// `<target dir>/plugins`: OUT_DIR is `<target dir>/<profile>/build/<pkg>-<hash>/out`.
fn plugin_target_dir(out_dir: &Path, root: &Path) -> PathBuf {
    out_dir
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "build"))
        .and_then(|build| build.parent())
        .and_then(|profile| profile.parent())
        .map_or_else(|| root.join("target"), Path::to_path_buf)
        .join("plugins")
}

fn rustc() -> String {
    env::var("RUSTC").unwrap_or_else(|_| "rustc".to_string())
}

/// Makes sure the standard library for wasm32-wasip2 is installed.
fn ensure_target() {
    let installed = || {
        Command::new(rustc())
            .args(["--print", "target-libdir", "--target", TARGET])
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
            .is_some_and(|dir| dir.join("libstd.rlib").exists() || has_std(&dir))
    };
    if installed() {
        return;
    }
    println!("cargo:warning=the {TARGET} target is missing; running `rustup target add {TARGET}`");
    let added = Command::new("rustup")
        .args(["target", "add", TARGET])
        .status();
    if !matches!(added, Ok(s) if s.success()) || !installed() {
        panic!(
            "\n\nnestr's plugins are WebAssembly components and need the {TARGET} target, which \
             could not be installed automatically. Run:\n\n    rustup target add {TARGET}\n\n\
             then build again.\n"
        );
    }
}

fn has_std(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .flatten()
            .any(|e| e.file_name().to_string_lossy().starts_with("libstd-"))
    })
}

fn build_plugins(root: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".to_string());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("plugins"))
        .args([
            "build",
            "--release",
            "--locked",
            "--target",
            TARGET,
            "--target-dir",
        ])
        .arg(target_dir);
    // The outer build's settings are for the host, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_RUSTFLAGS",
        "CLIPPY_ARGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .unwrap_or_else(|e| panic!("cannot run cargo for plugins/: {e}"));
    if !status.success() {
        panic!("building plugins/ for {TARGET} failed (see the errors above)");
    }
}
