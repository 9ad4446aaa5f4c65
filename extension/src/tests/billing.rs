//! Billing effects in SQL: signed references, link decisions and bad
//! arguments. (The effects end to end are in tests/tests/billing.rs,
//! through tallyd.)

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    #[pg_test]
    fn signed_references_link_and_forged_ones_do_not() {
        fixture();
        run("INSERT INTO tally.tenants (tenant_id) VALUES ('globex')");
        run("SELECT tally.attempt_event_lock('stripe', 'evt_1'), tally.attempt_event_lock('stripe', 'evt_2')");
        let reference = value::<String>("SELECT tally.checkout_reference('acme')").unwrap();
        assert!(reference.starts_with("tly1_"), "{reference}");
        // Signed for acme, so it cannot name globex by editing the tail.
        let forged = format!("{}Z2xvYmV4", &reference[..reference.len() - 6]);
        assert_eq!(
            value::<String>(&format!(
                "SELECT tally.apply_checkout('stripe', 'evt_1', 'cus_x', '{forged}', trust_unsigned => false)"
            ))
            .as_deref(),
            Some("conflict")
        );
        assert_eq!(
            value::<String>(&format!(
                "SELECT tally.apply_checkout('stripe', 'evt_2', 'cus_x', '{reference}', 'sub_x', trust_unsigned => false)"
            ))
            .as_deref(),
            Some("applied")
        );
        assert_eq!(
            value::<String>(
                "SELECT concat_ws(',', stripe_customer_id, stripe_subscription_id) FROM tally.tenants WHERE tenant_id = 'acme'"
            )
            .as_deref(),
            Some("cus_x,sub_x")
        );
        assert_eq!(
            value::<String>("SELECT string_agg(event_id || ':' || outcome, ',' ORDER BY event_id) FROM tally.provider_events")
                .as_deref(),
            Some("evt_1:conflict,evt_2:applied")
        );
        assert_eq!(
            value::<String>("SELECT named_tenant || ': ' || reason FROM tally.link_conflicts")
                .as_deref(),
            Some("globex: reference signature does not verify")
        );
    }

    #[pg_test]
    fn bad_arguments_are_refused() {
        fixture();
        assert_fails(
            "SELECT tally.apply_payment('chargebee', 'e', 'c', 'active')",
            "22023",
            "unknown provider",
        );
        assert_fails(
            "SELECT tally.apply_payment('stripe', NULL, 'c', 'active')",
            "22004",
            "event_id must not be null",
        );
        assert_fails(
            "SELECT tally.apply_payment('stripe', 'e', 'c', 'paid')",
            "22023",
            "unknown tenant status",
        );
        assert_fails(
            "SELECT tally.apply_subscription('stripe', 'e', 'c', 's', 'active', NULL)",
            "22004",
            "occurred_at must not be null",
        );
        assert_fails(
            "SELECT tally.apply_payment('stripe', 'e', 'c', 'active', 'subscription_cycle', NULL, '2030-02-01', '2030-01-01')",
            "22023",
            "period_end must be after period_start",
        );
        assert_fails(
            "SELECT tally.checkout_reference('nobody')",
            "P0002",
            "tenant not found",
        );
        assert_fails(
            &format!("SELECT tally.checkout_reference('{}')", "t".repeat(121)),
            "22023",
            "tenant_id is too long for a checkout reference",
        );
    }
}
