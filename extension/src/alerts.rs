//! Threshold alerts, written by the increment that crosses a threshold, in
//! its own transaction.
//!
//! A counter keeps, in its copy of the configuration, the units of the
//! lowest threshold above its count (`next_alert_at`). Whatever changes a
//! count calls [`after_change`] with the count before and after and that
//! copy: a change that reaches no threshold returns at once, without a
//! statement. A crossing inserts one alert per threshold crossed (the table's
//! unique constraint keeps one per tenant, metric, period and threshold),
//! notifies `tally_alerts` and moves the copy to the next threshold.

use pgrx::spi::SpiClient;

use crate::rules::{alerts, Kind, Limit, Period};
use crate::spi::{self, Statement, INT4, INT8, TEXT, TIMESTAMPTZ};
use crate::usage;

/// The thresholds that apply to a tenant's metric: those of every plan and
/// those of the tenant's plan.
/// (By the tenant's plan, read before: no statement on a tenant's path joins
/// the tenant tables with the configuration.)
static THRESHOLDS: Statement = Statement {
    sql: "SELECT a.percent
            FROM tally.alert_thresholds AS a
           WHERE a.metric = $2 AND (a.plan_id IS NULL OR a.plan_id = $1)",
    params: &[TEXT, TEXT],
};

/// One alert, once: a repeat of the same tenant, metric, period and
/// threshold inserts nothing and notifies nothing.
static RECORD_ALERT: Statement = Statement {
    sql: "WITH alert AS (
              INSERT INTO tally.alerts (tenant_id, metric, percent, threshold, used, max_units,
                                        period_start, period_end)
              VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                  ON CONFLICT DO NOTHING
           RETURNING id, tenant_id, metric, percent)
          SELECT pg_catalog.pg_notify('tally_alerts', pg_catalog.json_build_object(
                     'id', id, 'tenant_id', tenant_id, 'metric', metric, 'percent', percent)::text)
            FROM alert",
    params: &[TEXT, TEXT, INT4, INT8, INT8, INT8, TIMESTAMPTZ, TIMESTAMPTZ],
};

static SET_NEXT_ALERT: Statement = Statement {
    sql: "UPDATE tally.usage_counters SET next_alert_at = $3 WHERE tenant_id = $1 AND metric = $2",
    params: &[TEXT, TEXT, INT8],
};

/// The thresholds (percentages) configured for a metric under a plan.
pub fn thresholds(client: &mut SpiClient<'_>, plan_id: &str, metric: &str) -> Vec<i32> {
    spi::run(client, &THRESHOLDS, &[plan_id.into(), metric.into()])
        .filter_map(|row| spi::get::<i32>(&row, 1))
        .collect()
}

/// After a tenant's count of `metric` moved from `before` to `after` under
/// `limit` (None: unlimited), with the counter row locked and its copy of the
/// next threshold `next_alert`: write the alerts of the thresholds crossed,
/// notify, and move the copy on. Costs nothing when `after` is below
/// `next_alert`.
pub fn after_change(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    metric: &str,
    before: i64,
    after: i64,
    limit: Option<i64>,
    next_alert: Option<i64>,
) {
    if !alerts::crosses(next_alert, after) {
        return;
    }
    let context = usage::load_context(client, tenant_id, metric);
    let percents = thresholds(client, &context.plan_id, metric);
    record(
        client,
        tenant_id,
        metric,
        alert_period(context.kind, context.period),
        &percents,
        before,
        after,
        limit,
    );
    let next = alerts::next_alert(limit, &percents, after);
    spi::run(
        client,
        &SET_NEXT_ALERT,
        &[tenant_id.into(), metric.into(), next.into()],
    );
}

/// The period an alert belongs to: a consumable's billing period; none for
/// an allocation.
pub fn alert_period(kind: Kind, period: Period) -> Option<Period> {
    (kind == Kind::Consumable).then_some(period)
}

/// Write (once) the alert of each threshold a move from `before` to `after`
/// crossed.
#[allow(clippy::too_many_arguments)]
pub fn record(
    client: &mut SpiClient<'_>,
    tenant_id: &str,
    metric: &str,
    period: Option<Period>,
    percents: &[i32],
    before: i64,
    after: i64,
    limit: Option<i64>,
) {
    let Some(limit) = limit else { return };
    for crossing in alerts::crossed(limit, percents, before, after) {
        spi::run(
            client,
            &RECORD_ALERT,
            &[
                tenant_id.into(),
                metric.into(),
                crossing.percent.into(),
                crossing.units.into(),
                after.into(),
                limit.into(),
                spi::timestamptz(period.map(|p| p.start)),
                spi::timestamptz(period.map(|p| p.end)),
            ],
        );
    }
}

/// The limit a threshold is a share of: only a finite limit has thresholds.
pub fn finite(limit: Limit) -> Option<i64> {
    match limit {
        Limit::Max(max) => Some(max),
        Limit::Unlimited | Limit::NotInPlan => None,
    }
}
