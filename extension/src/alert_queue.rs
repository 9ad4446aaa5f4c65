//! The alert queue tallyd drains to the webhook endpoints: `claim_alerts`,
//! `complete_alert`, `fail_alert`, `requeue_failed_alerts` and
//! `alert_stats`.
//!
//! The discipline of the usage-report queue ([`crate::reports`]): claims
//! with `FOR UPDATE SKIP LOCKED` and a lease, a lease token that settling an
//! alert takes, backoff after a transient failure, `failed` (kept) after a
//! permanent one or the last allowed attempt, and requeueing from the CLI.
//! The leases, attempts and backoff are the reports' settings
//! (`tally.report_lease`, `tally.report_max_attempts`,
//! `tally.report_backoff_base`, `tally.report_backoff_max`) and the same
//! rules ([`rules::after_failure`]).

use pgrx::datum::{Interval, Uuid};
use pgrx::pg_sys;
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::args::{self, SendFailure};
use crate::errors::{self, OrRaise, Raise};
use crate::gucs;
use crate::rules::{self, AfterFailure, Backoff};
use crate::shards::{self, Claim};
use crate::spi::{self, Statement, INT4, INT8, INT8_ARRAY, INTERVAL, TEXT};

/// As the reports' claim: up to `$1` due alerts, oldest due first, skipping
/// those another worker holds; those already claimed `$3` times are marked
/// failed instead.
static CLAIM: Statement = Statement {
    sql: "WITH due AS (
              SELECT id, attempts FROM tally.alerts
               WHERE status = 'pending' AND next_attempt_at <= now()
                 AND (lease_until IS NULL OR lease_until <= now())
               ORDER BY next_attempt_at, id
               LIMIT $1
                 FOR UPDATE SKIP LOCKED
          ), exhausted AS (
              UPDATE tally.alerts AS a
                 SET status = 'failed', failed_at = now(), lease_until = NULL,
                     last_error = concat_ws('; ', a.last_error, format(
                         'gave up: attempt %s of %s did not finish before its lease expired', a.attempts, $3))
                FROM due WHERE a.id = due.id AND due.attempts >= $3
          )
          UPDATE tally.alerts AS a
             SET attempts = a.attempts + 1, lease_until = now() + $2,
                 lease_token = gen_random_uuid()
            FROM due WHERE a.id = due.id AND due.attempts < $3
          RETURNING a.id, a.identifier, a.tenant_id, a.metric, a.percent, a.threshold, a.used,
                    a.max_units, a.period_start, a.period_end, a.created_at, a.attempts,
                    a.lease_token",
    params: &[INT4, INTERVAL, INT4],
};

static CLAIM_ALERTS: Claim = Claim {
    statement: &CLAIM,
    table: "tally.alerts",
    colocated: None,
};

/// The tenants of the alerts with id `$1`, as the reports'
/// (`crate::reports`).
static TENANT_OF: Statement = Statement {
    sql: "SELECT tenant_id, lease_token FROM tally.alerts WHERE id = $1",
    params: &[INT8],
};

static LOCK_ALERT: Statement = Statement {
    sql: "SELECT status, attempts, lease_token
            FROM tally.alerts WHERE tenant_id = $1 AND id = $2
             FOR UPDATE",
    params: &[TEXT, INT8],
};

static COMPLETE: Statement = Statement {
    sql: "UPDATE tally.alerts SET status = 'completed', completed_at = now(), lease_until = NULL
           WHERE tenant_id = $1 AND id = $2",
    params: &[TEXT, INT8],
};

static RETRY_LATER: Statement = Statement {
    sql: "UPDATE tally.alerts
             SET next_attempt_at = now() + $3, lease_until = NULL, last_error = $4
           WHERE tenant_id = $1 AND id = $2",
    params: &[TEXT, INT8, INTERVAL, TEXT],
};

static GIVE_UP: Statement = Statement {
    sql: "UPDATE tally.alerts
             SET status = 'failed', failed_at = now(), lease_until = NULL, last_error = $3
           WHERE tenant_id = $1 AND id = $2",
    params: &[TEXT, INT8, TEXT],
};

static KNOWN_ALERTS: Statement = Statement {
    sql: "SELECT id FROM tally.alerts WHERE id = ANY ($1)",
    params: &[INT8_ARRAY],
};

static REQUEUE: Statement = Statement {
    sql: "UPDATE tally.alerts
             SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL,
                 failed_at = NULL
           WHERE status = 'failed' AND ($1::bigint[] IS NULL OR id = ANY ($1))",
    params: &[INT8_ARRAY],
};

fn interval_ms(ms: i64) -> Interval {
    Interval::from_micros(ms.saturating_mul(1_000))
}

/// Claim up to `batch` due alerts for `lease` (default `tally.report_lease`,
/// at most an hour), oldest due first. Each claim counts as an attempt and
/// comes with a lease token: finish each alert with `complete_alert` or
/// `fail_alert`, its tenant and that token. `identifier` is the alert's
/// webhook-id. On a distributed tally each node claims from the shards it
/// holds, as `claim_usage_reports`.
#[allow(clippy::type_complexity)] // pgrx reads the column names from the inline tuple type.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn claim_alerts(
    batch: default!(Option<i32>, 100),
    lease: default!(Option<Interval>, NULL),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(identifier, String),
        name!(tenant_id, String),
        name!(metric, String),
        name!(percent, i32),
        name!(threshold, i64),
        name!(used, i64),
        name!(max_units, i64),
        name!(period_start, Option<TimestampWithTimeZone>),
        name!(period_end, Option<TimestampWithTimeZone>),
        name!(created_at, TimestampWithTimeZone),
        name!(attempts, i32),
        name!(lease_token, Uuid),
    ),
> {
    let batch = args::positive("batch", batch).or_raise();
    let lease = match lease {
        Some(lease) => {
            args::lease(lease).or_raise();
            lease
        }
        None => interval_ms(i64::from(gucs::REPORT_LEASE_MS.get())),
    };
    let max_attempts = gucs::REPORT_MAX_ATTEMPTS.get();
    let rows = Spi::connect_mut(|client| {
        let args = |limit: i32| vec![limit.into(), lease.into(), max_attempts.into()];
        shards::claim(client, &CLAIM_ALERTS, batch, args, jitter(), |row| {
            let text = |ordinal| spi::get::<String>(row, ordinal).unwrap_or_default();
            let int8 = |ordinal| spi::get::<i64>(row, ordinal).unwrap_or_default();
            (
                int8(1),
                text(2),
                text(3),
                text(4),
                spi::get::<i32>(row, 5).unwrap_or_default(),
                int8(6),
                int8(7),
                int8(8),
                spi::get::<TimestampWithTimeZone>(row, 9),
                spi::get::<TimestampWithTimeZone>(row, 10),
                spi::get::<TimestampWithTimeZone>(row, 11)
                    .unwrap_or_else(|| spi::bug("alert without created_at".into())),
                spi::get::<i32>(row, 12).unwrap_or_default(),
                spi::get::<Uuid>(row, 13)
                    .unwrap_or_else(|| spi::bug("claimed alert without a token".into())),
            )
        })
    });
    TableIterator::new(rows)
}

/// The tenant of alert `id`, for the functions that take an id alone.
fn tenant_of(client: &mut SpiClient<'_>, id: i64, token: Uuid) -> String {
    let mut tenants: Vec<(String, bool)> = spi::run(client, &TENANT_OF, &[id.into()])
        .filter_map(|row| {
            let tenant = spi::get::<String>(&row, 1)?;
            Some((tenant, spi::get::<Uuid>(&row, 2) == Some(token)))
        })
        .collect();
    tenants.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    tenants
        .into_iter()
        .next()
        .map(|(tenant, _)| tenant)
        .unwrap_or_else(|| errors::alert_not_found(&[id]).raise())
}

/// The alert was delivered. `lease_token` must be the token of its latest
/// claim (else `alert lease lost`, 55000, and nothing changes). Idempotent
/// and final, as `complete_usage_report`; `tenant_id` is the alert's tenant
/// (claims return it).
#[pg_extern(security_definer, name = "complete_alert")]
#[search_path(pg_catalog, pg_temp)]
fn complete_tenant_alert(tenant_id: Option<&str>, id: Option<i64>, lease_token: Option<Uuid>) {
    let tenant = args::id("tenant_id", tenant_id).or_raise();
    let id = args::required("id", id);
    let token = args::required("lease_token", lease_token);
    Spi::connect_mut(|client| complete(client, tenant, id, token))
}

/// `complete_alert` by id alone: one more lookup, across every node on a
/// distributed tally.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn complete_alert(id: Option<i64>, lease_token: Option<Uuid>) {
    let id = args::required("id", id);
    let token = args::required("lease_token", lease_token);
    Spi::connect_mut(|client| {
        let tenant = tenant_of(client, id, token);
        complete(client, &tenant, id, token)
    })
}

fn complete(client: &mut SpiClient<'_>, tenant: &str, id: i64, token: Uuid) {
    let Some(alert) = spi::first_row(client, &LOCK_ALERT, &[tenant.into(), id.into()]) else {
        errors::alert_not_found(&[id]).raise()
    };
    if spi::get::<String>(&alert, 1).as_deref() == Some("completed") {
        return;
    }
    if spi::get::<Uuid>(&alert, 3) != Some(token) {
        errors::alert_lease_lost(id, spi::get::<i32>(&alert, 2).unwrap_or(0)).raise()
    }
    spi::run(client, &COMPLETE, &[tenant.into(), id.into()]);
}

/// Delivering the alert failed with `error`, as `fail_usage_report`: a
/// transient failure retries after a backoff (or `retry_after`, when
/// longer); a `permanent` one, or the failure of the last allowed attempt,
/// marks it `failed`, kept for `requeue_failed_alerts`. `tenant_id` is the
/// alert's tenant.
#[pg_extern(security_definer, name = "fail_alert")]
#[search_path(pg_catalog, pg_temp)]
fn fail_tenant_alert(
    tenant_id: Option<&str>,
    id: Option<i64>,
    lease_token: Option<Uuid>,
    error: Option<&str>,
    permanent: default!(Option<bool>, false),
    retry_after: default!(Option<Interval>, NULL),
) {
    let failed = SendFailure::new(lease_token, error, permanent, retry_after);
    let tenant = args::id("tenant_id", tenant_id).or_raise();
    let id = args::required("id", id);
    Spi::connect_mut(|client| fail(client, tenant, id, &failed))
}

/// `fail_alert` by id alone.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn fail_alert(
    id: Option<i64>,
    lease_token: Option<Uuid>,
    error: Option<&str>,
    permanent: default!(Option<bool>, false),
    retry_after: default!(Option<Interval>, NULL),
) {
    let failed = SendFailure::new(lease_token, error, permanent, retry_after);
    let id = args::required("id", id);
    Spi::connect_mut(|client| {
        let tenant = tenant_of(client, id, failed.token);
        fail(client, &tenant, id, &failed)
    })
}

fn fail(client: &mut SpiClient<'_>, tenant: &str, id: i64, failed: &SendFailure) {
    let Some(alert) = spi::first_row(client, &LOCK_ALERT, &[tenant.into(), id.into()]) else {
        errors::alert_not_found(&[id]).raise()
    };
    if spi::get::<String>(&alert, 1).as_deref() != Some("pending") {
        return;
    }
    let attempts = spi::get::<i32>(&alert, 2).unwrap_or(0);
    if spi::get::<Uuid>(&alert, 3) != Some(failed.token) {
        errors::alert_lease_lost(id, attempts).raise()
    }
    let backoff = Backoff {
        base_ms: i64::from(gucs::REPORT_BACKOFF_BASE_MS.get()),
        max_ms: i64::from(gucs::REPORT_BACKOFF_MAX_MS.get()),
    };
    let max_attempts = gucs::REPORT_MAX_ATTEMPTS.get();
    let error = failed.error.as_str();
    match rules::after_failure(
        attempts,
        max_attempts,
        failed.permanent,
        failed.retry_after_ms,
        backoff,
        jitter(),
    ) {
        AfterFailure::Retry { delay_ms } => {
            let args = [
                tenant.into(),
                id.into(),
                interval_ms(delay_ms).into(),
                error.into(),
            ];
            spi::run(client, &RETRY_LATER, &args);
        }
        AfterFailure::Fail => {
            spi::run(client, &GIVE_UP, &[tenant.into(), id.into(), error.into()]);
        }
    }
}

/// A uniform draw from `[0, 1)`, from the backend's random number generator.
fn jitter() -> f64 {
    // SAFETY: the backend's global generator, seeded at startup; backends are
    // single-threaded.
    unsafe { pg_sys::pg_prng_double(&raw mut pg_sys::pg_global_prng_state) }
}

/// Put failed alerts back in the queue with their attempts counted from
/// zero: the given ids, or every failed alert when `ids` is NULL. Alerts
/// that are not failed are left alone; an unknown id is an error and changes
/// nothing. Returns how many were put back. (A receiver deduplicates a
/// repeated delivery by its webhook-id.)
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn requeue_failed_alerts(ids: default!(Option<Vec<Option<i64>>>, NULL)) -> i64 {
    let ids: Option<Vec<i64>> = ids.map(|ids| {
        ids.into_iter()
            .map(|id| {
                id.ok_or_else(|| errors::null_argument("an element of ids"))
                    .or_raise()
            })
            .collect()
    });
    Spi::connect_mut(|client| {
        if let Some(ids) = &ids {
            let known: Vec<i64> = spi::run(client, &KNOWN_ALERTS, &[ids.clone().into()])
                .filter_map(|row| spi::get::<i64>(&row, 1))
                .collect();
            let mut unknown: Vec<i64> = ids
                .iter()
                .copied()
                .filter(|id| !known.contains(id))
                .collect();
            if !unknown.is_empty() {
                unknown.sort_unstable();
                unknown.dedup();
                errors::alert_not_found(&unknown).raise()
            }
        }
        spi::run(client, &REQUEUE, &[ids.into()]).len() as i64
    })
}
