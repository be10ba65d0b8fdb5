//! Test helpers: temp sandboxes with real git repositories (a work clone that commits and a bare
//! "remote" it pushes to), workspaces with a manifest, and running the real `nestr` binary.
//! git runs with the user's global and system configuration switched off.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Environment that isolates git (and libgit2 in nestr) from the machine's configuration.
pub fn isolate(cmd: &mut Command, home: &Path) {
    cmd.env("GIT_CONFIG_GLOBAL", "/dev/null")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("HOME", home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("GIT_TERMINAL_PROMPT", "0")
        .env_remove("SSH_AUTH_SOCK")
        .env_remove("NESTR_MANIFEST")
        .env_remove("NESTR_STATE")
        .env_remove("NO_COLOR")
        // Compiled plugins are shared by every test (wasmtime's cache is safe across processes).
        .env(
            "NESTR_CACHE_DIR",
            Path::new(env!("CARGO_TARGET_TMPDIR")).join("nestr-cache"),
        );
}

/// Runs git in `dir`, panicking with its output when it fails.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let home = std::env::temp_dir();
    let mut cmd = Command::new("git");
    cmd.current_dir(dir)
        .args([
            "-c",
            "user.name=nestr-test",
            "-c",
            "user.email=test@nestr.invalid",
        ])
        .args([
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args);
    isolate(&mut cmd, &home);
    let out = cmd.output().expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?} in {} failed: {}",
        dir.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A temp folder holding remotes and workspaces; removed when dropped.
pub struct Sandbox {
    pub tmp: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Sandbox {
        Sandbox {
            tmp: tempfile::Builder::new()
                .prefix("nestr-test-")
                .tempdir()
                .expect("tempdir"),
        }
    }

    pub fn path(&self) -> &Path {
        self.tmp.path()
    }

    /// A bare remote `remotes/NAME.git` with one commit on `main`, and a work clone that pushes.
    pub fn remote(&self, name: &str) -> Remote {
        let work = self.path().join("src").join(name);
        let bare = self.path().join("remotes").join(format!("{name}.git"));
        std::fs::create_dir_all(&work).expect("mkdir");
        git(&work, &["init", "-q"]);
        std::fs::write(work.join("README.md"), format!("# {name}\n")).expect("write");
        std::fs::write(work.join("Makefile"), "all:\n\t@echo built\n").expect("write");
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", &format!("init {name}")]);
        std::fs::create_dir_all(bare.parent().expect("parent")).expect("mkdir");
        git(
            self.path(),
            &[
                "clone",
                "-q",
                "--bare",
                work.to_str().expect("utf8"),
                bare.to_str().expect("utf8"),
            ],
        );
        git(
            &work,
            &["remote", "add", "origin", bare.to_str().expect("utf8")],
        );
        git(&work, &["fetch", "-q", "origin"]);
        git(&work, &["branch", "-q", "-u", "origin/main", "main"]);
        Remote {
            name: name.to_string(),
            work,
            bare,
        }
    }

    /// Writes `ws/nestr.toml` (the manifest text with `{remotes}` replaced) and returns `ws`.
    pub fn workspace(&self, manifest: &str) -> PathBuf {
        self.workspace_at("ws", manifest)
    }

    pub fn workspace_at(&self, dir: &str, manifest: &str) -> PathBuf {
        let ws = self.path().join(dir);
        std::fs::create_dir_all(&ws).expect("mkdir");
        let text = manifest.replace("{remotes}", &self.path().join("remotes").to_string_lossy());
        std::fs::write(ws.join("nestr.toml"), text).expect("write manifest");
        ws
    }

    /// Runs the nestr binary in `dir` with `args` (colour off, git isolated).
    pub fn nestr(&self, dir: &Path, args: &[&str]) -> Run {
        self.nestr_with(dir, args, &[])
    }

    /// Like [`Sandbox::nestr`], with extra environment variables.
    /// The nestr command `nestr` would run, not started (for a test that runs it in the
    /// background).
    pub fn command(&self, dir: &Path, args: &[&str]) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
        cmd.current_dir(dir).arg("--color").arg("never").args(args);
        isolate(&mut cmd, self.path());
        cmd
    }

    pub fn nestr_with(&self, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_nestr"));
        cmd.current_dir(dir).arg("--color").arg("never").args(args);
        isolate(&mut cmd, self.path());
        cmd.envs(env.iter().copied());
        let out = cmd.output().expect("nestr runs");
        Run::from(out)
    }
}

/// The result of one nestr run.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Run {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    /// Asserts exit code `code`, showing the output when it differs.
    pub fn expect(self, code: i32) -> Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn ok(self) -> Run {
        self.expect(0)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}):\n{}", self.stdout))
    }

    /// Both streams.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// A remote with its work clone.
pub struct Remote {
    pub name: String,
    pub work: PathBuf,
    pub bare: PathBuf,
}

impl Remote {
    /// The remote's path as a URL for the manifest.
    pub fn url(&self) -> String {
        self.bare.to_string_lossy().into_owned()
    }

    /// Commits a change in the work clone and pushes it; returns the new commit.
    pub fn push_commit(&self, message: &str) -> String {
        let file = self.work.join("CHANGES");
        let mut text = std::fs::read_to_string(&file).unwrap_or_default();
        text.push_str(message);
        text.push('\n');
        std::fs::write(&file, text).expect("write");
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", message]);
        git(&self.work, &["push", "-q", "origin", "HEAD"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    /// The commit `main` points at on the remote.
    pub fn head(&self) -> String {
        git(&self.bare, &["rev-parse", "main"])
    }

    pub fn rev(&self, rev: &str) -> String {
        git(&self.bare, &["rev-parse", rev])
    }
}

/// `status --json` rows by repository name.
pub fn status_by_name(run: &Run) -> std::collections::HashMap<String, serde_json::Value> {
    run.json()
        .as_array()
        .expect("array")
        .iter()
        .map(|r| (r["name"].as_str().expect("name").to_string(), r.clone()))
        .collect()
}

/// True while process `pid` exists and is not a zombie (a zombie is dead, only not yet reaped).
/// A pid that is not a number (an empty or half-written pid file) is a broken test, not a dead
/// process: it panics, so that a "did not survive" check can never pass vacuously.
pub fn pid_alive(pid: &str) -> bool {
    let n: u32 = pid
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("{pid:?} is not a pid: the pid file was empty or half-written"));
    assert!(n > 1, "{n} is not the pid of a test's process");
    let status = std::fs::read_to_string(format!("/proc/{n}/status")).unwrap_or_default();
    !status.is_empty()
        && !status
            .lines()
            .any(|l| l.starts_with("State:") && l.contains('Z'))
}

/// Waits until `path` holds a complete line (a pid file a test script wrote), at most `timeout`.
pub fn wait_for(path: &Path, timeout: std::time::Duration) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < timeout {
        if std::fs::read_to_string(path).is_ok_and(|s| s.ends_with('\n') && !s.trim().is_empty()) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Runs the test `name` again in a process of its own (the test binary, that test only) and
/// returns its verdict, unless this already is that process (`var` set): then `None`, and the
/// caller goes on with the test's body. For tests that run the engine in-process: an engine is
/// the subreaper of every child it has, so it must never share a process with other tests' git.
pub fn in_own_process(name: &str, var: &str) -> Option<TestResult> {
    if std::env::var_os(var).is_some() {
        return None;
    }
    let verdict = (|| -> TestResult {
        let out = Command::new(std::env::current_exe()?)
            .args(["--exact", name, "--nocapture", "--test-threads", "1"])
            .env(var, "1")
            .output()?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success() && text.contains("1 passed"), "{text}");
        Ok(())
    })();
    Some(verdict)
}

/// Fails the test with what to do when npm is not installed.
pub fn need_npm() -> TestResult {
    match Command::new("npm").arg("--version").output() {
        Ok(_) => Ok(()),
        Err(_) => Err("npm is needed for this test: apt-get install -y npm".into()),
    }
}

/// The external tools the tests check nestr with (promtool, schemathesis, the in-toto Python
/// bindings), installed under `target/api-tools` by `tests/api-tools.sh`: `name → path`.
pub fn tools() -> Result<std::collections::HashMap<String, String>, Box<dyn std::error::Error>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/api-tools");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/api-tools.sh");
    let out = Command::new("bash").arg(script).arg(dir).output()?;
    if !out.status.success() {
        return Err(format!(
            "api-tools.sh failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8(out.stdout)?
        .lines()
        .filter_map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
        })
        .collect())
}

/// nginx from Debian's package on a loopback port, serving a folder with WebDAV `PUT` (the
/// remote-cache setup bazel's docs describe); with `token`, every request must carry
/// `Authorization: Bearer TOKEN`. Stopped when dropped.
pub struct Nginx {
    child: std::process::Child,
    pub url: String,
    /// What it serves: `ac/` and `cas/` appear here.
    pub data: PathBuf,
}

impl Nginx {
    pub fn start(dir: &Path, token: Option<&str>) -> Result<Nginx, Box<dyn std::error::Error>> {
        let bin = tools()?
            .remove("nginx")
            .ok_or("api-tools.sh printed no nginx")?;
        let data = dir.join("data");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&data)?;
        std::fs::create_dir_all(&tmp)?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let auth = token.map_or(String::new(), |t| {
            format!("if ($http_authorization != \"Bearer {t}\") {{ return 401; }}")
        });
        let d = dir.display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {t};\nproxy_temp_path {t};\n\
             fastcgi_temp_path {t};\nuwsgi_temp_path {t};\nscgi_temp_path {t};\n\
             client_max_body_size 0;\nserver {{\nlisten 127.0.0.1:{port};\n\
             location / {{\n{auth}\nroot {data};\ndav_methods PUT;\ncreate_full_put_path on;\n\
             dav_access user:rw group:r all:r;\n}}\n}}\n}}\n",
            t = tmp.display(),
            data = data.display(),
        );
        std::fs::write(dir.join("nginx.conf"), conf)?;
        let child = Command::new(&bin)
            .arg("-p")
            .arg(dir)
            .arg("-e")
            .arg(dir.join("error.log"))
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let mut nginx = Nginx {
            child,
            url: format!("http://127.0.0.1:{port}"),
            data,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = nginx.child.try_wait() {
                let log = std::fs::read_to_string(dir.join("error.log")).unwrap_or_default();
                return Err(format!("nginx exited ({status}): {log}").into());
            }
            if std::time::Instant::now() > deadline {
                return Err("nginx did not listen within 10 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Ok(nginx)
    }

    /// Every file it serves, relative to its folder (`ac/…`, `cas/…`), sorted.
    pub fn files(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sub in ["ac", "cas"] {
            if let Ok(entries) = std::fs::read_dir(self.data.join(sub)) {
                for e in entries.flatten() {
                    out.push(format!("{sub}/{}", e.file_name().to_string_lossy()));
                }
            }
        }
        out.sort();
        out
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
