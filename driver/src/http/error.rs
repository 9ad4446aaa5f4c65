//! Errors of the HTTP API: a status, a stable `code` and a readable
//! `message`, as JSON. A caller's mistake is answered without logging
//! noise; an internal error gets a bare message and is logged with context.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::db;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    pub fn unauthorized() -> ApiError {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API key: Authorization: Bearer tly_…",
        )
    }

    pub fn unavailable(
        code: &'static str,
        message: impl Into<String>,
        retry_after: u64,
    ) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    pub fn internal(context: &str, error: &dyn std::fmt::Display) -> ApiError {
        tracing::error!(error = %error, "{context}");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error",
        )
    }

    /// A database error: tally's own errors become the answer they describe
    /// (their messages are written for callers); anything else is internal.
    pub fn from_db(context: &str, error: tokio_postgres::Error) -> ApiError {
        let message = error
            .as_db_error()
            .map(|e| e.message().to_string())
            .unwrap_or_default();
        match db::sqlstate(&error) {
            Some("P0002") => {
                let code = match message.as_str() {
                    "metric not found" => "metric_not_found",
                    "plan not found" => "plan_not_found",
                    "tenant not found" => "tenant_not_found",
                    _ => "not_found",
                };
                ApiError::new(StatusCode::NOT_FOUND, code, message)
            }
            Some("22023" | "22004") => ApiError::bad_request("invalid_request", message),
            Some("22003") => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "out_of_range", message)
            }
            Some("55000") => ApiError::new(StatusCode::CONFLICT, "refused", message),
            Some("40001" | "40P01") => {
                ApiError::unavailable("retry", "the request conflicted with another; retry it", 1)
            }
            _ => ApiError::internal(context, &error),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"code": self.code, "message": self.message})),
        )
            .into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, seconds.into());
        }
        response
    }
}
