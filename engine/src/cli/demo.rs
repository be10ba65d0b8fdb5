//! `nestr demo`: builds a real sample workspace — four local "remote" git repositories with a few
//! commits each, and a manifest with cross-repository service dependencies — then shows the git
//! side of nestr on it: assemble, an upstream change, status, sync, lock.

use std::path::{Path, PathBuf};

use clap::Args;
use git2::{Repository, Signature};

use super::render::{Tone, Ui};
use super::{CliError, ExitCode, Jobs};
use crate::workspace::{Location, Workspace};

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Folder to create the demo in (replaced if it holds an earlier demo).
    #[arg(long, value_name = "DIR", default_value = "nestr-demo")]
    pub dir: PathBuf,
    /// Then serve the HTTP API over the demo workspace (until Ctrl-C).
    #[arg(long)]
    pub serve: bool,
    /// Where `--serve` listens.
    #[arg(
        long,
        value_name = "ADDR",
        default_value = "127.0.0.1:7878",
        requires = "serve"
    )]
    pub bind: std::net::SocketAddr,
}

const MARKER: &str = ".nestr-demo";

struct SampleRepo {
    name: &'static str,
    files: &'static [(&'static str, &'static str)],
}

const REPOS: &[SampleRepo] = &[
    SampleRepo {
        name: "shared-lib",
        files: &[
            (
                "Makefile",
                "build:\n\t@echo building shared-lib\n\ntest:\n\t@echo 'test shared-lib ... ok'\n",
            ),
            ("README.md", "# shared-lib\nCode every service uses.\n"),
        ],
    },
    SampleRepo {
        name: "api",
        files: &[
            (
                "Makefile",
                "build:\n\t@echo building api\n\ntest:\n\t@echo 'test api ... ok'\n",
            ),
            ("README.md", "# api\nThe HTTP API.\n"),
        ],
    },
    SampleRepo {
        name: "worker",
        files: &[
            (
                "Makefile",
                "build:\n\t@echo building worker\n\ntest:\n\t@echo 'test worker ... ok'\n",
            ),
            ("README.md", "# worker\nBackground jobs.\n"),
        ],
    },
    SampleRepo {
        name: "web",
        files: &[
            (
                "Makefile",
                "build:\n\t@echo building web\n\ntest:\n\t@echo 'test web ... ok'\n",
            ),
            ("README.md", "# web\nThe web front end.\n"),
        ],
    },
];

const MANIFEST: &str = r#"# The nestr demo workspace (made by `nestr demo`). The deploy hooks point at a receiver that
# `nestr demo` ran on loopback while it ran; to deploy again, start a receiver on that port.
[workspace]
name = "demo-shop"
description = "Four repositories, four services, dependencies across repositories"

[repos.shared-lib]
url = "../remotes/shared-lib.git"
branch = "main"

[repos.api]
url = "../remotes/api.git"
branch = "main"
path = "services/api"

[repos.worker]
url = "../remotes/worker.git"
tag = "v1.0.0"
path = "services/worker"

[repos.web]
url = "../remotes/web.git"

[services.shared]
repo = "shared-lib"
tags = ["lib"]

[services.api]
repo = "api"
depends_on = ["shared"]
tags = ["backend"]

[services.worker]
repo = "worker"
depends_on = ["shared"]
tags = ["backend"]

[services.web]
repo = "web"
depends_on = ["api"]
tags = ["frontend"]

[services.api.operations]
deploy = { plugin = "http-deploy", config = { url = "http://127.0.0.1:{{port}}/hooks/api", health_url = "http://127.0.0.1:{{port}}/healthz/api", rollback_url = "http://127.0.0.1:{{port}}/rollback/api", poll_interval_ms = 100, health_timeout_secs = 3 }, concurrency = 1 }

[services.web.operations]
deploy = { plugin = "http-deploy", config = { url = "http://127.0.0.1:{{port}}/hooks/web", health_url = "http://127.0.0.1:{{port}}/healthz/web", rollback_url = "http://127.0.0.1:{{port}}/rollback/web", poll_interval_ms = 100, health_timeout_secs = 3 }, concurrency = 1 }

[operations.build]
plugin = "command"
config = { run = [["make", "build"]] }
cache = true

[operations.test]
plugin = "command"
config = { run = [["make", "test"]] }
cache = true

[plugins.command]
grants = { exec = ["make", "sh"], env = ["PATH"] }

[plugins.http-deploy]
grants = { http = ["http://127.0.0.1:{{port}}"], timeout = "1m" }

# `nestr deploy plan staging`, `nestr deploy apply PLAN`, `nestr deploy status`.
[environments.staging]
"#;

pub fn run(args: DemoArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let cwd = std::env::current_dir()
        .map_err(|e| CliError::usage(format!("cannot read the current folder: {e}")))?;
    let dir = cwd.join(&args.dir);
    prepare_dir(&dir)?;
    let fail = |e: String| CliError::Plain {
        message: e,
        help: None,
        code: ExitCode::Failed,
    };

    heading(
        ui,
        &format!(
            "Creating sample repositories in {}",
            dir.join("remotes").display()
        ),
    );
    for repo in REPOS {
        make_remote(
            &dir.join("remotes").join(format!("{}.git", repo.name)),
            repo,
        )
        .map_err(fail)?;
        ui.note(&format!("  {}.git", repo.name));
    }
    let receiver =
        Receiver::start().map_err(|e| fail(format!("cannot start the deploy receiver: {e}")))?;
    let ws_dir = dir.join("workspace");
    std::fs::create_dir_all(&ws_dir)
        .and_then(|()| {
            std::fs::write(
                ws_dir.join("nestr.toml"),
                MANIFEST.replace("{{port}}", &receiver.port.to_string()),
            )
        })
        .map_err(|e| fail(format!("cannot write the demo manifest: {e}")))?;

    let location = Location {
        manifest: Some(ws_dir.join("nestr.toml")),
        state: None,
        cwd,
    };
    let mut ws = Workspace::load(&location)?;
    let jobs = Jobs { jobs: 4 };

    heading(ui, "nestr assemble");
    super::assemble::run(
        &mut ws,
        super::assemble::AssembleArgs {
            jobs,
            locked: false,
            json: false,
        },
        ui,
    )?;

    heading(
        ui,
        "Meanwhile, teammates push to api and shared-lib; you edit shared-lib locally",
    );
    for (repo, change) in [
        ("api", "api: faster endpoints"),
        ("shared-lib", "shared-lib: new helper"),
    ] {
        let remote = dir.join("remotes").join(format!("{repo}.git"));
        commit(&remote, &[("CHANGES", &format!("{change}\n"))], change).map_err(fail)?;
    }
    std::fs::write(
        ws_dir.join("shared-lib/README.md"),
        "# shared-lib\nwork in progress\n",
    )
    .map_err(|e| fail(e.to_string()))?;

    heading(ui, "nestr sync");
    super::sync::run(
        &mut ws,
        super::sync::SyncArgs {
            jobs,
            atomic: false,
            locked: false,
            json: false,
        },
        ui,
    )?;

    heading(ui, "nestr status");
    super::status::run(&mut ws, super::status::StatusArgs { jobs, json: false }, ui)?;

    heading(ui, "nestr services");
    super::services::run(&mut ws, super::services::ServicesArgs { json: false }, ui)?;

    heading(ui, "nestr lock");
    super::lock::run(&ws, super::lock::LockArgs {}, ui)?;

    heading(
        ui,
        "nestr run build   (each step a sandboxed plugin, dependencies first)",
    );
    let build = run_args("build", &[]);
    let built = super::run::run(&mut ws, build, ui)?;

    heading(ui, "nestr run test -t backend");
    let test = run_args("test", &["backend"]);
    let tested = super::run::run(&mut ws, test, ui)?;

    heading(
        ui,
        "nestr run build   (again: nothing changed, so every step comes from the cache)",
    );
    let rebuilt = super::run::run(&mut ws, run_args("build", &[]), ui)?;

    heading(
        ui,
        "nestr affected   (what your uncommitted edit in shared-lib affects, across repositories)",
    );
    super::affected::run(
        &mut ws,
        super::affected::AffectedArgs {
            range: super::affected::ChangeRange {
                base: Some("HEAD".into()),
                from: None,
                to: None,
            },
            operation: None,
            json: false,
        },
        ui,
    )?;

    heading(
        ui,
        &format!(
            "nestr run deploy   (http-deploy to the receiver on 127.0.0.1:{})",
            receiver.port
        ),
    );
    let deployed = super::run::run(&mut ws, run_args("deploy", &[]), ui)?;
    for line in receiver.received() {
        println!("  receiver got {line}");
    }
    let staged = deploy_to_staging(&mut ws, &ws_dir, &receiver, ui)?;
    if built != ExitCode::Ok
        || tested != ExitCode::Ok
        || rebuilt != ExitCode::Ok
        || deployed != ExitCode::Ok
        || !staged
    {
        return Ok(ExitCode::Failed);
    }

    println!(
        "\n{} The demo workspace is at {ws}\nLook next:\n  cd {ws}\n  cat nestr.toml          # the manifest it wrote\n  nestr runs              # the runs just made\n  nestr runs show RUN     # one run, step by step\n  nestr logs RUN          # its stored output\n  nestr plugin list       # plugins, what they need and are granted\n  nestr deploy status     # what runs where (after a deploy and a rollback)\n  nestr serve             # the dashboard at http://127.0.0.1:7878/ (or: nestr demo --serve)\n",
        ui.paint(Tone::Good, "Done."),
        ws = ws_dir.display()
    );
    if args.serve {
        heading(
            ui,
            "nestr serve   (the same workspace over HTTP; Ctrl-C stops it)",
        );
        let u = format!("http://{}", args.bind);
        println!(
            "Open the dashboard at {u}/ in a browser, or try:\n  curl -s {u}/api/services\n  curl -s -X POST -H 'content-type: application/json' -d '{{\"operation\":\"build\"}}' {u}/api/operations/run\n  curl -sN {u}/api/runs/RUN/events\n  curl -s {u}/metrics\n"
        );
        let serve = super::serve::ServeArgs {
            bind: args.bind,
            rate_limit: None,
            cors_origins: Vec::new(),
            body_limit: 1024 * 1024,
            request_timeout: std::time::Duration::from_secs(30),
            header_timeout: std::time::Duration::from_secs(10),
            max_runs: None,
            max_queued: None,
            max_connections: None,
        };
        // The deploy receiver stays up while the server runs, so deploys over the API work.
        let served = super::serve::serve_workspace(&mut ws, serve, ui);
        drop(receiver);
        return served;
    }
    Ok(ExitCode::Ok)
}

/// A safe deploy to `staging`: a plan, its apply in dependency order; then a new version of web
/// whose health check fails, so that the apply rolls web and api back, in that order; and what
/// runs where. True when it all went as it should (the second apply does roll back).
fn deploy_to_staging(
    ws: &mut Workspace,
    ws_dir: &Path,
    receiver: &Receiver,
    ui: &Ui,
) -> Result<bool, CliError> {
    use super::deploy::{DeployArgs, DeployCommand};
    let plan = |out: &str| DeployArgs {
        command: DeployCommand::Plan {
            env: "staging".into(),
            services: vec![],
            tags: vec![],
            with_deps: false,
            out: Some(ws_dir.join(out)),
            json: false,
        },
    };
    let apply = |file: &str| DeployArgs {
        command: DeployCommand::Apply {
            plan: ws_dir.join(file).display().to_string(),
            who: Some("demo".into()),
            json: false,
        },
    };
    let status = || DeployArgs {
        command: DeployCommand::Status {
            env: Some("staging".into()),
            json: false,
        },
    };
    heading(
        ui,
        "nestr deploy plan staging --out plan-1.json   (recorded; nothing deployed)",
    );
    super::deploy::run(ws, plan("plan-1.json"), ui)?;
    heading(
        ui,
        "nestr deploy apply plan-1.json   (in dependency order, each health-checked)",
    );
    let first = super::deploy::run(ws, apply("plan-1.json"), ui)?;
    let bad = commit_checkout(
        &ws_dir.join("web"),
        "VERSION",
        "2.0.0-broken\n",
        "web: version 2.0.0 (its health check fails)",
    )
    .map_err(|e| CliError::Plain {
        message: e,
        help: None,
        code: ExitCode::Failed,
    })?;
    receiver.fail_version(&bad.to_string());
    heading(
        ui,
        "a new commit in web whose health check fails; nestr deploy plan + apply   (rolled back)",
    );
    super::deploy::run(ws, plan("plan-2.json"), ui)?;
    let second = super::deploy::run(ws, apply("plan-2.json"), ui)?;
    for line in receiver
        .received()
        .iter()
        .filter(|l| l.contains("/rollback/"))
    {
        println!("  receiver got {line}");
    }
    heading(ui, "nestr deploy status staging   (what runs where)");
    super::deploy::run(ws, status(), ui)?;
    // The broken commit goes: the workspace is left as it was, its deploys working.
    undo_commit(&ws_dir.join("web")).map_err(|e| CliError::Plain {
        message: e,
        help: None,
        code: ExitCode::Failed,
    })?;
    receiver.heal();
    Ok(first == ExitCode::Ok && second == ExitCode::Failed)
}

/// Resets the repository at `dir` to its head's parent (the working tree too).
fn undo_commit(dir: &Path) -> Result<(), String> {
    let err = |e: git2::Error| e.message().to_string();
    let git = Repository::open(dir).map_err(err)?;
    let head = git.head().and_then(|h| h.peel_to_commit()).map_err(err)?;
    let parent = head.parent(0).map_err(err)?;
    git.reset(parent.as_object(), git2::ResetType::Hard, None)
        .map_err(err)
}

/// Commits `file` with `content` on the checked-out branch of the repository at `dir`.
fn commit_checkout(
    dir: &Path,
    file: &str,
    content: &str,
    message: &str,
) -> Result<git2::Oid, String> {
    let err = |e: git2::Error| e.message().to_string();
    std::fs::write(dir.join(file), content).map_err(|e| e.to_string())?;
    let git = Repository::open(dir).map_err(err)?;
    let mut index = git.index().map_err(err)?;
    index.add_path(Path::new(file)).map_err(err)?;
    index.write().map_err(err)?;
    let tree = git
        .find_tree(index.write_tree().map_err(err)?)
        .map_err(err)?;
    let parent = git.head().and_then(|h| h.peel_to_commit()).map_err(err)?;
    let sig = Signature::now("nestr demo", "demo@nestr.invalid").map_err(err)?;
    git.commit(Some("HEAD"), &sig, &sig, message, &tree, &[&parent])
        .map_err(err)
}

fn run_args(operation: &str, tags: &[&str]) -> super::run::RunArgs {
    super::run::RunArgs {
        operation: operation.into(),
        services: vec![],
        tags: tags.iter().map(|t| t.to_string()).collect(),
        with_deps: false,
        with_dependents: false,
        jobs: None,
        continue_mode: crate::model::ContinueMode::Never,
        dry_run: false,
        output: super::run::Output::Prefixed,
        json: false,
        no_cache: false,
        cache: None,
        record: None,
        affected: false,
        range: Default::default(),
    }
}

/// A webhook receiver on loopback, standing in for a deploy platform: deploy and rollback hooks
/// answer 202 and set the version a service runs; health checks answer 200, or 503 while a
/// service runs the version told to fail. Serves until the process ends.
struct Receiver {
    port: u16,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    platform: std::sync::Arc<std::sync::Mutex<Platform>>,
}

/// What the receiver's platform runs.
#[derive(Default)]
struct Platform {
    running: std::collections::HashMap<String, String>,
    bad: Option<String>,
}

impl Receiver {
    fn start() -> std::io::Result<Receiver> {
        use std::io::{BufRead, BufReader, Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = log.clone();
        let platform = std::sync::Arc::new(std::sync::Mutex::new(Platform::default()));
        let state = platform.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let Ok(clone) = stream.try_clone() else {
                    continue;
                };
                let mut reader = BufReader::new(clone);
                let mut request_line = String::new();
                let _ = reader.read_line(&mut request_line);
                let mut length = 0usize;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                        length = v.trim().parse().unwrap_or(0);
                    }
                }
                let mut body = vec![0u8; length.min(1 << 20)];
                let _ = reader.read_exact(&mut body);
                let request_line = request_line.trim().to_string();
                let service = request_line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.rsplit('/').next())
                    .unwrap_or_default()
                    .to_string();
                let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                let hook = request_line.starts_with("POST /hooks/");
                let reply: &[u8] = if hook || request_line.starts_with("POST /rollback/") {
                    if let Ok(mut l) = seen.lock() {
                        l.push(format!("{request_line} {}", String::from_utf8_lossy(&body)));
                    }
                    let version = if hook {
                        &json["commit"]
                    } else {
                        &json["previous"]
                    };
                    if let (Some(v), Ok(mut p)) = (version.as_str(), state.lock()) {
                        p.running.insert(service, v.to_string());
                    }
                    b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                } else if request_line.starts_with("GET /healthz") {
                    let bad = state.lock().is_ok_and(|p| {
                        p.bad.is_some() && p.running.get(&service) == p.bad.as_ref()
                    });
                    if bad {
                        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                    }
                } else {
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                };
                let _ = stream.write_all(reply);
            }
        });
        Ok(Receiver {
            port,
            log,
            platform,
        })
    }

    /// Health checks pass again, whatever runs.
    fn heal(&self) {
        if let Ok(mut p) = self.platform.lock() {
            p.bad = None;
        }
    }

    /// Health checks fail while a service runs `version`.
    fn fail_version(&self, version: &str) {
        if let Ok(mut p) = self.platform.lock() {
            p.bad = Some(version.to_string());
        }
    }

    fn received(&self) -> Vec<String> {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }
}

fn heading(ui: &Ui, text: &str) {
    println!("\n{}", ui.paint(Tone::Bold, &format!("── {text}")));
}

fn prepare_dir(dir: &Path) -> Result<(), CliError> {
    if dir.exists() {
        if !dir.join(MARKER).exists() {
            return Err(CliError::usage(format!(
                "{} exists and is not an earlier nestr demo; nothing was changed. Choose another \
                 folder with --dir",
                dir.display()
            )));
        }
        std::fs::remove_dir_all(dir)
            .map_err(|e| CliError::usage(format!("cannot remove the old demo: {e}")))?;
    }
    std::fs::create_dir_all(dir)
        .and_then(|()| std::fs::write(dir.join(MARKER), "made by `nestr demo`\n"))
        .map_err(|e| CliError::usage(format!("cannot create {}: {e}", dir.display())))
}

/// A bare repository with two commits on `main` (and tag v1.0.0 on the first).
fn make_remote(path: &Path, repo: &SampleRepo) -> Result<(), String> {
    let git = Repository::init_bare(path).map_err(|e| e.message().to_string())?;
    git.set_head("refs/heads/main")
        .map_err(|e| e.message().to_string())?;
    let first = commit(path, repo.files, &format!("{}: first version", repo.name))?;
    let object = git
        .find_object(first, None)
        .map_err(|e| e.message().to_string())?;
    git.tag_lightweight("v1.0.0", &object, false)
        .map_err(|e| e.message().to_string())?;
    commit(
        path,
        &[("VERSION", "1.1.0\n")],
        &format!("{}: version 1.1.0", repo.name),
    )?;
    Ok(())
}

/// Adds a commit on `main` of the bare repository at `path` with `files` written at its root.
fn commit(path: &Path, files: &[(&str, &str)], message: &str) -> Result<git2::Oid, String> {
    let err = |e: git2::Error| e.message().to_string();
    let git = Repository::open_bare(path).map_err(err)?;
    let parent = git
        .find_reference("refs/heads/main")
        .ok()
        .and_then(|r| r.peel_to_commit().ok());
    let base = parent.as_ref().and_then(|p| p.tree().ok());
    let mut tree = git.treebuilder(base.as_ref()).map_err(err)?;
    for (name, content) in files {
        let blob = git.blob(content.as_bytes()).map_err(err)?;
        tree.insert(name, blob, 0o100_644).map_err(err)?;
    }
    let tree = git.find_tree(tree.write().map_err(err)?).map_err(err)?;
    let sig = Signature::now("nestr demo", "demo@nestr.invalid").map_err(err)?;
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    git.commit(
        Some("refs/heads/main"),
        &sig,
        &sig,
        message,
        &tree,
        &parents,
    )
    .map_err(err)
}
