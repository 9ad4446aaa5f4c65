//! `check_and_increment_usage`, `decrement_usage` and `usage_summary`
//! inside one backend: limits, periods, plans and idempotency keys.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    #[pg_test]
    fn the_fast_path_decides_as_fits_does() {
        use crate::rules::{self, Limit};
        use crate::spi;
        use crate::usage::FAST_INCREMENT;

        fixture();
        Spi::run("INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ('big', 'growth')")
            .unwrap();
        // A valid copy of each limit, in the current period.
        check("'acme', 'messages'");
        check("'big', 'messages'");
        let max = i64::MAX;
        let cases = [
            ("acme", Limit::Max(100), 0, 100),
            ("acme", Limit::Max(100), 1, 100),
            ("acme", Limit::Max(100), 99, 1),
            ("acme", Limit::Max(100), 100, 1),
            ("acme", Limit::Max(100), 150, 1),
            ("acme", Limit::Max(100), 0, max),
            ("big", Limit::Unlimited, max - 1, 1),
            ("big", Limit::Unlimited, max, 1),
            ("big", Limit::Unlimited, max - 5, 6),
            ("big", Limit::Unlimited, 0, max),
        ];
        for (tenant, limit, used, units) in cases {
            Spi::run(&format!(
                "UPDATE tally.usage_counters SET used = {used} WHERE tenant_id = '{tenant}'"
            ))
            .unwrap();
            let month = spi::timestamptz(Some(rules::month_start(spi::now())));
            let fast = Spi::connect_mut(|client| {
                let args = [tenant.into(), "messages".into(), units.into(), month];
                spi::first_row(client, &FAST_INCREMENT, &args).is_some()
            });
            assert_eq!(
                fast,
                rules::fits(limit, used, units) == Ok(true),
                "{tenant}: {used} used + {units} under {limit:?}"
            );
        }
    }

    #[pg_test]
    fn increments_are_allowed_up_to_the_limit_then_refused() {
        fixture();
        assert_eq!(check("'acme', 'chatbots'"), allowed(1, Some(1), Some(0)));
        assert_eq!(check("'acme', 'chatbots'"), refused(1, 1, "limit_exceeded"));
        assert_eq!(used("acme", "chatbots"), Some(1));
    }

    #[pg_test]
    fn bulk_increments_are_all_or_nothing() {
        fixture();
        assert_eq!(
            check("'acme', 'messages', 70"),
            allowed(70, Some(100), Some(30))
        );
        assert_eq!(
            check("'acme', 'messages', 50"),
            refused(70, 100, "limit_exceeded")
        );
        assert_eq!(used("acme", "messages"), Some(70));
        assert_eq!(
            check("'acme', 'messages', 30"),
            allowed(100, Some(100), Some(0))
        );
        assert_eq!(
            check("'acme', 'messages', 1"),
            refused(100, 100, "limit_exceeded")
        );
    }

    #[pg_test]
    fn units_above_the_whole_limit_are_refused_without_creating_a_count() {
        fixture();
        assert_eq!(
            check("'acme', 'messages', 101"),
            refused(0, 100, "limit_exceeded")
        );
        assert_eq!(
            check("'acme', 'messages', 9223372036854775807"),
            refused(0, 100, "limit_exceeded")
        );
        assert_eq!(
            value::<i64>("SELECT coalesce(sum(used), 0)::bigint FROM tally.usage_counters"),
            Some(0)
        );
    }

    #[pg_test]
    fn unlimited_metrics_report_null_limits() {
        fixture();
        Spi::run("UPDATE tally.tenants SET plan_id = 'growth'").unwrap();
        assert_eq!(
            check("'acme', 'messages', 1000000"),
            allowed(1_000_000, None, None)
        );
        assert_eq!(check("'acme', 'messages'"), allowed(1_000_001, None, None));
    }

    #[pg_test]
    fn a_metric_outside_the_plan_is_never_allowed() {
        fixture();
        assert_eq!(check("'acme', 'seats'"), refused(0, 0, "not_in_plan"));
        assert_eq!(used("acme", "seats"), None);
    }

    #[pg_test]
    fn a_count_from_an_older_period_is_reset_first() {
        fixture();
        check("'acme', 'messages', 100");
        // Move the stored count into last month, as if the month had turned.
        Spi::run(
            "UPDATE tally.usage_counters SET period_start = period_start - interval '1 month'
              WHERE metric = 'messages'",
        )
        .unwrap();
        assert_eq!(
            check("'acme', 'messages', 3"),
            allowed(3, Some(100), Some(97))
        );
        assert_eq!(
            value::<bool>(
                "SELECT period_start = date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'
                   FROM tally.usage_counters WHERE metric = 'messages'"
            ),
            Some(true)
        );
    }

    #[pg_test]
    fn the_lazy_reset_is_kept_even_when_the_call_is_refused() {
        fixture();
        check("'acme', 'messages', 100");
        Spi::run(
            "UPDATE tally.usage_counters SET period_start = period_start - interval '1 month'",
        )
        .unwrap();
        assert_eq!(
            check("'acme', 'messages', 101"),
            refused(0, 100, "limit_exceeded")
        );
        assert_eq!(used("acme", "messages"), Some(0));
    }

    #[pg_test]
    fn a_tenant_period_replaces_the_calendar_month() {
        fixture();
        Spi::run("UPDATE tally.tenants SET period_start = now() - interval '3 days'").unwrap();
        check("'acme', 'messages', 40");
        assert_eq!(
            value::<bool>(
                "SELECT c.period_start = t.period_start FROM tally.usage_counters c JOIN tally.tenants t USING (tenant_id)"
            ),
            Some(true)
        );
        // The renewal moves the period on: the old count is stale.
        Spi::run("UPDATE tally.tenants SET period_start = now(), period_end = now() + interval '30 days'").unwrap();
        assert_eq!(
            check("'acme', 'messages', 5"),
            allowed(5, Some(100), Some(95))
        );
        // Allocations ignore periods.
        check("'acme', 'chatbots'");
        Spi::run(
            "UPDATE tally.tenants SET period_start = now() + interval '1 day', period_end = NULL",
        )
        .unwrap();
        assert_eq!(check("'acme', 'chatbots'"), refused(1, 1, "limit_exceeded"));
    }

    #[pg_test]
    fn a_repeated_idempotency_key_returns_the_first_result_counts_once_and_names_one_call() {
        fixture();
        assert_eq!(
            check("'acme', 'messages', 5, 'req-1'"),
            allowed(5, Some(100), Some(95))
        );
        assert_eq!(
            check("'acme', 'messages', 5, 'req-1'"),
            allowed(5, Some(100), Some(95))
        );
        // Another metric or other units under the same key: refused, not
        // answered with the first call's result.
        assert_fails(
            "SELECT tally.check_and_increment_usage('acme', 'chatbots', 1, 'req-1')",
            "22023",
            "idempotency key reused with other arguments",
        );
        assert_fails(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 1000000, 'req-1')",
            "22023",
            "idempotency key reused with other arguments",
        );
        let (_, _, detail, _) = error_of(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 1000000, 'req-1')",
        )
        .unwrap();
        assert_eq!(detail, "idempotency key 'req-1': units 5 then, 1000000 now");
        assert_eq!(used("acme", "messages"), Some(5));
        assert_eq!(used("acme", "chatbots"), None);
        assert_eq!(
            check("'acme', 'messages', 5, 'req-2'"),
            allowed(10, Some(100), Some(90))
        );
    }

    #[pg_test]
    fn a_release_gives_back_held_allocations_once_per_key() {
        fixture();
        Spi::run("UPDATE tally.tenants SET plan_id = 'growth'").unwrap();
        assert_eq!(
            check("'acme', 'chatbots', 4"),
            allowed(4, Some(10), Some(6))
        );
        let release = |args: &str| value::<i64>(&format!("SELECT tally.release_usage({args})"));
        assert_eq!(release("'acme', 'chatbots', 1, 'r-1'"), Some(3));
        assert_eq!(release("'acme', 'chatbots', 1, 'r-1'"), Some(3));
        assert_eq!(used("acme", "chatbots"), Some(3));
        for (sql, sqlstate, message) in [
            (
                "SELECT tally.release_usage('acme', 'chatbots', 2, 'r-1')",
                "22023",
                "idempotency key reused with other arguments",
            ),
            (
                "SELECT tally.release_usage('acme', 'chatbots', 4, 'r-2')",
                "55000",
                "release exceeds the units in use",
            ),
            (
                "SELECT tally.release_usage('acme', 'seats', 1, 'r-3')",
                "55000",
                "release exceeds the units in use",
            ),
            (
                "SELECT tally.release_usage('acme', 'messages', 1, 'r-4')",
                "22023",
                "release_usage releases allocations only",
            ),
            (
                "SELECT tally.release_usage('acme', 'chatbots', 1, NULL)",
                "22004",
                "idempotency_key must not be null",
            ),
            (
                "SELECT tally.release_usage('acme', 'chatbots', 0, 'r-5')",
                "22023",
                "units must be positive",
            ),
            (
                "SELECT tally.release_usage('nobody', 'chatbots', 1, 'r-6')",
                "P0002",
                "tenant not found",
            ),
            (
                "SELECT tally.release_usage('acme', 'nothing', 1, 'r-7')",
                "P0002",
                "metric not found",
            ),
            // A key a check used cannot release, nor the reverse.
            (
                "SELECT tally.check_and_increment_usage('acme', 'chatbots', 1, 'r-1')",
                "22023",
                "idempotency key reused with other arguments",
            ),
        ] {
            assert_fails(sql, sqlstate, message);
        }
        check("'acme', 'messages', 1, 'c-1'");
        assert_fails(
            "SELECT tally.release_usage('acme', 'messages', 1, 'c-1')",
            "22023",
            "idempotency key reused with other arguments",
        );
        assert_eq!(release("'acme', 'chatbots', 3, 'r-8'"), Some(0));
        assert_eq!(used("acme", "chatbots"), Some(0));
    }

    #[pg_test]
    fn refused_results_are_kept_for_their_key_too() {
        fixture();
        assert_eq!(
            check("'acme', 'messages', 500, 'big'"),
            refused(0, 100, "limit_exceeded")
        );
        Spi::run("UPDATE tally.tenants SET plan_id = 'growth'").unwrap();
        assert_eq!(
            check("'acme', 'messages', 500, 'big'"),
            refused(0, 100, "limit_exceeded")
        );
        assert_eq!(
            check("'acme', 'messages', 500, 'big-2'"),
            allowed(500, None, None)
        );
    }

    #[pg_test]
    fn idempotency_keys_belong_to_one_tenant() {
        fixture();
        Spi::run("INSERT INTO tally.tenants (tenant_id) VALUES ('globex')").unwrap();
        check("'acme', 'messages', 5, 'shared-key'");
        assert_eq!(
            check("'globex', 'messages', 7, 'shared-key'"),
            allowed(7, Some(100), Some(93))
        );
    }

    #[pg_test]
    fn a_changed_limit_applies_to_the_next_call() {
        fixture();
        check("'acme', 'messages', 60");
        Spi::run("UPDATE tally.plan_limits SET max_units = 50 WHERE plan_id = 'free' AND metric = 'messages'")
            .unwrap();
        assert_eq!(
            check("'acme', 'messages'"),
            refused(60, 50, "limit_exceeded")
        );
        Spi::run("UPDATE tally.plan_limits SET max_units = NULL WHERE plan_id = 'free' AND metric = 'messages'")
            .unwrap();
        assert_eq!(check("'acme', 'messages'"), allowed(61, None, None));
        Spi::run("DELETE FROM tally.plan_limits WHERE plan_id = 'free' AND metric = 'messages'")
            .unwrap();
        assert_eq!(check("'acme', 'messages'"), refused(61, 0, "not_in_plan"));
    }

    #[pg_test]
    fn a_plan_switched_with_plain_sql_applies_to_the_next_call() {
        fixture();
        check("'acme', 'chatbots'");
        Spi::run("UPDATE tally.tenants SET plan_id = 'starter'").unwrap();
        assert_eq!(check("'acme', 'chatbots', 2"), allowed(3, Some(3), Some(0)));
        Spi::run("UPDATE tally.tenants SET plan_id = 'free'").unwrap();
        assert_eq!(check("'acme', 'chatbots'"), refused(3, 1, "limit_exceeded"));
    }

    #[pg_test]
    fn a_metric_turned_consumable_starts_counting_per_period() {
        fixture();
        check("'acme', 'chatbots'");
        Spi::run("UPDATE tally.metrics SET kind = 'consumable' WHERE metric = 'chatbots'").unwrap();
        // The standing count had no period: in the current period it is 0.
        assert_eq!(check("'acme', 'chatbots'"), allowed(1, Some(1), Some(0)));
    }

    #[pg_test]
    fn counters_near_the_largest_bigint_overflow_with_an_error_and_no_change() {
        fixture();
        Spi::run("UPDATE tally.tenants SET plan_id = 'growth'").unwrap();
        check("'acme', 'messages', 9223372036854775806");
        assert_fails(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 2)",
            "22003",
            "usage counter out of range",
        );
        assert_eq!(
            check("'acme', 'messages', 1"),
            allowed(i64::MAX, None, None)
        );
        assert_fails(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 1)",
            "22003",
            "usage counter out of range",
        );
        assert_eq!(used("acme", "messages"), Some(i64::MAX));
    }

    #[pg_test]
    fn decrements_give_units_back_and_stop_at_zero() {
        fixture();
        Spi::run("UPDATE tally.tenants SET plan_id = 'starter'").unwrap();
        check("'acme', 'chatbots', 3");
        assert_eq!(
            value::<i64>("SELECT tally.decrement_usage('acme', 'chatbots')"),
            Some(2)
        );
        assert_eq!(check("'acme', 'chatbots'"), allowed(3, Some(3), Some(0)));
        assert_eq!(
            value::<i64>("SELECT tally.decrement_usage('acme', 'chatbots', 10)"),
            Some(0)
        );
        assert_eq!(
            value::<i64>("SELECT tally.decrement_usage('acme', 'chatbots')"),
            Some(0)
        );
        assert_eq!(used("acme", "chatbots"), Some(0));
    }

    #[pg_test]
    fn decrements_create_nothing_and_work_outside_the_plan() {
        fixture();
        assert_eq!(
            value::<i64>("SELECT tally.decrement_usage('acme', 'seats')"),
            Some(0)
        );
        assert_eq!(used("acme", "seats"), None);
        // Seats counted on a plan that had them, then a downgrade: giving
        // them back still works.
        Spi::run("UPDATE tally.tenants SET plan_id = 'starter'").unwrap();
        check("'acme', 'seats', 2");
        Spi::run("UPDATE tally.tenants SET plan_id = 'free'").unwrap();
        assert_eq!(
            value::<i64>("SELECT tally.decrement_usage('acme', 'seats')"),
            Some(1)
        );
    }

    #[pg_test]
    fn a_decrement_of_a_stale_consumable_leaves_zero_in_the_new_period() {
        fixture();
        check("'acme', 'messages', 40");
        Spi::run(
            "UPDATE tally.usage_counters SET period_start = period_start - interval '1 month'",
        )
        .unwrap();
        assert_eq!(
            value::<i64>("SELECT tally.decrement_usage('acme', 'messages', 5)"),
            Some(0)
        );
        assert_eq!(
            check("'acme', 'messages', 100"),
            allowed(100, Some(100), Some(0))
        );
    }

    #[pg_test]
    fn decrements_and_increments_compose() {
        fixture();
        check("'acme', 'messages', 100");
        assert_eq!(
            check("'acme', 'messages'"),
            refused(100, 100, "limit_exceeded")
        );
        Spi::run("SELECT tally.decrement_usage('acme', 'messages', 2)").unwrap();
        assert_eq!(
            check("'acme', 'messages', 2"),
            allowed(100, Some(100), Some(0))
        );
    }

    #[pg_test]
    fn the_summary_lists_plan_metrics_and_counted_ones() {
        fixture();
        Spi::run("UPDATE tally.tenants SET plan_id = 'starter'").unwrap();
        check("'acme', 'seats', 2");
        check("'acme', 'messages', 12");
        Spi::run("UPDATE tally.tenants SET plan_id = 'free'").unwrap();
        let rows = Spi::connect(|client| {
            client
                .select(
                    "SELECT metric, kind, used, max_units, remaining, period_start IS NOT NULL, period_end > period_start
                       FROM tally.usage_summary('acme')",
                    None,
                    &[],
                )
                .unwrap()
                .map(|row| {
                    (
                        row.get::<String>(1).unwrap().unwrap(),
                        row.get::<String>(2).unwrap().unwrap(),
                        row.get::<i64>(3).unwrap().unwrap(),
                        row.get::<i64>(4).unwrap(),
                        row.get::<i64>(5).unwrap(),
                        row.get::<bool>(6).unwrap().unwrap(),
                        row.get::<bool>(7).unwrap(),
                    )
                })
                .collect::<Vec<_>>()
        });
        let row =
            |m: &str, k: &str, u, max, rem, p, e| (m.to_string(), k.to_string(), u, max, rem, p, e);
        assert_eq!(
            rows,
            vec![
                row("chatbots", "allocation", 0, Some(1), Some(1), false, None),
                row(
                    "messages",
                    "consumable",
                    12,
                    Some(100),
                    Some(88),
                    true,
                    Some(true)
                ),
                row("seats", "allocation", 2, Some(0), Some(0), false, None),
            ]
        );
    }

    #[pg_test]
    fn the_summary_shows_a_stale_count_as_zero_and_the_tenants_period() {
        fixture();
        check("'acme', 'messages', 12");
        Spi::run(
            "UPDATE tally.usage_counters SET period_start = period_start - interval '1 month';
             UPDATE tally.tenants SET period_start = '2030-01-15 10:00+00'",
        )
        .unwrap();
        assert_eq!(
            value::<String>(
                "SELECT format('%s %s %s', used, period_start AT TIME ZONE 'UTC', period_end AT TIME ZONE 'UTC')
                   FROM tally.usage_summary('acme') WHERE metric = 'messages'"
            )
            .as_deref(),
            Some("0 2030-01-15 10:00:00 2030-02-15 10:00:00")
        );
    }
}
