//! `nestr serve`: the HTTP API over this workspace (see `crate::api`), until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::render::Ui;
use super::{CliError, ExitCode};
use crate::api::{self, AppState, ServeConfig};
use crate::workspace::{Location, Workspace, WorkspaceError};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on. A non-loopback address needs an API token to exist first.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:7878")]
    pub bind: SocketAddr,
    /// Requests per minute per client address; 0 turns the limit off
    /// [default: `[api] rate_limit` of the manifest, else 100].
    #[arg(long, value_name = "N")]
    pub rate_limit: Option<u32>,
    /// An origin allowed to call the API from a browser (repeatable; added to `[api]
    /// cors_origins`). No wildcard.
    #[arg(long = "cors-origin", value_name = "ORIGIN")]
    pub cors_origins: Vec<String>,
    /// Largest request body in bytes (larger ones get 413).
    #[arg(long, value_name = "BYTES", default_value_t = 1024 * 1024)]
    pub body_limit: usize,
    /// Longest a request may take (event streams excepted), e.g. 30s.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// Longest a client may take to send its request headers (slow clients are cut off).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Runs executing at once; more wait `queued` in order
    /// [default: `[api] max_runs`, else the number of CPUs, at least 2].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub max_runs: Option<u32>,
    /// Runs that may wait for a slot; a run beyond them is refused with 503 and Retry-After
    /// [default: `[api] max_queued`, else 128].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(0..=1_000_000))]
    pub max_queued: Option<u32>,
    /// Connections open at once; one more is answered 503 and closed
    /// [default: `[api] max_connections`, else 1024; at most what the descriptor limit allows].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: Option<u32>,
}

/// Runs the server over the workspace at `at` (also used by `nestr demo --serve`).
pub fn run(at: &Location, args: ServeArgs, ui: &Ui) -> Result<ExitCode, CliError> {
    let mut ws = Workspace::load(at)?;
    serve_workspace(&mut ws, args, ui)
}

pub(super) fn serve_workspace(
    ws: &mut Workspace,
    args: ServeArgs,
    ui: &Ui,
) -> Result<ExitCode, CliError> {
    // Opening the store also marks runs of dead engines interrupted.
    let tokens = ws
        .store()
        .and_then(|s| s.active_tokens())
        .map_err(WorkspaceError::from)?
        .len();
    api::check_bind(args.bind, tokens).map_err(|message| CliError::Plain {
        message,
        help: None,
        code: ExitCode::Usage,
    })?;
    let mut cors_origins = ws.manifest.api.cors_origins.clone();
    for o in &args.cors_origins {
        let origin = crate::manifest::normalize_origin(o).map_err(|why| {
            CliError::usage(format!(
                "--cors-origin `{o}` is not an origin ({why}); write scheme://host[:port]"
            ))
        })?;
        if !cors_origins.contains(&origin) {
            cors_origins.push(origin);
        }
    }
    let config = ServeConfig {
        bind: args.bind,
        rate_limit_per_minute: args
            .rate_limit
            .or(ws.manifest.api.rate_limit)
            .unwrap_or(100),
        cors_origins,
        body_limit: args.body_limit,
        request_timeout: args.request_timeout,
        header_timeout: args.header_timeout,
        max_runs: args
            .max_runs
            .map(|n| n as usize)
            .or(ws.manifest.api.max_runs)
            .unwrap_or_else(api::default_max_runs),
        max_queued: args
            .max_queued
            .map(|n| n as usize)
            .or(ws.manifest.api.max_queued)
            .unwrap_or(api::DEFAULT_MAX_QUEUED),
        max_connections: api::connection_cap(
            args.max_connections
                .map(|n| n as usize)
                .or(ws.manifest.api.max_connections)
                .unwrap_or(api::DEFAULT_MAX_CONNECTIONS),
        ),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        // Store and git work runs on the blocking pool; bounding it bounds memory under load
        // (requests beyond it wait their turn).
        .max_blocking_threads(api::BLOCKING_THREADS)
        // API runs execute on this runtime: check timers and I/O after every task poll, so a
        // worker running plugin code (which yields every 10 ms) never leaves another step's
        // deadline waiting for 61 polls.
        .event_interval(1)
        .enable_all()
        .build()
        .map_err(|e| CliError::usage(format!("cannot start the async runtime: {e}")))?;
    let quiet = ui.quiet;
    let manifest = ws.manifest.clone();
    let state_dir = ws.state_dir().to_path_buf();
    let result = runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(config.bind)
            .await
            .map_err(|e| CliError::Plain {
                message: format!("cannot listen on {}: {e}", config.bind),
                help: Some("choose another address with --bind ADDR".into()),
                code: ExitCode::Usage,
            })?;
        let mut config = config;
        if let Ok(addr) = listener.local_addr() {
            config.bind = addr;
        }
        let state = AppState::new(manifest, &state_dir, config);
        let line = api::mode_line(&state, tokens);
        tracing::info!("{line}");
        if !quiet {
            println!("{line}");
        }
        api::serve(listener, state, shutdown_signal())
            .await
            .map_err(|e| CliError::usage(format!("the server failed: {e}")))?;
        Ok(ExitCode::Ok)
    });
    // Never wait for a stuck blocking thread on the way out.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    result
}

/// Resolves on SIGTERM or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
    tracing::info!("shutdown signal received");
}
