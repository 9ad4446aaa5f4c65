//! `tally.enforce_count`: the counter side. The trigger functions on an
//! application's table (`sql/schema/enforce.sql`) sum a statement's rows per
//! tenant and hand each tenant's change, in sorted tenant order, to
//! [`apply`], the one place where enforcement changes a counter: an increment
//! goes through the same path as `check_and_increment_usage` (first use, the
//! limit copy, a consumable's new period, usage reports), a give-back through
//! the decrement rules, and enabling sets a counter to the rows it has.

use pgrx::prelude::*;
use pgrx::spi::SpiClient;

use crate::args;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{self, Counter, Kind, Outcome};
use crate::spi;
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
#[pg_extern(security_definer, requires = ["counters"])]
#[search_path(pg_catalog, pg_temp)]
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
    let outcome = Spi::connect_mut(|client| apply(client, tenant_id, metric, change));
    usage::usage_check(outcome)
}
