//! SQL behind the alert delivery worker and `tallyd alerts`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::{execute, query, query_one, Client, Error};

use crate::worker::webhook::AlertData;

/// A claimed alert.
#[derive(Debug, Clone)]
pub struct Alert {
    pub id: i64,
    /// Its webhook-id, the same on every delivery.
    pub identifier: String,
    pub attempts: i32,
    pub lease_token: String,
    pub data: AlertData,
}

/// Claim up to `batch` due alerts for `lease`.
pub async fn claim(client: &Client, batch: i32, lease: Duration) -> Result<Vec<Alert>, Error> {
    let rows = query(
        client,
        "SELECT id, identifier, tenant_id, metric, percent, threshold, used, max_units,
                period_start, period_end, created_at, attempts, lease_token::text
           FROM tally.claim_alerts($1, make_interval(secs => $2))",
        &[&batch, &lease.as_secs_f64()],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| Alert {
            id: row.get(0),
            identifier: row.get(1),
            attempts: row.get(11),
            lease_token: row.get(12),
            data: AlertData {
                tenant_id: row.get(2),
                metric: row.get(3),
                threshold: row.get(4),
                threshold_units: row.get(5),
                used: row.get(6),
                limit: row.get(7),
                period_start: row.get(8),
                period_end: row.get(9),
                created_at: row.get(10),
            },
        })
        .collect())
}

/// Every endpoint took the alert (addressed by tenant and id, so a
/// distributed tally finds it on its tenant's node). Refused (`alert lease lost`) when the
/// alert was claimed again since.
pub async fn complete(client: &Client, alert: &Alert) -> Result<(), Error> {
    execute(
        client,
        "SELECT tally.complete_alert($1, $2, $3::text::uuid)",
        &[&alert.data.tenant_id, &alert.id, &alert.lease_token],
    )
    .await?;
    Ok(())
}

/// Delivering the alert failed. Refused (`alert lease lost`) when the alert
/// was claimed again since.
pub async fn fail(
    client: &Client,
    alert: &Alert,
    error: &str,
    retry_after: Option<Duration>,
) -> Result<(), Error> {
    let retry_after = retry_after
        .filter(|after| !after.is_zero())
        .map(|after| after.as_secs_f64());
    execute(
        client,
        "SELECT tally.fail_alert($1, $2, $3::text::uuid, $4, false, make_interval(secs => $5))",
        &[
            &alert.data.tenant_id,
            &alert.id,
            &alert.lease_token,
            &error,
            &retry_after,
        ],
    )
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq)]
pub struct AlertStats {
    pub pending: i64,
    pub leased: i64,
    pub due: i64,
    pub failed: i64,
    pub completed: i64,
}

pub async fn stats(client: &Client) -> Result<AlertStats, Error> {
    let row = query_one(
        client,
        "SELECT pending, leased, due, failed, completed FROM tally.alert_stats()",
        &[],
    )
    .await?;
    Ok(AlertStats {
        pending: row.get(0),
        leased: row.get(1),
        due: row.get(2),
        failed: row.get(3),
        completed: row.get(4),
    })
}

/// One alert as `tallyd alerts` lists it.
#[derive(Debug, Clone)]
pub struct ListedAlert {
    pub id: i64,
    pub tenant_id: String,
    pub metric: String,
    pub percent: i32,
    pub used: i64,
    pub max_units: i64,
    pub status: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub last_error: Option<String>,
}

/// The newest alerts, newest first (an admin reads tally.alerts).
pub async fn list(client: &Client, limit: i64) -> Result<Vec<ListedAlert>, Error> {
    let rows = query(
        client,
        "SELECT id, tenant_id, metric, percent, used, max_units, status, attempts, created_at,
                last_error
           FROM tally.alerts ORDER BY id DESC LIMIT $1",
        &[&limit],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|row| ListedAlert {
            id: row.get(0),
            tenant_id: row.get(1),
            metric: row.get(2),
            percent: row.get(3),
            used: row.get(4),
            max_units: row.get(5),
            status: row.get(6),
            attempts: row.get(7),
            created_at: row.get(8),
            last_error: row.get(9),
        })
        .collect())
}

/// Put failed alerts back in the queue: these ids, or all of them.
pub async fn requeue(client: &Client, ids: Option<&[i64]>) -> Result<i64, Error> {
    let row = query_one(client, "SELECT tally.requeue_failed_alerts($1)", &[&ids]).await?;
    Ok(row.get(0))
}
