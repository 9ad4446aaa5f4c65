//! tally: usage metering and quota enforcement that cannot be raced.
//!
//! Where code goes. SQL files (`sql/schema/`, by domain) own data: tables,
//! constraints, indexes, the configuration tables' checks that must fire on
//! plain-SQL writes, and one-statement functions that validate nothing.
//! Every function that validates arguments, raises or decides is a thin
//! `#[pg_extern]` here: it checks its arguments ([`args`]), runs kept
//! statements ([`spi`]) under row locks, asks the rules ([`rules`], the
//! `tally-rules` crate) what to do, and raises errors from the one
//! catalogue (`tally_rules::errors`).

use pgrx::prelude::*;

mod alert_queue;
mod alerts;
mod args;
mod billing;
mod cleanup;
mod composite;
mod enforce;
mod errors;
mod events;
mod gucs;
mod lifecycle;
mod plan_change;
mod reports;
mod shards;
pub use tally_rules as rules;
mod spi;
mod transition;
mod upgrade;
mod usage;

::pgrx::pg_module_magic!(name, version);

// The schema, by domain; `requires` names what each file's objects use.
// (`extension/sql` links to the top-level `sql/` because `cargo pgrx
// install` copies upgrade scripts from `./sql` of the crate it builds.)
extension_sql_file!("../../sql/schema/config.sql", name = "config", bootstrap);
extension_sql_file!(
    "../../sql/schema/counters.sql",
    name = "counters",
    requires = ["config"]
);
extension_sql_file!("../../sql/schema/events.sql", name = "events");
extension_sql_file!(
    "../../sql/schema/reports.sql",
    name = "reports",
    requires = ["counters"]
);
extension_sql_file!(
    "../../sql/schema/alerts.sql",
    name = "alerts",
    requires = ["counters"]
);
extension_sql_file!(
    "../../sql/schema/api_keys.sql",
    name = "api_keys",
    requires = ["config"]
);
extension_sql_file!(
    "../../sql/schema/enforce.sql",
    name = "enforce",
    requires = ["counters", _enforce_apply]
);
extension_sql_file!(
    "../../sql/schema/distribute.sql",
    name = "distribute",
    requires = ["counters", "alerts", "api_keys", "events", "enforce"]
);
// Owners and privileges of everything above, once it all exists.
extension_sql_file!("../../sql/schema/grants.sql", name = "grants", finalize);

#[pg_guard]
pub extern "C-unwind" fn _PG_init() {
    gucs::register();
    composite::register_invalidation();
}

#[cfg(any(test, feature = "pg_test"))]
mod tests;

/// Required by `cargo pgrx test`.
#[cfg(test)]
pub mod pg_test {
    pub fn setup(_options: Vec<&str>) {}

    #[must_use]
    pub fn postgresql_conf_options() -> Vec<&'static str> {
        vec![]
    }
}
