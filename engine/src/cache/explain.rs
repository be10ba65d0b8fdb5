//! Why a key differs: the parts of two key manifests that differ, in words ("input file
//! src/lib.rs changed", "env RUSTFLAGS was unset, now empty", "dependency `itoa`'s key
//! changed"). A changed folder tree is diffed with git to name the files.

use serde_json::Value;

use crate::manifest::Manifest;

/// sha256 of nothing: the digest an empty environment value has in a key manifest.
const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// Every difference between the key manifests `old` and `new`, one line each (empty: the same).
pub fn diff(manifest: &Manifest, old: &Value, new: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let get = |v: &Value, k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    if get(old, "format") != get(new, "format") {
        out.push("the cache format changed (another version of nestr)".to_string());
    }
    for k in ["service", "operation"] {
        if get(old, k) != get(new, k) {
            out.push(format!(
                "the {k} changed ({} → {})",
                show(&get(old, k)),
                show(&get(new, k))
            ));
        }
    }
    let (op, np) = (get(old, "plugin"), get(new, "plugin"));
    if op.get("name") != np.get("name") {
        out.push(format!(
            "the plugin changed ({} → {})",
            show(op.get("name").unwrap_or(&Value::Null)),
            show(np.get("name").unwrap_or(&Value::Null))
        ));
    } else if op.get("digest") != np.get("digest") {
        out.push(format!(
            "plugin `{}` was rebuilt (component sha256 {} → {})",
            text(np.get("name")),
            short(op.get("digest")),
            short(np.get("digest"))
        ));
    }
    if op.get("contract") != np.get("contract") {
        out.push("the plugin contract version changed".to_string());
    }
    map_diff(&get(old, "config"), &get(new, "config"), &mut |k, _, _| {
        out.push(format!("config `{k}` changed"));
    });
    map_diff(&get(old, "grants"), &get(new, "grants"), &mut |k, a, b| {
        out.push(format!("grant `{k}` changed ({} → {})", show(a), show(b)));
    });
    map_diff(
        &get(old, "programs"),
        &get(new, "programs"),
        &mut |k, a, b| {
            out.push(match (a.is_null(), b.is_null()) {
                (true, false) => format!("program `{k}` is now found at {}", text(b.get("path"))),
                (false, true) => format!("program `{k}` is no longer found on PATH"),
                _ if a.get("path") != b.get("path") => format!(
                    "program `{k}` now resolves to {} (was {})",
                    text(b.get("path")),
                    text(a.get("path"))
                ),
                _ => format!(
                    "program `{k}` ({}) was replaced (sha256 {} → {})",
                    text(b.get("path")),
                    short(a.get("sha256")),
                    short(b.get("sha256"))
                ),
            });
        },
    );
    for (part, word) in [("env", "env"), ("secrets", "secret")] {
        map_diff(&get(old, part), &get(new, part), &mut |k, a, b| {
            out.push(format!(
                "{word} {k} was {}, now {}",
                env_state(a),
                env_state(b)
            ));
        });
    }
    if get(old, "outputs") != get(new, "outputs") {
        out.push("the `outputs` globs changed".to_string());
    }
    inputs_diff(manifest, &get(old, "inputs"), &get(new, "inputs"), &mut out);
    map_diff(&get(old, "deps"), &get(new, "deps"), &mut |k, a, b| {
        out.push(match (a.is_null(), b.is_null()) {
            (true, false) => format!("dependency `{k}` was added"),
            (false, true) => format!("dependency `{k}` was removed"),
            _ => format!("dependency `{k}`'s key changed"),
        });
    });
    map_diff(&get(old, "wired"), &get(new, "wired"), &mut |k, a, b| {
        out.push(match (a.is_null(), b.is_null()) {
            (true, false) => format!("dependency `{k}` is now wired"),
            (false, true) => format!("dependency `{k}` is no longer wired"),
            _ => format!(
                "wired dependency `{k}` moved from {} to {}",
                short(a.get("commit")),
                short(b.get("commit"))
            ),
        });
    });
    // Anything else (a part this version does not know).
    if let (Some(a), Some(b)) = (old.as_object(), new.as_object()) {
        const KNOWN: &[&str] = &[
            "format",
            "service",
            "operation",
            "plugin",
            "config",
            "grants",
            "programs",
            "env",
            "secrets",
            "outputs",
            "inputs",
            "deps",
            "wired",
        ];
        let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            if !KNOWN.contains(&k.as_str()) && a.get(k) != b.get(k) {
                out.push(format!("`{k}` changed"));
            }
        }
    }
    if out.is_empty() && old != new {
        out.push("the key manifests differ".to_string());
    }
    out
}

fn inputs_diff(manifest: &Manifest, old: &Value, new: &Value, out: &mut Vec<String>) {
    if old.get("repo") != new.get("repo") || old.get("path") != new.get("path") {
        out.push(format!(
            "the service folder changed ({}:{} → {}:{})",
            text(old.get("repo")),
            text(old.get("path")),
            text(new.get("repo")),
            text(new.get("path"))
        ));
        return;
    }
    if old.get("globs") != new.get("globs") {
        out.push("the `inputs` globs changed".to_string());
    }
    if old.get("tree") != new.get("tree") {
        match tree_changes(manifest, new, old.get("tree"), new.get("tree")) {
            Some(files) if !files.is_empty() => out.extend(files),
            _ => out.push(format!(
                "the committed files of {} changed (tree {} → {})",
                text(new.get("path")),
                short(old.get("tree")),
                short(new.get("tree"))
            )),
        }
    }
    for part in ["uncommitted", "files"] {
        let what = if part == "files" {
            "input file"
        } else {
            "uncommitted file"
        };
        map_diff(
            old.get(part).unwrap_or(&Value::Null),
            new.get(part).unwrap_or(&Value::Null),
            &mut |k, a, b| {
                out.push(match (a.is_null(), b.is_null()) {
                    (true, false) if part == "uncommitted" => {
                        format!(
                            "uncommitted file {k} {}",
                            if b == "deleted" {
                                "was deleted"
                            } else {
                                "is new or changed"
                            }
                        )
                    }
                    (true, false) => format!("input file {k} was added"),
                    (false, true) if part == "uncommitted" => {
                        format!("uncommitted file {k} is no longer changed")
                    }
                    (false, true) => format!("input file {k} was removed"),
                    _ => format!("{what} {k} changed"),
                });
            },
        );
    }
}

/// The files that differ between two trees of the service folder, from git.
fn tree_changes(
    manifest: &Manifest,
    inputs: &Value,
    old: Option<&Value>,
    new: Option<&Value>,
) -> Option<Vec<String>> {
    let repo = manifest.repo(inputs.get("repo")?.as_str()?)?;
    let git = crate::git::open_exact(&manifest.repo_dir(repo))?;
    let tree = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|s| git2::Oid::from_str(s).ok())
            .and_then(|o| git.find_tree(o).ok())
    };
    let (a, b) = (tree(old), tree(new));
    if a.is_none() && b.is_none() {
        return None;
    }
    let diff = git.diff_tree_to_tree(a.as_ref(), b.as_ref(), None).ok()?;
    let mut files = Vec::new();
    for d in diff.deltas() {
        let path = d
            .new_file()
            .path()
            .or_else(|| d.old_file().path())
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let how = match d.status() {
            git2::Delta::Added => "was added",
            git2::Delta::Deleted => "was deleted",
            _ => "changed",
        };
        files.push(format!("input file {path} {how}"));
        if files.len() >= 50 {
            files.push("… and more input files".to_string());
            break;
        }
    }
    Some(files)
}

/// Calls `f(key, old, new)` for every key whose value differs between two objects (a missing
/// key is null).
fn map_diff(a: &Value, b: &Value, f: &mut dyn FnMut(&str, &Value, &Value)) {
    let empty = serde_json::Map::new();
    let (a, b) = (
        a.as_object().unwrap_or(&empty),
        b.as_object().unwrap_or(&empty),
    );
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    for k in keys {
        let (x, y) = (
            a.get(k).unwrap_or(&Value::Null),
            b.get(k).unwrap_or(&Value::Null),
        );
        if x != y {
            f(k, x, y);
        }
    }
}

fn env_state(v: &Value) -> String {
    match v {
        Value::Null => "unset".into(),
        Value::Object(o) if o.get("sha256").and_then(Value::as_str) == Some(EMPTY) => {
            "empty".into()
        }
        Value::Object(o) => format!("set (sha256 {})", short(o.get("sha256"))),
        Value::String(s) => format!("set ({})", &s[..s.len().min(20)]),
        other => other.to_string(),
    }
}

fn text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "none".into(),
        Some(other) => other.to_string(),
    }
}

fn short(v: Option<&Value>) -> String {
    let t = text(v);
    if t.len() > 12 {
        format!("{}…", &t[..12])
    } else {
        t
    }
}

fn show(v: &Value) -> String {
    let t = match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    if t.chars().count() > 80 {
        format!("{}…", t.chars().take(80).collect::<String>())
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn manifest() -> Manifest {
        crate::manifest::parse(
            std::path::Path::new("/nowhere/nestr.toml"),
            "[workspace]\nname = \"w\"\n",
        )
        .expect("manifest")
    }

    #[test]
    fn names_each_part_that_changed() {
        let old = json!({
            "format": 1, "service": "b", "operation": "build",
            "plugin": {"name": "command", "digest": "aaaa", "contract": "c"},
            "config": {"run": [["make"]]},
            "programs": {"make": {"path": "/usr/bin/make", "sha256": "11"}},
            "env": {"RUSTFLAGS": null, "HOME": {"sha256": "22"}},
            "inputs": {"repo": "r", "path": ".", "tree": null, "uncommitted": {"x.txt": "sha256:1"}},
            "deps": {"itoa": "k1"},
        });
        let new = json!({
            "format": 1, "service": "b", "operation": "build",
            "plugin": {"name": "command", "digest": "bbbb", "contract": "c"},
            "config": {"run": [["make", "all"]]},
            "programs": {"make": {"path": "/usr/bin/make", "sha256": "33"}},
            "env": {"RUSTFLAGS": {"sha256": EMPTY}, "HOME": {"sha256": "22"}},
            "inputs": {"repo": "r", "path": ".", "tree": null, "uncommitted": {"y.txt": "sha256:2"}},
            "deps": {"itoa": "k2"},
        });
        let d = diff(&manifest(), &old, &new).join("\n");
        for want in [
            "plugin `command` was rebuilt",
            "config `run` changed",
            "program `make` (/usr/bin/make) was replaced",
            "env RUSTFLAGS was unset, now empty",
            "uncommitted file x.txt is no longer changed",
            "uncommitted file y.txt is new or changed",
            "dependency `itoa`'s key changed",
        ] {
            assert!(d.contains(want), "{want} missing from:\n{d}");
        }
        assert!(!d.contains("HOME"), "{d}");
        assert!(diff(&manifest(), &new, &new).is_empty());
    }
}

/// What `nestr cache explain` prints and says in JSON.
#[derive(Debug, Clone, serde::Serialize, utoipa::ToSchema)]
pub struct Explanation {
    pub run_id: String,
    pub service: String,
    pub key: String,
    /// The key compared against (null: none to compare with).
    pub against: Option<String>,
    /// The run that stored or had that key, when known.
    pub against_run: Option<String>,
    /// Whether this step was a hit.
    pub hit: bool,
    /// What differs, one line each (empty: the same key).
    pub differences: Vec<String>,
}

/// Why a step cannot be explained.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("there is no run `{0}`")]
    NoRun(String),
    #[error("run `{run}` has no step for service `{service}`")]
    NoStep { run: String, service: String },
    #[error(
        "the step of `{service}` in run `{run}` has no cache key (its operation has no plugin for it, it was skipped, or its key could not be computed)"
    )]
    NoKey { run: String, service: String },
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// Compares the key of `service`'s step in run `run_id` with that step in run `against`, or
/// else with the nearest other key stored or recorded for that service and operation (the one
/// with the fewest differences among the newest 20).
pub fn explain(
    manifest: &Manifest,
    store: &crate::store::Store,
    run_id: &str,
    service: &str,
    against: Option<&str>,
) -> Result<Explanation, ExplainError> {
    let key_of = |run: &str| -> Result<(String, String), ExplainError> {
        let row = store
            .run(run)?
            .ok_or_else(|| ExplainError::NoRun(run.to_string()))?;
        let step = row
            .steps
            .iter()
            .find(|s| s.service == service)
            .ok_or_else(|| ExplainError::NoStep {
                run: run.to_string(),
                service: service.to_string(),
            })?;
        let key =
            step.cache
                .as_ref()
                .map(|c| c.key.clone())
                .ok_or_else(|| ExplainError::NoKey {
                    run: run.to_string(),
                    service: service.to_string(),
                })?;
        Ok((row.run.operation, key))
    };
    let (operation, key) = key_of(run_id)?;
    let hit = store
        .run(run_id)?
        .and_then(|r| r.steps.into_iter().find(|s| s.service == service))
        .is_some_and(|s| s.cache.is_some_and(|c| c.hit));
    let doc = |k: &str| -> Result<Value, ExplainError> {
        Ok(store
            .key_manifest(k)?
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or(Value::Null))
    };
    let mine = doc(&key)?;
    let candidates: Vec<(String, Option<String>)> = match against {
        Some(r) => vec![(key_of(r)?.1, Some(r.to_string()))],
        None => store
            .other_keys(&operation, service, &key, 20)?
            .into_iter()
            .map(|k| (k, None))
            .collect(),
    };
    let mut best: Option<(String, Option<String>, Vec<String>)> = None;
    for (k, run) in candidates {
        let d = diff(manifest, &doc(&k)?, &mine);
        if best.as_ref().is_none_or(|(_, _, b)| d.len() < b.len()) {
            best = Some((k, run, d));
        }
    }
    Ok(match best {
        Some((k, run, differences)) => {
            let against_run = match run {
                Some(r) => Some(r),
                None => store.key_run(&k)?,
            };
            Explanation {
                run_id: run_id.to_string(),
                service: service.to_string(),
                key,
                against: Some(k),
                against_run,
                hit,
                differences,
            }
        }
        None => Explanation {
            run_id: run_id.to_string(),
            service: service.to_string(),
            key,
            against: None,
            against_run: None,
            hit,
            differences: Vec::new(),
        },
    })
}
