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
pub mod worker;

use std::sync::Arc;

use anyhow::Result;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::signature::Secrets;

/// The extension version this build of tallyd speaks to: the workspace has
/// one version, so it is this crate's own.
pub const EXTENSION_VERSION: &str = env!("CARGO_PKG_VERSION");

/// How `serve` runs. Secrets and the database URL never print.
#[derive(Clone)]
pub struct Config {
    pub database_url: String,
    pub pool_size: usize,
    pub stripe_webhook_secrets: Secrets,
    pub paddle_webhook_secrets: Secrets,
    pub max_body_bytes: usize,
    /// Run even if the database role is a superuser (it should be a role
    /// granted `tally_daemon`).
    pub allow_superuser: bool,
    /// Which checkout references webhooks trust, and how long events for
    /// unlinked customers are retried.
    pub billing: db::events::BillingConfig,
    /// The usage-report worker, if this server runs one.
    pub worker: Option<(worker::stripe::MeterClient, worker::WorkerConfig)>,
    /// How long each stage of a request, and each database wait, may take.
    pub timeouts: http::Timeouts,
    /// The alert worker, if this server runs one.
    pub alerts: Option<worker::alerts::AlertConfig>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("pool_size", &self.pool_size)
            .field("stripe_webhook_secrets", &self.stripe_webhook_secrets)
            .field("paddle_webhook_secrets", &self.paddle_webhook_secrets)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("allow_superuser", &self.allow_superuser)
            .field("billing", &self.billing)
            .field("worker", &self.worker)
            .field("timeouts", &self.timeouts)
            .field("alerts", &self.alerts)
            .finish_non_exhaustive()
    }
}

/// Serve HTTP on `listener`, and run the usage-report worker if configured,
/// until `shutdown` is cancelled; then finish the requests and sends in
/// flight and return. A superuser connection is refused unless
/// `allow_superuser`.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
    run_with_admin(config, listener, None, shutdown).await
}

/// [`run`], with `/metrics`, `/readyz` and `/healthz` also on an admin
/// listener when one is given; `/metrics` then leaves the main listener.
pub async fn run_with_admin(
    config: Config,
    listener: TcpListener,
    admin: Option<TcpListener>,
    shutdown: CancellationToken,
) -> Result<()> {
    let timeouts = config.timeouts;
    let pool = db::bounded_pool(
        &config.database_url,
        config.pool_size,
        config.allow_superuser,
        timeouts.waits(),
    )?;
    db::refuse_superuser(&pool, config.allow_superuser).await?;
    let metrics = Arc::new(metrics::Metrics::new());
    let state = http::AppState {
        pool: pool.clone(),
        stripe_secrets: config.stripe_webhook_secrets,
        paddle_secrets: config.paddle_webhook_secrets,
        metrics: metrics.clone(),
        billing: config.billing,
        timeouts,
        tenant_slots: http::TenantSlots::for_pool(config.pool_size),
    };
    // The worker has a pool of its own: slow requests cannot starve it.
    let worker = match config.worker {
        Some((client, worker_config)) => {
            let worker_pool = db::worker_pool(
                &config.database_url,
                worker_config.concurrency + 1,
                config.allow_superuser,
                worker::DB_WAIT,
            )?;
            Some(tokio::spawn(worker::run(
                worker_pool,
                client,
                worker_config,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let alerts = match config.alerts {
        Some(alert_config) => {
            let alert_pool = db::worker_pool(
                &config.database_url,
                alert_config.concurrency + 1,
                config.allow_superuser,
                worker::DB_WAIT,
            )?;
            Some(tokio::spawn(worker::alerts::run(
                alert_pool,
                alert_config,
                state.metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let endpoints = match admin {
        Some(_) => http::Endpoints::Public,
        None => http::Endpoints::All,
    };
    let app = http::router_for(state.clone(), config.max_body_bytes, endpoints);
    tracing::info!(address = %listener.local_addr()?, "tallyd listening");
    let admin = match admin {
        Some(admin) => {
            tracing::info!(address = %admin.local_addr()?, "tallyd admin endpoints listening");
            let app = http::router_for(state, config.max_body_bytes, http::Endpoints::Admin);
            Some(tokio::spawn(http::serve(
                admin,
                app,
                timeouts.header_read,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    http::serve(listener, app, timeouts.header_read, shutdown.clone()).await;
    // The server only stops on shutdown; make sure the worker hears it too.
    shutdown.cancel();
    if let Some(admin) = admin {
        admin.await?;
    }
    if let Some(worker) = worker {
        worker.await??;
    }
    if let Some(alerts) = alerts {
        alerts.await??;
    }
    tracing::info!("tallyd stopped");
    Ok(())
}

/// Run the usage-report worker alone until `shutdown` is cancelled. A
/// superuser connection is refused unless `allow_superuser`.
pub async fn run_worker(
    database_url: &str,
    allow_superuser: bool,
    client: worker::stripe::MeterClient,
    config: worker::WorkerConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    run_workers(
        database_url,
        allow_superuser,
        Some((client, config)),
        None,
        shutdown,
    )
    .await
}

/// Run the usage-report worker and the alert worker, each if configured,
/// until `shutdown` is cancelled.
pub async fn run_workers(
    database_url: &str,
    allow_superuser: bool,
    reports: Option<(worker::stripe::MeterClient, worker::WorkerConfig)>,
    alerts: Option<worker::alerts::AlertConfig>,
    shutdown: CancellationToken,
) -> Result<()> {
    let metrics = Arc::new(metrics::Metrics::new());
    let reports = match reports {
        Some((client, config)) => {
            let pool = db::worker_pool(
                database_url,
                config.concurrency + 1,
                allow_superuser,
                worker::DB_WAIT,
            )?;
            db::refuse_superuser(&pool, allow_superuser).await?;
            Some(tokio::spawn(worker::run(
                pool,
                client,
                config,
                metrics.clone(),
                shutdown.clone(),
            )))
        }
        None => None,
    };
    let alerts = match alerts {
        Some(config) => {
            let pool = db::worker_pool(
                database_url,
                config.concurrency + 1,
                allow_superuser,
                worker::DB_WAIT,
            )?;
            db::refuse_superuser(&pool, allow_superuser).await?;
            Some(tokio::spawn(worker::alerts::run(
                pool,
                config,
                metrics,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    if let Some(reports) = reports {
        reports.await??;
    }
    if let Some(alerts) = alerts {
        alerts.await??;
    }
    Ok(())
}
