//! The HTTP API, `nestr serve`: axum on tokio over the same engine the CLI uses. `router(state)`
//! builds every route with its middleware (tests call it in-process, `serve` runs it on a
//! socket). Handlers live per resource (`workspace.rs`, `operations.rs`, `runs.rs`, `logs.rs`,
//! `events.rs`, `cache.rs`), the web dashboard's pages and files in `ui.rs`,
//! errors in `error.rs`, middleware in `layers.rs`, shared state in `state.rs`, the run queue in
//! `queue.rs`, the OpenAPI document in `openapi.rs`. `serve` also owns the connection cap, the
//! descriptor limit and the sweep that marks runs of dead processes `interrupted`.
//!
//! Shutdown (SIGTERM or Ctrl-C): stop accepting, end the event streams, let in-flight requests
//! finish, cancel the runs this server executes and wait until they are recorded `cancelled`.

mod cache;
mod deploys;
mod error;
mod events;
mod layers;
mod logs;
pub mod openapi;
mod operations;
mod queue;
mod runs;
mod state;
mod ui;
mod workspace;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderName, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state};
use axum::routing::{get, post};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tower::ServiceExt;
use tower_governor::GovernorLayer;
use tower_governor::governor::GovernorConfigBuilder;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ErrorBody};
pub use state::{
    AppState, BLOCKING_THREADS, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_QUEUED, ServeConfig,
    default_max_runs,
};

/// A query string the handler could not read → 400 naming the parameter.
fn bad_query(e: QueryRejection) -> ApiError {
    let text = e.body_text();
    let mut err = ApiError::bad_request(format!("bad query string: {text}"));
    if let Some(f) = error::field_named_in(&text) {
        err = err.with_field(f);
    }
    err
}

/// A path nothing answers: the JSON envelope, or for a browser asking for a page outside `/api`,
/// a page that says so.
async fn not_found(req: axum::extract::Request) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = req.uri().path();
    let wants_page = req.method() == axum::http::Method::GET
        && !path.starts_with("/api")
        && req
            .headers()
            .get(axum::http::header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/html"));
    if wants_page {
        return ui::not_found_page(path);
    }
    ApiError::for_status(StatusCode::NOT_FOUND).into_response()
}

/// Every route with its middleware.
pub fn router(state: AppState) -> Router {
    let config = state.config().clone();
    let x_request_id = HeaderName::from_static("x-request-id");

    let api = Router::new()
        .route("/api/workspace", get(workspace::workspace))
        .route("/api/repos", get(workspace::repos))
        .route("/api/services", get(workspace::services))
        .route("/api/services/{name}", get(workspace::service))
        .route("/api/plugins", get(workspace::plugins))
        .route("/api/operations/run", post(operations::run))
        .route("/api/operations/sync", post(operations::sync))
        .route("/api/operations/assemble", post(operations::assemble))
        .route("/api/runs", get(runs::list))
        .route("/api/runs/{id}", get(runs::get))
        .route("/api/session", get(workspace::session))
        .route("/api/plan", get(workspace::plan))
        .route("/api/services/{name}/steps", get(workspace::service_steps))
        .route("/api/runs/{id}/logs", get(logs::logs))
        .route("/api/runs/{id}/logs/search", get(logs::search))
        .route("/api/runs/{id}/cancel", post(runs::cancel))
        .route("/api/runs/{id}/rerun", post(operations::rerun))
        .route("/api/runs/{id}/provenance", get(cache::provenance))
        .route("/api/runs/{id}/steps/{service}/key", get(cache::key))
        .route(
            "/api/runs/{id}/steps/{service}/explain",
            get(cache::explain),
        )
        .route("/api/cache/stats", get(cache::stats))
        .route("/api/affected", get(cache::affected))
        .route("/api/environments", get(deploys::environments))
        .route("/api/environments/{env}/plans", post(deploys::plan))
        .route("/api/deploys/{plan}", get(deploys::show))
        .route("/api/deploys/{plan}/approve", post(deploys::approve))
        .route("/api/deploys/{plan}/apply", post(deploys::apply))
        .route("/api/deploys/{plan}/resume", post(deploys::resume))
        .route("/api/deploys/{plan}/abort", post(deploys::abort))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ))
        // Event streams last as long as their run, downloads as long as the log: no request
        // timeout.
        .route("/api/runs/{id}/events", get(events::events))
        .route("/api/runs/{id}/logs/text", get(logs::text))
        .route("/api/deploys/{plan}/events", get(deploys::events))
        .route_layer(from_fn_with_state(state.clone(), layers::auth));

    // Load balancers' probes: never rate-limited (a probe answered 429 takes the server out).
    let probes = Router::new()
        .route("/health", get(workspace::health))
        .route("/ready", get(workspace::ready))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ));

    let open = Router::new()
        .route(
            "/metrics",
            get(workspace::metrics)
                .route_layer(from_fn_with_state(state.clone(), layers::metrics_auth)),
        )
        .route("/api/openapi.json", get(openapi::openapi_json))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ));

    // The dashboard's pages and files: static, cheap, and not rate-limited (its API calls are).
    let dashboard = Router::new()
        .route("/", get(ui::overview))
        .route("/graph", get(ui::graph))
        .route("/runs", get(ui::runs))
        .route("/runs/{id}", get(ui::run))
        .route("/services/{name}", get(ui::service))
        .route("/environments", get(ui::environments))
        .route("/ui/{version}/{*file}", get(ui::asset))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            config.request_timeout,
        ));

    // Everything but the probes and the dashboard is rate-limited per client address, unknown
    // paths included.
    let mut limited = api.merge(open).fallback(not_found);
    if config.rate_limit_per_minute > 0 {
        let per = Duration::from_secs(60) / config.rate_limit_per_minute;
        let governor = GovernorConfigBuilder::default()
            .period(per.max(Duration::from_nanos(1)))
            .burst_size(config.rate_limit_per_minute)
            .key_extractor(layers::PeerIp)
            .finish();
        if let Some(governor) = governor {
            let governor = Arc::new(governor);
            let limiter = governor.limiter().clone();
            // Forget clients not seen for a while, so the table stays small.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let mut tick = tokio::time::interval(Duration::from_secs(60));
                    loop {
                        tick.tick().await;
                        limiter.retain_recent();
                    }
                });
            }
            limited =
                limited.layer(GovernorLayer::new(governor).error_handler(layers::rate_limited));
        }
    }
    let mut app = limited
        .merge(probes)
        .merge(dashboard)
        .layer(RequestBodyLimitLayer::new(config.body_limit))
        .layer(axum::extract::DefaultBodyLimit::max(config.body_limit));
    if let Some(cors) = layers::cors(&config.cors_origins) {
        app = app.layer(cors);
    }
    app.layer(from_fn(layers::limits))
        .layer(from_fn(layers::finish))
        .layer(PropagateRequestIdLayer::new(x_request_id.clone()))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                tracing::info_span!("request", method = %req.method(), path = %req.uri().path(), request_id = %id)
            }),
        )
        .layer(SetRequestIdLayer::new(x_request_id, MakeRequestUuid))
        .with_state(state)
}

/// Serves `router(state)` on `listener` until `shutdown` resolves, then shuts down gracefully
/// (see the module doc). Connections get a header read timeout against slow clients.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let app = router(state.clone());
    let header_timeout = state.config().header_timeout;
    tokio::spawn(state::watch_manifest(state.clone()));
    tokio::spawn(sweep_dead_runs(state.clone()));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(state.config().max_connections));
    let mut backoff = AcceptBackoff::default();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, go on.
                    let wait = backoff.failed(&e);
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = &mut shutdown => break,
                    }
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        backoff.succeeded();
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Over the connection cap: a fast 503, and the socket is closed.
            tokio::spawn(refuse_connection(stream));
            continue;
        };
        let app = app.clone();
        let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
            let mut req = req.map(axum::body::Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            app.clone().oneshot(req)
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_headers(layers::HYPER_MAX_HEADERS)
            .serve_connection(TokioIo::new(stream), svc);
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            drop(permit);
        });
    }
    drop(listener);
    let _ = state.0.shutdown.send(true);
    let cancels: Vec<_> = state.runs().values().map(|r| r.cancel.clone()).collect();
    tracing::info!(
        runs = cancels.len(),
        "shutting down: no new connections; ending event streams, cancelling runs"
    );
    for c in &cancels {
        c.cancel();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(Duration::from_secs(30)) => {
            tracing::warn!("connections still open after 30 s; closing them");
        }
    }
    while !state.runs().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = state.runs().len();
    if left > 0 {
        tracing::error!(runs = left, "runs still executing after 60 s");
    }
    tracing::info!("stopped");
    Ok(())
}

/// Accept errors (out of descriptors, mostly): waits that double from 10 ms to 1 s, and one
/// log line per second at most, with the count of those not logged.
#[derive(Default)]
struct AcceptBackoff {
    wait: Option<Duration>,
    last_log: Option<Instant>,
    unlogged: u64,
}

impl AcceptBackoff {
    fn failed(&mut self, e: &std::io::Error) -> Duration {
        let wait = self.wait.map_or(Duration::from_millis(10), |w| {
            (w * 2).min(Duration::from_secs(1))
        });
        self.wait = Some(wait);
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(error = %e, more = self.unlogged, retry_in_ms = wait.as_millis() as u64,
                "accept failed; backing off");
            self.last_log = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        wait
    }

    fn succeeded(&mut self) {
        self.wait = None;
    }
}

/// The answer to a connection over `max_connections`: written at once without reading the
/// request, then the socket is closed.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let body = r#"{"error":{"code":"too_many_connections","message":"the server has as many connections open as it takes (`[api] max_connections`); retry shortly","request_id":"-"}}"#;
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         content-length: {}\r\nretry-after: 1\r\nconnection: close\r\n\
         x-content-type-options: nosniff\r\ncache-control: no-store\r\n\r\n{body}",
        body.len()
    );
    if let Some(m) = crate::metrics::global() {
        m.http_requests_total
            .with_label_values(&["-", "refused", "503"])
            .inc();
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// How often the server looks for runs whose process died.
pub const SWEEP_EVERY: Duration = Duration::from_secs(2);

/// Until shutdown: every [`SWEEP_EVERY`], runs left queued or running by a process that is gone
/// (a `nestr run` killed with SIGKILL, a crashed server) are marked `interrupted`, so the API
/// and their event streams say so within seconds.
async fn sweep_dead_runs(state: AppState) {
    let mut stop = state.shutdown_signal();
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_EVERY) => {}
            _ = stop.changed() => return,
        }
        let swept = state
            .store(|s| Ok(crate::scheduler::recover::recover(s)?))
            .await;
        match swept {
            Ok(ids) if !ids.is_empty() => {
                tracing::warn!(runs = ?ids, "runs of a process that is gone marked interrupted");
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.message, "the sweep for dead runs failed"),
        }
    }
}

/// Raises the soft limit on open descriptors to the hard one, and caps connections at
/// `requested` and at half the descriptors the process may open (the rest is for the store,
/// git and plugins).
pub fn connection_cap(requested: usize) -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let soft = match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) => {
            if soft < hard && setrlimit(Resource::RLIMIT_NOFILE, hard, hard).is_ok() {
                tracing::debug!(from = soft, to = hard, "raised the open-descriptor limit");
                hard
            } else {
                soft
            }
        }
        Err(_) => 1024,
    };
    let half = usize::try_from(soft / 2).unwrap_or(usize::MAX).max(16);
    if requested > half {
        tracing::warn!(
            requested,
            cap = half,
            "max_connections is more than half the descriptor limit allows; capped"
        );
    }
    requested.min(half).max(1)
}

/// Start-up description of the mode, for the log line.
pub fn mode_line(state: &AppState, tokens: usize) -> String {
    let bind = state.config().bind;
    format!(
        "{}; the dashboard is at http://{bind}/",
        mode(state, tokens)
    )
}

fn mode(state: &AppState, tokens: usize) -> String {
    let bind = state.config().bind;
    if !state.0.loopback && tokens == 0 {
        return format!(
            "nestr API listening on http://{bind} (no API token: every /api request is refused)"
        );
    }
    if tokens == 0 {
        format!(
            "nestr API listening on http://{bind} (local mode: no API token exists, so /api needs none \
             while bound to loopback; `nestr token create` turns authentication on)"
        )
    } else {
        format!("nestr API listening on http://{bind} ({tokens} API token(s); /api needs a token)")
    }
}

/// The address to bind, checked: a non-loopback address needs an existing token.
pub fn check_bind(addr: SocketAddr, tokens: usize) -> Result<(), String> {
    if !addr.ip().is_loopback() && tokens == 0 {
        return Err(format!(
            "refusing to serve on {addr} without an API token: anyone who can reach it could run \
             operations. Create a token first with `nestr token create --scope write`, or bind a \
             loopback address (127.0.0.1)"
        ));
    }
    Ok(())
}
