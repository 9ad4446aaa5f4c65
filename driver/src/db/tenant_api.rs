//! SQL behind the tenant API. Every call names the tenant the API key
//! belongs to; nothing here takes a tenant from the request. Statements are
//! prepared once per connection and reused, so a request costs one round
//! trip per statement and no planning.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::{query, query_one, Client, Error};

/// The tenant of an active API key, by the key's hash.
pub async fn tenant_for_key(client: &Client, key_hash: &str) -> Result<Option<String>, Error> {
    let row = query_one(client, "SELECT tally.tenant_for_api_key($1)", &[&key_hash]).await?;
    Ok(row.get(0))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub allowed: bool,
    pub used: i64,
    pub max_units: Option<i64>,
    pub remaining: Option<i64>,
    pub reason: Option<String>,
}

pub async fn check(
    client: &Client,
    tenant_id: &str,
    metric: &str,
    units: i64,
    idempotency_key: Option<&str>,
) -> Result<Check, Error> {
    let row = query_one(
        client,
        "SELECT allowed, used, max_units, remaining, reason
           FROM tally.check_and_increment_usage($1, $2, $3, $4)",
        &[&tenant_id, &metric, &units, &idempotency_key],
    )
    .await?;
    Ok(Check {
        allowed: row.get(0),
        used: row.get(1),
        max_units: row.get(2),
        remaining: row.get(3),
        reason: row.get(4),
    })
}

/// Give back `units` of an allocation, once per `idempotency_key`; the new
/// count.
pub async fn release(
    client: &Client,
    tenant_id: &str,
    metric: &str,
    units: i64,
    idempotency_key: &str,
) -> Result<i64, Error> {
    let row = query_one(
        client,
        "SELECT tally.release_usage($1, $2, $3, $4)",
        &[&tenant_id, &metric, &units, &idempotency_key],
    )
    .await?;
    Ok(row.get(0))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MetricUsage {
    pub metric: String,
    pub kind: String,
    pub used: i64,
    pub max_units: Option<i64>,
    pub remaining: Option<i64>,
    pub period_start: Option<DateTime<Utc>>,
    pub period_end: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub tenant_id: String,
    pub plan_id: String,
    pub status: String,
    pub metrics: Vec<MetricUsage>,
}

/// Where a tenant stands, as one consistent read.
pub async fn usage(client: &mut Client, tenant_id: &str) -> Result<Usage, Error> {
    let transaction = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?;
    let metrics = query(
        &transaction,
        "SELECT metric, kind, used, max_units, remaining, period_start, period_end
               FROM tally.usage_summary($1)",
        &[&tenant_id],
    )
    .await?
    .iter()
    .map(|row| MetricUsage {
        metric: row.get(0),
        kind: row.get(1),
        used: row.get(2),
        max_units: row.get(3),
        remaining: row.get(4),
        period_start: row.get(5),
        period_end: row.get(6),
    })
    .collect();
    let tenant = query_one(
        &transaction,
        "SELECT plan_id, status FROM tally.tenant_standing($1)",
        &[&tenant_id],
    )
    .await?;
    transaction.commit().await?;
    Ok(Usage {
        tenant_id: tenant_id.to_string(),
        plan_id: tenant.get(0),
        status: tenant.get(1),
        metrics,
    })
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanCheck {
    pub valid: bool,
    pub reason: Option<String>,
    pub message: String,
    pub violations: serde_json::Value,
}

pub async fn validate_plan(
    client: &Client,
    tenant_id: &str,
    plan_id: &str,
) -> Result<PlanCheck, Error> {
    let row = query_one(
        client,
        "SELECT valid, reason, message, violations FROM tally.validate_plan_change($1, $2)",
        &[&tenant_id, &plan_id],
    )
    .await?;
    Ok(PlanCheck {
        valid: row.get(0),
        reason: row.get(1),
        message: row.get(2),
        violations: row.get(3),
    })
}
