//! Plan changes: `validate_plan_change` answers whether a tenant may move to
//! a plan and why not; `change_plan` makes the move under the tenant's locks.
//!
//! A change must not race an increment judged against the old plan.
//! `change_plan` locks the tenant row (which also holds off increments that
//! would refresh a counter's copy of the old limits: they lock it shared
//! first), then every counter (so
//! in-flight increments finish first), validates against those latest counts
//! and switches. The switch clears the counters' copies of their limits, so an
//! increment that queued behind it re-reads the new plan.

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::prelude::*;
use std::collections::HashMap;

use pgrx::spi::SpiClient;
use pgrx::{AllocatedByRust, JsonB};
use serde_json::json;

use crate::args;
use crate::composite;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{self, Limit, MetricUse, PlanCheck};
use crate::spi::{self, Statement, TEXT, TEXT_ARRAY};
use crate::usage::{load_tenant, plan_metrics, tenant_counters, MetricConfig, Tenant};

const PLAN_CHECK: &str = "tally.plan_check";

static PLAN_EXISTS: Statement = Statement {
    sql: "SELECT true FROM tally.plans WHERE plan_id = $1",
    params: &[TEXT],
};

static LOCK_TENANT: Statement = Statement {
    sql: "SELECT true FROM tally.tenants WHERE tenant_id = $1 FOR NO KEY UPDATE",
    params: &[TEXT],
};

static LOCK_COUNTERS: Statement = Statement {
    sql: "SELECT metric FROM tally.usage_counters WHERE tenant_id = $1 ORDER BY metric FOR UPDATE",
    params: &[TEXT],
};

/// Zero counters of metrics the new plan lacks say nothing: drop them
/// (`$2`: the metrics the new plan lacks).
static DROP_UNUSED_COUNTERS: Statement = Statement {
    sql: "DELETE FROM tally.usage_counters WHERE tenant_id = $1 AND used = 0 AND metric = ANY ($2)",
    params: &[TEXT, TEXT_ARRAY],
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

/// The tenant's counters, ordered by metric, against the new plan's limits.
fn metric_uses(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    tenant: &Tenant,
    new_plan_id: &str,
) -> Vec<MetricUse> {
    let mut counters: Vec<_> = tenant_counters(client, tenant_id).into_iter().collect();
    counters.sort_by(|a, b| a.0.cmp(&b.0));
    let configs: HashMap<String, MetricConfig> = plan_metrics(client, new_plan_id)
        .into_iter()
        .map(|config| (config.metric.clone(), config))
        .collect();
    counters
        .into_iter()
        .map(|(metric, stored)| {
            let config = configs
                .get(&metric)
                .unwrap_or_else(|| spi::bug(format!("counter of unknown metric {metric}")));
            MetricUse {
                used: rules::current_count(config.kind, Some(stored), tenant.period.start).used,
                new_limit: config.limit,
                kind: config.kind,
                metric,
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
    let uses = metric_uses(client, tenant_id, tenant, new_plan_id);
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
#[pg_extern(security_definer, requires = ["counters"])]
#[search_path(pg_catalog, pg_temp)]
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
#[pg_extern(security_definer, requires = ["counters"])]
#[search_path(pg_catalog, pg_temp)]
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
        spi::run(client, &LOCK_COUNTERS, &[tenant_id.into()]);
        let tenant = load_tenant(client, tenant_id);
        let check = check(client, tenant_id, &tenant, new_plan_id);
        if !check.valid && !force {
            errors::plan_change_refused(&check.message).raise()
        }
        let outside_plan: Vec<String> = plan_metrics(client, new_plan_id)
            .into_iter()
            .filter(|config| config.limit == Limit::NotInPlan)
            .map(|config| config.metric)
            .collect();
        spi::run(
            client,
            &DROP_UNUSED_COUNTERS,
            &[tenant_id.into(), outside_plan.into()],
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
