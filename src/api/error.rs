//! The one error type of the API and its mapping to status + JSON body.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An API error; every variant becomes `{"error": "...", ...}`.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        field: Option<String>,
        index: Option<usize>,
    },
    #[error("{0}")]
    NotFound(String),
    /// A dependency (the store, the broker) did not answer: 503 with
    /// `Retry-After`, nothing of the request kept.
    #[error("{0}")]
    Unavailable(String),
    /// More requests in flight on a route than it takes: 503 with `Retry-After`.
    #[error("{0}")]
    Overloaded(String),
    /// No API key, or one that is not configured: 401 with
    /// `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key whose role may not call the route: 403.
    #[error("{0}")]
    Forbidden(String),
    /// The caller's rate limit is spent: 429 with `Retry-After` (seconds).
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after_secs: u64,
    },
    /// Answered by the HTTP layer rather than a handler (a 405 from routing,
    /// a 413 from the body limit, a 408 from the timeout, ...).
    #[error("{message}")]
    Http { status: StatusCode, message: String },
}

/// Seconds a client answered 503 is asked to wait.
const RETRY_AFTER_SECS: &str = "1";

impl ApiError {
    pub fn bad_request(
        message: impl Into<String>,
        field: Option<&str>,
        index: Option<usize>,
    ) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            field: field.map(str::to_string),
            index,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = match &self {
            ApiError::BadRequest {
                message,
                field,
                index,
            } => {
                let mut b = json!({ "error": message });
                if let Some(f) = field {
                    b["field"] = json!(f);
                }
                if let Some(i) = index {
                    b["index"] = json!(i);
                }
                (StatusCode::BAD_REQUEST, b)
            }
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, json!({ "error": m })),
            ApiError::Unavailable(m) | ApiError::Overloaded(m) => {
                let mut resp =
                    (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": m }))).into_response();
                resp.headers_mut().insert(
                    header::RETRY_AFTER,
                    HeaderValue::from_static(RETRY_AFTER_SECS),
                );
                return resp;
            }
            ApiError::Unauthorized(m) => {
                let mut resp =
                    (StatusCode::UNAUTHORIZED, Json(json!({ "error": m }))).into_response();
                resp.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"nextbest\""),
                );
                return resp;
            }
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, json!({ "error": m })),
            ApiError::RateLimited {
                message,
                retry_after_secs,
            } => {
                let mut resp = (
                    StatusCode::TOO_MANY_REQUESTS,
                    Json(json!({ "error": message, "retry_after_secs": retry_after_secs })),
                )
                    .into_response();
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
                return resp;
            }
            ApiError::Http { status, message } => (*status, json!({ "error": message })),
        };
        (status, Json(body)).into_response()
    }
}
