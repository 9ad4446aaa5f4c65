//! tallyd: the daemon and operator tool next to tally's Postgres extension.
//! It holds no quota logic of its own: it verifies, translates and calls the
//! extension's SQL API.

pub mod api_keys;
pub mod cli;
pub mod db;
pub mod events;
pub mod http;
pub mod metrics;
pub mod plans_file;
pub mod signature;
pub mod telemetry;

use std::sync::Arc;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::signature::Secrets;

/// The extension version this build of tallyd speaks to.
pub const EXTENSION_VERSION: &str = "0.3.0";

/// How `serve` runs. Secrets and the database URL never print.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    pub stripe_webhook_secrets: Secrets,
    pub paddle_webhook_secrets: Secrets,
    pub max_body_bytes: usize,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("pool_size", &self.pool_size)
            .field("stripe_webhook_secrets", &self.stripe_webhook_secrets)
            .field("paddle_webhook_secrets", &self.paddle_webhook_secrets)
            .field("max_body_bytes", &self.max_body_bytes)
            .finish_non_exhaustive()
    }
}

/// Serve HTTP on `listener` until `shutdown` is cancelled, then finish the
/// requests in flight and return.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    let pool = db::pool(&config.database_url, config.pool_size)?;
    let state = http::AppState {
        pool,
        stripe_secrets: config.stripe_webhook_secrets,
        paddle_secrets: config.paddle_webhook_secrets,
        metrics: Arc::new(metrics::Metrics::new()),
    };
    let app = http::router(state, config.max_body_bytes);
    tracing::info!(address = %listener.local_addr()?, "tallyd listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await?;
    tracing::info!("tallyd stopped");
    Ok(())
}
