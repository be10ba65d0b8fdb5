//! Read-only views of a workspace that the CLI and the API both show: services with their
//! operations and the last step status of each, the plugins a workspace can use (source, digest,
//! declared capabilities, grants), and the repositories with their sync state.

use std::collections::HashMap;

use serde::Serialize;

use crate::git::RepoStatus;
use crate::manifest::{BUILTIN_PLUGINS, Manifest, PluginSource, Service};
use crate::model::StepStatus;
use crate::plugin::Host;
use crate::plugin::caps::grants_line;
use crate::store::RepoRow;

/// A service.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ServiceView {
    pub name: String,
    pub repo: String,
    /// Relative to the repository's folder.
    pub path: String,
    pub depends_on: Vec<String>,
    pub tags: Vec<String>,
    /// Own operations first, then the workspace defaults.
    pub operations: Vec<OperationView>,
    /// Workspace-wide default operations this service opts out of (`test = false`).
    pub opted_out: Vec<String>,
}

/// A page of services: the body of `GET /api/services` and what `nestr services --json` prints.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServicePage {
    pub services: Vec<ServiceView>,
    /// Pass as `cursor` for the next page; null on the last page.
    pub next_cursor: Option<String>,
}

/// An operation a service can run.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct OperationView {
    pub name: String,
    pub plugin: String,
    /// The status of the newest step of this operation on this service; null when never run.
    pub last_status: Option<StepStatus>,
}

/// What [`Store::last_step_statuses`](crate::store::Store::last_step_statuses) is asked for
/// `services`: each with its operations.
pub fn wanted_statuses<'m>(
    m: &Manifest,
    services: impl IntoIterator<Item = &'m Service>,
) -> Vec<(String, Vec<String>)> {
    services
        .into_iter()
        .map(|s| (s.name.clone(), m.operation_names(s)))
        .collect()
}

/// `service` with the last step status of each of its operations.
pub fn service_view(
    m: &Manifest,
    s: &Service,
    last: &HashMap<(String, String), StepStatus>,
) -> ServiceView {
    ServiceView {
        name: s.name.clone(),
        repo: s.repo.clone(),
        path: s.path.to_string_lossy().into_owned(),
        depends_on: s.depends_on.clone(),
        tags: s.tags.clone(),
        operations: m
            .operation_names(s)
            .into_iter()
            .filter_map(|op| {
                let spec = m.operation(s, &op)?;
                let last_status = last.get(&(s.name.clone(), op.clone())).copied();
                Some(OperationView {
                    name: op,
                    plugin: spec.plugin.clone(),
                    last_status,
                })
            })
            .collect(),
        opted_out: s.opted_out.clone(),
    }
}

/// A plugin the workspace can use.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PluginView {
    pub name: String,
    /// `builtin`, or the file path as written in the manifest.
    pub source: String,
    /// sha256 of the component, hex; null when it could not be loaded.
    pub digest: Option<String>,
    pub version: Option<String>,
    /// Capabilities the plugin declares (`describe()`): exec, env, secrets, http, fs.
    #[schema(value_type = Object)]
    pub declared: Option<crate::plugin::caps::Declared>,
    /// What the manifest grants it, as TOML.
    pub grants: String,
    /// Why it could not be loaded.
    pub error: Option<String>,
}

/// Every built-in and declared plugin, loaded (through the process's [`Host::shared`]) to read
/// what it declares. Blocking: call it off any async runtime.
pub fn plugins(manifest: &Manifest) -> Result<Vec<PluginView>, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let host = Host::shared()?;
    let mut names: Vec<String> = BUILTIN_PLUGINS.iter().map(|s| s.to_string()).collect();
    for n in manifest.plugins.keys() {
        if !names.contains(n) {
            names.push(n.clone());
        }
    }
    Ok(names
        .iter()
        .map(|name| {
            let decl = manifest.plugins.get(name);
            let source = match decl.map(|d| &d.source) {
                Some(PluginSource::File { path, .. }) => path.display().to_string(),
                _ => "builtin".to_string(),
            };
            let grants = decl
                .map(|d| grants_line(&d.grants))
                .unwrap_or_else(|| "(none)".into());
            match crate::plugin::load_plugin(&rt, &host, manifest, name) {
                Ok(p) => PluginView {
                    name: name.clone(),
                    source,
                    digest: Some(p.digest.clone()),
                    version: Some(p.info.version.clone()),
                    declared: Some(p.info.capabilities.clone()),
                    grants,
                    error: None,
                },
                Err(e) => PluginView {
                    name: name.clone(),
                    source,
                    digest: None,
                    version: None,
                    declared: None,
                    grants,
                    error: Some(crate::redact::text(&e)),
                },
            }
        })
        .collect())
}

/// A repository with its state on disk and its last assemble/sync.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RepoView {
    pub name: String,
    /// The remote, with any credentials removed.
    pub url: String,
    /// Relative to the workspace root.
    pub path: String,
    pub branch: Option<String>,
    pub head: Option<String>,
    /// The upstream branch (`origin/main`), for branch checkouts.
    pub upstream: Option<String>,
    /// clean, dirty, ahead, behind, diverged, detached, missing; null when unreadable.
    pub state: Option<crate::model::RepoState>,
    pub ahead: usize,
    pub behind: usize,
    pub dirty: bool,
    /// Uncommitted changes: staged, modified (not staged) and untracked files.
    pub staged: usize,
    pub modified: usize,
    pub untracked: usize,
    /// What the manifest pins it to; for a tag or rev, whether HEAD is still that commit.
    pub pin: crate::manifest::Pin,
    pub at_pin: Option<bool>,
    /// Last assemble/sync: when, its result and message.
    #[serde(with = "crate::model::time_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_sync_at: Option<i64>,
    pub last_sync_result: Option<String>,
    pub last_sync_message: Option<String>,
    /// Why the status could not be read.
    pub error: Option<String>,
}

/// Repositories in manifest order, from their status and the store's last sync rows.
pub fn repos(
    manifest: &Manifest,
    status: Vec<Result<RepoStatus, String>>,
    stored: &[RepoRow],
) -> Vec<RepoView> {
    manifest
        .repos
        .iter()
        .zip(status)
        .map(|(repo, st)| {
            let row = stored.iter().find(|r| r.name == repo.name);
            let mut v = RepoView {
                name: repo.name.clone(),
                url: crate::redact::url(&repo.url),
                path: repo.path.to_string_lossy().into_owned(),
                branch: None,
                head: None,
                upstream: None,
                state: None,
                ahead: 0,
                behind: 0,
                dirty: false,
                staged: 0,
                modified: 0,
                untracked: 0,
                pin: repo.pin.clone(),
                at_pin: None,
                last_sync_at: row.and_then(|r| r.last_sync_at),
                last_sync_result: row
                    .and_then(|r| r.last_sync_result)
                    .map(|r| r.as_str().to_string()),
                last_sync_message: row.and_then(|r| r.last_sync_message.clone()),
                error: None,
            };
            match st {
                Ok(s) => {
                    v.branch = s.branch;
                    v.head = s.head;
                    v.upstream = s.upstream;
                    v.state = Some(s.state);
                    v.ahead = s.ahead;
                    v.behind = s.behind;
                    v.dirty = s.dirty;
                    v.staged = s.staged;
                    v.modified = s.modified;
                    v.untracked = s.untracked;
                    v.at_pin = s.at_pin;
                }
                Err(e) => v.error = Some(crate::redact::text(&e)),
            }
            v
        })
        .collect()
}

/// Text a plugin or a program chose, made safe to print: every control character (C0 but tab,
/// DEL, C1) and every bidirectional-override character is shown escaped (`\x1b`, `\r`,
/// `\u{202e}`), so nothing can clear the screen, set the title, move the cursor, overwrite a line
/// or reorder what is shown. A plain SGR colour sequence (`ESC [ digits;… m`) is kept when
/// `color` is on (and closed at the end of the text, so that colour never leaks into the next
/// line) and dropped when it is off.
pub fn untrusted(text: &str, color: bool) -> String {
    let mut out = String::with_capacity(text.len());
    let mut coloured = false;
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b'
            && let Some(len) = plain_sgr(rest)
        {
            if color {
                out.push_str(&rest[..len]);
                coloured = true;
            }
            rest = &rest[len..];
            continue;
        }
        match c {
            '\t' => out.push('\t'),
            '\r' => out.push_str("\\r"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 || c == '\x7f' => out.push_str(&format!("\\x{:02x}", c as u32)),
            '\u{80}'..='\u{9f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}' => {
                out.push_str(&format!("\\u{{{:x}}}", c as u32))
            }
            c => out.push(c),
        }
        rest = &rest[c.len_utf8()..];
    }
    if coloured {
        out.push_str("\x1b[0m");
    }
    out
}

/// The length of a plain SGR sequence (`ESC [`, up to 32 digits and `;`, `m`) at the start of
/// `s`, if there is one.
pub fn plain_sgr(s: &str) -> Option<usize> {
    let b = s.as_bytes();
    if b.len() < 3 || b[0] != 0x1b || b[1] != b'[' {
        return None;
    }
    let params = b[2..]
        .iter()
        .take(33)
        .take_while(|c| c.is_ascii_digit() || **c == b';')
        .count();
    (params <= 32 && b.get(2 + params) == Some(&b'm')).then_some(3 + params)
}

/// Whether [`untrusted`] leaves every line of `text` (lines joined by `\n`) as it is.
pub fn shown_as_is(text: &str) -> bool {
    !text.chars().any(|c| {
        c != '\n'
            && c != '\t'
            && (c.is_control()
                || ('\u{202a}'..='\u{202e}').contains(&c)
                || ('\u{2066}'..='\u{2069}').contains(&c))
    })
}

/// A line of a run's log as text, without colour: `SERVICE | text` for what the plugin and its
/// programs wrote, `SERVICE ! text` for the engine's own notices (the form `nestr logs` prints
/// and the API's text download serves).
pub fn log_text_line(service: &str, system: bool, text: &str) -> String {
    format!(
        "{service} {} {}",
        if system { '!' } else { '|' },
        untrusted(text, false)
    )
}
