//! The HTTP server: provider webhooks, the tenant API, health and metrics.

mod error;
mod health;
mod tenant_api;
mod webhooks;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, MatchedPath, Request, State};
use axum::middleware::{self, Next};
use axum::response::IntoResponse;
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::de::DeserializeOwned;

pub use error::ApiError;

use crate::db::{Pool, PooledClient};
use crate::metrics::{Metrics, RequestLabels, RouteLabels};
use crate::signature::Secrets;

/// How long each stage of a request may take. Every wait is bounded: a
/// client that stalls, a pool with no free connection, a locked row or a
/// slow statement ends the request (503 with `Retry-After`, or 408 for a
/// body that does not arrive) instead of holding the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// For a request's headers, from the connection's start or the previous
    /// response (the connection is closed after it).
    pub header_read: Duration,
    /// For a request's whole body (408 after it).
    pub body_read: Duration,
    /// For a whole request, body included (503 after it).
    pub request: Duration,
    /// For a connection from the pool (503 after it).
    pub pool_wait: Duration,
    /// Postgres's `statement_timeout` on the server's connections.
    pub statement: Duration,
    /// Postgres's `lock_timeout` on the server's connections (503 after it).
    pub lock: Duration,
}

impl Timeouts {
    pub const DEFAULT: Timeouts = Timeouts {
        header_read: Duration::from_secs(10),
        body_read: Duration::from_secs(10),
        request: Duration::from_secs(30),
        pool_wait: Duration::from_secs(2),
        statement: Duration::from_secs(5),
        lock: Duration::from_secs(2),
    };

    /// The database waits of the server's pool.
    pub fn waits(&self) -> crate::db::Waits {
        crate::db::Waits {
            pool: self.pool_wait,
            statement: self.statement,
            lock: self.lock,
        }
    }
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts::DEFAULT
    }
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    pub pool: Pool,
    pub stripe_secrets: Secrets,
    pub paddle_secrets: Secrets,
    pub metrics: Arc<Metrics>,
    pub billing: crate::db::events::BillingConfig,
    pub timeouts: Timeouts,
    /// Each tenant's share of the pool.
    pub tenant_slots: TenantSlots,
}

/// How many of the pool's connections one tenant's requests may hold at
/// once: half the pool (at least one), so requests stuck on one tenant's
/// locked row can never take every connection from the others.
#[derive(Clone)]
pub struct TenantSlots {
    per_tenant: usize,
    slots: Arc<std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Semaphore>>>>,
}

/// One of a tenant's slots, held with its connection.
pub type TenantSlot = tokio::sync::OwnedSemaphorePermit;

impl TenantSlots {
    pub fn for_pool(pool_size: usize) -> TenantSlots {
        TenantSlots {
            per_tenant: (pool_size / 2).max(1),
            slots: Arc::default(),
        }
    }

    fn semaphore(&self, tenant_id: &str) -> Arc<tokio::sync::Semaphore> {
        let mut slots = self
            .slots
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        slots
            .entry(tenant_id.to_string())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(self.per_tenant)))
            .clone()
    }

    /// A slot at once, if the tenant has one free.
    pub fn try_take(&self, tenant_id: &str) -> Option<TenantSlot> {
        self.semaphore(tenant_id).try_acquire_owned().ok()
    }

    /// A slot within `wait`, or 503 with `Retry-After`.
    pub async fn take(&self, tenant_id: &str, wait: Duration) -> Result<TenantSlot, ApiError> {
        match tokio::time::timeout(wait, self.semaphore(tenant_id).acquire_owned()).await {
            Ok(Ok(slot)) => Ok(slot),
            _ => Err(ApiError::unavailable(
                "tenant_busy",
                "this tenant's requests already hold their share of the database connections; retry shortly",
                1,
            )),
        }
    }
}

impl AppState {
    /// A connection from the pool, waiting at most the pool's bound: 503
    /// with `Retry-After` when none frees up in time.
    pub async fn client(&self) -> Result<PooledClient, ApiError> {
        self.pool.get().await.map_err(|error| {
            match &error {
                deadpool_postgres::PoolError::Timeout(_) => {
                    tracing::warn!("no free database connection in time")
                }
                deadpool_postgres::PoolError::Backend(backend) => match backend.as_db_error() {
                    Some(db) => tracing::error!(
                        sqlstate = db.code().code(),
                        error_message = db.message(),
                        "no database connection"
                    ),
                    None => tracing::error!(error = %backend, "no database connection"),
                },
                _ => tracing::error!(error = %error, "no database connection"),
            }
            ApiError::unavailable(
                "database_unavailable",
                "the database is unavailable; retry shortly",
                5,
            )
        })
    }
}

/// Which endpoints a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoints {
    /// Everything: the API, webhooks, health and metrics.
    All,
    /// Everything but `/metrics`, which an admin listener serves instead.
    Public,
    /// `/healthz`, `/readyz` and `/metrics` only: the admin listener.
    Admin,
}

pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    router_for(state, max_body_bytes, Endpoints::All)
}

pub fn router_for(state: AppState, max_body_bytes: usize, endpoints: Endpoints) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz));
    if endpoints != Endpoints::Public {
        router = router.route("/metrics", get(health::metrics));
    }
    if endpoints != Endpoints::Admin {
        router = router
            .route("/webhooks/stripe", post(webhooks::stripe))
            .route("/webhooks/paddle", post(webhooks::paddle))
            .route("/v1/usage", get(tenant_api::usage))
            .route("/v1/usage/{metric}/check", post(tenant_api::check))
            .route("/v1/usage/{metric}/decrement", post(tenant_api::decrement))
            .route("/v1/plan/validate", post(tenant_api::validate_plan));
    }
    router
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), bound))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

/// End a request that outlives its bound: 503 with `Retry-After`.
async fn bound(State(state): State<AppState>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(state.timeouts.request, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!("a request ran past its time and was ended");
            ApiError::unavailable(
                "request_timeout",
                "the request took too long; retry shortly",
                1,
            )
            .into_response()
        }
    }
}

/// Serve `app` on `listener` until `shutdown`, then finish the requests in
/// flight. Each connection must send a request's headers within
/// `header_timeout` (else it is closed); bodies and whole requests are
/// bounded by the router's own layers.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, say: pause rather than spin.
                    tracing::warn!(error = %error, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        while connections.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let service = hyper_util::service::TowerToHyperService::new(app.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout);
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            tokio::pin!(connection);
            tokio::select! {
                result = connection.as_mut() => {
                    if let Err(error) = result {
                        tracing::debug!(error = %error, "connection ended");
                    }
                }
                () = shutdown.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
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

/// `bytes` as the JSON `T`; blank reads as `{}`.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
    };
    serde_json::from_slice(bytes).map_err(|error| {
        ApiError::bad_request(
            "malformed_json",
            format!("the body is not the JSON expected: {error}"),
        )
    })
}

/// The raw body, as it came (webhook signatures cover exactly these
/// bytes), with errors in the API's shape.
pub struct RawBody(pub Bytes);

impl FromRequest<AppState> for RawBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, ApiError> {
        read_body(request, state).await.map(RawBody)
    }
}

/// The raw body: 413 past the size limit, 408 when it does not arrive in
/// time. No database connection is held while it is read.
pub async fn read_body(request: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let read = Bytes::from_request(request, state);
    let Ok(read) = tokio::time::timeout(state.timeouts.body_read, read).await else {
        return Err(ApiError::new(
            axum::http::StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "the request body did not arrive in time",
        ));
    };
    read.map_err(|rejection| {
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
