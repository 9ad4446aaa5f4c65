//! `tally.enforce_count`: the counter side. The trigger function on an
//! application's table ([`tally_enforce_count_rows`]) sums a statement's rows
//! per tenant ([`crate::transition`]) and hands each tenant's change, in
//! sorted tenant order, to [`apply`], the one place where enforcement changes a counter: an increment
//! goes through the same path as `check_and_increment_usage` (first use, the
//! limit copy, a consumable's new period, usage reports), a give-back through
//! the decrement rules, and enabling sets a counter to the rows it has.

use std::collections::HashSet;

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::args;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{self, Counter, Kind, Outcome};
use crate::spi::{self, Statement, INT8_ARRAY, TEXT, TEXT_ARRAY, TIMESTAMPTZ};
use crate::transition::Firing;
use crate::usage;

/// What one statement does to one tenant's counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Take (positive) or give back (negative) units.
    Delta(i64),
    /// Enabling: the tenant's rows hold this many units now.
    Sync(i64),
}

/// Apply one tenant's change under the counter's row lock. A refused
/// increment is returned (the caller raises it); nothing is written then.
pub fn apply(client: &mut SpiClient<'_>, tenant_id: &str, metric: &str, change: Change) -> Outcome {
    match change {
        Change::Delta(units) if units > 0 => usage::increment(client, tenant_id, metric, units),
        Change::Delta(units) => {
            let stored = usage::lock_count(client, tenant_id, metric);
            let context = usage::load_context(client, tenant_id, metric);
            let change = rules::decrement(context.kind, stored, context.period.start, -units);
            if let Some(counter) = change.write {
                usage::write_count(client, tenant_id, metric, counter);
            }
            Outcome::allowed(change.result, context.limit)
        }
        Change::Sync(units) => {
            let context = usage::load_context(client, tenant_id, metric);
            spi::run(
                client,
                &usage::ENSURE_COUNTER,
                &[tenant_id.into(), metric.into()],
            );
            let stored = usage::lock_count(client, tenant_id, metric);
            let counter = Counter {
                used: units,
                period_start: (context.kind == Kind::Consumable).then_some(context.period.start),
            };
            if stored != Some(counter) {
                usage::write_count(client, tenant_id, metric, counter);
            }
            Outcome::allowed(units, context.limit)
        }
    }
}

/// The trigger functions' entry: `units` taken (positive) or given back
/// (negative) by one statement for one tenant, or with `sync` the units the
/// tenant's rows hold. Owned by tally_owner and granted to no one: only the
/// trigger functions and `enforce_count`, which run as tally_owner, call it.
/// Called once per tenant per statement, it pins its search path inside (as
/// `check_and_increment_usage` does) rather than with a `SET` clause.
#[pg_extern(security_definer, requires = ["counters"])]
fn _enforce_apply(
    tenant_id: Option<&str>,
    metric: Option<&str>,
    units: Option<i64>,
    sync: default!(Option<bool>, false),
) -> pgrx::composite_type!('static, "tally.usage_check") {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let metric = args::id("metric", metric).or_raise();
    let units = units.unwrap_or_else(|| errors::null_argument("units").raise());
    let change = if sync.unwrap_or(false) {
        if units < 0 {
            errors::negative_count("units", units).raise()
        }
        Change::Sync(units)
    } else {
        Change::Delta(units)
    };
    let outcome = spi::with_catalog_search_path(|| {
        Spi::connect_mut(|client| apply(client, tenant_id, metric, change))
    });
    usage::usage_check(outcome)
}

/// Counters of a metric present for some tenants.
static COUNTERS_PRESENT: Statement = Statement {
    sql: "SELECT count(*) FROM tally.usage_counters WHERE metric = $1 AND tenant_id = ANY ($2)",
    params: &[TEXT, TEXT_ARRAY],
};

/// Lock the counters of some tenants in one fixed order (the tenants' bytes),
/// the order of every statement's per-tenant work, so two statements cannot
/// wait for each other.
static LOCK_IN_ORDER: Statement = Statement {
    sql: "SELECT FROM tally.usage_counters WHERE metric = $1 AND tenant_id = ANY ($2)
           ORDER BY tenant_id COLLATE \"C\" FOR UPDATE",
    params: &[TEXT, TEXT_ARRAY],
};

/// [`usage::FAST_INCREMENT`] for many tenants at once, for the counters that
/// need nothing else: no usage report (no meter event) and no alert threshold
/// reached. Returns the tenants it counted.
static FAST_INCREMENT_ALL: Statement = Statement {
    sql: "UPDATE tally.usage_counters AS c
             SET used = c.used + d.units
            FROM unnest($2::text[], $3::bigint[]) AS d (tenant_id, units)
           WHERE c.tenant_id = d.tenant_id AND c.metric = $1 AND d.units > 0
             AND c.limits_valid
             AND (NOT c.calendar_period OR c.period_start = $4)
             AND c.used <= coalesce(c.max_units, 9223372036854775807) - d.units
             AND c.meter_event IS NULL
             AND (c.next_alert_at IS NULL OR c.used < c.next_alert_at - d.units)
       RETURNING c.tenant_id",
    params: &[TEXT, TEXT_ARRAY, INT8_ARRAY, TIMESTAMPTZ],
};

/// From this many tenants in one statement on, their counters are locked
/// and counted with one statement each rather than one per tenant.
const SET_BASED_FROM: usize = 8;

/// A statement's changes to several tenants, sorted by tenant: units taken
/// (positive) or given back (negative). Stops at the first tenant whose units
/// do not fit and returns it (the trigger raises; the statement's writes,
/// these included, roll back).
pub fn apply_all(
    client: &mut SpiClient<'_>,
    metric: &str,
    tenants: &[String],
    deltas: &[i64],
) -> Option<(String, Outcome, i64)> {
    let mut counted: HashSet<String> = HashSet::new();
    let ids: Vec<&str> = tenants.iter().map(String::as_str).collect();
    if tenants.len() >= SET_BASED_FROM {
        let present: i64 = spi::first_row(
            client,
            &COUNTERS_PRESENT,
            &[metric.into(), ids.clone().into()],
        )
        .and_then(|row| spi::get(&row, 1))
        .unwrap_or(0);
        // With a counter missing, first use creates it in the loop below, in
        // the same order; locking the others first would break the order.
        if present == tenants.len() as i64 {
            spi::run(client, &LOCK_IN_ORDER, &[metric.into(), ids.clone().into()]);
            let month = spi::timestamptz(Some(rules::month_start(spi::now())));
            counted = spi::run(
                client,
                &FAST_INCREMENT_ALL,
                &[
                    metric.into(),
                    ids.clone().into(),
                    deltas.to_vec().into(),
                    month,
                ],
            )
            .filter_map(|row| spi::get::<String>(&row, 1))
            .collect();
        }
    }
    for (tenant, &units) in tenants.iter().zip(deltas) {
        if units == 0 || counted.contains(tenant) {
            continue;
        }
        let outcome = apply(client, tenant, metric, Change::Delta(units));
        if !outcome.allowed {
            return Some((tenant.clone(), outcome, units));
        }
    }
    None
}

/// `tally._enforce_count_rows()`, the trigger function of every table under
/// `enforce_count` (`sql/schema/enforce.sql`): sums the statement's rows per
/// tenant straight from its transition tables and applies the changes in
/// tenant order ([`apply_all`]), all in one call. A refusal is raised with
/// SQLSTATE TL001, which pgrx's own reports cannot carry: everything else
/// runs inside pgrx's guard (a panic or a Postgres error there is reported
/// as usual), and only the refusal comes out, to be raised here.
///
/// # Safety
/// Called by Postgres only, as a statement-level trigger.
#[no_mangle]
pub unsafe extern "C-unwind" fn tally_enforce_count_rows(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: fcinfo is the call info of a trigger call (the contract).
    let refused = unsafe { pg_sys::panic::pgrx_extern_c_guard(|| count_statement(fcinfo)) };
    if let Some(refusal) = refused {
        // SAFETY: the outermost frame; `refusal` is moved, nothing is left
        // to drop here.
        unsafe { errors::raise_at_top(refusal) }
    }
    // A statement-level trigger returns no row (a null pointer, not SQL NULL).
    pg_sys::Datum::from(0usize)
}

/// The version-1 calling convention of `tally_enforce_count_rows`.
#[no_mangle]
pub extern "C" fn pg_finfo_tally_enforce_count_rows() -> &'static pg_sys::Pg_finfo_record {
    static V1: pg_sys::Pg_finfo_record = pg_sys::Pg_finfo_record { api_version: 1 };
    &V1
}

/// One statement's work: None when every tenant's change fit, else the
/// refusal of the first tenant (in tenant order) whose units did not.
///
/// # Safety
/// fcinfo must be a trigger call's.
unsafe fn count_statement(fcinfo: pg_sys::FunctionCallInfo) -> Option<errors::Failure> {
    // SAFETY: (the contract).
    let firing = unsafe { Firing::from_fcinfo(fcinfo) };
    let sums = firing.sums();
    if sums.lowest < 0 {
        let column = firing.units_column.as_deref().unwrap_or("units");
        errors::negative_count(column, sums.lowest).raise()
    }
    // Tenants whose rows changed but not their units (an UPDATE of other
    // columns) need nothing.
    let (tenants, deltas): (Vec<String>, Vec<i64>) = sums
        .units
        .into_iter()
        .filter(|&(_, units)| units != 0)
        .unzip();
    if tenants.is_empty() {
        return None;
    }
    let metric = firing.metric.as_str();
    let refused = spi::with_catalog_search_path(|| {
        Spi::connect_mut(|client| apply_all(client, metric, &tenants, &deltas))
    });
    refused.map(|(tenant, outcome, units)| {
        errors::enforced_limit_exceeded(&tenant, metric, outcome.used, outcome.max_units, units)
    })
}
