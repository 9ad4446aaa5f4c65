//! The usage-report worker: claims reports from the queue in Postgres and
//! sends each to Stripe as a Billing Meter event, with bounded concurrency
//! and a client-side rate limit. Any number of workers may run, on any
//! number of machines: claims never overlap, and the queue owns retries.
//!
//! On shutdown it stops claiming and starting sends, and waits for the sends
//! in flight to finish and be recorded. Reports claimed but not started are
//! left to their lease, which lapses; a worker that dies leaves the same.
//! Nothing is lost either way: a report is only completed after Stripe took
//! it, and a report sent but not recorded is sent again with the same
//! identifier, which Stripe counts once.

pub mod limiter;
pub mod stripe;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::db::reports as db;
use crate::db::Pool;
use crate::metrics::{Metrics, OutcomeLabels};
use limiter::RateLimiter;
use stripe::{MeterClient, Report, Verdict};

#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Reports claimed at a time.
    pub batch: i32,
    /// How long a claim holds its reports.
    pub lease: Duration,
    /// Sends in flight at most.
    pub concurrency: usize,
    /// Sends started per second at most.
    pub rate: f64,
    /// Pause before looking again when the queue is empty.
    pub poll_interval: Duration,
}

impl WorkerConfig {
    /// The defaults, here once: `tallyd serve` and `tallyd worker` show and
    /// use them for the flags not given.
    pub const DEFAULT: WorkerConfig = WorkerConfig {
        batch: 100,
        lease: Duration::from_secs(60),
        concurrency: 16,
        rate: 800.0,
        poll_interval: Duration::from_millis(250),
    };
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig::DEFAULT
    }
}

/// Run until `shutdown` is cancelled, then finish the sends in flight.
pub async fn run(
    pool: Pool,
    client: MeterClient,
    config: WorkerConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let limiter = Arc::new(RateLimiter::new(config.rate));
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut in_flight = JoinSet::new();
    tracing::info!(
        rate = config.rate,
        concurrency = config.concurrency,
        batch = config.batch,
        "usage-report worker started"
    );
    'claiming: while !shutdown.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        let claimed = match pool.get().await {
            Ok(connection) => db::claim(&connection, config.batch, config.lease)
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(error.into()),
        };
        let reports = match claimed {
            Ok(reports) => reports,
            Err(error) => {
                tracing::error!(error = %error, "claiming usage reports failed; retrying");
                Vec::new()
            }
        };
        if reports.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval) => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        for report in reports {
            let slot = tokio::select! {
                slot = slots.clone().acquire_owned() => slot?,
                _ = shutdown.cancelled() => break 'claiming,
            };
            let (pool, client, limiter, metrics, shutdown) = (
                pool.clone(),
                client.clone(),
                limiter.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            in_flight.spawn(async move {
                // A report that cannot be sent is decided before it waits
                // for the rate limit, and takes no share of it.
                let verdict = match stripe::precheck(&report, Utc::now()) {
                    Err(verdict) => verdict,
                    Ok(customer) => {
                        // Not started yet: a shutdown leaves it to its lease.
                        tokio::select! {
                            _ = limiter.acquire() => {}
                            _ = shutdown.cancelled() => return,
                        }
                        let started = std::time::Instant::now();
                        let verdict = stripe::send(&client, &report, customer).await;
                        metrics
                            .report_send_seconds
                            .observe(started.elapsed().as_secs_f64());
                        verdict
                    }
                };
                if let Verdict::Transient {
                    retry_after: Some(after),
                    ..
                } = &verdict
                {
                    limiter.hold_until(tokio::time::Instant::now() + *after);
                }
                record(&pool, &metrics, &report, verdict).await;
                drop(slot);
            });
        }
    }
    let waiting = in_flight.len();
    if waiting > 0 {
        tracing::info!(
            sends = waiting,
            "worker stopping: finishing the sends in flight"
        );
    }
    while in_flight.join_next().await.is_some() {}
    tracing::info!("usage-report worker stopped");
    Ok(())
}

/// Record a verdict. If that fails, the report's lease lapses and it is sent
/// again, which Stripe counts once (same identifier).
async fn record(pool: &Pool, metrics: &Metrics, report: &Report, verdict: Verdict) {
    let outcome = match &verdict {
        Verdict::Sent => "sent",
        Verdict::Transient { .. } => "transient",
        Verdict::Permanent { .. } => "permanent",
    };
    metrics
        .report_sends
        .get_or_create(&OutcomeLabels {
            outcome: outcome.into(),
        })
        .inc();
    let recorded = async {
        let connection = pool.get().await.map_err(anyhow::Error::from)?;
        match &verdict {
            Verdict::Sent => db::complete(&connection, report.id).await?,
            Verdict::Transient { error, retry_after } => {
                tracing::info!(report_id = report.id, tenant_id = %report.tenant_id, attempt = report.attempts, error = %error, "usage report will be retried");
                db::fail(&connection, report.id, error, false, *retry_after).await?
            }
            Verdict::Permanent { error } => {
                tracing::warn!(report_id = report.id, tenant_id = %report.tenant_id, error = %error, "usage report failed for good");
                db::fail(&connection, report.id, error, true, None).await?
            }
        }
        anyhow::Ok(())
    };
    if let Err(error) = recorded.await {
        tracing::error!(report_id = report.id, outcome, error = %error, "could not record a usage report's outcome");
    }
}
