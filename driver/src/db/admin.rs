//! SQL behind the operator commands: plans files, tenants, API keys and
//! cleanup. These run once per command, so they take the plain
//! `tokio_postgres::Client` a [`super::Client`] derefs to (and tests hold)
//! and do not keep prepared statements.

use std::collections::HashSet;

use anyhow::{bail, Context, Result};
use tokio_postgres::Client;

use super::Error;
use crate::api_keys::NewKey;
use crate::plans_file::{PlanFileError, PlansFile};

/// One line of what `plans apply` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub what: String,
    pub change: &'static str,
}

fn change(what: String, inserted: bool) -> Change {
    Change {
        what,
        change: if inserted { "created" } else { "updated" },
    }
}

/// Apply a plans file in one transaction: the file is the truth for the
/// metrics and plans it names (a plan's limits not in the file are removed);
/// metrics and plans it does not name are left as they are. Returns what
/// changed; applying the same file again changes nothing.
pub async fn apply_plans(client: &mut Client, file: &PlansFile) -> Result<Vec<Change>> {
    let tx = client.transaction().await?;
    let mut changes = Vec::new();
    for metric in &file.metrics {
        let row = tx
            .query_opt(
                "INSERT INTO tally.metrics AS m (metric, kind, stripe_meter_event) VALUES ($1, $2, $3)
                 ON CONFLICT (metric) DO UPDATE SET kind = EXCLUDED.kind, stripe_meter_event = EXCLUDED.stripe_meter_event
                  WHERE (m.kind, m.stripe_meter_event) IS DISTINCT FROM (EXCLUDED.kind, EXCLUDED.stripe_meter_event)
                 RETURNING xmax = 0",
                &[&metric.name, &metric.kind.as_str(), &metric.stripe_meter_event],
            )
            .await
            .with_context(|| format!("line {}: metric {:?}", metric.line, metric.name))?;
        if let Some(row) = row {
            changes.push(change(format!("metric {}", metric.name), row.get(0)));
        }
    }
    let known: HashSet<String> = tx
        .query("SELECT metric FROM tally.metrics", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let unknown = file
        .plans
        .iter()
        .flat_map(|plan| plan.limits.iter().map(move |limit| (plan, limit)))
        .find(|(_, limit)| !known.contains(&limit.metric));
    if let Some((plan, limit)) = unknown {
        return Err(PlanFileError::at(
            limit.line,
            format!(
                "plan {:?} limits {:?}, which is not a metric (declare it under [metrics.{}])",
                plan.name, limit.metric, limit.metric
            ),
        )
        .into());
    }
    // One default at a time: clear the old one before setting the new.
    if let Some(default) = file.plans.iter().find(|plan| plan.default) {
        tx.execute(
            "UPDATE tally.plans SET is_default = false WHERE is_default AND plan_id <> $1",
            &[&default.name],
        )
        .await?;
    }
    for plan in &file.plans {
        let row = tx
            .query_opt(
                "INSERT INTO tally.plans AS p (plan_id, is_default, stripe_price_id, paddle_price_id)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (plan_id) DO UPDATE
                    SET is_default = EXCLUDED.is_default, stripe_price_id = EXCLUDED.stripe_price_id,
                        paddle_price_id = EXCLUDED.paddle_price_id
                  WHERE (p.is_default, p.stripe_price_id, p.paddle_price_id)
                        IS DISTINCT FROM (EXCLUDED.is_default, EXCLUDED.stripe_price_id, EXCLUDED.paddle_price_id)
                 RETURNING xmax = 0",
                &[&plan.name, &plan.default, &plan.stripe_price_id, &plan.paddle_price_id],
            )
            .await
            .with_context(|| format!("line {}: plan {:?}", plan.line, plan.name))?;
        if let Some(row) = row {
            changes.push(change(format!("plan {}", plan.name), row.get(0)));
        }
        let metrics: Vec<&str> = plan
            .limits
            .iter()
            .map(|limit| limit.metric.as_str())
            .collect();
        let removed = tx
            .query(
                "DELETE FROM tally.plan_limits WHERE plan_id = $1 AND NOT metric = ANY ($2) RETURNING metric",
                &[&plan.name, &metrics],
            )
            .await?;
        for row in removed {
            changes.push(Change {
                what: format!("limit {}.{}", plan.name, row.get::<_, String>(0)),
                change: "removed",
            });
        }
        for limit in &plan.limits {
            let row = tx
                .query_opt(
                    "INSERT INTO tally.plan_limits AS l (plan_id, metric, max_units) VALUES ($1, $2, $3)
                     ON CONFLICT (plan_id, metric) DO UPDATE SET max_units = EXCLUDED.max_units
                      WHERE l.max_units IS DISTINCT FROM EXCLUDED.max_units
                     RETURNING xmax = 0",
                    &[&plan.name, &limit.metric, &limit.max_units],
                )
                .await
                .with_context(|| format!("line {}: the limit of {:?} in plan {:?}", limit.line, limit.metric, plan.name))?;
            if let Some(row) = row {
                changes.push(change(
                    format!("limit {}.{}", plan.name, limit.metric),
                    row.get(0),
                ));
            }
        }
    }
    tx.commit().await?;
    Ok(changes)
}

pub async fn has_default_plan(client: &Client) -> Result<bool> {
    Ok(client
        .query_opt("SELECT FROM tally.plans WHERE is_default", &[])
        .await?
        .is_some())
}

/// Create a tenant on `plan_id`, or on the default plan; returns its plan.
pub async fn create_tenant(
    client: &Client,
    tenant_id: &str,
    plan_id: Option<&str>,
) -> Result<String, Error> {
    let row = match plan_id {
        Some(plan_id) => client
            .query_one(
                "INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ($1, $2) RETURNING plan_id",
                &[&tenant_id, &plan_id],
            )
            .await?,
        None => {
            client
                .query_one(
                    "INSERT INTO tally.tenants (tenant_id) VALUES ($1) RETURNING plan_id",
                    &[&tenant_id],
                )
                .await?
        }
    };
    Ok(row.get(0))
}

#[derive(Debug, Clone)]
pub struct Tenant {
    pub tenant_id: String,
    pub plan_id: String,
    pub status: String,
    pub period: String,
    pub stripe_customer_id: Option<String>,
    pub paddle_customer_id: Option<String>,
    pub api_keys: Vec<(String, Option<String>, String)>,
}

pub async fn tenant(client: &Client, tenant_id: &str) -> Result<Tenant> {
    let Some(row) = client
        .query_opt(
            "SELECT plan_id, status,
                    coalesce(to_char(period_start AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"') || ' to ' ||
                             coalesce(to_char(period_end AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI \"UTC\"'), '+1 month'),
                             'calendar month (UTC)'),
                    stripe_customer_id, paddle_customer_id
               FROM tally.tenants WHERE tenant_id = $1",
            &[&tenant_id],
        )
        .await?
    else {
        bail!("tenant {tenant_id:?} not found");
    };
    let api_keys = client
        .query(
            "SELECT key_id, label, CASE WHEN revoked_at IS NULL THEN 'active' ELSE 'revoked' END
               FROM tally.api_keys WHERE tenant_id = $1 ORDER BY created_at",
            &[&tenant_id],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    Ok(Tenant {
        tenant_id: tenant_id.to_string(),
        plan_id: row.get(0),
        status: row.get(1),
        period: row.get(2),
        stripe_customer_id: row.get(3),
        paddle_customer_id: row.get(4),
        api_keys,
    })
}

pub async fn add_api_key(
    client: &Client,
    tenant_id: &str,
    key: &NewKey,
    label: Option<&str>,
) -> Result<()> {
    let inserted = client
        .execute(
            "INSERT INTO tally.api_keys (key_id, tenant_id, key_hash, label)
             SELECT $1, tenant_id, $3, $4 FROM tally.tenants WHERE tenant_id = $2",
            &[&key.key_id, &tenant_id, &key.hash, &label],
        )
        .await?;
    if inserted == 0 {
        bail!("tenant {tenant_id:?} not found");
    }
    Ok(())
}

/// Revoke a key by its id; false if it was already revoked.
pub async fn revoke_api_key(client: &Client, key_id: &str) -> Result<bool> {
    let row = client
        .query_opt(
            "UPDATE tally.api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE key_id = $1
             RETURNING revoked_at = now()",
            &[&key_id],
        )
        .await?;
    match row {
        Some(row) => Ok(row.get(0)),
        None => bail!("no API key has id {key_id:?}"),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cleaned {
    pub provider_events: i64,
    pub idempotency_keys: i64,
    pub usage_reports: i64,
}

/// Forget provider events and completed usage reports older than
/// `older_than` (a Postgres interval), and idempotency keys older than it or
/// than a day, whichever is longer.
pub async fn cleanup(client: &mut Client, older_than: &str) -> Result<Cleaned> {
    let tx = client.transaction().await?;
    let row = tx
        .query_one(
            "SELECT tally.cleanup_provider_events($1::text::interval),
                    tally.cleanup_idempotency_keys(greatest($1::text::interval, interval '24 hours')),
                    tally.cleanup_usage_reports($1::text::interval)",
            &[&older_than],
        )
        .await?;
    tx.commit().await?;
    Ok(Cleaned {
        provider_events: row.get(0),
        idempotency_keys: row.get(1),
        usage_reports: row.get(2),
    })
}

/// Rows for `tallyd links conflicts` / `tallyd links unlinked`: each a line
/// of text cells, newest first, at most `limit`.
pub async fn link_conflicts(client: &Client, limit: i64) -> Result<Vec<Vec<String>>> {
    let rows = client
        .query(
            "SELECT to_char(recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), provider, event_id,
                    customer_id, coalesce(subscription_id, '-'), coalesce(named_tenant, '-'),
                    coalesce(existing_tenant, '-'), coalesce(existing_customer, '-'), reason
               FROM tally.link_conflicts ORDER BY id DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (0..9).map(|i| row.get::<_, String>(i)).collect())
        .collect())
}

/// Events acknowledged because their customer was never linked to a tenant.
pub async fn unlinked_events(client: &Client, limit: i64) -> Result<Vec<Vec<String>>> {
    let rows = client
        .query(
            "SELECT to_char(received_at AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'), provider, event_id,
                    coalesce(event_type, '-'),
                    coalesce(payload #>> '{data,object,customer}', payload #>> '{data,customer_id}', '-')
               FROM tally.provider_events WHERE outcome = 'not_linked'
              ORDER BY received_at DESC LIMIT $1",
            &[&limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|row| (0..5).map(|i| row.get::<_, String>(i)).collect())
        .collect())
}
