//! Benchmark of the operation cache and `affected`, in one run (`cargo bench --bench cache`), on
//! the generated 1,000-service workspace (20 repositories; service `rRR-sSS` depends on
//! `r(RR-1)-sSS`, so repository r00 is the bottom of the graph), operation `noop` with
//! `cache = true`:
//! (a) the run with `--no-cache` (the baseline), and the first cached run, which stores 1,000
//!     results;
//! (b) the same run again, nothing changed: all hits;
//! (c) after one commit in one service folder of r00: that service and its 19 dependents miss;
//! (d) `nestr affected` after that commit;
//! the keys of 1,000 services, computed through the library as a run does (the repositories'
//! state read ahead on two threads, then each key), without the process start;
//! and the remote cache: a second workspace's all-hit run through nginx on loopback (Debian's,
//! unpacked by tests/api-tools.sh) against the local all-hit run (b).
//!
//! NESTR_BENCH_ROUNDS (default 5) sets the repetitions; the median and the range are printed.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{Result, big_workspace, git};

fn nestr(ws: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<(Duration, String)> {
    let start = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_nestr"))
        .current_dir(ws)
        .args(args)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .output()?;
    let took = start.elapsed();
    if !out.status.success() {
        return Err(format!(
            "nestr {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if !err.trim().is_empty() {
        eprintln!("nestr {args:?}: {err}");
    }
    Ok((took, String::from_utf8_lossy(&out.stdout).into_owned()))
}

/// Statuses of the last run's steps, counted: (cached, succeeded).
fn counts(ws: &Path) -> Result<(i64, i64)> {
    let conn = rusqlite::Connection::open(ws.join(".nestr/state.db"))?;
    Ok(conn.query_row(
        "SELECT sum(status = 'cached'), sum(status = 'succeeded') FROM steps
         WHERE run_id = (SELECT id FROM runs ORDER BY created_at DESC, rowid DESC LIMIT 1)",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?)
}

struct Series(Vec<Duration>);

impl Series {
    fn median(&self) -> f64 {
        let mut v = self.0.clone();
        v.sort();
        v[v.len() / 2].as_secs_f64()
    }
    fn range(&self) -> String {
        let min = self.0.iter().min().map_or(0.0, Duration::as_secs_f64);
        let max = self.0.iter().max().map_or(0.0, Duration::as_secs_f64);
        format!("{:.0}–{:.0} ms", min * 1e3, max * 1e3)
    }
}

/// nginx with WebDAV PUT on a loopback port, serving `dir/data`; stopped on drop.
struct Nginx(std::process::Child, String);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn nginx(dir: &Path) -> Result<Nginx> {
    let tools = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/api-tools");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/api-tools.sh");
    let out = Command::new("bash").arg(script).arg(tools).output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let bin = text
        .lines()
        .find_map(|l| l.strip_prefix("nginx="))
        .ok_or_else(|| format!("api-tools.sh: {}", String::from_utf8_lossy(&out.stderr)))?;
    std::fs::create_dir_all(dir.join("data"))?;
    std::fs::create_dir_all(dir.join("tmp"))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let d = dir.display();
    std::fs::write(
        dir.join("nginx.conf"),
        format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 256; }}\nhttp {{\n\
             access_log off;\nclient_body_temp_path {d}/tmp;\nproxy_temp_path {d}/tmp;\n\
             fastcgi_temp_path {d}/tmp;\nuwsgi_temp_path {d}/tmp;\nscgi_temp_path {d}/tmp;\n\
             client_max_body_size 0;\nserver {{\nlisten 127.0.0.1:{port};\nlocation / {{\n\
             root {d}/data;\ndav_methods PUT;\ncreate_full_put_path on;\n}}\n}}\n}}\n"
        ),
    )?;
    let child = Command::new(bin)
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("error.log"))
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("nginx did not listen".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Nginx(child, format!("http://127.0.0.1:{port}")))
}

fn main() -> Result<()> {
    let rounds: usize = std::env::var("NESTR_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let tmp = tempfile::Builder::new()
        .prefix("nestr-bench-cache-")
        .tempdir()?;
    let root = tmp.path();
    let server = nginx(&root.join("nginx"))?;
    let noop = Path::new(env!("NESTR_PLUGIN_WASM_DIR")).join("noop.wasm");
    let tail = format!(
        "\n[operations.noop]\nplugin = \"noop\"\ncache = true\n\n[plugins.noop]\npath = \"{}\"\n\n\
         [cache]\nremote = \"{}\"\n",
        noop.display(),
        server.1
    );
    let deps = |r: usize, s: usize| {
        if r == 0 {
            String::new()
        } else {
            format!("depends_on = [\"r{:02}-s{s:02}\"]\n", r - 1)
        }
    };
    let ws = big_workspace(root, deps, &tail)?;
    // The remote is used only where a figure says so.
    let local = [("NESTR_CACHE_REMOTE", "off")];
    let run = ["-q", "run", "noop", "-j", "2"];
    let no_cache = ["-q", "run", "noop", "-j", "2", "--no-cache"];
    nestr(&ws, &no_cache, &local)?; // compile cache warm

    let (mut a, mut fill, mut b, mut c, mut d, mut keys_t, mut remote_t) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    let svc = ws.join("r00/svc00");
    for round in 0..rounds {
        a.push(nestr(&ws, &no_cache, &local)?.0);
        // A cold cache: the first cached run stores every result.
        nestr(&ws, &["-q", "cache", "prune", "--max-size", "1"], &local)?;
        fill.push(nestr(&ws, &run, &local)?.0);
        b.push(nestr(&ws, &run, &local)?.0);
        let (cached, ran) = counts(&ws)?;
        assert_eq!((cached, ran), (1000, 0), "(b) is all hits");

        // One commit at the bottom of the graph.
        std::fs::write(svc.join("README"), format!("service, change {round}\n"))?;
        git(&svc, &["commit", "-qam", "change"])?;
        c.push(nestr(&ws, &run, &local)?.0);
        let (cached, ran) = counts(&ws)?;
        assert_eq!(
            (cached, ran),
            (980, 20),
            "(c): r00-s00 and its 19 dependents run"
        );
        let (t, out) = nestr(&ws, &["affected", "--operation", "noop", "--json"], &local)?;
        d.push(t);
        let v: serde_json::Value = serde_json::from_str(&out)?;
        let n = v["services"].as_array().map_or(0, Vec::len);
        assert_eq!(n, 20, "(d) finds the service and its dependents: {out}");

        // Keys through the library.
        let manifest = nestr::manifest::load(&ws.join("nestr.toml"))?;
        let state = ws.join(".nestr");
        let store = nestr::store::Store::open(&state)?;
        let start = Instant::now();
        let mut k = nestr::cache::Keys::new(&manifest, "noop", &state, Some(&store));
        let names: Vec<&str> = manifest.services.iter().map(|s| s.name.as_str()).collect();
        k.preload(&names);
        for s in &manifest.services {
            k.key(&s.name).map_err(|e| format!("{}: {e}", s.name))?;
        }
        keys_t.push(start.elapsed());
    }

    // The remote: the workspace uploads every result of its current state (its cache emptied
    // first, so that each is stored and so uploaded), then each round a second workspace of the
    // same repositories, at the same revisions, its cache empty, runs: all hits from nginx.
    nestr(&ws, &["-q", "cache", "prune", "--max-size", "1"], &local)?;
    nestr(&ws, &run, &[])?;
    let rev = String::from_utf8(
        Command::new("git")
            .current_dir(ws.join("r00"))
            .args(["rev-parse", "HEAD"])
            .output()?
            .stdout,
    )?;
    for round in 0..rounds {
        let other = root.join(format!("ws-remote-{round}"));
        std::fs::create_dir_all(&other)?;
        std::fs::copy(ws.join("nestr.toml"), other.join("nestr.toml"))?;
        nestr(&other, &["-q", "assemble", "-j", "4"], &[])?;
        let r00 = other.join("r00");
        git(
            &r00,
            &["fetch", "-q", &ws.join("r00").display().to_string()],
        )?;
        git(&r00, &["checkout", "-q", rev.trim()])?;
        remote_t.push(nestr(&other, &run, &[])?.0);
        let (cached, ran) = counts(&other)?;
        assert_eq!((cached, ran), (1000, 0), "the remote run is all hits");
    }
    let (a, fill, b, c, d, keys_t, remote_t) = (
        Series(a),
        Series(fill),
        Series(b),
        Series(c),
        Series(d),
        Series(keys_t),
        Series(remote_t),
    );
    println!(
        "| measurement (1,000 services in 20 repos, -j 2; median and range of {rounds}) | wall | range | vs (a) |"
    );
    println!("|---|---:|---:|---:|");
    let row = |what: &str, s: &Series, base: f64| {
        println!(
            "| {what} | {:.0} ms | {} | {:.2}× |",
            s.median() * 1e3,
            s.range(),
            s.median() / base
        );
    };
    let base = a.median();
    row("(a) `nestr run noop --no-cache` (baseline)", &a, base);
    row("first cached run: 1,000 results stored", &fill, base);
    row("(b) the same run again: 1,000 hits", &b, base);
    row("(c) after one commit in r00: 20 run, 980 hits", &c, base);
    row("(d) `nestr affected` after that commit", &d, base);
    row(
        "keys of 1,000 services (library, in process)",
        &keys_t,
        base,
    );
    row(
        "second workspace, all 1,000 hits from nginx",
        &remote_t,
        base,
    );
    println!(
        "\nremote all-hit run / local all-hit run (b): {:.2}×",
        remote_t.median() / b.median()
    );
    Ok(())
}
