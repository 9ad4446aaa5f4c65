//! Enforcement: `check_and_increment_usage`, `decrement_usage`,
//! `release_usage` and `usage_summary`.
//!
//! Each counter row carries a copy of its limit, so an increment that fits is
//! one single-row `UPDATE`: the row lock is taken by the write itself and,
//! under READ COMMITTED, the limit check is re-evaluated against the latest
//! committed count once the lock is granted. N racing callers are therefore
//! admitted exactly as far as the limit allows. A refusal is answered from the
//! same row. An allowed increment of a billed metric also writes a usage
//! report, in the same transaction. Everything else (first use, a new
//! period, a copy cleared by a configuration change) takes the slow path:
//! lock the counter, read the configuration fresh, let [`rules::increment`]
//! decide, and refresh the copy.

use std::collections::HashMap;

use pgrx::datum::DatumWithOid;
use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiHeapTupleData};
use pgrx::AllocatedByRust;

use crate::alerts;
use crate::args;
use crate::composite;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{
    self, Counter, KeyedCall, Kind, Limit, Micros, Operation, Outcome, Period, Reason,
    ReleaseRefusal,
};
use crate::spi::{self, Statement, BOOL, INT8, TEXT, TIMESTAMPTZ};

const USAGE_CHECK: &str = "tally.usage_check";

/// The common case in one statement: the counter's copy of its limit is
/// valid, its count belongs to the current period, and the units fit (for
/// an unlimited metric: the sum does not overflow). Returns no row otherwise.
/// The last condition is [`rules::fits`] in SQL, repeated here for speed;
/// the pg_test `the_fast_path_decides_as_fits_does` pins the two together.
pub(crate) static FAST_INCREMENT: Statement = Statement {
    sql: "UPDATE tally.usage_counters
             SET used = used + $3
           WHERE tenant_id = $1 AND metric = $2
             AND limits_valid
             AND (NOT calendar_period OR period_start = $4)
             AND used <= coalesce(max_units, 9223372036854775807) - $3
       RETURNING used, max_units, meter_event, next_alert_at",
    params: &[TEXT, TEXT, INT8, TIMESTAMPTZ],
};

static ENQUEUE_REPORT: Statement = Statement {
    sql: "INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units)
          VALUES ($1, $2, $3, $4)",
    params: &[TEXT, TEXT, TEXT, INT8],
};

static PEEK_COUNTER: Statement = Statement {
    sql: "SELECT used, period_start, max_units, calendar_period, limits_valid, meter_event,
                 next_alert_at
            FROM tally.usage_counters
           WHERE tenant_id = $1 AND metric = $2",
    params: &[TEXT, TEXT],
};

static LOCK_COUNTER: Statement = Statement {
    sql: "SELECT used, period_start, max_units, calendar_period, limits_valid, meter_event,
                 next_alert_at
            FROM tally.usage_counters
           WHERE tenant_id = $1 AND metric = $2
             FOR UPDATE",
    params: &[TEXT, TEXT],
};

/// Hold off configuration changes until this transaction ends (see
/// `sql/schema/counters.sql`), so the configuration read next stays true:
/// the guard row for plans, limits and metrics, the tenant's row for its
/// plan and period.
static SHARE_LIMITS: Statement = Statement {
    sql: "SELECT FROM tally.limits_guard FOR SHARE",
    params: &[],
};

static SHARE_TENANT: Statement = Statement {
    sql: "SELECT FROM tally.tenants WHERE tenant_id = $1 FOR SHARE",
    params: &[TEXT],
};

/// Make sure an in-plan metric has a counter row to lock. A refusal may leave
/// a zero counter behind, which reads the same as none. (One row, by its
/// key: no statement on a tenant's path joins the tenant tables with the
/// configuration.)
pub static ENSURE_COUNTER: Statement = Statement {
    sql: "INSERT INTO tally.usage_counters (tenant_id, metric) VALUES ($1, $2)
              ON CONFLICT (tenant_id, metric) DO NOTHING",
    params: &[TEXT, TEXT],
};

/// What the configuration says about one metric under one plan.
static METRIC_CONFIG: Statement = Statement {
    sql: "SELECT m.kind, m.stripe_meter_event, l.plan_id IS NOT NULL, l.max_units
            FROM tally.metrics AS m
            LEFT JOIN tally.plan_limits AS l ON l.plan_id = $1 AND l.metric = m.metric
           WHERE m.metric = $2",
    params: &[TEXT, TEXT],
};

/// What the configuration says about every metric under one plan.
static PLAN_METRICS: Statement = Statement {
    sql: "SELECT m.metric, m.kind, l.plan_id IS NOT NULL, l.max_units
            FROM tally.metrics AS m
            LEFT JOIN tally.plan_limits AS l ON l.plan_id = $1 AND l.metric = m.metric
           ORDER BY m.metric",
    params: &[TEXT],
};

static TENANT_COUNTERS: Statement = Statement {
    sql: "SELECT metric, used, period_start FROM tally.usage_counters WHERE tenant_id = $1",
    params: &[TEXT],
};

static WRITE_COUNTER: Statement = Statement {
    sql: "UPDATE tally.usage_counters
             SET used = $3, period_start = $4, max_units = $5, calendar_period = $6,
                 limits_valid = $7, meter_event = $8, next_alert_at = $9
           WHERE tenant_id = $1 AND metric = $2",
    params: &[TEXT, TEXT, INT8, TIMESTAMPTZ, INT8, BOOL, BOOL, TEXT, INT8],
};

static WRITE_COUNT: Statement = Statement {
    sql: "UPDATE tally.usage_counters SET used = $3, period_start = $4
           WHERE tenant_id = $1 AND metric = $2",
    params: &[TEXT, TEXT, INT8, TIMESTAMPTZ],
};

/// Claim an idempotency key before counting. A racing repeat blocks here on
/// the key's unique index until the first call's transaction ends: then it
/// reads the stored result, or (if the first rolled back) claims the key.
static CLAIM_KEY: Statement = Statement {
    sql: "INSERT INTO tally.idempotency_keys (tenant_id, idempotency_key, metric, units, operation)
          VALUES ($1, $2, $3, $4, $5)
              ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
       RETURNING true",
    params: &[TEXT, TEXT, TEXT, INT8, TEXT],
};

/// The first call's arguments and result, for a repeat of its key.
static STORED_RESULT: Statement = Statement {
    sql: "SELECT allowed, used, max_units, remaining, reason, operation, metric, units
            FROM tally.idempotency_keys
           WHERE tenant_id = $1 AND idempotency_key = $2",
    params: &[TEXT, TEXT],
};

static SAVE_RESULT: Statement = Statement {
    sql: "UPDATE tally.idempotency_keys
             SET allowed = $3, used = $4, max_units = $5, remaining = $6, reason = $7
           WHERE tenant_id = $1 AND idempotency_key = $2",
    params: &[TEXT, TEXT, BOOL, INT8, INT8, INT8, TEXT],
};

/// What the configuration says about a tenant and one metric.
pub struct Context {
    /// The tenant's plan.
    pub plan_id: String,
    pub period: Period,
    /// The tenant has no stored period: the calendar month is its period.
    pub calendar_period: bool,
    pub kind: Kind,
    pub limit: Limit,
    /// The Stripe meter event of a billed metric.
    pub meter_event: Option<String>,
}

impl Context {
    /// The copy of the configuration a counter of this metric keeps.
    fn limits(&self) -> CachedLimits {
        let (max_units, valid) = match self.limit {
            Limit::NotInPlan => (None, false),
            Limit::Unlimited => (None, true),
            Limit::Max(max) => (Some(max), true),
        };
        CachedLimits {
            max_units,
            calendar_period: self.kind == Kind::Consumable && self.calendar_period,
            valid,
            meter_event: self.meter_event.clone(),
            next_alert: None,
        }
    }
}

/// A metric's kind as stored; the table's constraint allows no other.
pub fn stored_kind(metric: &str, kind: &str) -> Kind {
    Kind::parse(kind).unwrap_or_else(|| spi::bug(format!("metric {metric} has kind {kind}")))
}

/// Read the tenant, then the metric and its limit in the tenant's plan;
/// unknown ones are errors.
pub fn load_context(client: &mut SpiClient<'_>, tenant_id: &str, metric: &str) -> Context {
    let tenant = load_tenant(client, tenant_id);
    let row = spi::first_row(
        client,
        &METRIC_CONFIG,
        &[tenant.plan_id.as_str().into(), metric.into()],
    )
    .unwrap_or_else(|| errors::metric_not_found(metric).raise());
    let kind = spi::get::<String>(&row, 1).unwrap_or_default();
    Context {
        limit: Limit::from_row(spi::get(&row, 3).unwrap_or(false), spi::get(&row, 4)),
        meter_event: spi::get(&row, 2),
        kind: stored_kind(metric, &kind),
        plan_id: tenant.plan_id,
        period: tenant.period,
        calendar_period: tenant.calendar_period,
    }
}

/// A metric as one plan configures it.
pub struct MetricConfig {
    pub metric: String,
    pub kind: Kind,
    pub limit: Limit,
}

/// Every metric, ordered by name, with its limit in `plan_id`.
pub fn plan_metrics(client: &mut SpiClient<'_>, plan_id: &str) -> Vec<MetricConfig> {
    spi::run(client, &PLAN_METRICS, &[plan_id.into()])
        .map(|row| {
            let metric: String = spi::get(&row, 1).unwrap_or_default();
            let kind: String = spi::get(&row, 2).unwrap_or_default();
            MetricConfig {
                kind: stored_kind(&metric, &kind),
                limit: Limit::from_row(spi::get(&row, 3).unwrap_or(false), spi::get(&row, 4)),
                metric,
            }
        })
        .collect()
}

/// A tenant's counters, by metric, as stored (not locked).
pub fn tenant_counters(client: &mut SpiClient<'_>, tenant_id: &str) -> HashMap<String, Counter> {
    spi::run(client, &TENANT_COUNTERS, &[tenant_id.into()])
        .map(|row| {
            let counter = Counter {
                used: spi::get(&row, 2).unwrap_or(0),
                period_start: spi::get_micros(&row, 3),
            };
            (spi::get::<String>(&row, 1).unwrap_or_default(), counter)
        })
        .collect()
}

/// A counter's copy of its configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
struct CachedLimits {
    max_units: Option<i64>,
    calendar_period: bool,
    valid: bool,
    meter_event: Option<String>,
    /// The units of the next alert threshold (see [`alerts`]).
    next_alert: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct StoredCounter {
    counter: Counter,
    limits: CachedLimits,
}

impl StoredCounter {
    fn from_row(row: &SpiHeapTupleData<'_>) -> StoredCounter {
        StoredCounter {
            counter: Counter {
                used: spi::get(row, 1).unwrap_or(0),
                period_start: spi::get_micros(row, 2),
            },
            limits: CachedLimits {
                max_units: spi::get(row, 3),
                calendar_period: spi::get(row, 4).unwrap_or(false),
                valid: spi::get(row, 5).unwrap_or(false),
                meter_event: spi::get(row, 6),
                next_alert: spi::get(row, 7),
            },
        }
    }

    /// The limit this row's copy vouches for in the current period, if any.
    fn current_limit(&self, calendar_month: Micros) -> Option<Limit> {
        let period_current =
            !self.limits.calendar_period || self.counter.period_start == Some(calendar_month);
        (self.limits.valid && period_current)
            .then(|| self.limits.max_units.map_or(Limit::Unlimited, Limit::Max))
    }
}

/// Lock a counter and read its count, if it exists.
pub fn lock_count(client: &mut SpiClient<'_>, tenant_id: &str, metric: &str) -> Option<Counter> {
    lock_counter(client, tenant_id, metric).map(|stored| stored.counter)
}

/// Store a count, leaving the counter's copy of its limits alone.
pub fn write_count(client: &mut SpiClient<'_>, tenant_id: &str, metric: &str, counter: Counter) {
    let period = spi::timestamptz(counter.period_start);
    spi::run(
        client,
        &WRITE_COUNT,
        &[tenant_id.into(), metric.into(), counter.used.into(), period],
    );
}

fn lock_counter(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    metric: &str,
) -> Option<StoredCounter> {
    spi::first_row(client, &LOCK_COUNTER, &[tenant_id.into(), metric.into()])
        .map(|row| StoredCounter::from_row(&row))
}

fn write_counter(client: &mut SpiClient<'_>, tenant_id: &str, metric: &str, stored: StoredCounter) {
    let StoredCounter { counter, limits } = stored;
    spi::run(
        client,
        &WRITE_COUNTER,
        &[
            tenant_id.into(),
            metric.into(),
            counter.used.into(),
            spi::timestamptz(counter.period_start),
            limits.max_units.into(),
            limits.calendar_period.into(),
            limits.valid.into(),
            limits.meter_event.as_deref().into(),
            limits.next_alert.into(),
        ],
    );
}

/// Write the usage report of an allowed increment of a billed metric.
fn enqueue_report(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    metric: &str,
    event_name: &str,
    units: i64,
) {
    let args = [
        tenant_id.into(),
        metric.into(),
        event_name.into(),
        units.into(),
    ];
    spi::run(client, &ENQUEUE_REPORT, &args);
}

fn raise_overflow(tenant_id: &str, metric: &str, overflow: rules::Overflow) -> ! {
    errors::counter_out_of_range(tenant_id, metric, overflow.used, overflow.units).raise()
}

pub(crate) fn increment(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    metric: &str,
    units: i64,
) -> Outcome {
    let calendar_month = rules::month_start(spi::now());
    let month: DatumWithOid = spi::timestamptz(Some(calendar_month));
    if let Some(row) = spi::first_row(
        client,
        &FAST_INCREMENT,
        &[tenant_id.into(), metric.into(), units.into(), month],
    ) {
        let used =
            spi::get(&row, 1).unwrap_or_else(|| spi::bug("fast increment without a count".into()));
        let max_units = spi::get::<i64>(&row, 2);
        let limit = max_units.map_or(Limit::Unlimited, Limit::Max);
        let next_alert = spi::get::<i64>(&row, 4);
        if let Some(event_name) = spi::get::<String>(&row, 3) {
            enqueue_report(client, tenant_id, metric, &event_name, units);
        }
        alerts::after_change(
            client,
            tenant_id,
            metric,
            used - units,
            used,
            max_units,
            next_alert,
        );
        return Outcome::allowed(used, limit);
    }

    // The fast path saw the latest count: if the row's copy is current, the
    // units did not fit (or would overflow), and the row says so.
    let peeked = spi::first_row(client, &PEEK_COUNTER, &[tenant_id.into(), metric.into()])
        .map(|row| StoredCounter::from_row(&row));
    if let Some((stored, limit)) = peeked
        .as_ref()
        .and_then(|s| s.current_limit(calendar_month).map(|limit| (s, limit)))
    {
        let used = stored.counter.used;
        if !rules::fits(limit, used, units).unwrap_or_else(|o| raise_overflow(tenant_id, metric, o))
        {
            return Outcome::refused(used, limit, Reason::LimitExceeded);
        }
        // A decrement made room since: decide under the lock below.
    }

    // Configuration changes wait for this transaction from here on, so the
    // configuration read next stays true until the copy is written.
    spi::run(client, &SHARE_LIMITS, &[]);
    spi::run(client, &SHARE_TENANT, &[tenant_id.into()]);
    let context = load_context(client, tenant_id, metric);
    if peeked.is_none() && context.limit != Limit::NotInPlan {
        spi::run(client, &ENSURE_COUNTER, &[tenant_id.into(), metric.into()]);
    }
    let stored = lock_counter(client, tenant_id, metric);
    let change = rules::increment(
        context.kind,
        context.limit,
        stored.as_ref().map(|s| s.counter),
        context.period.start,
        units,
    )
    .unwrap_or_else(|o| raise_overflow(tenant_id, metric, o));
    // Thresholds matter only under a finite limit.
    let limit = alerts::finite(context.limit);
    let percents = match limit {
        Some(_) => alerts::thresholds(client, &context.plan_id, metric),
        None => Vec::new(),
    };
    if change.result.allowed {
        let before = rules::current_count(
            context.kind,
            stored.as_ref().map(|s| s.counter),
            context.period.start,
        )
        .used;
        let period = alerts::alert_period(context.kind, context.period);
        let after = change.result.used;
        alerts::record(
            client, tenant_id, metric, period, &percents, before, after, limit,
        );
    }
    if let Some(stored) = stored {
        let counter = change.write.unwrap_or(stored.counter);
        let used = rules::current_count(context.kind, Some(counter), context.period.start).used;
        let mut limits = context.limits();
        limits.next_alert = rules::alerts::next_alert(limit, &percents, used);
        let fresh = StoredCounter { counter, limits };
        if fresh != stored {
            write_counter(client, tenant_id, metric, fresh);
        }
    }
    if let (true, Some(event_name)) = (change.result.allowed, &context.meter_event) {
        enqueue_report(client, tenant_id, metric, event_name, units);
    }
    change.result
}

/// Claim `key` for `call`: true when this call is its first. A key claimed
/// before gets false, after checking it was claimed for the same call (the
/// same operation, metric and units; another is refused with 22023).
fn claim_key(client: &mut SpiClient<'_>, tenant_id: &str, key: &str, call: KeyedCall<'_>) -> bool {
    let claim: [DatumWithOid; 5] = [
        tenant_id.into(),
        key.into(),
        call.metric.into(),
        call.units.into(),
        call.operation.as_str().into(),
    ];
    // A key of a tenant that does not exist claims nothing. (Read first, in
    // a statement of its own: on Citus an INSERT ... SELECT is not a
    // statement on one tenant's shard.)
    spi::first_row(client, &TENANT, &[tenant_id.into()]).is_some()
        && spi::first_row(client, &CLAIM_KEY, &claim).is_some()
}

/// The stored result of a key's first call, once `call` is known to repeat
/// it; none when nothing is stored (the tenant does not exist).
fn stored_result<'conn>(
    client: &mut SpiClient<'conn>,
    tenant_id: &str,
    key: &str,
    call: KeyedCall<'_>,
) -> Option<SpiHeapTupleData<'conn>> {
    let row = spi::first_row(client, &STORED_RESULT, &[tenant_id.into(), key.into()])?;
    let operation: String = spi::get(&row, 6).unwrap_or_default();
    let metric: String = spi::get(&row, 7).unwrap_or_default();
    let first = KeyedCall {
        operation: Operation::parse(&operation)
            .unwrap_or_else(|| spi::bug(format!("idempotency key with operation {operation}"))),
        metric: &metric,
        units: spi::get(&row, 8).unwrap_or(0),
    };
    rules::same_call(key, first, call).or_raise();
    Some(row)
}

fn stored_outcome(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    key: &str,
    call: KeyedCall<'_>,
) -> Option<Outcome> {
    let row = stored_result(client, tenant_id, key, call)?;
    let reason = spi::get::<String>(&row, 5).map(|reason| match reason.as_str() {
        "not_in_plan" => Reason::NotInPlan,
        _ => Reason::LimitExceeded,
    });
    Some(Outcome {
        allowed: spi::get(&row, 1)
            .unwrap_or_else(|| spi::bug("idempotency key without a result".into())),
        used: spi::get(&row, 2).unwrap_or(0),
        max_units: spi::get(&row, 3),
        remaining: spi::get(&row, 4),
        reason,
    })
}

pub(crate) fn usage_check(outcome: Outcome) -> PgHeapTuple<'static, AllocatedByRust> {
    let datums = [
        outcome.allowed.into_datum(),
        outcome.used.into_datum(),
        outcome.max_units.into_datum(),
        outcome.remaining.into_datum(),
        outcome.reason.map(Reason::as_str).into_datum(),
    ];
    // SAFETY: the datums are in the order and of the types of tally.usage_check.
    unsafe { composite::build(USAGE_CHECK, datums) }
}

/// Count `units` of `metric` for `tenant_id` if they fit in the tenant's
/// plan, all or nothing. Over the limit is an answer (`allowed = false`), not
/// an error. With an `idempotency_key`, a repeat returns the first result;
/// the same key with another metric or other units is refused (22023).
#[pg_extern(security_definer, requires = ["counters"])]
fn check_and_increment_usage(
    tenant_id: Option<&str>,
    metric: Option<&str>,
    units: default!(Option<i64>, 1),
    idempotency_key: default!(Option<&str>, NULL),
) -> pgrx::composite_type!('static, USAGE_CHECK) {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let metric = args::id("metric", metric).or_raise();
    let units = args::units(units).or_raise();
    let key = args::idempotency_key(idempotency_key).or_raise();

    let outcome = spi::with_catalog_search_path(|| {
        Spi::connect_mut(|client| {
            let Some(key) = key else {
                return increment(client, tenant_id, metric, units);
            };
            let call = KeyedCall {
                operation: Operation::Check,
                metric,
                units,
            };
            if !claim_key(client, tenant_id, key, call) {
                if let Some(first) = stored_outcome(client, tenant_id, key, call) {
                    return first;
                }
                // Nothing claimed and nothing stored: the tenant does not exist,
                // which the increment reports.
            }
            let outcome = increment(client, tenant_id, metric, units);
            spi::run(
                client,
                &SAVE_RESULT,
                &[
                    tenant_id.into(),
                    key.into(),
                    outcome.allowed.into(),
                    outcome.used.into(),
                    outcome.max_units.into(),
                    outcome.remaining.into(),
                    outcome.reason.map(Reason::as_str).into(),
                ],
            );
            outcome
        })
    });
    usage_check(outcome)
}

/// Give back `units` (a chatbot deleted, a message refunded); never below 0.
/// Returns the new count. Works for metrics outside the tenant's plan, and
/// creates nothing when the tenant has no counter for the metric.
#[pg_extern(security_definer)]
fn decrement_usage(
    tenant_id: Option<&str>,
    metric: Option<&str>,
    units: default!(Option<i64>, 1),
) -> i64 {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let metric = args::id("metric", metric).or_raise();
    let units = args::units(units).or_raise();

    spi::with_catalog_search_path(|| {
        Spi::connect_mut(|client| {
            let stored = lock_count(client, tenant_id, metric);
            let context = load_context(client, tenant_id, metric);
            let change = rules::decrement(context.kind, stored, context.period.start, units);
            if let Some(counter) = change.write {
                write_count(client, tenant_id, metric, counter);
            }
            change.result
        })
    })
}

/// Give back `units` of an allocation the tenant holds (a chatbot deleted),
/// once per `idempotency_key`: the API's decrement. All or nothing: a
/// consumable (22023) or more units than are in use (55000) are refused and
/// change nothing. A repeat of the key returns the first result; the key
/// with other arguments, or one used for a check, is refused (22023).
/// Returns the new count. `decrement_usage` remains for an application's own
/// corrections.
#[pg_extern(security_definer, requires = ["counters"])]
#[search_path(pg_catalog, pg_temp)]
fn release_usage(
    tenant_id: Option<&str>,
    metric: Option<&str>,
    units: Option<i64>,
    idempotency_key: Option<&str>,
) -> i64 {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let metric = args::id("metric", metric).or_raise();
    let units = args::units(units).or_raise();
    let key = args::idempotency_key(idempotency_key)
        .or_raise()
        .unwrap_or_else(|| errors::null_argument("idempotency_key").raise());

    Spi::connect_mut(|client| {
        let call = KeyedCall {
            operation: Operation::Release,
            metric,
            units,
        };
        if !claim_key(client, tenant_id, key, call) {
            if let Some(row) = stored_result(client, tenant_id, key, call) {
                return spi::get(&row, 2)
                    .unwrap_or_else(|| spi::bug("release key without a result".into()));
            }
            // Nothing claimed and nothing stored: the tenant does not exist,
            // which loading it reports.
        }
        let stored = lock_count(client, tenant_id, metric);
        let context = load_context(client, tenant_id, metric);
        let change = rules::release(context.kind, stored, units).unwrap_or_else(|refusal| {
            match refusal {
                ReleaseRefusal::Consumable => {
                    errors::releases_allocations_only(metric, context.kind.as_str())
                }
                ReleaseRefusal::ExceedsUsed { used } => {
                    errors::release_exceeds_used(tenant_id, metric, used, units)
                }
            }
            .raise()
        });
        if let Some(counter) = change.write {
            write_count(client, tenant_id, metric, counter);
        }
        spi::run(
            client,
            &SAVE_RESULT,
            &[
                tenant_id.into(),
                key.into(),
                true.into(),
                change.result.into(),
                Option::<i64>::None.into(),
                Option::<i64>::None.into(),
                Option::<&str>::None.into(),
            ],
        );
        change.result
    })
}

static TENANT: Statement = Statement {
    sql: "SELECT plan_id, period_start, period_end FROM tally.tenants WHERE tenant_id = $1",
    params: &[TEXT],
};

/// A tenant's plan and current period.
pub struct Tenant {
    pub plan_id: String,
    pub period: Period,
    /// The tenant has no stored period: the calendar month is its period.
    pub calendar_period: bool,
}

pub fn load_tenant(client: &mut SpiClient<'_>, tenant_id: &str) -> Tenant {
    let row = spi::first_row(client, &TENANT, &[tenant_id.into()])
        .unwrap_or_else(|| errors::tenant_not_found(tenant_id).raise());
    let period_start = spi::get_micros(&row, 2);
    Tenant {
        plan_id: spi::get(&row, 1).unwrap_or_else(|| spi::bug("tenant without plan".into())),
        period: rules::current_period(period_start, spi::get_micros(&row, 3), spi::now()),
        calendar_period: period_start.is_none(),
    }
}

/// Where a tenant stands: one row per metric, ordered by metric. `used` is
/// the count in the current period; period columns are NULL for allocations.
// pgrx reads the result's column names from the inline tuple type.
#[allow(clippy::type_complexity)]
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn usage_summary(
    tenant_id: Option<&str>,
) -> TableIterator<
    'static,
    (
        name!(metric, String),
        name!(kind, String),
        name!(used, i64),
        name!(max_units, Option<i64>),
        name!(remaining, Option<i64>),
        name!(period_start, Option<TimestampWithTimeZone>),
        name!(period_end, Option<TimestampWithTimeZone>),
    ),
> {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let rows = Spi::connect_mut(|client| {
        let tenant = load_tenant(client, tenant_id);
        let counters = tenant_counters(client, tenant_id);
        // Every metric of the plan, and any other the tenant has a counter for.
        plan_metrics(client, &tenant.plan_id)
            .into_iter()
            .filter(|config| {
                config.limit != Limit::NotInPlan || counters.contains_key(&config.metric)
            })
            .map(|config| {
                let stored = counters.get(&config.metric).copied();
                let used = rules::current_count(config.kind, stored, tenant.period.start).used;
                let period = (config.kind == Kind::Consumable).then_some(tenant.period);
                (
                    config.metric,
                    config.kind.as_str().to_string(),
                    used,
                    config.limit.max_units(),
                    config.limit.remaining(used),
                    period.map(|p| timestamp(p.start)),
                    period.map(|p| timestamp(p.end)),
                )
            })
            .collect::<Vec<_>>()
    });
    TableIterator::new(rows)
}

fn timestamp(at: Micros) -> TimestampWithTimeZone {
    TimestampWithTimeZone::try_from(at)
        .unwrap_or_else(|error| spi::bug(format!("timestamp out of range: {error:?}")))
}
