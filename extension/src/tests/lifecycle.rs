//! The billing life cycle: resets, renewals, syncs, statuses and provider
//! links.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    #[pg_test]
    fn reset_usage_zeroes_consumables_and_leaves_allocations() {
        fixture();
        check("'acme', 'messages', 100");
        check("'acme', 'chatbots'");
        assert_eq!(value::<i64>("SELECT tally.reset_usage('acme')"), Some(1));
        assert_eq!(used("acme", "messages"), Some(0));
        assert_eq!(used("acme", "chatbots"), Some(1));
        assert_eq!(
            check("'acme', 'messages', 100"),
            allowed(100, Some(100), Some(0))
        );
        // Nothing left to reset.
        run("SELECT tally.reset_usage('acme', 'messages')");
        assert_eq!(
            value::<i64>("SELECT tally.reset_usage('acme', 'messages')"),
            Some(0)
        );
    }

    #[pg_test]
    fn reset_usage_refuses_allocations_and_unknown_names() {
        fixture();
        check("'acme', 'chatbots'");
        assert_fails(
            "SELECT tally.reset_usage('acme', 'chatbots')",
            "22023",
            "reset_usage resets consumables only",
        );
        assert_fails(
            "SELECT tally.reset_usage('acme', 'emails')",
            "P0002",
            "metric not found",
        );
        assert_fails(
            "SELECT tally.reset_usage('nobody')",
            "P0002",
            "tenant not found",
        );
        assert_fails(
            "SELECT tally.reset_usage(NULL)",
            "22004",
            "tenant_id must not be null",
        );
        assert_fails(
            "SELECT tally.reset_usage('acme', '')",
            "22023",
            "metric must not be empty",
        );
    }

    #[pg_test]
    fn a_newer_period_resets_consumables_once() {
        fixture();
        run("UPDATE tally.tenants SET period_start = '2030-01-01', period_end = '2030-02-01'");
        check("'acme', 'messages', 80");
        check("'acme', 'chatbots'");
        assert_eq!(
            value::<bool>("SELECT tally.start_period('acme', '2030-02-01', '2030-03-01')"),
            Some(true)
        );
        assert_eq!(used("acme", "messages"), Some(0));
        assert_eq!(used("acme", "chatbots"), Some(1));
        assert_eq!(
            value::<String>("SELECT format('%s %s', period_start, period_end) FROM tally.tenants")
                .as_deref(),
            Some("2030-02-01 00:00:00+00 2030-03-01 00:00:00+00")
        );
        check("'acme', 'messages', 30");
        // The same renewal again, or an older one, changes nothing.
        assert_eq!(
            value::<bool>("SELECT tally.start_period('acme', '2030-02-01', '2030-03-01')"),
            Some(false)
        );
        assert_eq!(
            value::<bool>("SELECT tally.start_period('acme', '2030-01-01', '2030-02-01')"),
            Some(false)
        );
        assert_eq!(used("acme", "messages"), Some(30));
    }

    #[pg_test]
    fn a_tenant_without_a_period_accepts_any() {
        fixture();
        check("'acme', 'messages', 100");
        assert_eq!(
            value::<bool>("SELECT tally.start_period('acme', '2001-05-01')"),
            Some(true)
        );
        assert_eq!(
            value::<bool>("SELECT period_end IS NULL FROM tally.tenants"),
            Some(true)
        );
        assert_eq!(
            check("'acme', 'messages', 100"),
            allowed(100, Some(100), Some(0))
        );
    }

    #[pg_test]
    fn start_period_rejects_bad_periods() {
        fixture();
        assert_fails(
            "SELECT tally.start_period('acme', '2030-02-01', '2030-02-01')",
            "22023",
            "period_end must be after period_start",
        );
        assert_fails(
            "SELECT tally.start_period('acme', NULL)",
            "22004",
            "period_start must not be null",
        );
        assert_fails(
            "SELECT tally.start_period('acme', 'infinity')",
            "22023",
            "billing period must be finite",
        );
        assert_fails(
            "SELECT tally.start_period('nobody', now())",
            "P0002",
            "tenant not found",
        );
    }

    #[pg_test]
    fn sync_usage_sets_the_count_and_returns_the_drift() {
        fixture();
        check("'acme', 'messages', 10");
        assert_eq!(
            value::<i64>("SELECT tally.sync_usage('acme', 'messages', 4)"),
            Some(-6)
        );
        assert_eq!(used("acme", "messages"), Some(4));
        // The caller's count is the truth, even above the limit.
        assert_eq!(
            value::<i64>("SELECT tally.sync_usage('acme', 'chatbots', 3)"),
            Some(3)
        );
        assert_eq!(check("'acme', 'chatbots'"), refused(3, 1, "limit_exceeded"));
        // A metric outside the plan, and no counter yet.
        assert_eq!(
            value::<i64>("SELECT tally.sync_usage('acme', 'seats', 2)"),
            Some(2)
        );
        assert_eq!(
            value::<i64>("SELECT tally.sync_usage('acme', 'seats', 2)"),
            Some(0)
        );
        assert_fails(
            "SELECT tally.sync_usage('acme', 'seats', -1)",
            "22023",
            "actual must not be negative",
        );
        assert_fails(
            "SELECT tally.sync_usage('acme', 'seats', NULL)",
            "22004",
            "actual must not be null",
        );
        assert_fails(
            "SELECT tally.sync_usage('acme', 'emails', 1)",
            "P0002",
            "metric not found",
        );
        assert_fails(
            "SELECT tally.sync_usage('nobody', 'seats', 1)",
            "P0002",
            "tenant not found",
        );
    }

    #[pg_test]
    fn sync_usage_of_a_stale_count_measures_drift_from_zero() {
        fixture();
        check("'acme', 'messages', 10");
        run("UPDATE tally.usage_counters SET period_start = period_start - interval '1 month'");
        assert_eq!(
            value::<i64>("SELECT tally.sync_usage('acme', 'messages', 4)"),
            Some(4)
        );
        assert_eq!(
            check("'acme', 'messages', 96"),
            allowed(100, Some(100), Some(0))
        );
    }

    #[pg_test]
    fn tenant_status_changes_are_reported() {
        fixture();
        assert_eq!(
            value::<bool>("SELECT tally.set_tenant_status('acme', 'past_due')"),
            Some(true)
        );
        assert_eq!(
            value::<bool>("SELECT tally.set_tenant_status('acme', 'past_due')"),
            Some(false)
        );
        assert_eq!(
            value::<String>("SELECT status FROM tally.tenants").as_deref(),
            Some("past_due")
        );
        // Status does not gate enforcement.
        assert!(check("'acme', 'messages'").0);
        assert_fails(
            "SELECT tally.set_tenant_status('acme', 'frozen')",
            "22023",
            "unknown tenant status",
        );
        assert_fails(
            "SELECT tally.set_tenant_status('nobody', 'active')",
            "P0002",
            "tenant not found",
        );
    }

    #[pg_test]
    fn provider_customers_link_to_one_tenant() {
        fixture();
        run("INSERT INTO tally.tenants (tenant_id) VALUES ('globex')");
        run("SELECT tally.link_provider_customer('acme', 'stripe', 'cus_1', 'sub_1')");
        run("SELECT tally.link_provider_customer('acme', 'paddle', 'ctm_1')");
        assert_eq!(
            value::<String>(
                "SELECT concat_ws(',', stripe_customer_id, stripe_subscription_id, paddle_customer_id) FROM tally.tenants
                  WHERE tenant_id = 'acme'"
            )
            .as_deref(),
            Some("cus_1,sub_1,ctm_1")
        );
        // Linking again keeps the subscription unless a new one is given.
        run("SELECT tally.link_provider_customer('acme', 'stripe', 'cus_1')");
        assert_eq!(
            value::<String>(
                "SELECT stripe_subscription_id FROM tally.tenants WHERE tenant_id = 'acme'"
            )
            .as_deref(),
            Some("sub_1")
        );
        assert_fails(
            "SELECT tally.link_provider_customer('globex', 'stripe', 'cus_1')",
            "23505",
            "customer already linked to another tenant",
        );
        assert_fails(
            "SELECT tally.link_provider_customer('globex', 'stripe', 'cus_2', 'sub_1')",
            "23505",
            "subscription already linked to another tenant",
        );
        assert_fails(
            "SELECT tally.link_provider_customer('acme', 'chargebee', 'x')",
            "22023",
            "unknown provider",
        );
        assert_fails(
            "SELECT tally.link_provider_customer('acme', 'stripe', '')",
            "22023",
            "customer_id must not be empty",
        );
        assert_fails(
            "SELECT tally.link_provider_customer('nobody', 'stripe', 'cus_9')",
            "P0002",
            "tenant not found",
        );
    }

    #[pg_test]
    fn an_event_lock_is_taken_once() {
        fixture();
        assert_eq!(
            value::<bool>("SELECT tally.attempt_event_lock('stripe', 'evt_1', 'invoice.paid', '{\"id\": \"evt_1\"}')"),
            Some(true)
        );
        assert_eq!(
            value::<bool>("SELECT tally.attempt_event_lock('stripe', 'evt_1')"),
            Some(false)
        );
        // Event ids are per provider.
        assert_eq!(
            value::<bool>("SELECT tally.attempt_event_lock('paddle', 'evt_1')"),
            Some(true)
        );
        assert_eq!(
            value::<String>("SELECT event_type || ' ' || (payload->>'id') FROM tally.provider_events WHERE provider = 'stripe'")
                .as_deref(),
            Some("invoice.paid evt_1")
        );
        assert_fails(
            "SELECT tally.attempt_event_lock(NULL, 'evt_2')",
            "22004",
            "provider must not be null",
        );
        assert_fails(
            "SELECT tally.attempt_event_lock('stripe', '')",
            "22023",
            "event_id must not be empty",
        );
    }

    #[pg_test]
    fn old_events_and_keys_are_cleaned_up() {
        fixture();
        run("SELECT tally.attempt_event_lock('stripe', 'old'), tally.attempt_event_lock('stripe', 'new')");
        run("UPDATE tally.provider_events SET received_at = now() - interval '40 days' WHERE event_id = 'old'");
        assert_eq!(
            value::<i64>("SELECT tally.cleanup_provider_events()"),
            Some(1)
        );
        assert_eq!(
            value::<i64>("SELECT count(*) FROM tally.provider_events"),
            Some(1)
        );
        // Providers retry deliveries for 3 days: an event forgotten sooner
        // would be applied again.
        for too_short in ["NULL", "'-1 day'", "'1 day'", "'71 hours'"] {
            assert_fails(
                &format!("SELECT tally.cleanup_provider_events({too_short})"),
                "22023",
                "older_than must be at least 3 days",
            );
        }
        assert_eq!(
            value::<i64>("SELECT tally.cleanup_provider_events('3 days')"),
            Some(0)
        );

        check("'acme', 'messages', 1, 'k-old'");
        check("'acme', 'messages', 1, 'k-new'");
        run("UPDATE tally.idempotency_keys SET created_at = now() - interval '25 hours' WHERE idempotency_key = 'k-old'");
        assert_eq!(
            value::<i64>("SELECT tally.cleanup_idempotency_keys()"),
            Some(1)
        );
        assert_fails(
            "SELECT tally.cleanup_idempotency_keys('1 hour')",
            "22023",
            "older_than must be at least 24:00:00",
        );
    }
}
