//! The usage-report queue the driver drains: `claim_usage_reports`,
//! `complete_usage_report`, `fail_usage_report` and
//! `requeue_failed_usage_reports`.
//!
//! Claims use `FOR UPDATE SKIP LOCKED`, so concurrent workers never hold the
//! same report, and a lease, so a report held by a worker that died is
//! claimed again once the lease expires. Each claim hands out a lease token;
//! completing or failing a report takes the token of its latest claim, so a
//! worker whose lease lapsed cannot settle a report another worker now
//! holds. Each claim also counts a send (`sends`, never reset) from which
//! the worker makes a fresh idempotency key. Nothing is silently dropped: a
//! report that fails for good is marked `failed` and kept.

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

/// Take up to `$1` due reports, oldest due first, skipping those another
/// worker holds. Those already claimed `$3` times (their last attempt's
/// lease ran out) are marked failed instead of claimed: the
/// `due.attempts >= $3` below is [`rules::attempts_exhausted`] in SQL, kept
/// in the statement so a claim is one round trip.
static CLAIM: Statement = Statement {
    sql: "WITH due AS (
              SELECT id, attempts FROM tally.usage_reports
               WHERE status = 'pending' AND next_attempt_at <= now()
                 AND (lease_until IS NULL OR lease_until <= now())
               ORDER BY next_attempt_at, id
               LIMIT $1
                 FOR UPDATE SKIP LOCKED
          ), exhausted AS (
              UPDATE tally.usage_reports AS r
                 SET status = 'failed', failed_at = now(), lease_until = NULL,
                     last_error = concat_ws('; ', r.last_error, format(
                         'gave up: attempt %s of %s did not finish before its lease expired', r.attempts, $3))
                FROM due WHERE r.id = due.id AND due.attempts >= $3
          ), claimed AS (
              UPDATE tally.usage_reports AS r
                 SET attempts = r.attempts + 1, sends = r.sends + 1, lease_until = now() + $2,
                     lease_token = gen_random_uuid(),
                     first_claimed_at = coalesce(r.first_claimed_at, now())
                FROM due WHERE r.id = due.id AND due.attempts < $3
              RETURNING r.id, r.tenant_id, r.metric, r.event_name, r.units, r.identifier,
                        r.created_at, r.attempts, r.lease_until, r.next_attempt_at,
                        r.lease_token, r.sends
          )
          SELECT c.id, c.tenant_id, c.metric, c.event_name, c.units, c.identifier,
                 t.stripe_customer_id, c.created_at, c.attempts, c.lease_until,
                 c.lease_token, c.sends
            FROM claimed AS c LEFT JOIN tally.tenants AS t ON t.tenant_id = c.tenant_id
           ORDER BY c.next_attempt_at, c.id",
    params: &[INT4, INTERVAL, INT4],
};

static CLAIM_REPORTS: Claim = Claim {
    statement: &CLAIM,
    table: "tally.usage_reports",
    colocated: Some("tally.tenants"),
};

static COMPLETE: Statement = Statement {
    sql: "UPDATE tally.usage_reports SET status = 'completed', completed_at = now(), lease_until = NULL
           WHERE tenant_id = $1 AND id = $2",
    params: &[TEXT, INT8],
};

/// The tenants of the reports with id `$1`, each with its latest claim's
/// token: one, but several on a distributed tally for ids drawn before each
/// node had a range of its own (the caller picks the report its token
/// claimed).
static TENANT_OF: Statement = Statement {
    sql: "SELECT tenant_id, lease_token FROM tally.usage_reports WHERE id = $1",
    params: &[INT8],
};

static KNOWN_REPORTS: Statement = Statement {
    sql: "SELECT id FROM tally.usage_reports WHERE id = ANY ($1)",
    params: &[INT8_ARRAY],
};

/// Failed reports back in the queue with their attempts counted from zero
/// (their sends keep counting): those in `$1`, or every one when `$1` is
/// NULL; with the time of their first claim. (No `FOR UPDATE` first: a
/// distributed tally refuses it across shards. The caller checks what
/// comes back and raises, undoing the update, when it must refuse.)
static REQUEUE: Statement = Statement {
    sql: "UPDATE tally.usage_reports
             SET status = 'pending', attempts = 0, next_attempt_at = now(), lease_until = NULL,
                 failed_at = NULL
           WHERE status = 'failed' AND ($1::bigint[] IS NULL OR id = ANY ($1))
       RETURNING id, first_claimed_at",
    params: &[INT8_ARRAY],
};

/// A report's status, attempts and the token of its latest claim, locked.
static LOCK_REPORT: Statement = Statement {
    sql: "SELECT status, attempts, lease_token
            FROM tally.usage_reports WHERE tenant_id = $1 AND id = $2
             FOR UPDATE",
    params: &[TEXT, INT8],
};

static RETRY_LATER: Statement = Statement {
    sql: "UPDATE tally.usage_reports
             SET next_attempt_at = now() + $3, lease_until = NULL, last_error = $4
           WHERE tenant_id = $1 AND id = $2",
    params: &[TEXT, INT8, INTERVAL, TEXT],
};

static GIVE_UP: Statement = Statement {
    sql: "UPDATE tally.usage_reports
             SET status = 'failed', failed_at = now(), lease_until = NULL, last_error = $3
           WHERE tenant_id = $1 AND id = $2",
    params: &[TEXT, INT8, TEXT],
};

fn interval_ms(ms: i64) -> Interval {
    Interval::from_micros(ms.saturating_mul(1_000))
}

/// Claim up to `batch` due reports for `lease` (default
/// `tally.report_lease`, at most an hour), oldest due first. Each claim
/// counts as an attempt and as a send, and comes with a lease token: finish
/// each report with `complete_usage_report` or `fail_usage_report`, its
/// tenant and that token. On a distributed tally, each node claims from the
/// shards it holds, oldest due first within a shard, and the coordinator
/// refuses (`a distributed queue is claimed on the worker nodes`, 55000).
///
/// (The Rust name differs from the SQL name so that the C symbol differs
/// from the one older versions' SQL names, which returned no token; see
/// `upgrade`.)
#[allow(clippy::type_complexity)] // pgrx reads the column names from the inline tuple type.
#[pg_extern(security_definer, name = "claim_usage_reports")]
#[search_path(pg_catalog, pg_temp)]
fn claim_leased_reports(
    batch: default!(Option<i32>, 100),
    lease: default!(Option<Interval>, NULL),
) -> TableIterator<
    'static,
    (
        name!(id, i64),
        name!(tenant_id, String),
        name!(metric, String),
        name!(event_name, String),
        name!(units, i64),
        name!(identifier, String),
        name!(stripe_customer_id, Option<String>),
        name!(created_at, TimestampWithTimeZone),
        name!(attempts, i32),
        name!(lease_until, TimestampWithTimeZone),
        name!(lease_token, Uuid),
        name!(sends, i32),
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
        shards::claim(client, &CLAIM_REPORTS, batch, args, jitter(), |row| {
            let text = |ordinal| spi::get::<String>(row, ordinal).unwrap_or_default();
            (
                spi::get::<i64>(row, 1).unwrap_or_default(),
                text(2),
                text(3),
                text(4),
                spi::get::<i64>(row, 5).unwrap_or_default(),
                text(6),
                spi::get::<String>(row, 7),
                spi::get::<TimestampWithTimeZone>(row, 8)
                    .unwrap_or_else(|| spi::bug("report without created_at".into())),
                spi::get::<i32>(row, 9).unwrap_or_default(),
                spi::get::<TimestampWithTimeZone>(row, 10)
                    .unwrap_or_else(|| spi::bug("claimed report without a lease".into())),
                spi::get::<Uuid>(row, 11)
                    .unwrap_or_else(|| spi::bug("claimed report without a token".into())),
                spi::get::<i32>(row, 12).unwrap_or_default(),
            )
        })
    });
    TableIterator::new(rows)
}

/// The tenant of report `id`, for the functions that take an id alone
/// (P0002 `usage report not found` when there is none).
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
        .unwrap_or_else(|| errors::report_not_found(&[id]).raise())
}

/// The report was sent. `lease_token` is the token of the claim that sent
/// it, which must be the report's latest claim: a worker whose lease lapsed
/// and whose report was claimed again gets `usage report lease lost`
/// (55000) and changes nothing. Idempotent, and final: completing a
/// completed report changes nothing, whatever the token, and a report that
/// had been marked failed is completed (a late success). `tenant_id` is the
/// report's tenant (claims return it): a distributed tally finds the report
/// on that tenant's node.
#[pg_extern(security_definer, name = "complete_usage_report")]
#[search_path(pg_catalog, pg_temp)]
fn complete_tenant_report(tenant_id: Option<&str>, id: Option<i64>, lease_token: Option<Uuid>) {
    let tenant = args::id("tenant_id", tenant_id).or_raise();
    let id = args::required("id", id);
    let token = args::required("lease_token", lease_token);
    Spi::connect_mut(|client| complete(client, tenant, id, token))
}

/// `complete_usage_report` by id alone, as before tenants addressed
/// reports: one more lookup, across every node on a distributed tally.
#[pg_extern(security_definer, name = "complete_usage_report")]
#[search_path(pg_catalog, pg_temp)]
fn complete_leased_report(id: Option<i64>, lease_token: Option<Uuid>) {
    let id = args::required("id", id);
    let token = args::required("lease_token", lease_token);
    Spi::connect_mut(|client| {
        let tenant = tenant_of(client, id, token);
        complete(client, &tenant, id, token)
    })
}

fn complete(client: &mut SpiClient<'_>, tenant: &str, id: i64, token: Uuid) {
    let Some(report) = spi::first_row(client, &LOCK_REPORT, &[tenant.into(), id.into()]) else {
        errors::report_not_found(&[id]).raise()
    };
    if spi::get::<String>(&report, 1).as_deref() == Some("completed") {
        return;
    }
    if spi::get::<Uuid>(&report, 3) != Some(token) {
        errors::lease_lost(id, spi::get::<i32>(&report, 2).unwrap_or(0)).raise()
    }
    spi::run(client, &COMPLETE, &[tenant.into(), id.into()]);
}

/// Sending the report failed with `error`. `lease_token` is the token of the
/// claim that tried, which must be the report's latest claim (else `usage
/// report lease lost`, 55000, and nothing changes). A transient failure puts
/// it back in the queue after a backoff (`tally.report_backoff_base`,
/// doubling up to `tally.report_backoff_max`, plus up to 25% jitter), or
/// after `retry_after` (a provider's `Retry-After`, counted up to an hour)
/// when that is longer; a `permanent` one, or
/// the failure of the last allowed attempt (`tally.report_max_attempts`),
/// marks it `failed`. A completed or failed report is left as it is.
/// `tenant_id` is the report's tenant, as for `complete_usage_report`.
#[pg_extern(security_definer, name = "fail_usage_report")]
#[search_path(pg_catalog, pg_temp)]
fn fail_tenant_report(
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

/// `fail_usage_report` by id alone, as before tenants addressed reports.
#[pg_extern(security_definer, name = "fail_usage_report")]
#[search_path(pg_catalog, pg_temp)]
fn fail_leased_report(
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
    let Some(report) = spi::first_row(client, &LOCK_REPORT, &[tenant.into(), id.into()]) else {
        errors::report_not_found(&[id]).raise()
    };
    if spi::get::<String>(&report, 1).as_deref() != Some("pending") {
        return;
    }
    let attempts = spi::get::<i32>(&report, 2).unwrap_or(0);
    if spi::get::<Uuid>(&report, 3) != Some(failed.token) {
        errors::lease_lost(id, attempts).raise()
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

/// Put failed reports back in the queue, with their attempts counted from
/// zero: the given ids, or every failed report when `ids` is NULL. Reports
/// that are not failed are left alone; an unknown id is an error and changes
/// nothing. A report first claimed 24 hours or more ago may have reached
/// Stripe outside the 24 hours in which Stripe counts an identifier once:
/// unless `allow_resend_after_24h`, any such report refuses the whole call
/// (`usage reports may be billed twice`, 55000, naming them). Returns how
/// many were put back.
///
/// (A new Rust name, so the C symbol differs from the one-argument function
/// older versions' SQL names; see `upgrade`.)
#[pg_extern(security_definer, name = "requeue_failed_usage_reports")]
#[search_path(pg_catalog, pg_temp)]
fn requeue_failed_reports(
    ids: default!(Option<Vec<Option<i64>>>, NULL),
    allow_resend_after_24h: default!(Option<bool>, false),
) -> i64 {
    let ids: Option<Vec<i64>> = ids.map(|ids| {
        ids.into_iter()
            .map(|id| args::required("an element of ids", id))
            .collect()
    });
    let allow_resend = args::required("allow_resend_after_24h", allow_resend_after_24h);
    Spi::connect_mut(|client| {
        if let Some(ids) = &ids {
            let known: Vec<i64> = spi::run(client, &KNOWN_REPORTS, &[ids.clone().into()])
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
                errors::report_not_found(&unknown).raise()
            }
        }
        let now = spi::now();
        let mut requeued = 0;
        let mut risky: Vec<i64> = spi::run(client, &REQUEUE, &[ids.into()])
            .inspect(|_| requeued += 1)
            .filter(|row| rules::resend_may_bill_twice(spi::get_micros(row, 2), now))
            .filter_map(|row| spi::get::<i64>(&row, 1))
            .collect();
        if !risky.is_empty() && !allow_resend {
            // Raising undoes the update.
            risky.sort_unstable();
            errors::resend_may_bill_twice(&risky).raise()
        }
        requeued
    })
}
