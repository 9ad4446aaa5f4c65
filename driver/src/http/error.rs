//! Errors of the HTTP API: a status, a stable `code` and a readable
//! `message`, as JSON. A caller's mistake is answered without logging
//! noise; an internal error gets a bare message and is logged with context.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::db::{self, ErrorKind, Missing};

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
    /// (their messages are written for callers); anything else is internal
    /// and logged with its SQLSTATE, message and constraint.
    pub fn from_db(context: &str, error: db::Error) -> ApiError {
        let message = error.message().unwrap_or_default().to_string();
        // The message with its DETAIL, for errors whose data is the caller's
        // own request (its key, metric and units).
        let explained = || match error.detail() {
            Some(detail) => format!("{message}: {detail}"),
            None => message.clone(),
        };
        match error.kind() {
            ErrorKind::NotFound(missing) => {
                let code = match missing {
                    Missing::Metric => "metric_not_found",
                    Missing::Plan => "plan_not_found",
                    Missing::Tenant => "tenant_not_found",
                    Missing::Report | Missing::Other => "not_found",
                };
                ApiError::new(StatusCode::NOT_FOUND, code, message)
            }
            ErrorKind::InvalidArgument => ApiError::bad_request("invalid_request", message),
            ErrorKind::OutOfRange => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "out_of_range", message)
            }
            ErrorKind::Refused => ApiError::new(StatusCode::CONFLICT, "refused", message),
            ErrorKind::Conflict => {
                ApiError::unavailable("retry", "the request conflicted with another; retry it", 1)
            }
            ErrorKind::KeyReused => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "idempotency_key_reused",
                explained(),
            ),
            ErrorKind::NotAnAllocation => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "not_an_allocation",
                explained(),
            ),
            ErrorKind::ExceedsUsed => {
                ApiError::new(StatusCode::CONFLICT, "decrement_exceeds_used", explained())
            }
            ErrorKind::Busy => {
                tracing::warn!(
                    sqlstate = error.sqlstate().unwrap_or(""),
                    "{context}: a lock or statement timeout ran out"
                );
                ApiError::unavailable(
                    "busy",
                    "the data this request needs is busy; retry shortly",
                    1,
                )
            }
            ErrorKind::NeedsUpdate => {
                error.log(context);
                ApiError::unavailable(
                    "needs_update",
                    "the database needs an update (tallyd migrate); retry later",
                    30,
                )
            }
            // No tenant API call raises these for a caller's mistake: a
            // customer linked to another tenant, say, needs an operator.
            ErrorKind::AlreadyExists | ErrorKind::MissingReference | ErrorKind::Other => {
                error.log(context);
                ApiError::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    "internal error",
                )
            }
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
