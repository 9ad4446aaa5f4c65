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

pub mod alerts;
pub mod limiter;
pub mod stripe;
pub mod webhook;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
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

/// The longest the worker waits for the database: for a connection from its
/// pool, to connect, and for a statement (claims skip locked rows; settling
/// one report locks one row).
pub const DB_WAIT: Duration = Duration::from_secs(10);

/// The share of the lease within which a claimed report must be able to
/// start: the worker claims no more reports than it has free send slots
/// and rate-limit starts in this window, so a claimed report never waits
/// for its turn past its lease, however slow Stripe is.
const START_WINDOW_DIVISOR: u32 = 4;

/// Run until `shutdown` is cancelled, then finish the sends in flight.
///
/// Leases and sends: a claim takes only what can start at once (free send
/// slots) and within a quarter of the lease (the rate limit's free starts),
/// a report whose start is held back (by a `Retry-After`) past half its
/// lease is put back in the queue instead of being sent late, and a send
/// that has not been answered when its lease is about to lapse is given up
/// as a timeout. So no report is sent after its lease lapsed, when another
/// worker may hold it; and if one ever is, its outcome is refused by the
/// queue (the lease token no longer matches) and only logged.
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
    let start_window = config.lease / START_WINDOW_DIVISOR;
    // A Retry-After holds every start for this long at most: the report
    // that got it waits its full (bounded) Retry-After in the queue, the
    // others are not held past their leases.
    let max_hold = start_window;
    tracing::info!(
        rate = config.rate,
        concurrency = config.concurrency,
        batch = config.batch,
        "usage-report worker started"
    );
    while !shutdown.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        if slots.available_permits() == 0 {
            // Wait for a send to finish.
            tokio::select! {
                slot = slots.clone().acquire_owned() => drop(slot?),
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let wanted = slots
            .available_permits()
            .min(limiter.starts_within(start_window))
            .min(usize::try_from(config.batch).unwrap_or(1));
        if wanted == 0 {
            // Starts are held (Retry-After) or booked for the whole window.
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval.min(start_window)) => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        let claimed_at = Instant::now();
        let claimed = match pool.get().await {
            Ok(connection) => db::claim(&connection, wanted as i32, config.lease)
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
        // Deadlines from before the claim, so they come before the lease's
        // end in the database; a margin of a tenth is left for the answer.
        let latest_start = claimed_at.checked_add(config.lease / 2);
        let deadline = claimed_at.checked_add(config.lease / 10 * 9);
        let (Some(latest_start), Some(deadline)) = (latest_start, deadline) else {
            anyhow::bail!("the worker's lease is too long");
        };
        for report in reports {
            // Only this loop takes slots, and it claimed no more than were free.
            let slot = slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| anyhow::anyhow!("a send slot the claim counted on was taken"))?;
            let start_at = limiter.reserve();
            let (pool, client, limiter, metrics, shutdown) = (
                pool.clone(),
                client.clone(),
                limiter.clone(),
                metrics.clone(),
                shutdown.clone(),
            );
            let lease = Lease {
                start_at,
                latest_start,
                deadline,
            };
            in_flight.spawn(async move {
                let verdict =
                    match attempt(&client, &limiter, &metrics, &report, lease, &shutdown).await {
                        Some(verdict) => verdict,
                        // Not started: a shutdown leaves it to its lease.
                        None => return,
                    };
                if let Verdict::Transient {
                    retry_after: Some(after),
                    ..
                } = &verdict
                {
                    let now = tokio::time::Instant::now();
                    if let Some(until) = now.checked_add((*after).min(max_hold)) {
                        limiter.hold_until(until);
                    }
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

/// When a claimed report starts and must be done.
#[derive(Clone, Copy)]
struct Lease {
    /// Its rate-limit slot.
    start_at: Instant,
    /// Not started by then (a Retry-After held it): put back instead.
    latest_start: Instant,
    /// An answer not in by then is given up as a timeout.
    deadline: Instant,
}

/// Try to send one report: its verdict, or None when a shutdown came first
/// (the report is left to its lease).
async fn attempt(
    client: &MeterClient,
    limiter: &RateLimiter,
    metrics: &Metrics,
    report: &Report,
    lease: Lease,
    shutdown: &CancellationToken,
) -> Option<Verdict> {
    // A report that cannot be sent is decided before it waits for the rate
    // limit.
    let customer = match stripe::precheck(report, Utc::now()) {
        Err(verdict) => return Some(verdict),
        Ok(customer) => customer,
    };
    let mut start = lease.start_at;
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(start) => {}
            _ = shutdown.cancelled() => return None,
        }
        match limiter.held_until() {
            None => break,
            Some(until) if until <= lease.latest_start => start = until,
            Some(until) => {
                let wait = until.saturating_duration_since(Instant::now());
                return Some(Verdict::Transient {
                    error: format!(
                        "not sent: Stripe asked to wait {} s, past this claim's lease",
                        wait.as_secs()
                    ),
                    retry_after: Some(wait),
                });
            }
        }
    }
    let started = std::time::Instant::now();
    let verdict =
        match tokio::time::timeout_at(lease.deadline, stripe::send(client, report, customer)).await
        {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Transient {
                error: "no answer from Stripe before the claim's lease ran out".into(),
                retry_after: None,
            },
        };
    metrics
        .report_send_seconds
        .observe(started.elapsed().as_secs_f64());
    Some(verdict)
}

/// Record a verdict with the claim's lease token. If that fails, the
/// report's lease lapses and it is sent again, which Stripe counts once
/// (same identifier). If the report was claimed again meanwhile, the queue
/// refuses the outcome: the new holder settles it.
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
            Verdict::Sent => db::complete(&connection, report).await?,
            Verdict::Transient { error, retry_after } => {
                tracing::info!(report_id = report.id, tenant_id = %report.tenant_id, attempt = report.attempts, error = %error, "usage report will be retried");
                db::fail(&connection, report, error, false, *retry_after).await?
            }
            Verdict::Permanent { error } => {
                tracing::warn!(report_id = report.id, tenant_id = %report.tenant_id, error = %error, "usage report failed for good");
                db::fail(&connection, report, error, true, None).await?
            }
        }
        anyhow::Ok(())
    };
    if let Err(error) = recorded.await {
        let lease_lost = error
            .downcast_ref::<crate::db::Error>()
            .and_then(crate::db::Error::message)
            == Some(tally_rules::errors::message::LEASE_LOST);
        if lease_lost {
            tracing::warn!(report_id = report.id, outcome, "usage report's lease was lost to another claim: its outcome is dropped, the new holder settles it");
        } else {
            tracing::error!(report_id = report.id, outcome, error = %error, "could not record a usage report's outcome");
        }
    }
}
