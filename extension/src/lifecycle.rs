//! The billing life cycle: `reset_usage` (a payment succeeded),
//! `start_period` (a renewal), `sync_usage` (reconcile a count with the
//! caller's truth), `set_tenant_status` and `link_provider_customer`.

use pgrx::prelude::*;

use crate::args;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{self, Kind, Provider, TenantStatus};
use pgrx::spi::SpiClient;

use crate::spi::{self, Statement, TEXT, TEXT_ARRAY, TIMESTAMPTZ};
use crate::usage::{self, load_tenant};

static METRIC_KIND: Statement = Statement {
    sql: "SELECT kind FROM tally.metrics WHERE metric = $1",
    params: &[TEXT],
};

static CONSUMABLES: Statement = Statement {
    sql: "SELECT metric FROM tally.metrics WHERE kind = 'consumable'",
    params: &[],
};

/// A tenant's counters of the metrics `$2` (consumables) back to 0 in the
/// period starting at `$3`.
static RESET_CONSUMABLES: Statement = Statement {
    sql: "UPDATE tally.usage_counters SET used = 0, period_start = $3
           WHERE tenant_id = $1 AND metric = ANY ($2)
             AND (used <> 0 OR period_start IS DISTINCT FROM $3)",
    params: &[TEXT, TEXT_ARRAY, TIMESTAMPTZ],
};

static LOCK_TENANT_PERIOD: Statement = Statement {
    sql: "SELECT period_start FROM tally.tenants WHERE tenant_id = $1 FOR NO KEY UPDATE",
    params: &[TEXT],
};

/// The renewal; the tenants trigger clears the counters' copies of the limits.
static SET_PERIOD: Statement = Statement {
    sql: "UPDATE tally.tenants SET period_start = $2, period_end = $3 WHERE tenant_id = $1",
    params: &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ],
};

/// Every consumable (`$3`) starts the new period at 0, whatever period it
/// was counted in (a tenant's first stored period may start before the
/// calendar month its counts were kept in).
static RESET_FOR_PERIOD: Statement = Statement {
    sql: "UPDATE tally.usage_counters SET used = 0, period_start = $2
           WHERE tenant_id = $1 AND metric = ANY ($3)",
    params: &[TEXT, TIMESTAMPTZ, TEXT_ARRAY],
};

/// The consumable metrics (a configuration read, kept apart from the tenant
/// tables' statements).
fn consumables(client: &mut SpiClient<'_>) -> Vec<String> {
    spi::run(client, &CONSUMABLES, &[])
        .filter_map(|row| spi::get::<String>(&row, 1))
        .collect()
}

static SET_STATUS: Statement = Statement {
    sql:
        "UPDATE tally.tenants SET status = $2 WHERE tenant_id = $1 AND status <> $2 RETURNING true",
    params: &[TEXT, TEXT],
};

static TENANT_EXISTS: Statement = Statement {
    sql: "SELECT true FROM tally.tenants WHERE tenant_id = $1",
    params: &[TEXT],
};

/// The tenant a provider's customer is linked to.
static CUSTOMER_OWNER: Statement = Statement {
    sql: "SELECT tenant_id FROM tally.provider_links
           WHERE provider = $1 AND object = 'customer' AND object_id = $2",
    params: &[TEXT, TEXT],
};

/// The tenant a provider's subscription is linked to.
static SUBSCRIPTION_OWNER: Statement = Statement {
    sql: "SELECT tenant_id FROM tally.provider_links
           WHERE provider = $1 AND object = 'subscription' AND object_id = $2",
    params: &[TEXT, TEXT],
};

static LINK_STRIPE: Statement = Statement {
    sql: "UPDATE tally.tenants
             SET stripe_customer_id = $2, stripe_subscription_id = coalesce($3, stripe_subscription_id)
           WHERE tenant_id = $1 RETURNING true",
    params: &[TEXT, TEXT, TEXT],
};

static LINK_PADDLE: Statement = Statement {
    sql: "UPDATE tally.tenants
             SET paddle_customer_id = $2, paddle_subscription_id = coalesce($3, paddle_subscription_id)
           WHERE tenant_id = $1 RETURNING true",
    params: &[TEXT, TEXT, TEXT],
};

/// Consumables back to 0 (a payment succeeded): all of the tenant's, or the
/// one named. Returns how many counters changed.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn reset_usage(tenant_id: Option<&str>, metric: default!(Option<&str>, NULL)) -> i64 {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let metric = metric.map(|metric| args::id("metric", Some(metric)).or_raise());
    Spi::connect_mut(|client| {
        let tenant = load_tenant(client, tenant_id);
        if let Some(metric) = metric {
            let kind = spi::first_row(client, &METRIC_KIND, &[metric.into()])
                .and_then(|row| spi::get::<String>(&row, 1))
                .unwrap_or_else(|| errors::metric_not_found(metric).raise());
            if Kind::parse(&kind) != Some(Kind::Consumable) {
                errors::resets_consumables_only(metric, &kind).raise()
            }
        }
        let metrics = match metric {
            Some(metric) => vec![metric.to_string()],
            None => consumables(client),
        };
        let period = spi::timestamptz(Some(tenant.period.start));
        spi::run(
            client,
            &RESET_CONSUMABLES,
            &[tenant_id.into(), metrics.into(), period],
        )
        .len() as i64
    })
}

/// A renewal: when `period_start` is later than the stored one, store the
/// new period, reset the consumables and return true. The same or an older
/// period (a retried or out-of-order event) changes nothing: false.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn start_period(
    tenant_id: Option<&str>,
    period_start: Option<TimestampWithTimeZone>,
    period_end: default!(Option<TimestampWithTimeZone>, NULL),
) -> bool {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let (start, end) = args::period(period_start, period_end).or_raise();
    Spi::connect_mut(|client| {
        let Some(locked) = spi::first_row(client, &LOCK_TENANT_PERIOD, &[tenant_id.into()]) else {
            errors::tenant_not_found(tenant_id).raise()
        };
        if !rules::is_newer_period(spi::get_micros(&locked, 1), start) {
            return false;
        }
        let args = [
            tenant_id.into(),
            spi::timestamptz(Some(start)),
            spi::timestamptz(end),
        ];
        spi::run(client, &SET_PERIOD, &args);
        let metrics = consumables(client);
        spi::run(
            client,
            &RESET_FOR_PERIOD,
            &[
                tenant_id.into(),
                spi::timestamptz(Some(start)),
                metrics.into(),
            ],
        );
        true
    })
}

/// Set a counter to `actual`, the caller's own count (say `count(*)` of the
/// tenant's chatbots), even above the limit. Returns the drift, `actual`
/// minus the count tally had. Never billed.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn sync_usage(tenant_id: Option<&str>, metric: Option<&str>, actual: Option<i64>) -> i64 {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let metric = args::id("metric", metric).or_raise();
    let actual = args::count("actual", actual).or_raise();
    Spi::connect_mut(|client| {
        // A counter for any metric, in the plan or not: a sync records what is.
        let context = usage::load_context(client, tenant_id, metric);
        spi::run(
            client,
            &usage::ENSURE_COUNTER,
            &[tenant_id.into(), metric.into()],
        );
        let stored = usage::lock_count(client, tenant_id, metric);
        let previous = rules::current_count(context.kind, stored, context.period.start);
        let synced = rules::Counter {
            used: actual,
            ..previous
        };
        if stored != Some(synced) {
            usage::write_count(client, tenant_id, metric, synced);
        }
        actual - previous.used
    })
}

/// Set a tenant's status (`active`, `past_due`, `action_required`,
/// `canceled`); true if it changed. The status does not gate enforcement:
/// the plan does.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn set_tenant_status(tenant_id: Option<&str>, status: Option<&str>) -> bool {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let status = args::id("status", status).or_raise();
    if TenantStatus::parse(status).is_none() {
        errors::unknown_tenant_status(None, Some(status)).raise()
    }
    Spi::connect_mut(|client| {
        if spi::first_row(client, &SET_STATUS, &[tenant_id.into(), status.into()]).is_some() {
            return true;
        }
        if spi::first_row(client, &TENANT_EXISTS, &[tenant_id.into()]).is_none() {
            errors::tenant_not_found(tenant_id).raise()
        }
        false
    })
}

/// Link a billing provider's customer (and subscription) to a tenant, so
/// that the provider's events find it. A customer or subscription linked to
/// another tenant is refused (23505, `customer already linked to another
/// tenant` or `subscription already linked to another tenant`). This is the
/// operator's call and may replace the tenant's own link; webhooks link
/// through `apply_checkout`, which never does.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn link_provider_customer(
    tenant_id: Option<&str>,
    provider: Option<&str>,
    customer_id: Option<&str>,
    subscription_id: default!(Option<&str>, NULL),
) {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    let provider_name = args::id("provider", provider).or_raise();
    let customer_id = args::id("customer_id", customer_id).or_raise();
    let subscription_id =
        subscription_id.map(|id| args::id("subscription_id", Some(id)).or_raise());
    let link = match Provider::parse(provider_name) {
        Some(Provider::Stripe) => &LINK_STRIPE,
        Some(Provider::Paddle) => &LINK_PADDLE,
        None => errors::unknown_provider(provider_name).raise(),
    };
    Spi::connect_mut(|client| {
        let current_owner = spi::first_row(
            client,
            &CUSTOMER_OWNER,
            &[provider_name.into(), customer_id.into()],
        )
        .and_then(|row| spi::get::<String>(&row, 1));
        if let Some(other) = current_owner.filter(|other| other != tenant_id) {
            errors::customer_linked_elsewhere(provider_name, customer_id, &other).raise()
        }
        if let Some(subscription_id) = subscription_id {
            let subscription_owner = spi::first_row(
                client,
                &SUBSCRIPTION_OWNER,
                &[provider_name.into(), subscription_id.into()],
            )
            .and_then(|row| spi::get::<String>(&row, 1));
            if let Some(other) = subscription_owner.filter(|other| other != tenant_id) {
                errors::subscription_linked_elsewhere(provider_name, subscription_id, &other)
                    .raise()
            }
        }
        let linked = spi::first_row(
            client,
            link,
            &[tenant_id.into(), customer_id.into(), subscription_id.into()],
        );
        if linked.is_none() {
            errors::tenant_not_found(tenant_id).raise()
        }
    })
}
