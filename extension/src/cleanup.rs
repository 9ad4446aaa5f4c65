//! Forgetting what is no longer needed: old provider events, idempotency
//! keys past their promise, and completed usage reports. Failed reports are
//! never deleted: they are the record of usage that was not billed.

use pgrx::datum::Interval;
use pgrx::prelude::*;

use crate::errors::{self, OrRaise};
use crate::spi::{self, Statement, INTERVAL};

static FORGET_EVENTS: Statement = Statement {
    sql: "DELETE FROM tally.provider_events WHERE received_at < now() - $1",
    params: &[INTERVAL],
};

static FORGET_KEYS: Statement = Statement {
    sql: "DELETE FROM tally.idempotency_keys WHERE created_at < now() - $1",
    params: &[INTERVAL],
};

static FORGET_REPORTS: Statement = Statement {
    sql: "DELETE FROM tally.usage_reports WHERE status = 'completed' AND completed_at < now() - $1",
    params: &[INTERVAL],
};

/// A repeat within a day always gets the first result.
fn keys_kept_at_least() -> Interval {
    Interval::from_hours(24)
}

/// Providers retry a delivery for days: an event forgotten sooner would be
/// applied again.
fn events_kept_at_least() -> Interval {
    Interval::from_days(crate::rules::billing::PROVIDER_EVENTS_KEPT_AT_LEAST_DAYS)
}

fn nothing() -> Interval {
    Interval::from_micros(0)
}

/// `older_than`, if it is at least `at_least` (compared as Postgres does,
/// a month as 30 days).
fn retention(
    older_than: Option<Interval>,
    at_least: Interval,
) -> Result<Interval, errors::Failure> {
    match older_than {
        Some(older_than) if older_than.as_micros() >= at_least.as_micros() => Ok(older_than),
        _ => {
            let shown = older_than.map(|interval| interval.to_string());
            Err(errors::retention_too_short(
                shown.as_deref(),
                &at_least.to_string(),
            ))
        }
    }
}

fn forget(statement: &'static Statement, older_than: Interval) -> i64 {
    Spi::connect_mut(|client| spi::run(client, statement, &[older_than.into()]).len() as i64)
}

/// Forget provider events received before `now() - older_than`, which must
/// be at least 3 days (providers retry deliveries that long); returns how
/// many.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_provider_events(older_than: default!(Option<Interval>, "'30 days'")) -> i64 {
    forget(
        &FORGET_EVENTS,
        retention(older_than, events_kept_at_least()).or_raise(),
    )
}

/// Forget idempotency keys claimed before `now() - older_than`, which must
/// be at least 24 hours.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_idempotency_keys(older_than: default!(Option<Interval>, "'24 hours'")) -> i64 {
    forget(
        &FORGET_KEYS,
        retention(older_than, keys_kept_at_least()).or_raise(),
    )
}

/// Delete completed usage reports completed before `now() - older_than`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn cleanup_usage_reports(older_than: default!(Option<Interval>, "'30 days'")) -> i64 {
    forget(&FORGET_REPORTS, retention(older_than, nothing()).or_raise())
}
