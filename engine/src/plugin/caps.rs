//! Capabilities: what a plugin may do in a step. Effective = what its `describe()` declares ∩ what
//! `nestr.toml` grants it. A declared entry that is not granted refuses the step before it starts
//! (with the exact TOML line to add); `*` in a declared list means "whatever is granted". At call
//! time every exec / env / http request is checked again here, and a refusal becomes the typed
//! `denied` error with the grant that would allow it.
//!
//! Everything here fails closed: an argument pattern that does not compile refuses the step (the
//! manifest already rejects it at load), a program name is resolved only through absolute PATH
//! entries and never to a file inside a repository (where service folders are), and whatever a
//! plugin asked for is
//! clipped before it is echoed into a denial, a log notice or an audit row.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::manifest::{ExecGrant, FsGrant, Grants};

/// Default memory limit of a plugin instance.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Default deadline of a step.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// Default cap on the bytes a plugin writes through its own filesystem view in one step.
pub const DEFAULT_DISK_MB: u64 = 256;
/// Default cap on the processes (and threads) a step's programs may have at once.
pub const DEFAULT_PIDS: u64 = 1024;
/// The most of a plugin-chosen value (program name, arguments, variable name, origin) repeated
/// in a denial, a log notice or an audit row.
pub const MAX_ECHO: usize = 256;

/// `s`, cut to at most `max` bytes (on a character boundary) with a note of how much was cut.
pub fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…(+{} bytes)", &s[..end], s.len() - end)
}

/// What the plugin declared (from `describe()`), in engine terms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Declared {
    pub exec: Vec<String>,
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    pub http: Vec<String>,
    pub fs: FsGrant,
}

/// A refused request: which capability, what was asked, the TOML that would allow it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Denial {
    pub capability: String,
    pub requested: String,
    pub grant: String,
}

/// One granted program, with its argument patterns.
#[derive(Debug, Clone)]
struct ExecRule {
    program: String,
    patterns: Vec<GlobMatcher>,
    raw_patterns: Vec<String>,
}

/// The capabilities a step runs with.
#[derive(Debug, Clone)]
pub struct Effective {
    pub plugin: String,
    exec: Vec<ExecRule>,
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    pub http: Vec<String>,
    pub fs: FsGrant,
    pub memory_mb: u64,
    /// Bytes of output stored per step.
    pub output_cap: u64,
    /// Bytes the plugin may write through its filesystem view per step.
    pub disk_bytes: u64,
    /// Processes (and threads) the step's programs may have at once.
    pub pids: u64,
    pub timeout: Duration,
    /// Folders a program found on PATH may never come from: every repository folder of the
    /// workspace (canonical), which holds every service folder.
    pub protected: std::sync::Arc<[PathBuf]>,
    /// The plugin's grants as written, to build "add this" hints.
    grants: Grants,
}

/// Effective capabilities, or the TOML to add when something declared is not granted.
pub fn effective(plugin: &str, declared: &Declared, grants: &Grants) -> Result<Effective, String> {
    let mut missing_exec = Vec::new();
    let mut missing_env = Vec::new();
    let mut missing_secrets = Vec::new();
    let mut missing_http = Vec::new();
    let all = |list: &[String]| list.iter().any(|d| d == "*");

    let granted_exec: Vec<&ExecGrant> = grants.exec.iter().collect();
    for d in declared.exec.iter().filter(|d| *d != "*") {
        if !granted_exec.iter().any(|g| program_matches(&g.program, d)) {
            missing_exec.push(d.clone());
        }
    }
    for (decl, granted, missing) in [
        (&declared.env, &grants.env, &mut missing_env),
        (&declared.secrets, &grants.secrets, &mut missing_secrets),
    ] {
        for d in decl.iter().filter(|d| *d != "*") {
            if !granted.contains(d) {
                missing.push(d.clone());
            }
        }
    }
    for d in declared.http.iter().filter(|d| *d != "*") {
        let origin = crate::manifest::normalize_origin(d).unwrap_or_else(|_| d.clone());
        if !grants.http.contains(&origin) {
            missing_http.push(origin);
        }
    }
    let fs_short = fs_rank(declared.fs) > fs_rank(grants.fs);
    if !(missing_exec.is_empty()
        && missing_env.is_empty()
        && missing_secrets.is_empty()
        && missing_http.is_empty())
        || fs_short
    {
        let mut wanted = grants.clone();
        wanted.exec.extend(missing_exec.iter().map(|p| ExecGrant {
            program: p.clone(),
            args: vec![],
        }));
        wanted.env.extend(missing_env.iter().cloned());
        wanted.secrets.extend(missing_secrets.iter().cloned());
        wanted.http.extend(missing_http.iter().cloned());
        if fs_short {
            wanted.fs = declared.fs;
        }
        let mut what: Vec<String> = Vec::new();
        for (kind, list) in [
            ("exec", &missing_exec),
            ("env", &missing_env),
            ("secrets", &missing_secrets),
            ("http", &missing_http),
        ] {
            if !list.is_empty() {
                what.push(format!("{kind} {}", list.join(", ")));
            }
        }
        if fs_short {
            what.push(format!("fs {}", fs_word(declared.fs)));
        }
        return Err(format!(
            "plugin `{plugin}` needs {} which nestr.toml does not grant. Add:\n[plugins.{plugin}]\n{}",
            what.join("; "),
            grants_line(&wanted)
        ));
    }

    let exec = grants
        .exec
        .iter()
        .filter(|g| {
            all(&declared.exec) || declared.exec.iter().any(|d| program_matches(&g.program, d))
        })
        .map(|g| exec_rule(plugin, g))
        .collect::<Result<Vec<_>, String>>()?;
    let pick = |decl: &[String], granted: &[String]| -> Vec<String> {
        if all(decl) {
            granted.to_vec()
        } else {
            granted
                .iter()
                .filter(|g| decl.contains(g))
                .cloned()
                .collect()
        }
    };
    let http = if all(&declared.http) {
        grants.http.clone()
    } else {
        let declared_origins: Vec<String> = declared
            .http
            .iter()
            .map(|d| crate::manifest::normalize_origin(d).unwrap_or_else(|_| d.clone()))
            .collect();
        grants
            .http
            .iter()
            .filter(|g| declared_origins.contains(g))
            .cloned()
            .collect()
    };
    Ok(Effective {
        plugin: plugin.to_string(),
        exec,
        env: pick(&declared.env, &grants.env),
        secrets: pick(&declared.secrets, &grants.secrets),
        http,
        fs: if fs_rank(declared.fs) < fs_rank(grants.fs) {
            declared.fs
        } else {
            grants.fs
        },
        memory_mb: grants.memory_mb.unwrap_or(DEFAULT_MEMORY_MB),
        output_cap: grants
            .output_mb
            .map_or(crate::plugin::sink::DEFAULT_OUTPUT_CAP, |mb| {
                mb * 1024 * 1024
            }),
        disk_bytes: grants
            .disk_mb
            .unwrap_or(DEFAULT_DISK_MB)
            .saturating_mul(1024 * 1024),
        pids: grants.pids.unwrap_or(DEFAULT_PIDS),
        timeout: grants.timeout.unwrap_or(DEFAULT_TIMEOUT),
        protected: std::sync::Arc::default(),
        grants: grants.clone(),
    })
}

/// A granted program with its compiled argument patterns. A pattern that does not compile
/// refuses the step: dropping it would widen what the grant allows (fail closed). The manifest
/// rejects such patterns at load, so this is the second line.
fn exec_rule(plugin: &str, g: &ExecGrant) -> Result<ExecRule, String> {
    let patterns = g
        .args
        .iter()
        .map(|p| {
            Glob::new(p).map(|g| g.compile_matcher()).map_err(|e| {
                format!(
                    "plugin `{plugin}`: the argument pattern {p:?} granted to `{}` does not \
                     compile ({e}); nothing was run. Fix it in [plugins.{plugin}] grants",
                    g.program
                )
            })
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(ExecRule {
        program: g.program.clone(),
        patterns,
        raw_patterns: g.args.clone(),
    })
}

fn fs_rank(f: FsGrant) -> u8 {
    match f {
        FsGrant::None => 0,
        FsGrant::ReadOnly => 1,
        FsGrant::ReadWrite => 2,
    }
}

fn fs_word(f: FsGrant) -> &'static str {
    match f {
        FsGrant::None => "none",
        FsGrant::ReadOnly => "read-only",
        FsGrant::ReadWrite => "read-write",
    }
}

/// A grant for `granted` allows a request for `requested`: same name, or same absolute path, or
/// a granted absolute path whose file name is the requested name.
fn program_matches(granted: &str, requested: &str) -> bool {
    if granted == requested {
        return true;
    }
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
    };
    granted.starts_with('/')
        && !requested.contains('/')
        && name(granted).as_deref() == Some(requested)
}

fn quoted(list: &[String]) -> String {
    list.iter()
        .map(|s| format!("{s:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `grants = { … }` as one TOML line.
pub fn grants_line(g: &Grants) -> String {
    let mut parts = Vec::new();
    if !g.exec.is_empty() {
        let items: Vec<String> = g
            .exec
            .iter()
            .map(|e| {
                if e.args.is_empty() {
                    format!("{:?}", e.program)
                } else {
                    format!(
                        "{{ program = {:?}, args = [{}] }}",
                        e.program,
                        quoted(&e.args)
                    )
                }
            })
            .collect();
        parts.push(format!("exec = [{}]", items.join(", ")));
    }
    for (k, v) in [("env", &g.env), ("secrets", &g.secrets), ("http", &g.http)] {
        if !v.is_empty() {
            parts.push(format!("{k} = [{}]", quoted(v)));
        }
    }
    if g.fs != FsGrant::ReadOnly {
        parts.push(format!("fs = {:?}", fs_word(g.fs)));
    }
    if let Some(m) = g.memory_mb {
        parts.push(format!("memory_mb = {m}"));
    }
    if let Some(m) = g.output_mb {
        parts.push(format!("output_mb = {m}"));
    }
    if let Some(m) = g.disk_mb {
        parts.push(format!("disk_mb = {m}"));
    }
    if let Some(m) = g.pids {
        parts.push(format!("pids = {m}"));
    }
    if let Some(t) = g.timeout {
        parts.push(format!(
            "timeout = {:?}",
            humantime::format_duration(t).to_string()
        ));
    }
    format!("grants = {{ {} }}", parts.join(", "))
}

impl Effective {
    /// The hint for a refused request: the whole grants line with the request added.
    fn hint(&self, add: impl FnOnce(&mut Grants)) -> String {
        let mut g = self.grants.clone();
        add(&mut g);
        format!("[plugins.{}] {}", self.plugin, grants_line(&g))
    }

    fn deny(&self, capability: &str, requested: &str, add: impl FnOnce(&mut Grants)) -> Denial {
        Denial {
            capability: capability.to_string(),
            requested: clip(requested, MAX_ECHO),
            grant: self.hint(add),
        }
    }

    /// A refusal of something nestr.toml grants but the plugin did not declare: no grant helps.
    fn undeclared(&self, capability: &str, requested: &str) -> Denial {
        let requested = clip(requested, MAX_ECHO);
        Denial {
            capability: capability.to_string(),
            requested: requested.clone(),
            grant: format!(
                "nestr.toml grants it, but plugin `{}` does not declare {capability} `{requested}` in \
                 its describe(); a plugin may use only what it declares",
                self.plugin
            ),
        }
    }

    /// Checks an exec request and resolves the program to an absolute path.
    pub fn check_exec(
        &self,
        program: &str,
        args: &[String],
    ) -> Result<Result<PathBuf, String>, Denial> {
        let rule = self
            .exec
            .iter()
            .find(|r| program_matches(&r.program, program) || r.program == program);
        let Some(rule) = rule else {
            if self
                .grants
                .exec
                .iter()
                .any(|g| program_matches(&g.program, program) || g.program == program)
            {
                return Err(self.undeclared("exec", program));
            }
            let shown = clip(program, MAX_ECHO);
            return Err(self.deny("exec", program, |g| {
                g.exec.push(ExecGrant {
                    program: shown,
                    args: vec![],
                })
            }));
        };
        // The compiled list always mirrors the granted one (exec_rule refuses otherwise), so an
        // empty list means "no patterns granted", never "patterns lost".
        if rule.patterns.len() != rule.raw_patterns.len() {
            return Err(Denial {
                capability: "exec".into(),
                requested: clip(program, MAX_ECHO),
                grant: "an argument pattern of this grant could not be used".into(),
            });
        }
        if !rule.patterns.is_empty() {
            for a in args {
                if !rule.patterns.iter().any(|p| p.is_match(a)) {
                    return Err(Denial {
                        capability: "exec".into(),
                        requested: clip(&format!("{program} {}", args.join(" ")), MAX_ECHO),
                        grant: format!(
                            "add a pattern matching argument `{}` to `args` of `{}` (granted: [{}])",
                            clip(a, MAX_ECHO),
                            rule.program,
                            quoted(&rule.raw_patterns)
                        ),
                    });
                }
            }
        }
        match resolve_program(&rule.program) {
            Err(not_found) => Ok(Err(not_found)),
            Ok(Resolved { path, real }) => match self.protected.iter().find(|dir| {
                !rule.program.starts_with('/') && (real.starts_with(dir) || path.starts_with(dir))
            }) {
                Some(dir) => Err(Denial {
                    capability: "exec".into(),
                    requested: program.to_string(),
                    grant: format!(
                        "`{program}` resolved on PATH to {}, inside {}, a repository of the \
                         workspace; nestr never runs a program found on PATH inside a \
                         repository's folders, where service folders are (a plugin could have \
                         planted it). Remove that folder from PATH, or grant the program by \
                         its absolute path",
                        real.display(),
                        dir.display()
                    ),
                }),
                None => Ok(Ok(path)),
            },
        }
    }

    /// Checks that a variable name may be set for a program.
    pub fn check_env(&self, name: &str) -> Result<(), Denial> {
        if self.env.iter().chain(&self.secrets).any(|n| n == name) {
            Ok(())
        } else if self
            .grants
            .env
            .iter()
            .chain(&self.grants.secrets)
            .any(|n| n == name)
        {
            Err(self.undeclared("env", name))
        } else {
            let shown = clip(name, MAX_ECHO);
            Err(self.deny("env", name, |g| g.env.push(shown)))
        }
    }

    /// Checks an HTTP origin (`scheme://host[:port]`, normalised).
    pub fn check_http(&self, origin: &str) -> Result<(), Denial> {
        if self.http.iter().any(|o| o == origin) {
            Ok(())
        } else if self.grants.http.iter().any(|o| o == origin) {
            Err(self.undeclared("http", origin))
        } else {
            let shown = clip(origin, MAX_ECHO);
            Err(self.deny("http", origin, |g| g.http.push(shown)))
        }
    }

    /// A secret the plugin may use by name.
    pub fn check_secret(&self, name: &str) -> Result<(), Denial> {
        if self.secrets.iter().any(|n| n == name) {
            Ok(())
        } else if self.grants.secrets.iter().any(|n| n == name) {
            Err(self.undeclared("secrets", name))
        } else {
            let shown = clip(name, MAX_ECHO);
            Err(self.deny("secrets", name, |g| g.secrets.push(shown)))
        }
    }

    /// Values of granted env and secret names from the engine's environment.
    pub fn environment(&self) -> Vec<(String, String)> {
        self.env
            .iter()
            .chain(&self.secrets)
            .filter_map(|n| std::env::var(n).ok().map(|v| (n.clone(), v)))
            .collect()
    }

    /// Values of the granted secrets (to mask).
    pub fn secret_values(&self) -> Vec<String> {
        self.secrets
            .iter()
            .filter_map(|n| std::env::var(n).ok())
            .collect()
    }

    /// A JSON summary for the step record.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "exec": self.exec.iter().map(|r| &r.program).collect::<Vec<_>>(),
            "env": self.env,
            "secrets": self.secrets,
            "http": self.http,
            "fs": fs_word(self.fs),
            "memory_mb": self.memory_mb,
            "timeout_ms": u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }
}

/// A program found for a grant: the absolute path to spawn (symbolic links kept, since some
/// programs behave by the name they are called with) and where it really is.
struct Resolved {
    path: PathBuf,
    real: PathBuf,
}

/// Where a granted program is found now, as (the path spawned, the real file): what a step's
/// key records about it.
pub(crate) fn resolve_program_path(program: &str) -> Result<(PathBuf, PathBuf), String> {
    resolve_program(program).map(|r| (r.path, r.real))
}

/// An absolute program path: absolute grants as they are; names looked up on the engine's PATH,
/// through its absolute entries only (an empty or relative entry means "the current folder",
/// which may be a service folder a plugin wrote into), to an executable regular file.
fn resolve_program(program: &str) -> Result<Resolved, String> {
    if program.starts_with('/') {
        let path = PathBuf::from(program);
        let real = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        return Ok(Resolved { path, real });
    }
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| dir.is_absolute())
        .map(|dir| dir.join(program))
        .find_map(|p| {
            let meta = std::fs::metadata(&p).ok()?;
            if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
                return None;
            }
            let real = std::fs::canonicalize(&p).ok()?;
            Some(Resolved { path: p, real })
        })
        .ok_or_else(|| format!("program `{program}` was not found on PATH (absolute entries only)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grants(exec: &[&str]) -> Grants {
        Grants {
            exec: exec
                .iter()
                .map(|p| ExecGrant {
                    program: p.to_string(),
                    args: vec![],
                })
                .collect(),
            env: vec!["PATH".into()],
            ..Grants::default()
        }
    }

    #[test]
    fn declared_but_not_granted_prints_the_toml_to_add() {
        let declared = Declared {
            exec: vec!["cargo".into()],
            env: vec!["HOME".into()],
            ..Declared::default()
        };
        let err = effective("cargo", &declared, &grants(&["make"])).expect_err("refused");
        assert!(err.contains("needs exec cargo; env HOME"), "{err}");
        assert!(err.contains("[plugins.cargo]\ngrants = { exec = [\"make\", \"cargo\"], env = [\"PATH\", \"HOME\"] }"), "{err}");
    }

    #[test]
    fn wildcard_takes_what_is_granted_and_checks_at_call_time() {
        let declared = Declared {
            exec: vec!["*".into()],
            ..Declared::default()
        };
        let eff = effective("command", &declared, &grants(&["sh"])).expect("ok");
        assert!(eff.check_exec("sh", &[]).is_ok());
        let denial = eff.check_exec("curl", &[]).expect_err("denied");
        assert_eq!(denial.capability, "exec");
        assert_eq!(
            denial.grant,
            "[plugins.command] grants = { exec = [\"sh\", \"curl\"], env = [\"PATH\"] }"
        );
        assert!(eff.env.is_empty(), "env not declared, not passed");
    }

    #[test]
    fn granted_but_undeclared_says_so() {
        let declared = Declared {
            exec: vec!["make".into()],
            ..Declared::default()
        };
        let eff = effective("p", &declared, &grants(&["make", "curl"])).expect("ok");
        let d = eff.check_exec("curl", &[]).expect_err("denied");
        assert!(
            d.grant.contains("does not declare exec `curl`"),
            "{}",
            d.grant
        );
        let d = eff.check_env("PATH").expect_err("denied");
        assert!(
            d.grant.contains("does not declare env `PATH`"),
            "{}",
            d.grant
        );
    }

    #[test]
    fn argument_patterns_are_enforced() {
        let g = Grants {
            exec: vec![ExecGrant {
                program: "cargo".into(),
                args: vec!["build".into(), "--*".into()],
            }],
            ..Grants::default()
        };
        let eff = effective(
            "cargo",
            &Declared {
                exec: vec!["cargo".into()],
                ..Declared::default()
            },
            &g,
        )
        .expect("ok");
        assert!(
            eff.check_exec("cargo", &["build".into(), "--release".into()])
                .is_ok()
        );
        assert!(eff.check_exec("cargo", &["publish".into()]).is_err());
    }

    #[test]
    fn a_pattern_that_does_not_compile_refuses_the_step_instead_of_allowing_any_argument() {
        let g = Grants {
            exec: vec![ExecGrant {
                program: "make".into(),
                args: vec!["build".into(), "{build,test".into()],
            }],
            ..Grants::default()
        };
        let declared = Declared {
            exec: vec!["make".into()],
            ..Declared::default()
        };
        let err = effective("command", &declared, &g).expect_err("refused");
        assert!(err.contains("does not compile"), "{err}");
    }

    #[test]
    fn echoed_requests_are_clipped() {
        let eff = effective("p", &Declared::default(), &grants(&["sh"])).expect("ok");
        let huge = "x".repeat(4 * 1024 * 1024);
        let d = eff.check_exec(&huge, &[]).expect_err("denied");
        assert!(d.requested.len() < MAX_ECHO + 32, "{}", d.requested.len());
        assert!(d.grant.len() < 2 * MAX_ECHO, "{}", d.grant.len());
        assert!(d.requested.ends_with("bytes)"));
        assert_eq!(clip("héllo", 2), "h…(+5 bytes)");
    }
}
