//! `validate_plan_change` and `change_plan`: what a downgrade would break,
//! in words a person can act on, and the switch itself.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    /// `(valid, reason, message, violations)` of a plan check.
    fn plan_check(sql: &str) -> (bool, Option<String>, String, String) {
        Spi::connect_mut(|client| {
            let row = client
                .update(
                    &format!("SELECT valid, reason, message, violations::text FROM {sql}"),
                    None,
                    &[],
                )
                .unwrap()
                .first();
            (
                row.get::<bool>(1).unwrap().unwrap(),
                row.get::<String>(2).unwrap(),
                row.get::<String>(3).unwrap().unwrap(),
                row.get::<String>(4).unwrap().unwrap(),
            )
        })
    }

    fn on_growth_with_chatbots(chatbots: i64) {
        fixture();
        Spi::run("UPDATE tally.tenants SET plan_id = 'growth'").unwrap();
        check(&format!("'acme', 'chatbots', {chatbots}"));
    }

    #[pg_test]
    fn a_downgrade_below_the_allocations_in_use_is_invalid_with_a_remedy() {
        on_growth_with_chatbots(5);
        let (valid, reason, message, violations) =
            plan_check("tally.validate_plan_change('acme', 'starter')");
        assert!(!valid);
        assert_eq!(reason.as_deref(), Some("limit_exceeded"));
        assert_eq!(
            message,
            "5 chatbots in use, the starter plan allows 3: remove 2 before switching"
        );
        assert_eq!(
            violations,
            r#"[{"kind": "allocation", "used": 5, "excess": 2, "metric": "chatbots", "blocking": true, "new_limit": 3}]"#
        );
        assert_eq!(
            value::<String>("SELECT plan_id FROM tally.tenants").as_deref(),
            Some("growth")
        );
    }

    #[pg_test]
    fn a_downgrade_within_the_new_limits_is_valid() {
        on_growth_with_chatbots(2);
        assert_eq!(
            plan_check("tally.validate_plan_change('acme', 'starter')"),
            (
                true,
                None,
                "acme can switch to the starter plan".into(),
                "[]".into()
            )
        );
    }

    #[pg_test]
    fn consumables_and_missing_metrics_are_reported() {
        on_growth_with_chatbots(1);
        check("'acme', 'messages', 150");
        check("'acme', 'sms', 4");
        let (valid, reason, message, violations) =
            plan_check("tally.validate_plan_change('acme', 'free')");
        // Over on messages (consumable) and sms (not in free): neither blocks.
        assert!(valid);
        assert_eq!(reason, None);
        assert_eq!(
            message,
            "acme can switch to the free plan; \
             150 messages used this period, the free plan allows 100: further messages will be refused until the period renews; \
             4 sms used this period, the free plan does not include sms: further sms will be refused until the period renews"
        );
        assert_eq!(
            value::<String>(&format!(
                "SELECT string_agg(v->>'metric' || ':' || (v->>'new_limit') || ':' || (v->>'blocking'), ',')
                   FROM jsonb_array_elements('{violations}'::jsonb) v"
            ))
            .as_deref(),
            Some("messages:100:false,sms:0:false")
        );
    }

    #[pg_test]
    fn several_blocking_violations_are_joined_in_the_message() {
        on_growth_with_chatbots(4);
        check("'acme', 'seats', 3");
        let (valid, _, message, _) = plan_check("tally.validate_plan_change('acme', 'free')");
        assert!(!valid);
        assert_eq!(
            message,
            "4 chatbots in use, the free plan allows 1: remove 3 before switching; \
             3 seats in use, the free plan does not include seats: remove 3 before switching"
        );
    }

    #[pg_test]
    fn change_plan_refuses_an_invalid_change_and_changes_nothing() {
        on_growth_with_chatbots(5);
        assert_fails(
            "SELECT tally.change_plan('acme', 'starter')",
            "55000",
            "plan change refused",
        );
        let (_, _, detail, _) = error_of("SELECT tally.change_plan('acme', 'starter')").unwrap();
        assert_eq!(
            detail,
            "5 chatbots in use, the starter plan allows 3: remove 2 before switching"
        );
    }

    #[pg_test]
    fn change_plan_switches_and_the_new_limits_apply_at_once() {
        on_growth_with_chatbots(2);
        let (valid, _, message, _) = plan_check("tally.change_plan('acme', 'starter')");
        assert!(valid);
        assert_eq!(message, "acme can switch to the starter plan");
        assert_eq!(
            value::<String>("SELECT plan_id FROM tally.tenants").as_deref(),
            Some("starter")
        );
        assert_eq!(
            check("'acme', 'chatbots', 2"),
            refused(2, 3, "limit_exceeded")
        );
        assert_eq!(check("'acme', 'chatbots', 1"), allowed(3, Some(3), Some(0)));
    }

    #[pg_test]
    fn a_forced_change_goes_through_and_refuses_what_is_over() {
        on_growth_with_chatbots(5);
        let (valid, reason, _, _) =
            plan_check("tally.change_plan('acme', 'starter', force => true)");
        assert!(!valid);
        assert_eq!(reason.as_deref(), Some("limit_exceeded"));
        assert_eq!(
            value::<String>("SELECT plan_id FROM tally.tenants").as_deref(),
            Some("starter")
        );
        assert_eq!(check("'acme', 'chatbots'"), refused(5, 3, "limit_exceeded"));
    }

    #[pg_test]
    fn staying_on_the_same_plan_is_valid() {
        on_growth_with_chatbots(5);
        let (valid, _, message, _) = plan_check("tally.change_plan('acme', 'growth')");
        assert!(valid);
        assert_eq!(message, "acme is already on the growth plan");
    }

    #[pg_test]
    fn zero_counters_outside_the_new_plan_are_dropped() {
        on_growth_with_chatbots(1);
        check("'acme', 'sms', 1");
        Spi::run("SELECT tally.decrement_usage('acme', 'sms')").unwrap();
        plan_check("tally.change_plan('acme', 'free')");
        assert_eq!(used("acme", "sms"), None);
        assert_eq!(used("acme", "chatbots"), Some(1));
    }
}
