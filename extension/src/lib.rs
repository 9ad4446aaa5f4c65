//! tally: usage metering and quota enforcement that cannot be raced.
//!
//! The schema (`sql/schema/*.sql`) holds the configuration, the counters,
//! provider events, the usage-report queue and tallyd's API keys; the
//! functions here enforce the rules of [`rules`] under row locks.

use pgrx::prelude::*;

mod args;
mod composite;
mod errors;
mod gucs;
mod lifecycle;
mod plan_change;
mod reports;
pub use tally_rules as rules;
mod spi;
mod usage;

::pgrx::pg_module_magic!(name, version);

extension_sql_file!("../../sql/schema/config.sql", name = "config", bootstrap);
extension_sql_file!(
    "../../sql/schema/usage.sql",
    name = "usage",
    requires = ["config"]
);
extension_sql_file!(
    "../../sql/schema/billing.sql",
    name = "billing",
    requires = ["usage"]
);
extension_sql_file!(
    "../../sql/schema/daemon.sql",
    name = "daemon",
    requires = ["billing"]
);
extension_sql_file!(
    "../../sql/schema/worker.sql",
    name = "worker",
    requires = ["daemon"]
);

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
