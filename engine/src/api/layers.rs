//! Middleware of the API. `finish` wraps every route: it counts the request in the HTTP metrics
//! by matched route template, writes the JSON error envelope (with the request id) for every
//! error response, and adds the security headers. `auth` guards `/api` (tokens and scopes, local
//! mode); `metrics_auth` guards `/metrics`. Also the rate limiter's key (the peer address) and
//! the CORS allowlist.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;
use tower_governor::GovernorError;
use tower_governor::key_extractor::KeyExtractor;

use super::error::ApiError;
use super::state::AppState;
use super::workspace::Session;
use crate::model::Scope;
use crate::store::{ActiveToken, token_hash};

/// The request id a request carries (set by tower-http's `SetRequestId` from `x-request-id`).
fn request_id(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("-")
        .to_string()
}

/// Metrics, error envelope, security headers.
pub async fn finish(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
    let id = request_id(req.headers());
    let metrics = crate::metrics::global();
    if let Some(m) = metrics {
        m.http_requests_in_flight.inc();
    }
    let mut res = next.run(req).await;
    if let Some(m) = metrics {
        m.http_requests_in_flight.dec();
        m.http_requests_total
            .with_label_values(&[method.as_str(), &route, res.status().as_str()])
            .inc();
        m.http_request_duration_seconds
            .with_label_values(&[method.as_str(), &route])
            .observe(started.elapsed().as_secs_f64());
    }
    let status = res.status();
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    // The dashboard's own error pages are HTML and stay so.
    let is_page = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    if status.is_client_error() || status.is_server_error() {
        let error = res.extensions_mut().remove::<ApiError>();
        if error.is_some() || !(is_json || is_page) {
            let error = error.unwrap_or_else(|| ApiError::for_status(status));
            if status.is_server_error() {
                tracing::warn!(request_id = %id, status = status.as_u16(), code = error.code, "request failed");
            }
            let mut fresh = (status, axum::Json(error.body(&id))).into_response();
            // Keep what the layers said (Allow, Retry-After, CORS, WWW-Authenticate, …).
            for (name, value) in res.headers() {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    fresh.headers_mut().insert(name.clone(), value.clone());
                }
            }
            res = fresh;
        }
    }
    let h = res.headers_mut();
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The dashboard's pages set their own (scripts and styles from this server only).
    if !h.contains_key(header::CONTENT_SECURITY_POLICY) {
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'; base-uri 'none'"),
        );
    }
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    res
}

/// The peer address of a request (the rate limiter's key and the loopback check). In-process
/// callers without a socket count as loopback.
pub fn peer_ip<B>(req: &axum::http::Request<B>) -> IpAddr {
    req.extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::V4(Ipv4Addr::LOCALHOST), |c| c.0.ip())
}

/// Rate-limit key: the client's IP address.
#[derive(Debug, Clone, Copy)]
pub struct PeerIp;

impl KeyExtractor for PeerIp {
    type Key = IpAddr;

    fn extract<T>(&self, req: &axum::http::Request<T>) -> Result<Self::Key, GovernorError> {
        Ok(peer_ip(req))
    }
}

/// The 429 answer of the rate limiter, with `Retry-After`.
pub fn rate_limited(e: GovernorError) -> Response {
    let mut err = ApiError::for_status(StatusCode::TOO_MANY_REQUESTS);
    if let GovernorError::TooManyRequests { wait_time, .. } = e {
        err = err.with_header(header::RETRY_AFTER, HeaderValue::from(wait_time.max(1)));
        err.message = format!(
            "too many requests from this address; retry in {} s",
            wait_time.max(1)
        );
    }
    err.into_response()
}

/// What a request presents.
enum Presented {
    None,
    Malformed,
    Token(String),
}

fn presented(req: &Request) -> Presented {
    let Some(v) = req.headers().get(header::AUTHORIZATION) else {
        return Presented::None;
    };
    // `Bearer TOKEN`; the scheme is case-insensitive (RFC 9110 §11.1), one or more spaces
    // follow it.
    let token = v.to_str().ok().and_then(|s| {
        let (scheme, rest) = s.trim_start().split_once(' ')?;
        scheme.eq_ignore_ascii_case("bearer").then_some(rest)
    });
    match token {
        Some(t) if !t.trim().is_empty() => Presented::Token(t.trim().to_string()),
        _ => Presented::Malformed,
    }
}

/// Longest request target answered by the router (longer ones get an enveloped 414).
pub const MAX_URI: usize = 16 * 1024;
/// Most header bytes and header fields answered by the router (more get an enveloped 431).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
pub const MAX_HEADERS: usize = 100;
/// What hyper itself accepts before answering a bare 431: room above the router's limits, so
/// that a request just over them gets the router's answer.
pub const HYPER_MAX_HEADERS: usize = 256;

/// Request-target and header limits, answered with the JSON envelope, the security headers and
/// the request id (hyper's own answers to what goes beyond its wider limits carry none).
pub async fn limits(req: Request, next: Next) -> Response {
    let target = req.uri().path_and_query().map_or(0, |p| p.as_str().len());
    if target > MAX_URI {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!("the request target is longer than {MAX_URI} bytes"),
        )
        .into_response();
    }
    let headers = req.headers();
    let bytes: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum();
    if headers.len() > MAX_HEADERS || bytes > MAX_HEADER_BYTES {
        return ApiError::new(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "headers_too_large",
            format!(
                "the request has more than {MAX_HEADERS} header fields or {MAX_HEADER_BYTES} \
                 bytes of them"
            ),
        )
        .into_response();
    }
    next.run(req).await
}

fn unauthorized(message: &str) -> Response {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer realm=\"nestr\""),
        )
        .into_response()
}

/// The scope of `token` among the active tokens, if any. Every stored hash is compared, in
/// constant time, whatever matches.
fn scope_of(tokens: &[ActiveToken], token: Option<&str>) -> Option<(i64, Scope)> {
    let hash = token_hash(token?);
    let mut found: Option<(i64, Scope)> = None;
    for t in tokens {
        if bool::from(t.hash.ct_eq(&hash)) {
            found = Some((t.id, t.scope));
        }
    }
    found
}

/// Approving a deploy plan: the one request an `approve` token may make besides reading, and
/// one a `write` token may not.
fn approving(req: &Request) -> bool {
    *req.method() == Method::POST
        && req.uri().path().starts_with("/api/deploys/")
        && req.uri().path().ends_with("/approve")
}

/// Tokens and scopes for `/api`: reads need `read` or `write`, other methods `write`. While no
/// token exists and the server is bound to loopback, no token is needed (local mode). What the
/// request may do is left in its extensions as a [`Session`].
pub async fn auth(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let token = match presented(&req) {
        Presented::Malformed => {
            return unauthorized("the Authorization header must be `Bearer <token>`");
        }
        Presented::None => None,
        Presented::Token(t) => Some(t),
    };
    let tokens = match state.active_tokens().await {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    if tokens.is_empty() {
        if state.0.loopback {
            req.extensions_mut().insert(Session {
                scope: Scope::Write,
                local: true,
                token: None,
            });
            return next.run(req).await;
        }
        return unauthorized("no API token exists; create one with `nestr token create`");
    }
    let Some((id, scope)) = scope_of(&tokens, token.as_deref()) else {
        return unauthorized(if token.is_some() {
            "the token is not valid (unknown or revoked)"
        } else {
            "this server needs an API token: send `Authorization: Bearer <token>` \
             (create one with `nestr token create`)"
        });
    };
    let reading = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let refused = match (reading, approving(&req), scope) {
        (true, _, _) | (false, true, Scope::Approve) | (false, false, Scope::Write) => None,
        (false, true, _) => Some("approving a deploy plan needs a token with the `approve` scope"),
        (false, false, Scope::Approve) => {
            Some("this token has the `approve` scope; this request needs a `write` token")
        }
        (false, false, _) => {
            Some("this token has the `read` scope; this request needs a `write` token")
        }
    };
    if let Some(why) = refused {
        return ApiError::new(StatusCode::FORBIDDEN, "forbidden", why).into_response();
    }
    req.extensions_mut().insert(Session {
        scope,
        local: false,
        token: Some(id),
    });
    next.run(req).await
}

/// `/metrics`: open to loopback clients, a token (any scope) otherwise.
pub async fn metrics_auth(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if peer_ip(&req).is_loopback() {
        return next.run(req).await;
    }
    let token = match presented(&req) {
        Presented::Token(t) => Some(t),
        _ => None,
    };
    match state.active_tokens().await {
        Ok(tokens) if scope_of(&tokens, token.as_deref()).is_some() => next.run(req).await,
        Ok(_) => unauthorized("/metrics needs an API token when called from another host"),
        Err(e) => e.into_response(),
    }
}

/// The CORS layer for the allowlisted origins; `None` when there are none (no CORS headers).
pub fn cors(origins: &[String]) -> Option<tower_http::cors::CorsLayer> {
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let list: Vec<HeaderValue> = origins
        .iter()
        .filter_map(|o| HeaderValue::from_str(o).ok())
        .collect();
    if list.is_empty() {
        return None;
    }
    Some(
        CorsLayer::new()
            .allow_origin(AllowOrigin::list(list))
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("last-event-id"),
                header::HeaderName::from_static("x-request-id"),
            ])
            .expose_headers([
                header::LOCATION,
                header::RETRY_AFTER,
                header::HeaderName::from_static("x-request-id"),
            ])
            .max_age(std::time::Duration::from_secs(600)),
    )
}
