//! Bad arguments and bad configuration values: each is refused with its
//! SQLSTATE, a stable message and a hint, and changes nothing.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    /// Every case fails with its SQLSTATE and message, with a hint, and
    /// changes nothing.
    fn assert_all_fail(cases: &[(&str, &str, &str)]) {
        fixture();
        // Some state to protect: a counter and an idempotency key.
        check("'acme', 'messages', 7, 'earlier'");
        for (sql, sqlstate, message) in cases {
            assert_fails(sql, sqlstate, message);
        }
    }

    #[pg_test]
    fn check_and_increment_usage_rejects_bad_arguments() {
        let f = "SELECT tally.check_and_increment_usage";
        assert_all_fail(&[
            (
                &format!("{f}(NULL, 'messages')"),
                "22004",
                "tenant_id must not be null",
            ),
            (
                &format!("{f}('', 'messages')"),
                "22023",
                "tenant_id must not be empty",
            ),
            (
                &format!("{f}('acme', NULL)"),
                "22004",
                "metric must not be null",
            ),
            (
                &format!("{f}('acme', '')"),
                "22023",
                "metric must not be empty",
            ),
            (
                &format!("{f}('acme', 'messages', NULL)"),
                "22004",
                "units must not be null",
            ),
            (
                &format!("{f}('acme', 'messages', 0)"),
                "22023",
                "units must be positive",
            ),
            (
                &format!("{f}('acme', 'messages', -5)"),
                "22023",
                "units must be positive",
            ),
            (
                &format!("{f}('acme', 'messages', -9223372036854775808)"),
                "22023",
                "units must be positive",
            ),
            (
                &format!("{f}('acme', 'messages', 1, '')"),
                "22023",
                "idempotency_key must not be empty",
            ),
            (
                &format!("{f}('acme', 'messages', 1, repeat('k', 256))"),
                "22023",
                "idempotency_key is too long",
            ),
            (
                &format!("{f}('nobody', 'messages')"),
                "P0002",
                "tenant not found",
            ),
            (
                &format!("{f}('nobody', 'messages', 1, 'fresh-key')"),
                "P0002",
                "tenant not found",
            ),
            (
                &format!("{f}('acme', 'emails')"),
                "P0002",
                "metric not found",
            ),
            (
                &format!("{f}('acme', 'emails', 1, 'fresh-key')"),
                "P0002",
                "metric not found",
            ),
        ]);
    }

    #[pg_test]
    fn errors_carry_their_data_in_detail() {
        fixture();
        let (_, _, detail, hint) =
            error_of("SELECT tally.check_and_increment_usage('nobody', 'messages')").unwrap();
        assert_eq!(detail, "no tenant has tenant_id 'nobody'");
        assert_eq!(hint, "insert the tenant into tally.tenants first");
        let (_, _, detail, _) =
            error_of("SELECT tally.check_and_increment_usage('acme', 'messages', -3)").unwrap();
        assert_eq!(detail, "units = -3");
    }

    #[pg_test]
    fn decrement_usage_rejects_bad_arguments() {
        let f = "SELECT tally.decrement_usage";
        assert_all_fail(&[
            (
                &format!("{f}(NULL, 'messages')"),
                "22004",
                "tenant_id must not be null",
            ),
            (
                &format!("{f}('', 'messages')"),
                "22023",
                "tenant_id must not be empty",
            ),
            (
                &format!("{f}('acme', NULL)"),
                "22004",
                "metric must not be null",
            ),
            (
                &format!("{f}('acme', '')"),
                "22023",
                "metric must not be empty",
            ),
            (
                &format!("{f}('acme', 'messages', NULL)"),
                "22004",
                "units must not be null",
            ),
            (
                &format!("{f}('acme', 'messages', 0)"),
                "22023",
                "units must be positive",
            ),
            (
                &format!("{f}('nobody', 'messages')"),
                "P0002",
                "tenant not found",
            ),
            (
                &format!("{f}('acme', 'emails')"),
                "P0002",
                "metric not found",
            ),
        ]);
    }

    #[pg_test]
    fn usage_summary_rejects_bad_arguments() {
        let f = "SELECT * FROM tally.usage_summary";
        assert_all_fail(&[
            (&format!("{f}(NULL)"), "22004", "tenant_id must not be null"),
            (&format!("{f}('')"), "22023", "tenant_id must not be empty"),
            (&format!("{f}('nobody')"), "P0002", "tenant not found"),
        ]);
    }

    #[pg_test]
    fn plan_changes_reject_bad_arguments() {
        let mut cases = Vec::new();
        for f in [
            "SELECT tally.validate_plan_change",
            "SELECT tally.change_plan",
        ] {
            cases.extend([
                (
                    format!("{f}(NULL, 'starter')"),
                    "22004",
                    "tenant_id must not be null",
                ),
                (
                    format!("{f}('', 'starter')"),
                    "22023",
                    "tenant_id must not be empty",
                ),
                (
                    format!("{f}('acme', NULL)"),
                    "22004",
                    "new_plan_id must not be null",
                ),
                (
                    format!("{f}('acme', '')"),
                    "22023",
                    "new_plan_id must not be empty",
                ),
                (
                    format!("{f}('nobody', 'starter')"),
                    "P0002",
                    "tenant not found",
                ),
                (
                    format!("{f}('acme', 'platinum')"),
                    "P0002",
                    "plan not found",
                ),
            ]);
        }
        cases.push((
            "SELECT tally.change_plan('acme', 'starter', NULL)".into(),
            "22004",
            "force must not be null",
        ));
        let cases: Vec<_> = cases
            .iter()
            .map(|(sql, state, message)| (sql.as_str(), *state, *message))
            .collect();
        assert_all_fail(&cases);
    }

    #[pg_test]
    fn configuration_rejects_bad_values_with_a_hint() {
        assert_all_fail(&[
            ("INSERT INTO tally.metrics (metric, kind) VALUES ('x', 'monthly')", "22023", "unknown metric kind"),
            ("INSERT INTO tally.metrics (metric, kind) VALUES ('x', NULL)", "22023", "unknown metric kind"),
            ("INSERT INTO tally.metrics (metric, kind) VALUES ('', 'consumable')", "22023", "metric must not be empty"),
            ("INSERT INTO tally.metrics (metric, kind) VALUES (NULL, 'consumable')", "22004", "metric must not be null"),
            (
                "INSERT INTO tally.metrics (metric, kind, stripe_meter_event) VALUES ('x', 'consumable', '')",
                "22023",
                "stripe_meter_event must not be empty",
            ),
            ("UPDATE tally.metrics SET kind = 'weekly' WHERE metric = 'messages'", "22023", "unknown metric kind"),
            ("INSERT INTO tally.plans (plan_id) VALUES ('')", "22023", "plan_id must not be empty"),
            (
                "INSERT INTO tally.plan_limits VALUES ('free', 'sms', -1)",
                "22023",
                "max_units must not be negative",
            ),
            ("INSERT INTO tally.tenants (tenant_id) VALUES ('')", "22023", "tenant_id must not be empty"),
            (
                "INSERT INTO tally.tenants (tenant_id, status) VALUES ('x', 'frozen')",
                "22023",
                "unknown tenant status",
            ),
            (
                "INSERT INTO tally.tenants (tenant_id, period_start, period_end) VALUES ('x', now(), now())",
                "22023",
                "period_end must be after period_start",
            ),
            (
                "INSERT INTO tally.tenants (tenant_id, period_end) VALUES ('x', now())",
                "22023",
                "period_end needs a period_start",
            ),
            (
                "INSERT INTO tally.tenants (tenant_id, period_start) VALUES ('x', 'infinity')",
                "22023",
                "billing period must be finite",
            ),
        ]);
    }

    #[pg_test]
    fn a_tenant_needs_a_plan_when_there_is_no_default() {
        fixture();
        Spi::run("UPDATE tally.plans SET is_default = false").unwrap();
        assert_fails(
            "INSERT INTO tally.tenants (tenant_id) VALUES ('x')",
            "P0002",
            "no default plan",
        );
        Spi::run("INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ('x', 'starter')").unwrap();
    }

    #[pg_test]
    fn deleting_a_tenant_deletes_its_usage() {
        fixture();
        check("'acme', 'messages', 3, 'k'");
        Spi::run("DELETE FROM tally.tenants WHERE tenant_id = 'acme'").unwrap();
        assert_eq!(
            value::<i64>("SELECT count(*) FROM tally.usage_counters"),
            Some(0)
        );
        assert_eq!(
            value::<i64>("SELECT count(*) FROM tally.idempotency_keys"),
            Some(0)
        );
    }

    #[pg_test]
    fn a_mistyped_tally_setting_is_an_error() {
        // The library is loaded (the fixture's triggers do not need it; a
        // call does), so the tally prefix is reserved.
        fixture();
        check("'acme', 'messages', 1");
        let (sqlstate, message, detail, _hint) =
            error_of("SET LOCAL tally.report_max_atempts = 3").expect("a mistyped setting fails");
        assert_eq!(
            (sqlstate.as_str(), message.as_str(), detail.as_str()),
            (
                "42602",
                "invalid configuration parameter name \"tally.report_max_atempts\"",
                "\"tally\" is a reserved prefix."
            )
        );
        Spi::run("SET LOCAL tally.report_max_attempts = 3").unwrap();
    }
}
