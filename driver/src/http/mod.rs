//! The HTTP server: provider webhooks, the tenant API, health and metrics.

mod error;
mod health;
mod tenant_api;
mod webhooks;

use std::sync::Arc;
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::db::{Pool, PooledClient};
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::signature::Secrets;

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub stripe_secrets: Secrets,
    pub paddle_secrets: Secrets,
    pub metrics: Arc<Metrics>,
    pub billing: crate::db::events::BillingConfig,
}

impl AppState {
    pub async fn client(&self) -> Result<PooledClient, ApiError> {
        self.pool.get().await.map_err(|error| {
            tracing::error!(error = %error, "no database connection");
            ApiError::unavailable(
                "database_unavailable",
                "the database is unavailable; retry shortly",
                5,
            )
        })
    }
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/webhooks/stripe", post(webhooks::stripe))
        .route("/webhooks/paddle", post(webhooks::paddle))
        .route("/v1/usage", get(tenant_api::usage))
        .route("/v1/usage/{metric}/check", post(tenant_api::check))
        .route("/v1/usage/{metric}/decrement", post(tenant_api::decrement))
        .route("/v1/plan/validate", post(tenant_api::validate_plan))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint",
    )
}

/// Count every request by route (the route's pattern, never the raw path),
/// method and status, and time it.
async fn record(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |path| path.as_str().to_string());
    let method = request.method().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    let labels = RequestLabels {
        route: route.clone(),
        method,
        status: response.status().as_u16(),
    };
    state.metrics.requests.get_or_create(&labels).inc();
    state
        .metrics
        .request_seconds
        .get_or_create(&RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// A JSON body read under the size limit, with errors in the API's shape.
/// An empty body reads as `{}`.
pub struct JsonBody<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = read_body(request, state).await?;
        let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
            b"{}"
        } else {
            &bytes
        };
        serde_json::from_slice(bytes)
            .map(JsonBody)
            .map_err(|error| {
                ApiError::bad_request(
                    "malformed_json",
                    format!("the body is not the JSON expected: {error}"),
                )
            })
    }
}

/// The raw body, as it came (webhook signatures cover exactly these
/// bytes), with errors in the API's shape.
pub struct RawBody(pub Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        read_body(request, state).await.map(RawBody)
    }
}

/// The raw body, or 413 past the limit.
async fn read_body<S: Send + Sync>(request: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(request, state)
        .await
        .map_err(|rejection| {
            if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::new(
                    rejection.status(),
                    "body_too_large",
                    "the body is larger than this server accepts",
                )
            } else {
                ApiError::bad_request("unreadable_body", rejection.body_text())
            }
        })
}
