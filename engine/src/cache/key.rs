//! Step keys. A step's key is the sha256 of its *key manifest*: a canonical JSON document (keys
//! sorted) of everything that can change the step's result — the cache format, the operation,
//! the service, the plugin's digest and contract, the operation's `config`, `inputs`, `outputs`
//! and the plugin's grants, the programs those grants name (resolved on PATH, by path and
//! content digest), the granted environment (unset distinct from empty; values by digest,
//! secrets by an HMAC under a per-workspace key), the service's inputs (its folder's git tree at
//! HEAD plus every uncommitted change, or the files its `inputs` globs match, by content) and the
//! keys of the same operation on the services it depends on. Keys are computed from the manifest,
//! git and the file system: no plugin runs.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use hmac::Mac;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::manifest::{Manifest, Service};
use crate::store::Store;

/// The version of the key manifest's layout: a new one misses every old entry.
pub const FORMAT: u32 = 1;

/// A step's key and the document it is the hash of.
#[derive(Debug, Clone)]
pub struct StepKey {
    /// sha256 of `text`, hex.
    pub key: String,
    /// The key manifest: canonical JSON text (members sorted at every depth, no spaces).
    pub text: String,
    /// What the key took from the step's plugin (none for a service without the operation).
    pub plugin: Option<Arc<PluginParts>>,
}

impl StepKey {
    fn of(text: Vec<u8>, plugin: Option<Arc<PluginParts>>) -> StepKey {
        // serde_json writes UTF-8 only.
        let text = String::from_utf8(text)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        #[cfg(debug_assertions)]
        if let Ok(v) = serde_json::from_str::<Value>(&text) {
            debug_assert_eq!(
                canonical(v).to_string(),
                text,
                "a key manifest is canonical"
            );
        }
        StepKey {
            key: hex::encode(Sha256::digest(text.as_bytes())),
            text,
            plugin,
        }
    }
}

/// Appends `v` as compact JSON (a map's members in the map's order: sorted for a `BTreeMap`
/// and for serde_json's default map).
fn push_json<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) {
    // Writing into a Vec cannot fail; a value that cannot be serialised is null.
    if serde_json::to_writer(&mut *out, v).is_err() {
        out.extend_from_slice(b"null");
    }
}

/// `v` as canonical JSON text.
fn canonical_text(v: Value) -> String {
    canonical(v).to_string()
}

/// `v` with every object's keys in sorted order (whatever order serde_json keeps maps in). An
/// object already in order (serde_json's default map is sorted) is kept as it is.
pub fn canonical(v: Value) -> Value {
    match v {
        Value::Object(mut m) => {
            if m.keys().is_sorted() {
                for v in m.values_mut() {
                    *v = canonical(v.take());
                }
                return Value::Object(m);
            }
            let sorted: BTreeMap<String, Value> =
                m.into_iter().map(|(k, v)| (k, canonical(v))).collect();
            Value::Object(sorted.into_iter().collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// What one repository's inputs are: the tree at HEAD and every uncommitted change.
struct RepoInputs {
    repo: git2::Repository,
    /// The tree of the commit checked out.
    head_tree: Option<git2::Oid>,
    /// The commit checked out and the branch's short name (see `git::head_and_branch`).
    head: (Option<String>, Option<String>),
    /// Each changed path (relative to the repository, `/`-separated) → `sha256:HEX` of its
    /// content in the work tree, or `deleted`.
    dirty: BTreeMap<String, String>,
}

/// The state of some repositories, read by [`read_repos`].
#[derive(Default)]
pub struct RepoStates(HashMap<String, Result<RepoInputs, String>>);

/// Reads the state (HEAD and uncommitted changes) of the repositories of `services`, except
/// those `known` says are read already, on two threads.
pub fn read_repos(
    manifest: &Manifest,
    services: &[&str],
    known: impl Fn(&str) -> bool,
) -> RepoStates {
    let mut todo: Vec<(String, PathBuf)> = Vec::new();
    for name in services {
        if let Some(repo) = manifest.service(name).and_then(|s| manifest.repo(&s.repo))
            && !known(&repo.name)
            && !todo.iter().any(|(n, _)| *n == repo.name)
        {
            todo.push((repo.name.clone(), manifest.repo_dir(repo)));
        }
    }
    if todo.len() < 2 {
        // One repository (or none) is read when its first key needs it.
        return RepoStates::default();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let done = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..2)
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((name, dir)) = todo.get(i) else {
                            break;
                        };
                        mine.push((name.clone(), repo_inputs(dir)));
                    }
                    mine
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap_or_default())
            .collect()
    });
    RepoStates(done)
}

/// What a key takes from its plugin alone (see [`Keys::plugin_parts_of`]), rendered once per
/// plugin as the parts of the key manifest's text they are.
#[derive(Debug)]
pub struct PluginParts {
    /// The sha256 of the plugin's component, hex.
    pub digest: String,
    /// The plugin's effective grants, canonical JSON.
    pub grants: String,
    /// The members between `deps` and `inputs`: `"env":…,"format":…,"grants":…,`.
    middle: String,
    /// The members between `outputs` and `service`: `"plugin":…,"programs":…,"secrets":…,`.
    late: String,
}

/// Computes the keys of one operation's steps; memoises per repository, program and service.
pub struct Keys<'a> {
    manifest: &'a Manifest,
    operation: &'a str,
    repos: HashMap<String, Result<RepoInputs, String>>,
    plugins: HashMap<String, Result<String, String>>,
    /// The parts of a key that depend on the plugin alone (its grants, the programs and
    /// environment they name), by plugin.
    plugin_parts: HashMap<String, Arc<PluginParts>>,
    programs: HashMap<String, Value>,
    keys: HashMap<String, Result<std::sync::Arc<StepKey>, String>>,
    /// Compiled `outputs` glob sets, by their patterns (most services share their operation's).
    globs: HashMap<Vec<String>, globset::GlobSet>,
    secret_key: Option<Vec<u8>>,
    store: Option<&'a Store>,
    /// Program digests newly computed, to remember in the store.
    pub learned: Vec<(String, u64, i64, String)>,
}

impl<'a> Keys<'a> {
    /// `state_dir` holds the per-workspace secret key (made on first use); `store` remembers
    /// program digests between runs.
    pub fn new(
        manifest: &'a Manifest,
        operation: &'a str,
        state_dir: &Path,
        store: Option<&'a Store>,
    ) -> Keys<'a> {
        Keys {
            manifest,
            operation,
            repos: HashMap::new(),
            plugins: HashMap::new(),
            plugin_parts: HashMap::new(),
            programs: HashMap::new(),
            keys: HashMap::new(),
            globs: HashMap::new(),
            secret_key: secret_key(state_dir).ok(),
            store,
            learned: Vec::new(),
        }
    }

    /// Reads the state (HEAD and uncommitted changes) of the repositories of `services` ahead
    /// (those not read yet), on two threads: the git status of a repository is most of what a
    /// key costs.
    pub fn preload(&mut self, services: &[&str]) {
        let read = read_repos(self.manifest, services, |name| {
            self.repos.contains_key(name)
        });
        self.use_repos(read);
    }

    /// The commit and branch checked out in each repository read so far (what
    /// `git::head_and_branch` gives), by repository name.
    pub fn heads(&self) -> HashMap<String, (Option<String>, Option<String>)> {
        self.repos
            .iter()
            .filter_map(|(name, r)| Some((name.clone(), r.as_ref().ok()?.head.clone())))
            .collect()
    }

    /// Takes the state of repositories read ahead by [`read_repos`] (a run reads it while it is
    /// being recorded).
    pub fn use_repos(&mut self, read: RepoStates) {
        self.repos.extend(read.0);
    }

    /// The key of `service`'s step of the operation (or, for a service without the operation,
    /// of its inputs alone: what its dependents depend on). An error says why no key could be
    /// computed (the step then runs uncached).
    pub fn key(&mut self, service: &str) -> Result<Arc<StepKey>, String> {
        let mut stack = Vec::new();
        self.key_inner(service, &mut stack)?;
        self.keys
            .get(service)
            .cloned()
            .unwrap_or_else(|| Err(format!("service `{service}` has no key")))
    }

    /// The key (the hash) of `name`'s step, its whole `StepKey` kept in `keys`.
    fn key_inner(&mut self, name: &str, stack: &mut Vec<String>) -> Result<String, String> {
        if let Some(k) = self.keys.get(name) {
            return k.as_ref().map(|k| k.key.clone()).map_err(Clone::clone);
        }
        if stack.iter().any(|s| s == name) {
            return Err(format!("a dependency cycle through `{name}`"));
        }
        let manifest = self.manifest;
        let Some(service) = manifest.service(name) else {
            return Err(format!("service `{name}` is not in the manifest"));
        };
        stack.push(name.to_string());
        let mut deps: BTreeMap<&str, String> = BTreeMap::new();
        let mut failed = None;
        for d in &service.depends_on {
            match self.key_inner(d, stack) {
                Ok(k) => {
                    deps.insert(d, k);
                }
                Err(e) => failed = Some(format!("dependency `{d}`: {e}")),
            }
        }
        stack.pop();
        let result = match failed {
            Some(e) => Err(e),
            None => self
                .own_manifest(service, &deps)
                .map(|(text, plugin)| Arc::new(StepKey::of(text, plugin))),
        };
        let key = result.as_ref().map(|k| k.key.clone()).map_err(Clone::clone);
        self.keys.insert(name.to_string(), result);
        key
    }

    /// The text of `service`'s key manifest (its members written in sorted order, the plugin's
    /// parts rendered once per plugin), and what it took from the plugin.
    fn own_manifest(
        &mut self,
        service: &Service,
        deps: &BTreeMap<&str, String>,
    ) -> Result<(Vec<u8>, Option<Arc<PluginParts>>), String> {
        let manifest = self.manifest;
        let op = manifest.operation(service, self.operation);
        let outputs: &[String] = op.map_or(&[], |o| o.outputs.as_slice());
        let inputs = self.inputs(service, op.and_then(|o| o.inputs.as_deref()), outputs)?;
        let mut out: Vec<u8> = Vec::with_capacity(1024 + inputs.len());
        let Some(op) = op else {
            out.extend_from_slice(b"{\"deps\":");
            push_json(&mut out, deps);
            out.extend_from_slice(format!(",\"format\":{FORMAT},\"inputs\":").as_bytes());
            out.extend_from_slice(&inputs);
            out.extend_from_slice(b",\"operation\":null,\"service\":");
            push_json(&mut out, &service.name);
            out.push(b'}');
            return Ok((out, None));
        };
        let parts = match self.plugin_parts.get(&op.plugin) {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(self.plugin_parts_of(&op.plugin)?);
                self.plugin_parts.insert(op.plugin.clone(), p.clone());
                p
            }
        };
        out.extend_from_slice(b"{\"config\":");
        out.extend_from_slice(canonical_text(op.config.clone()).as_bytes());
        out.extend_from_slice(b",\"deps\":");
        push_json(&mut out, deps);
        out.push(b',');
        out.extend_from_slice(parts.middle.as_bytes());
        out.extend_from_slice(b"\"inputs\":");
        out.extend_from_slice(&inputs);
        out.extend_from_slice(b",\"operation\":");
        push_json(&mut out, self.operation);
        out.extend_from_slice(b",\"outputs\":");
        push_json(&mut out, outputs);
        out.push(b',');
        out.extend_from_slice(parts.late.as_bytes());
        out.extend_from_slice(b"\"service\":");
        push_json(&mut out, &service.name);
        // The checkouts a wired build uses, by commit (only when there are some, so that the
        // keys of unwired steps stay as they were).
        let wired: BTreeMap<&str, Value> = service
            .wired
            .iter()
            .filter_map(|d| {
                let ds = manifest.service(d)?;
                let repo = manifest.repo(&ds.repo)?;
                let (commit, _) = crate::git::head_and_branch(manifest, repo);
                Some((d.as_str(), json!({ "commit": commit, "repo": ds.repo })))
            })
            .collect();
        if !wired.is_empty() {
            out.extend_from_slice(b",\"wired\":");
            push_json(&mut out, &wired);
        }
        out.push(b'}');
        Ok((out, Some(parts)))
    }

    /// The parts of a key that depend on plugin `name` alone.
    fn plugin_parts_of(&mut self, name: &str) -> Result<PluginParts, String> {
        let digest = self.plugin_digest(name)?;
        let grants = self
            .manifest
            .plugins
            .get(name)
            .map(|d| d.grants.clone())
            .unwrap_or_default();
        let mut programs = serde_json::Map::new();
        for g in &grants.exec {
            programs.insert(g.program.clone(), self.program(&g.program));
        }
        let env: serde_json::Map<String, Value> = grants
            .env
            .iter()
            .map(|n| {
                let v = std::env::var_os(n).map(
                    |v| json!({ "sha256": hex::encode(Sha256::digest(v.as_encoded_bytes())) }),
                );
                (n.clone(), v.unwrap_or(Value::Null))
            })
            .collect();
        let secrets: serde_json::Map<String, Value> = grants
            .secrets
            .iter()
            .map(|n| {
                let v = std::env::var_os(n).map(|v| match &self.secret_key {
                    Some(k) => Value::String(format!("hmac-sha256:{}", hmac(k, &v))),
                    // No key to hide it under: a value that never matches.
                    None => Value::String(format!("unkeyed:{}", crate::scheduler::new_run_id())),
                });
                (n.clone(), v.unwrap_or(Value::Null))
            })
            .collect();
        let grants = canonical_text(serde_json::to_value(&grants).unwrap_or(Value::Null));
        let middle = format!(
            "\"env\":{},\"format\":{FORMAT},\"grants\":{grants},",
            canonical_text(Value::Object(env))
        );
        let late = format!(
            "\"plugin\":{},\"programs\":{},\"secrets\":{},",
            canonical_text(json!({
                "name": name,
                "digest": digest,
                "contract": crate::plugin::CONTRACT,
            })),
            canonical_text(Value::Object(programs)),
            canonical_text(Value::Object(secrets)),
        );
        Ok(PluginParts {
            digest,
            grants,
            middle,
            late,
        })
    }

    /// The service's inputs: its folder's tree at HEAD and its uncommitted changes, or with
    /// `globs` the files they match, by content. Files matching `outputs` are left out.
    fn inputs(
        &mut self,
        service: &Service,
        globs: Option<&[String]>,
        outputs: &[String],
    ) -> Result<Vec<u8>, String> {
        let manifest = self.manifest;
        let Some(repo) = manifest.repo(&service.repo) else {
            return Err(format!(
                "repository `{}` is not in the manifest",
                service.repo
            ));
        };
        let dir = manifest.repo_dir(repo);
        let inputs = self
            .repos
            .entry(repo.name.clone())
            .or_insert_with(|| repo_inputs(&dir))
            .as_ref()
            .map_err(Clone::clone)?;
        let prefix = rel_prefix(&service.path);
        let outputs = match self.globs.get(outputs) {
            Some(g) => g.clone(),
            None => {
                let g = globset(outputs)?;
                self.globs.insert(outputs.to_vec(), g.clone());
                g
            }
        };
        let in_service = |p: &str| -> Option<String> {
            let rel = if prefix.is_empty() {
                p
            } else {
                p.strip_prefix(&prefix)?
            };
            (!outputs.is_match(rel)).then(|| rel.to_string())
        };
        let head_tree = inputs.head_tree.and_then(|t| inputs.repo.find_tree(t).ok());
        let Some(globs) = globs else {
            let tree = match (&head_tree, prefix.is_empty()) {
                (Some(t), true) => Some(t.id().to_string()),
                (Some(t), false) => t
                    .get_path(Path::new(prefix.trim_end_matches('/')))
                    .ok()
                    .map(|e| e.id().to_string()),
                (None, _) => None,
            };
            let dirty: BTreeMap<String, &String> = inputs
                .dirty
                .iter()
                .filter_map(|(p, d)| in_service(p).map(|rel| (rel, d)))
                .collect();
            let mut out = Vec::with_capacity(256);
            out.extend_from_slice(b"{\"path\":");
            push_json(&mut out, &service.path.to_string_lossy());
            out.extend_from_slice(b",\"repo\":");
            push_json(&mut out, &repo.name);
            out.extend_from_slice(b",\"tree\":");
            push_json(&mut out, &tree);
            out.extend_from_slice(b",\"uncommitted\":");
            push_json(&mut out, &dirty);
            out.push(b'}');
            return Ok(out);
        };
        let matcher = globset(globs)?;
        let mut files = BTreeMap::new();
        if let Some(tree) = &head_tree {
            tree.walk(git2::TreeWalkMode::PreOrder, |root, entry| {
                if entry.kind() == Some(git2::ObjectType::Blob) {
                    let path = format!("{root}{}", entry.name().unwrap_or_default());
                    if let Some(rel) = in_service(&path)
                        && matcher.is_match(&rel)
                    {
                        files.insert(rel, format!("git:{}", entry.id()));
                    }
                }
                git2::TreeWalkResult::Ok
            })
            .map_err(|e| format!("cannot read the tree of `{}`: {}", repo.name, e.message()))?;
        }
        for (p, d) in &inputs.dirty {
            if let Some(rel) = in_service(p)
                && matcher.is_match(&rel)
            {
                if d == "deleted" {
                    files.remove(&rel);
                } else {
                    files.insert(rel, d.clone());
                }
            }
        }
        let mut out = Vec::with_capacity(256);
        out.extend_from_slice(b"{\"files\":");
        push_json(&mut out, &files);
        out.extend_from_slice(b",\"globs\":");
        push_json(&mut out, globs);
        out.extend_from_slice(b",\"path\":");
        push_json(&mut out, &service.path.to_string_lossy());
        out.extend_from_slice(b",\"repo\":");
        push_json(&mut out, &repo.name);
        out.push(b'}');
        Ok(out)
    }

    fn plugin_digest(&mut self, name: &str) -> Result<String, String> {
        let manifest = self.manifest;
        self.plugins
            .entry(name.to_string())
            .or_insert_with(|| plugin_digest(manifest, name))
            .clone()
    }

    /// `{path, sha256}` of a granted program as PATH resolves it now, or null when it is not
    /// found.
    fn program(&mut self, program: &str) -> Value {
        if let Some(v) = self.programs.get(program) {
            return v.clone();
        }
        let v = match crate::plugin::caps::resolve_program_path(program) {
            Ok((path, real)) => match self.file_digest(&real) {
                Some(d) => json!({ "path": path.to_string_lossy(), "sha256": d }),
                None => json!({ "path": path.to_string_lossy(), "sha256": null }),
            },
            Err(_) => Value::Null,
        };
        self.programs.insert(program.to_string(), v.clone());
        v
    }

    /// The sha256 of a file, remembered in the store by path, size and modification time.
    fn file_digest(&mut self, path: &Path) -> Option<String> {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(path).ok()?;
        let mtime = meta.mtime() * 1_000_000_000 + meta.mtime_nsec();
        let shown = path.to_string_lossy().into_owned();
        if let Some(store) = self.store
            && let Ok(Some(d)) = store.program_digest(&shown, meta.size(), mtime)
        {
            return Some(d);
        }
        let d = sha256_file(path).ok()?;
        self.learned.push((shown, meta.size(), mtime, d.clone()));
        Some(d)
    }
}

/// A glob set of `patterns` (checked when the manifest loads).
fn globset(patterns: &[String]) -> Result<globset::GlobSet, String> {
    let mut b = globset::GlobSetBuilder::new();
    for p in patterns {
        b.add(
            globset::GlobBuilder::new(p)
                .literal_separator(true)
                .build()
                .map_err(|e| format!("pattern {p:?}: {e}"))?,
        );
    }
    b.build().map_err(|e| e.to_string())
}

/// `path/` of a service folder inside its repository (`` for the repository itself).
pub(crate) fn rel_prefix(path: &Path) -> String {
    let parts: Vec<String> = path
        .components()
        .filter_map(|c| match c {
            std::path::Component::Normal(s) => Some(s.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    if parts.is_empty() {
        String::new()
    } else {
        format!("{}/", parts.join("/"))
    }
}

fn repo_inputs(dir: &Path) -> Result<RepoInputs, String> {
    let repo = crate::git::open_exact(dir).ok_or_else(|| {
        format!(
            "{} is not a git repository: run `nestr assemble`",
            dir.display()
        )
    })?;
    let head = crate::git::head_oid(&repo);
    let mut options = crate::git::work_tree_status_options();
    let mut dirty = BTreeMap::new();
    {
        let statuses = repo.statuses(Some(&mut options)).map_err(|e| {
            format!(
                "cannot read the status of {}: {}",
                dir.display(),
                e.message()
            )
        })?;
        for entry in statuses.iter() {
            let Ok(path) = entry.path() else { continue };
            let full = dir.join(path);
            let digest = match std::fs::symlink_metadata(&full) {
                Err(_) => "deleted".to_string(),
                Ok(m) if m.file_type().is_symlink() => match std::fs::read_link(&full) {
                    Ok(t) => format!(
                        "symlink:{}",
                        hex::encode(Sha256::digest(t.as_os_str().as_encoded_bytes()))
                    ),
                    Err(_) => "unreadable".to_string(),
                },
                Ok(m) if m.is_file() => match sha256_file(&full) {
                    Ok(d) => format!("sha256:{d}"),
                    Err(_) => "unreadable".to_string(),
                },
                Ok(_) => "other".to_string(),
            };
            dirty.insert(path.to_string(), digest);
        }
    }
    let head_tree = head
        .and_then(|h| repo.find_commit(h).ok())
        .map(|c| c.tree_id());
    let branch = crate::git::current_branch(&repo);
    Ok(RepoInputs {
        head: (head.map(|h| h.to_string()), branch),
        repo,
        head_tree,
        dirty,
    })
}

/// The sha256 of a plugin's component, as the host would load it (nothing is compiled).
pub fn plugin_digest(manifest: &Manifest, name: &str) -> Result<String, String> {
    use crate::manifest::PluginSource;
    match manifest.plugins.get(name).map(|d| &d.source) {
        Some(PluginSource::File { path, sha256 }) => {
            // Read as the host reads it: a regular file within the size bound, matching its pin.
            let full = manifest.root.join(path);
            crate::plugin::Host::read_file(name, &full, sha256.as_deref())
                .map(|bytes| hex::encode(Sha256::digest(&bytes)))
                .map_err(|e| e.to_string())
        }
        _ => crate::plugin::Host::builtin_digest(name)
            .ok_or_else(|| format!("plugin `{name}` is neither built in nor declared with a path")),
    }
}

/// Whether `text` is a sha256 digest in lower-case hex.
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Opens a regular file for reading. Anything else (a FIFO, a device — also behind a symbolic
/// link, or swapped in after a check) is an error: the file is opened without blocking and
/// checked as opened, so a FIFO never stalls and `/dev/zero` is never read.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(f)
}

/// sha256 of a regular file's content ([`open_regular`]), hex, read in pieces.
pub fn sha256_file(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut f = open_regular(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

fn hmac(key: &[u8], value: &std::ffi::OsStr) -> String {
    let Ok(mut mac) = hmac::Hmac::<Sha256>::new_from_slice(key) else {
        return String::new();
    };
    mac.update(value.as_encoded_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The workspace's key for secrets in key manifests: 32 random bytes in
/// `STATE/cache/secret.key` (mode 0600), made on first use.
fn secret_key(state_dir: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let path: PathBuf = state_dir.join("cache").join("secret.key");
    if let Ok(k) = std::fs::read(&path)
        && k.len() == 32
    {
        return Ok(k);
    }
    std::fs::create_dir_all(state_dir.join("cache"))?;
    let mut key = vec![0u8; 32];
    getrandom::fill(&mut key).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(&key)?;
    f.sync_all()?;
    // Two processes making it at once: the first one's stays.
    if std::fs::hard_link(&tmp, &path).is_err() {
        let _ = std::fs::remove_file(&tmp);
        return std::fs::read(&path);
    }
    let _ = std::fs::remove_file(&tmp);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_sorts_keys_at_every_depth() {
        let v = canonical(json!({"b": {"z": 1, "a": [ {"y": 1, "x": 2} ]}, "a": null}));
        assert_eq!(
            v.to_string(),
            r#"{"a":null,"b":{"a":[{"x":2,"y":1}],"z":1}}"#
        );
    }

    #[test]
    fn service_prefixes() {
        assert_eq!(rel_prefix(Path::new(".")), "");
        assert_eq!(rel_prefix(Path::new("svc/api")), "svc/api/");
    }
}
