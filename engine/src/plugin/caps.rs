//! Capabilities: what a plugin may do in a step. Effective = what its `describe()` declares ∩ what
//! `nestr.toml` grants it. A declared entry that is not granted refuses the step before it starts
//! (with the exact TOML line to add); `*` in a declared list means "whatever is granted". At call
//! time every exec / env / http request is checked again here, and a refusal becomes the typed
//! `denied` error with the grant that would allow it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use globset::{Glob, GlobMatcher};
use serde::Serialize;

use crate::manifest::{ExecGrant, FsGrant, Grants};

/// Default memory limit of a plugin instance.
pub const DEFAULT_MEMORY_MB: u64 = 64;
/// Default deadline of a step.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30 * 60);

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
    pub timeout: Duration,
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
        .map(|g| ExecRule {
            program: g.program.clone(),
            patterns: g
                .args
                .iter()
                .filter_map(|p| Glob::new(p).ok().map(|g| g.compile_matcher()))
                .collect(),
            raw_patterns: g.args.clone(),
        })
        .collect();
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
        timeout: grants.timeout.unwrap_or(DEFAULT_TIMEOUT),
        grants: grants.clone(),
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
            requested: requested.to_string(),
            grant: self.hint(add),
        }
    }

    /// A refusal of something nestr.toml grants but the plugin did not declare: no grant helps.
    fn undeclared(&self, capability: &str, requested: &str) -> Denial {
        Denial {
            capability: capability.to_string(),
            requested: requested.to_string(),
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
            return Err(self.deny("exec", program, |g| {
                g.exec.push(ExecGrant {
                    program: program.to_string(),
                    args: vec![],
                })
            }));
        };
        if !rule.patterns.is_empty() {
            for a in args {
                if !rule.patterns.iter().any(|p| p.is_match(a)) {
                    return Err(Denial {
                        capability: "exec".into(),
                        requested: format!("{program} {}", args.join(" ")),
                        grant: format!(
                            "add a pattern matching argument `{a}` to `args` of `{}` (granted: [{}])",
                            rule.program,
                            quoted(&rule.raw_patterns)
                        ),
                    });
                }
            }
        }
        Ok(resolve_program(&rule.program))
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
            Err(self.deny("env", name, |g| g.env.push(name.to_string())))
        }
    }

    /// Checks an HTTP origin (`scheme://host[:port]`, normalised).
    pub fn check_http(&self, origin: &str) -> Result<(), Denial> {
        if self.http.iter().any(|o| o == origin) {
            Ok(())
        } else if self.grants.http.iter().any(|o| o == origin) {
            Err(self.undeclared("http", origin))
        } else {
            Err(self.deny("http", origin, |g| g.http.push(origin.to_string())))
        }
    }

    /// A secret the plugin may use by name.
    pub fn check_secret(&self, name: &str) -> Result<(), Denial> {
        if self.secrets.iter().any(|n| n == name) {
            Ok(())
        } else if self.grants.secrets.iter().any(|n| n == name) {
            Err(self.undeclared("secrets", name))
        } else {
            Err(self.deny("secrets", name, |g| g.secrets.push(name.to_string())))
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

/// An absolute program path: absolute grants as they are, names looked up on the engine's PATH.
fn resolve_program(program: &str) -> Result<PathBuf, String> {
    if program.starts_with('/') {
        return Ok(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
        .ok_or_else(|| format!("program `{program}` was not found on PATH"))
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
}
