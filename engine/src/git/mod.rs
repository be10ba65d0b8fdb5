//! Git through libgit2 (git2): assembling the workspace (clone), keeping it in sync (fetch and
//! safe fast-forward), reporting drift (status) and pinning it (lock). This module owns the
//! pieces they share: remote callbacks that never prompt for credentials, progress reporting,
//! URL resolution, error wording, and the parallel runner.
//!
//! libgit2 never runs hooks and this module never recurses into submodules.

mod assemble;
pub mod branch;
mod lock;
mod status;
mod sync;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use git2::{CredentialType, ErrorClass, ErrorCode, FetchOptions, RemoteCallbacks, Repository};
use serde::Serialize;

pub use assemble::assemble_one;
pub use lock::{LockEntry, Lockfile};
pub use status::{RepoStatus, head_and_branch, status_all};
pub(crate) use status::{current_branch, work_tree_status_options};
pub use sync::{FetchInfo, fetch_one, update_one};

use crate::manifest::{Manifest, Repo};
use crate::model::SyncResult;
use crate::redact;

/// The CA bundle file TLS connections trust (what `SSL_CERT_FILE` named, or the system's bundle
/// the probe found), loaded into libgit2 by [`network_ready`] before the first connection.
static CA_FILE: std::sync::OnceLock<Option<std::ffi::OsString>> = std::sync::OnceLock::new();

/// Initialises libgit2 without loading the CA bundle, which a command that never connects
/// anywhere (most of them: runs, status, affected) does not need. libgit2 makes OpenSSL load
/// and parse the whole bundle as it initialises (about 20 ms of CPU; the certificate
/// directory, by contrast, is read lazily), so it initialises here with `SSL_CERT_FILE` naming
/// an empty file; [`network_ready`] loads the bundle before the first fetch, clone or push, so
/// a connection trusts exactly what it would have. Call it first in `main`, while the process
/// has a single thread: it sets environment variables (the probe for the bundle's location sets
/// `SSL_CERT_FILE`/`SSL_CERT_DIR`, as git2 would at its first use), and that is only sound
/// before other threads exist. The environment children inherit is the probe's, as before.
#[allow(unsafe_code)]
pub fn warm_up() {
    // SAFETY (each `set_var`/`remove_var`): called first thing in `main`, before any other thread
    // is started; git2 makes the same probe at its first use and finds the variables set.
    unsafe {
        openssl_probe::try_init_openssl_env_vars();
    }
    let file = std::env::var_os(openssl_probe::ENV_CERT_FILE);
    if file.is_some() && Path::new("/dev/null").exists() {
        unsafe { std::env::set_var(openssl_probe::ENV_CERT_FILE, "/dev/null") };
    }
    // Any git2 call initialises the library; this one sets what is already the default.
    git2::opts::enable_caching(true);
    match &file {
        Some(f) => unsafe { std::env::set_var(openssl_probe::ENV_CERT_FILE, f) },
        None => unsafe { std::env::remove_var(openssl_probe::ENV_CERT_FILE) },
    }
    let _ = CA_FILE.set(file);
}

/// Loads the CA bundle [`warm_up`] left out into libgit2's TLS context, once, before the first
/// connection: every fetch, clone and push gets its callbacks from [`credential_callbacks`],
/// which calls this first.
#[allow(unsafe_code)]
fn network_ready() {
    static LOADED: std::sync::Once = std::sync::Once::new();
    LOADED.call_once(|| {
        if let Some(Some(file)) = CA_FILE.get() {
            // SAFETY: libgit2's global options are not synchronised; the `Once` makes this the
            // only call, and it completes before any connection is made (every connection
            // first takes its callbacks, which wait here).
            if let Err(e) = unsafe { git2::opts::set_ssl_cert_file(file) } {
                tracing::warn!(
                    "the CA bundle {} was not loaded: {e}",
                    Path::new(file).display()
                );
            }
        }
    });
}

/// What happened to one repository in an assemble or sync.
#[derive(Debug, Clone, Serialize)]
pub struct RepoOutcome {
    pub name: String,
    pub result: SyncResult,
    /// Why, and what to do when something needs the user (already redacted).
    pub message: String,
    pub old_head: Option<String>,
    pub head: Option<String>,
    pub branch: Option<String>,
}

impl RepoOutcome {
    pub(crate) fn new(repo: &Repo, result: SyncResult, message: impl AsRef<str>) -> Self {
        RepoOutcome {
            name: repo.name.clone(),
            result,
            message: redact::text(message.as_ref()),
            old_head: None,
            head: None,
            branch: None,
        }
    }

    pub(crate) fn failed(repo: &Repo, message: impl AsRef<str>) -> Self {
        Self::new(repo, SyncResult::Failed, message)
    }

    pub(crate) fn heads(mut self, old: Option<git2::Oid>, new: Option<git2::Oid>) -> Self {
        self.old_head = old.map(|o| o.to_string());
        self.head = new.map(|o| o.to_string());
        self
    }
}

/// Receives progress while repositories are cloned or fetched. Implementations must be cheap:
/// they are called from libgit2's transfer callbacks.
pub trait Progress: Sync {
    /// Work on `repo` starts (`cloning`, `fetching`).
    fn start(&self, _repo: &str, _what: &str) {}
    /// Objects received so far, of `total`, and bytes received.
    fn transfer(&self, _repo: &str, _received: usize, _total: usize, _bytes: usize) {}
    /// Work on `repo` ended with this outcome.
    fn finish(&self, _outcome: &RepoOutcome) {}
}

/// Progress that shows nothing.
pub struct NoProgress;
impl Progress for NoProgress {}

/// Runs `f` on every item with at most `jobs` threads; results keep the items' order.
pub fn parallel<T: Sync, R: Send>(items: &[T], jobs: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let jobs = jobs.clamp(1, items.len().max(1));
    if jobs == 1 {
        return items.iter().map(f).collect();
    }
    let next = AtomicUsize::new(0);
    let mut results: Vec<Option<R>> = Vec::with_capacity(items.len());
    results.resize_with(items.len(), || None);
    let slots = std::sync::Mutex::new(&mut results);
    std::thread::scope(|s| {
        for _ in 0..jobs {
            s.spawn(|| {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(item) = items.get(i) else { break };
                    let r = f(item);
                    if let Ok(mut slots) = slots.lock() {
                        slots[i] = Some(r);
                    }
                }
            });
        }
    });
    results.into_iter().flatten().collect()
}

/// The URL or path libgit2 should use: relative local paths are taken from the workspace root.
pub fn resolve_url(root: &Path, url: &str) -> String {
    if url.contains("://") || is_scp_like(url) {
        return url.to_string();
    }
    let p = Path::new(url);
    if p.is_absolute() {
        url.to_string()
    } else {
        root.join(p).to_string_lossy().into_owned()
    }
}

/// `user@host:path` or `host:path` (a colon before any slash), as git reads it.
fn is_scp_like(url: &str) -> bool {
    match (url.find(':'), url.find('/')) {
        (Some(colon), Some(slash)) => colon < slash && colon > 1,
        (Some(colon), None) => colon > 1,
        _ => false,
    }
}

/// A comparable form of a remote URL: credentials and `file://` dropped, local paths made
/// canonical, trailing `/` and `.git` trimmed.
pub(crate) fn normalize_remote(root: &Path, url: &str) -> String {
    let resolved = resolve_url(root, url);
    let local = resolved.strip_prefix("file://").unwrap_or(&resolved);
    if !resolved.contains("://") || resolved.starts_with("file://") {
        if let Ok(canon) = std::fs::canonicalize(local) {
            return trim_git(&canon.to_string_lossy()).to_string();
        }
        return trim_git(local).to_string();
    }
    let without_creds = match resolved.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!(
                "{}://{}/{}",
                scheme.to_ascii_lowercase(),
                host.to_ascii_lowercase(),
                path
            )
        }
        None => resolved.clone(),
    };
    trim_git(&without_creds).to_string()
}

fn trim_git(s: &str) -> &str {
    let s = s.trim_end_matches('/');
    s.strip_suffix(".git").unwrap_or(s)
}

/// Remote callbacks with non-interactive credentials: one attempt per method (the SSH agent, the
/// configured credential helper, a user name), never a prompt.
pub(crate) fn credential_callbacks<'a>() -> RemoteCallbacks<'a> {
    network_ready();
    let mut callbacks = RemoteCallbacks::new();
    let mut tried = CredentialType::empty();
    callbacks.credentials(move |url, username, allowed| {
        let user = username.unwrap_or("git");
        if allowed.contains(CredentialType::SSH_KEY)
            && !tried.contains(CredentialType::SSH_KEY)
            && std::env::var_os("SSH_AUTH_SOCK").is_some()
        {
            tried |= CredentialType::SSH_KEY;
            return git2::Cred::ssh_key_from_agent(user);
        }
        if allowed.contains(CredentialType::USER_PASS_PLAINTEXT)
            && !tried.contains(CredentialType::USER_PASS_PLAINTEXT)
        {
            tried |= CredentialType::USER_PASS_PLAINTEXT;
            if let Ok(config) = git2::Config::open_default()
                && let Ok(cred) = git2::Cred::credential_helper(&config, url, username)
            {
                return Ok(cred);
            }
        }
        if allowed.contains(CredentialType::USERNAME) && !tried.contains(CredentialType::USERNAME) {
            tried |= CredentialType::USERNAME;
            return git2::Cred::username(user);
        }
        Err(git2::Error::new(
            ErrorCode::Auth,
            ErrorClass::Net,
            "the remote refused the credentials nestr could offer",
        ))
    });
    callbacks
}

/// Fetch options with non-interactive credentials (see [`credential_callbacks`]) and progress
/// reported for `repo`.
pub(crate) fn fetch_options<'a>(repo: &'a str, progress: &'a dyn Progress) -> FetchOptions<'a> {
    let mut callbacks = credential_callbacks();
    callbacks.transfer_progress(move |stats| {
        progress.transfer(
            repo,
            stats.received_objects(),
            stats.total_objects(),
            stats.received_bytes(),
        );
        true
    });
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks);
    options
}

/// Words a libgit2 error for the user, with what to do, credentials masked.
pub(crate) fn explain(e: &git2::Error, url: &str) -> String {
    let shown = redact::url(url);
    let msg = e.message().trim_end_matches('.');
    let text = if e.code() == ErrorCode::Auth
        || e.class() == ErrorClass::Ssh
        || msg.contains("authentication")
        || msg.contains("401")
        || msg.contains("403")
    {
        format!(
            "authentication failed for {shown}: {msg}; nestr never prompts: use an SSH agent \
             (SSH_AUTH_SOCK), a git credential helper, or a token in the URL"
        )
    } else if msg.contains("unsupported URL protocol") && is_local_path(url) {
        // libgit2 takes a path for a local repository only when it exists.
        format!(
            "no repository at {shown}: failed to resolve path '{shown}': No such file or \
             directory; check the url in nestr.toml"
        )
    } else if e.class() == ErrorClass::Net || e.class() == ErrorClass::Http {
        format!("cannot reach {shown}: {msg}")
    } else if msg.contains("could not find repository")
        || msg.contains("failed to resolve path")
        || (e.code() == ErrorCode::NotFound && e.class() == ErrorClass::Os)
    {
        format!("no repository at {shown}: {msg}; check the url in nestr.toml")
    } else {
        format!("{msg} ({shown})")
    };
    redact::text(&text)
}

/// A url that is a path on this machine: no `scheme://` and not scp-like `host:path`.
fn is_local_path(url: &str) -> bool {
    if url.contains("://") {
        return false;
    }
    match url.find(':') {
        None => true,
        // `git@host:repo` is ssh; `/a:b` or `./a:b` is a path with a colon in it.
        Some(colon) => url.find('/').is_some_and(|slash| slash < colon),
    }
}

/// Opens the repository whose work tree is exactly `dir` (never a parent's).
pub(crate) fn open_exact(dir: &Path) -> Option<Repository> {
    let repo = Repository::open_ext(
        dir,
        git2::RepositoryOpenFlags::NO_SEARCH,
        std::iter::empty::<&Path>(),
    )
    .ok()?;
    let workdir = repo.workdir()?;
    let same = match (std::fs::canonicalize(workdir), std::fs::canonicalize(dir)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    same.then_some(repo)
}

/// The absolute folder of `repo`, refused when it leaves the workspace through a symlink.
pub(crate) fn safe_repo_dir(manifest: &Manifest, repo: &Repo) -> Result<PathBuf, String> {
    let dir = manifest.repo_dir(repo);
    let root = std::fs::canonicalize(&manifest.root)
        .map_err(|e| format!("cannot resolve the workspace folder: {e}"))?;
    let mut existing = dir.as_path();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p,
            None => break,
        }
    }
    let real = std::fs::canonicalize(existing)
        .map_err(|e| format!("cannot resolve {}: {e}", existing.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "{}:{}: path `{}` of repository `{}` leads outside the workspace folder (through a \
             symbolic link to {}); give it a path inside the workspace",
            manifest.path.display(),
            repo.line,
            repo.path.display(),
            repo.name,
            real.display()
        ));
    }
    Ok(dir)
}

/// The commit HEAD points at, if any.
pub(crate) fn head_oid(repo: &Repository) -> Option<git2::Oid> {
    repo.head().ok().and_then(|h| h.target())
}

/// Short form of an id for messages.
pub(crate) fn short(oid: git2::Oid) -> String {
    oid.to_string()[..10].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scp_like_and_relative_urls() {
        let root = Path::new("/ws");
        assert_eq!(
            resolve_url(root, "git@host:org/repo.git"),
            "git@host:org/repo.git"
        );
        assert_eq!(resolve_url(root, "https://h/r.git"), "https://h/r.git");
        assert_eq!(
            resolve_url(root, "../remotes/a.git"),
            "/ws/../remotes/a.git"
        );
        assert_eq!(resolve_url(root, "/abs/a.git"), "/abs/a.git");
    }

    #[test]
    fn normalized_remotes_ignore_credentials_and_suffix() {
        let root = Path::new("/ws");
        assert_eq!(
            normalize_remote(root, "https://u:t@Host.example/org/r.git"),
            normalize_remote(root, "https://host.example/org/r")
        );
    }

    #[test]
    fn parallel_keeps_order() {
        let items: Vec<usize> = (0..50).collect();
        assert_eq!(
            parallel(&items, 4, |i| i * 2),
            items.iter().map(|i| i * 2).collect::<Vec<_>>()
        );
    }
}
