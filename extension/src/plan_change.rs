//! Plan changes: `validate_plan_change` answers whether a tenant may move to
//! a plan and why not; `change_plan` makes the move under the tenant's locks.
//!
//! A change must not race an increment judged against the old plan.
//! `change_plan` locks the tenant row and the tenant's limits (so no counter
//! copy of the old limits can be written meanwhile), then every counter (so
//! in-flight increments finish first), validates against those latest counts
//! and switches. The switch clears the counters' copies of their limits, so an
//! increment that queued behind it re-reads the new plan.

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use pgrx::spi::{SpiClient, SpiTupleTable};
use pgrx::{AllocatedByRust, JsonB};
use serde_json::json;

use crate::args;
use crate::composite;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{self, Counter, Limit, MetricUse, PlanCheck};
use crate::spi::{self, Statement, TEXT};
use crate::usage::{load_tenant, stored_kind, Tenant};

const PLAN_CHECK: &str = "tally.plan_check";

static PLAN_EXISTS: Statement = Statement {
    sql: "SELECT true FROM tally.plans WHERE plan_id = $1",
    params: &[TEXT],
};

/// The tenant's counters against the new plan's limits.
static COUNTERS_AGAINST_PLAN: Statement = Statement {
    sql: "SELECT c.metric, m.kind, c.used, c.period_start, l.plan_id IS NOT NULL, l.max_units
            FROM tally.usage_counters AS c
            JOIN tally.metrics AS m ON m.metric = c.metric
            LEFT JOIN tally.plan_limits AS l ON l.plan_id = $2 AND l.metric = c.metric
           WHERE c.tenant_id = $1
           ORDER BY c.metric",
    params: &[TEXT, TEXT],
};

static LOCK_TENANT: Statement = Statement {
    sql: "SELECT true FROM tally.tenants WHERE tenant_id = $1 FOR NO KEY UPDATE",
    params: &[TEXT],
};

static LOCK_TENANT_LIMITS: Statement = Statement {
    sql: "SELECT tally._lock_tenant_limits($1)",
    params: &[TEXT],
};

static LOCK_COUNTERS: Statement = Statement {
    sql: "SELECT metric FROM tally.usage_counters WHERE tenant_id = $1 ORDER BY metric FOR UPDATE",
    params: &[TEXT],
};

/// Zero counters of metrics the new plan lacks say nothing: drop them.
static DROP_UNUSED_COUNTERS: Statement = Statement {
    sql: "DELETE FROM tally.usage_counters AS c
           WHERE c.tenant_id = $1 AND c.used = 0
             AND NOT EXISTS (SELECT FROM tally.plan_limits AS l WHERE l.plan_id = $2 AND l.metric = c.metric)",
    params: &[TEXT, TEXT],
};

/// The switch; the tenants trigger clears the counters' copies of the limits.
static SWITCH_PLAN: Statement = Statement {
    sql: "UPDATE tally.tenants SET plan_id = $2 WHERE tenant_id = $1",
    params: &[TEXT, TEXT],
};

fn require_plan(client: &mut SpiClient<'_>, plan_id: &str) {
    if spi::first_row(client, &PLAN_EXISTS, &[plan_id.into()]).is_none() {
        errors::plan_not_found(plan_id).raise()
    }
}

fn metric_uses(table: SpiTupleTable<'_>, tenant: &Tenant) -> Vec<MetricUse> {
    table
        .map(|row| {
            let metric: String = spi::get(&row, 1).unwrap_or_default();
            let kind_name: String = spi::get(&row, 2).unwrap_or_default();
            let kind = stored_kind(&metric, &kind_name);
            let stored = Counter {
                used: spi::get(&row, 3).unwrap_or(0),
                period_start: spi::get_micros(&row, 4),
            };
            MetricUse {
                used: rules::current_count(kind, Some(stored), tenant.period.start).used,
                new_limit: Limit::from_row(spi::get(&row, 5).unwrap_or(false), spi::get(&row, 6)),
                metric,
                kind,
            }
        })
        .collect()
}

fn check(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    tenant: &Tenant,
    new_plan_id: &str,
) -> PlanCheck {
    let table = spi::run(
        client,
        &COUNTERS_AGAINST_PLAN,
        &[tenant_id.into(), new_plan_id.into()],
    );
    let uses = metric_uses(table, tenant);
    rules::check_plan_change(tenant_id, &tenant.plan_id, new_plan_id, &uses)
}

fn plan_check(check: &PlanCheck) -> PgHeapTuple<'static, AllocatedByRust> {
    let violations: Vec<_> = check
        .violations
        .iter()
        .map(|v| {
            json!({
                "metric": v.metric,
                "kind": v.kind.as_str(),
                "used": v.used,
                "new_limit": v.new_limit,
                "excess": v.excess,
                "blocking": v.blocking,
            })
        })
        .collect();
    let datums = [
        check.valid.into_datum(),
        (!check.valid).then_some("limit_exceeded").into_datum(),
        check.message.as_str().into_datum(),
        JsonB(serde_json::Value::Array(violations)).into_datum(),
    ];
    // SAFETY: the datums are in the order and of the types of tally.plan_check.
    unsafe { composite::build(PLAN_CHECK, datums) }
}

/// Whether `tenant_id` may move to `new_plan_id`: invalid when an allocation
/// (chatbots, seats) is over the new limit. Consumables over the new limit
/// are listed in `violations` but do not block. Changes nothing.
#[pg_extern(requires = ["usage"])]
fn validate_plan_change(
    tenant_id: Option<&str>,
    new_plan_id: Option<&str>,
) -> pgrx::composite_type!('static, PLAN_CHECK) {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let new_plan_id = args::id("new_plan_id", new_plan_id).or_raise();
    let check = Spi::connect_mut(|client| {
        let tenant = load_tenant(client, tenant_id);
        require_plan(client, new_plan_id);
        check(client, tenant_id, &tenant, new_plan_id)
    });
    plan_check(&check)
}

/// Move `tenant_id` to `new_plan_id` if the change is valid (or `force`d),
/// judged under the tenant's locks. A refusal is SQLSTATE 55000 with the
/// validation message in DETAIL.
#[pg_extern(requires = ["usage"])]
fn change_plan(
    tenant_id: Option<&str>,
    new_plan_id: Option<&str>,
    force: default!(Option<bool>, false),
) -> pgrx::composite_type!('static, PLAN_CHECK) {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let new_plan_id = args::id("new_plan_id", new_plan_id).or_raise();
    let force = force
        .ok_or_else(|| errors::null_argument("force"))
        .or_raise();
    let check = Spi::connect_mut(|client| {
        if spi::first_row(client, &LOCK_TENANT, &[tenant_id.into()]).is_none() {
            errors::tenant_not_found(tenant_id).raise()
        }
        require_plan(client, new_plan_id);
        spi::run(client, &LOCK_TENANT_LIMITS, &[tenant_id.into()]);
        spi::run(client, &LOCK_COUNTERS, &[tenant_id.into()]);
        let tenant = load_tenant(client, tenant_id);
        let check = check(client, tenant_id, &tenant, new_plan_id);
        if !check.valid && !force {
            errors::plan_change_refused(&check.message).raise()
        }
        spi::run(
            client,
            &DROP_UNUSED_COUNTERS,
            &[tenant_id.into(), new_plan_id.into()],
        );
        spi::run(
            client,
            &SWITCH_PLAN,
            &[tenant_id.into(), new_plan_id.into()],
        );
        check
    });
    plan_check(&check)
}
