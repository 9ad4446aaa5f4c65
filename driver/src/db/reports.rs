//! SQL behind the usage-report worker and `tallyd reports`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{execute, query, query_one, Client, Error};

use crate::worker::stripe::Report;

/// Claim up to `batch` due reports for `lease`.
pub async fn claim(client: &Client, batch: i32, lease: Duration) -> Result<Vec<Report>, Error> {
    let rows = query(
        client,
        "SELECT id, tenant_id, event_name, units, identifier, stripe_customer_id, created_at, attempts,
                lease_token::text, sends
               FROM tally.claim_usage_reports($1, make_interval(secs => $2))",
        &[&batch, &lease.as_secs_f64()],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| Report {
            id: row.get(0),
            tenant_id: row.get(1),
            event_name: row.get(2),
            units: row.get(3),
            identifier: row.get(4),
            stripe_customer_id: row.get(5),
            created_at: row.get(6),
            attempts: row.get(7),
            lease_token: row.get(8),
            sends: row.get(9),
        })
        .collect())
}

/// The report was sent (addressed by tenant and id, so a distributed tally
/// finds it on its tenant's node). Refused (`usage report lease lost`) when the report
/// was claimed again since `report`'s claim.
pub async fn complete(client: &Client, report: &Report) -> Result<(), Error> {
    execute(
        client,
        "SELECT tally.complete_usage_report($1, $2, $3::text::uuid)",
        &[&report.tenant_id, &report.id, &report.lease_token],
    )
    .await?;
    Ok(())
}

/// Sending the report failed. Refused (`usage report lease lost`) when the
/// report was claimed again since `report`'s claim.
pub async fn fail(
    client: &Client,
    report: &Report,
    error: &str,
    permanent: bool,
    retry_after: Option<Duration>,
) -> Result<(), Error> {
    let retry_after = retry_after
        .filter(|after| !after.is_zero())
        .map(|after| after.as_secs_f64());
    execute(
        client,
        "SELECT tally.fail_usage_report($1, $2, $3::text::uuid, $4, $5, make_interval(secs => $6))",
        &[
            &report.tenant_id,
            &report.id,
            &report.lease_token,
            &error,
            &permanent,
            &retry_after,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct QueueStats {
    pub pending: i64,
    pub leased: i64,
    pub due: i64,
    pub failed: i64,
    pub oldest_pending_seconds: Option<f64>,
}

pub async fn stats(client: &Client) -> Result<QueueStats, Error> {
    let row = query_one(
        client,
        "SELECT pending, leased, due, failed, extract(epoch FROM oldest_pending_age)::float8
               FROM tally.usage_report_stats()",
        &[],
    )
    .await?;
    Ok(QueueStats {
        pending: row.get(0),
        leased: row.get(1),
        due: row.get(2),
        failed: row.get(3),
        oldest_pending_seconds: row.get(4),
    })
}

#[derive(Debug, Clone)]
pub struct FailedReport {
    pub id: i64,
    pub tenant_id: String,
    pub metric: String,
    pub units: i64,
    pub attempts: i32,
    /// Claims ever made of it, requeues included.
    pub sends: i32,
    pub first_claimed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
    pub last_error: Option<String>,
}

/// Failed reports, newest first.
pub async fn failed(client: &Client, limit: i64) -> Result<Vec<FailedReport>, Error> {
    let rows = query(
        client,
        "SELECT id, tenant_id, metric, units, attempts, failed_at, last_error, sends, first_claimed_at
               FROM tally.usage_reports WHERE status = 'failed'
              ORDER BY failed_at DESC, id DESC LIMIT $1",
        &[&limit],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| FailedReport {
            id: row.get(0),
            tenant_id: row.get(1),
            metric: row.get(2),
            units: row.get(3),
            attempts: row.get(4),
            failed_at: row.get(5),
            last_error: row.get(6),
            sends: row.get(7),
            first_claimed_at: row.get(8),
        })
        .collect())
}

/// Put failed reports back in the queue: these ids, or all of them. Unless
/// `allow_resend_after_24h`, refused (`usage reports may be billed twice`)
/// when one of them was first claimed 24 hours or more ago.
pub async fn requeue(
    client: &Client,
    ids: Option<&[i64]>,
    allow_resend_after_24h: bool,
) -> Result<i64, Error> {
    let row = query_one(
        client,
        "SELECT tally.requeue_failed_usage_reports($1, $2)",
        &[&ids, &allow_resend_after_24h],
    )
    .await?;
    Ok(row.get(0))
}
