//! The one error type of the API, `ApiError`, and the JSON error envelope every failed request
//! gets: `{"error": {"code", "message", "request_id"}}` (plus `field` for a bad body or query).
//! Handlers return `ApiError`; the outer middleware (`layers.rs`) fills in the request id and
//! turns the bare error responses of the routing and tower layers (404, 405, 408, 413, 429) into
//! the same envelope. Nothing internal (paths, stack traces, SQL) reaches a client: store and
//! other internal failures are logged with the request id and answered with a generic message.

use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::store::StoreError;

/// A failed request.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// The body or query field at fault.
    pub field: Option<String>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The body of an error response.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// A stable, machine-readable code (`not_found`, `bad_request`, `unauthorized`, …).
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
    /// The request's `x-request-id`, also in the server's log lines.
    pub request_id: String,
    /// The body or query field at fault, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            headers: Vec::new(),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// Something failed inside the server; the detail goes to the log only.
    pub fn internal(what: &str, detail: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %detail, "{what}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{what}; the server log has the details (look for this request id)"),
        )
    }

    pub fn with_field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The envelope for a status the routing or a tower layer answered without a body.
    pub fn for_status(status: StatusCode) -> ApiError {
        let (code, message) = match status {
            StatusCode::NOT_FOUND => ("not_found", "no such route; see /api/openapi.json"),
            StatusCode::METHOD_NOT_ALLOWED => (
                "method_not_allowed",
                "this route does not take that method; the Allow header lists those it takes",
            ),
            StatusCode::PAYLOAD_TOO_LARGE => (
                "payload_too_large",
                "the request body is larger than the server accepts (`nestr serve --body-limit`)",
            ),
            StatusCode::REQUEST_TIMEOUT => (
                "request_timeout",
                "the request took longer than the server allows",
            ),
            StatusCode::TOO_MANY_REQUESTS => (
                "rate_limited",
                "too many requests from this address; wait for the Retry-After seconds",
            ),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => (
                "unsupported_media_type",
                "send the body as JSON with `content-type: application/json`",
            ),
            StatusCode::UNAUTHORIZED => ("unauthorized", "a valid API token is needed"),
            StatusCode::FORBIDDEN => ("forbidden", "the token's scope does not allow this"),
            s if s.is_server_error() => ("internal", "the server could not answer"),
            _ => ("bad_request", "the request could not be understood"),
        };
        ApiError::new(status, code, message)
    }

    /// The JSON body, with the request id.
    pub fn body(&self, request_id: &str) -> ErrorBody {
        ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message.clone(),
                request_id: request_id.to_string(),
                field: self.field.clone(),
            },
        }
    }
}

/// The field a serde or query message names ("unknown field `x`", "missing field `x`").
pub(super) fn field_named_in(msg: &str) -> Option<String> {
    let rest = msg.split_once("field `")?.1;
    Some(rest.split_once('`')?.0.to_string())
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Sql(ref s)
                if matches!(
                    s.sqlite_error_code(),
                    Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
                ) =>
            {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "busy",
                    "the store is busy; retry shortly",
                )
                .with_header(
                    axum::http::header::RETRY_AFTER,
                    HeaderValue::from_static("1"),
                )
            }
            other => ApiError::internal("the store failed", other),
        }
    }
}

impl IntoResponse for ApiError {
    /// The body is written by the outer middleware, which knows the request id; the error rides
    /// in the response's extensions until then.
    fn into_response(self) -> Response {
        let mut res = self.status.into_response();
        for (name, value) in &self.headers {
            res.headers_mut().insert(name.clone(), value.clone());
        }
        res.extensions_mut().insert(self);
        res
    }
}
