//! The OpenAPI document of the API, generated from the handlers' annotations (utoipa), served at
//! `/api/openapi.json`; `docs/openapi.json` is a committed copy that a test keeps equal.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use super::{cache, deploys, error, events, logs, operations, runs, workspace};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "nestr API",
        description = "The nestr engine over HTTP: the workspace, its repositories and services, \
                       operations (run, sync, assemble), the run history with logs and live \
                       events, plugins. Errors are `{\"error\": {\"code\", \"message\", \"request_id\"}}`. \
                       See docs/api.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        workspace::health,
        workspace::ready,
        workspace::metrics,
        workspace::workspace,
        workspace::repos,
        workspace::services,
        workspace::service,
        workspace::service_steps,
        workspace::plugins,
        workspace::session,
        workspace::plan,
        operations::run,
        operations::sync,
        operations::assemble,
        runs::list,
        runs::get,
        logs::logs,
        logs::search,
        logs::text,
        events::events,
        runs::cancel,
        operations::rerun,
        cache::key,
        cache::explain,
        cache::provenance,
        cache::stats,
        cache::affected,
        deploys::environments,
        deploys::plan,
        deploys::show,
        deploys::approve,
        deploys::apply,
        deploys::resume,
        deploys::abort,
        deploys::events,
        openapi_json,
    ),
    components(schemas(error::ErrorBody, error::ErrorDetail, events::EventData, operations::RunAccepted)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "system", description = "Liveness, readiness, metrics"),
        (name = "workspace", description = "The workspace, repositories, services, plugins"),
        (name = "operations", description = "Start runs"),
        (name = "runs", description = "Run history, logs, live events, cancel, re-run"),
        (name = "deploys", description = "Environments: plans, approval, apply, rollback, status"),
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme(
                "bearer",
                SecurityScheme::Http(
                    HttpBuilder::new()
                        .scheme(HttpAuthScheme::Bearer)
                        .description(Some(
                            "An API token from `nestr token create` (not needed in local mode)",
                        ))
                        .build(),
                ),
            );
        }
    }
}

/// The document as pretty JSON (what `/api/openapi.json` serves and docs/openapi.json holds).
pub fn json() -> String {
    let mut doc = ApiDoc::openapi();
    doc.info.version = env!("CARGO_PKG_VERSION").to_string();
    doc.to_pretty_json().unwrap_or_else(|e| {
        tracing::error!(error = %e, "could not encode the OpenAPI document");
        String::from("{}")
    }) + "\n"
}

/// This document.
#[utoipa::path(get, path = "/api/openapi.json", tag = "system", security(()),
    responses((status = 200, description = "The OpenAPI document", body = Object, content_type = "application/json")))]
pub async fn openapi_json() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        json(),
    )
        .into_response()
}
