//! The alert worker: claims threshold alerts from their queue in Postgres
//! and delivers each to every configured endpoint as a Standard Webhook
//! ([`super::webhook`]), with bounded concurrency, beside the usage-report
//! worker and with the same queue discipline: leases with tokens, backoff,
//! failures kept, requeue from the CLI.
//!
//! An alert is completed once every endpoint answered 2xx. Any other answer
//! (or none before the lease's deadline) is a transient failure: the queue
//! retries the alert after a backoff (or the endpoint's `Retry-After`, when
//! longer) and, after `tally.report_max_attempts` attempts, keeps it as
//! `failed`. A retry goes to every endpoint again with the same `webhook-id`,
//! by which a receiver deduplicates. On shutdown the deliveries in flight
//! finish and are recorded; alerts claimed and not started are left to
//! their lease.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::stripe::parse_retry_after;
use super::webhook::{self, WebhookSecret};
use crate::db::alerts::{self as db, Alert};
use crate::db::Pool;
use crate::metrics::{Metrics, OutcomeLabels};

#[derive(Debug, Clone)]
pub struct AlertConfig {
    /// Where every alert goes (http or https).
    pub endpoints: Vec<reqwest::Url>,
    pub secret: WebhookSecret,
    /// Time allowed for one endpoint to answer.
    pub timeout: Duration,
    /// Alerts claimed at a time.
    pub batch: i32,
    /// How long a claim holds its alerts.
    pub lease: Duration,
    /// Deliveries in flight at most.
    pub concurrency: usize,
    /// Pause before looking again when the queue is empty.
    pub poll_interval: Duration,
}

impl AlertConfig {
    /// A configuration with the usage-report worker's queue settings.
    pub fn new(
        endpoints: Vec<reqwest::Url>,
        secret: WebhookSecret,
        timeout: Duration,
    ) -> AlertConfig {
        let defaults = super::WorkerConfig::DEFAULT;
        AlertConfig {
            endpoints,
            secret,
            timeout,
            batch: defaults.batch,
            lease: defaults.lease,
            concurrency: defaults.concurrency,
            poll_interval: defaults.poll_interval,
        }
    }
}

/// The HTTP client deliveries use: no redirects followed, a bounded wait.
pub fn http_client(timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .build()?)
}

/// What became of one delivery.
#[derive(Debug)]
enum Verdict {
    Delivered,
    Failed {
        error: String,
        retry_after: Option<Duration>,
    },
}

/// Run until `shutdown` is cancelled, then finish the deliveries in flight.
pub async fn run(
    pool: Pool,
    config: AlertConfig,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let http = http_client(config.timeout)?;
    let config = Arc::new(config);
    let slots = Arc::new(Semaphore::new(config.concurrency));
    let mut in_flight = JoinSet::new();
    tracing::info!(endpoints = config.endpoints.len(), "alert worker started");
    while !shutdown.is_cancelled() {
        while in_flight.try_join_next().is_some() {}
        if slots.available_permits() == 0 {
            tokio::select! {
                slot = slots.clone().acquire_owned() => drop(slot?),
                _ = shutdown.cancelled() => break,
            }
            continue;
        }
        let wanted = slots
            .available_permits()
            .min(usize::try_from(config.batch).unwrap_or(1));
        let claimed_at = Instant::now();
        let claimed = match pool.get().await {
            Ok(connection) => db::claim(&connection, wanted as i32, config.lease)
                .await
                .map_err(anyhow::Error::from),
            Err(error) => Err(error.into()),
        };
        let alerts = match claimed {
            Ok(alerts) => alerts,
            Err(error) => {
                tracing::error!(error = %error, "claiming alerts failed; retrying");
                Vec::new()
            }
        };
        if alerts.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval) => continue,
                _ = shutdown.cancelled() => break,
            }
        }
        // Answers not in by nine tenths of the lease are given up, so an
        // outcome is recorded while the claim still holds.
        let Some(deadline) = claimed_at.checked_add(config.lease / 10 * 9) else {
            anyhow::bail!("the alert worker's lease is too long");
        };
        for alert in alerts {
            let slot = slots
                .clone()
                .try_acquire_owned()
                .map_err(|_| anyhow::anyhow!("a delivery slot the claim counted on was taken"))?;
            let (pool, http, config, metrics) =
                (pool.clone(), http.clone(), config.clone(), metrics.clone());
            in_flight.spawn(async move {
                let started = std::time::Instant::now();
                let verdict = match tokio::time::timeout_at(
                    deadline,
                    deliver(&http, &config, &alert),
                )
                .await
                {
                    Ok(verdict) => verdict,
                    Err(_) => Verdict::Failed {
                        error: "no answer before the claim's lease ran out".into(),
                        retry_after: None,
                    },
                };
                metrics
                    .alert_delivery_seconds
                    .observe(started.elapsed().as_secs_f64());
                record(&pool, &metrics, &alert, verdict).await;
                drop(slot);
            });
        }
    }
    while in_flight.join_next().await.is_some() {}
    tracing::info!("alert worker stopped");
    Ok(())
}

/// Deliver one alert to every endpoint, signed afresh for this attempt.
async fn deliver(http: &reqwest::Client, config: &AlertConfig, alert: &Alert) -> Verdict {
    let body = webhook::body(&alert.data);
    let timestamp = chrono::Utc::now().timestamp();
    let signature = config.secret.sign(&alert.identifier, timestamp, &body);
    let mut errors = Vec::new();
    let mut retry_after: Option<Duration> = None;
    for (index, endpoint) in config.endpoints.iter().enumerate() {
        let sent = http
            .post(endpoint.clone())
            .header("content-type", "application/json")
            .header("webhook-id", &alert.identifier)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", &signature)
            .body(body.clone())
            .send()
            .await;
        // Endpoints are named by position: a URL may carry a token.
        match sent {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => {
                // Seconds or an HTTP date, at most an hour: as from Stripe.
                let after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|value| value.to_str().ok())
                    .and_then(|value| parse_retry_after(value, chrono::Utc::now()));
                retry_after = retry_after.max(after);
                errors.push(format!(
                    "endpoint {} answered {}",
                    index + 1,
                    response.status().as_u16()
                ));
            }
            Err(error) => errors.push(format!("endpoint {}: {}", index + 1, error.without_url())),
        }
    }
    if errors.is_empty() {
        Verdict::Delivered
    } else {
        Verdict::Failed {
            error: errors.join("; "),
            retry_after,
        }
    }
}

/// Record a verdict with the claim's lease token. If that fails, the lease
/// lapses and the alert is delivered again, with the same webhook-id.
async fn record(pool: &Pool, metrics: &Metrics, alert: &Alert, verdict: Verdict) {
    let outcome = match &verdict {
        Verdict::Delivered => "delivered",
        Verdict::Failed { .. } => "failed",
    };
    metrics
        .alert_deliveries
        .get_or_create(&OutcomeLabels {
            outcome: outcome.into(),
        })
        .inc();
    let recorded = async {
        let connection = pool.get().await.map_err(anyhow::Error::from)?;
        match &verdict {
            Verdict::Delivered => db::complete(&connection, alert).await?,
            Verdict::Failed { error, retry_after } => {
                tracing::info!(alert_id = alert.id, tenant_id = %alert.data.tenant_id, attempt = alert.attempts, error = %error, "alert delivery will be retried");
                db::fail(&connection, alert, error, *retry_after).await?
            }
        }
        anyhow::Ok(())
    };
    if let Err(error) = recorded.await {
        let lease_lost = error
            .downcast_ref::<crate::db::Error>()
            .and_then(crate::db::Error::message)
            == Some(tally_rules::errors::message::ALERT_LEASE_LOST);
        if lease_lost {
            tracing::warn!(alert_id = alert.id, outcome, "alert's lease was lost to another claim: its outcome is dropped, the new holder settles it");
        } else {
            tracing::error!(alert_id = alert.id, outcome, error = %error, "could not record an alert's outcome");
        }
    }
}
