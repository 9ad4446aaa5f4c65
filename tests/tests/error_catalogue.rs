//! The checks that stay in PL/pgSQL (the configuration tables' triggers,
//! which must fire on plain-SQL writes) say exactly what the error
//! catalogue (`tally_rules::errors`) says: each case provokes one and
//! compares SQLSTATE, message, DETAIL and HINT with the catalogue's entry.
//! Functions of the library raise the catalogue's entries directly; a few
//! are checked here too, end to end.

use tally_rules::errors::{self, Failure};
use tally_tests::*;

/// What Postgres reported for `sql`, which must fail.
fn reported(client: &mut Client, sql: &str) -> Failure {
    let error = client
        .batch_execute(sql)
        .expect_err(&format!("{sql} should fail"));
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: not a database error: {error}"));
    Failure {
        state: errors::SqlState::from_code(db.code().code()).unwrap_or_else(|| {
            panic!(
                "{sql}: SQLSTATE {} is not in the catalogue",
                db.code().code()
            )
        }),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint: db.hint().map(str::to_string),
    }
}

/// A timestamp as the session prints it, as PL/pgSQL's `%s` shows it.
fn shown(client: &mut Client, timestamp: &str) -> String {
    client
        .query_one(&format!("SELECT '{timestamp}'::timestamptz::text"), &[])
        .unwrap()
        .get(0)
}

#[test]
fn metric_checks_say_what_the_catalogue_says() {
    let db = TestDb::create();
    let mut client = db.connect();
    let cases = [
        (
            "INSERT INTO tally.metrics (metric, kind) VALUES (NULL, 'consumable')",
            errors::missing_id("metric", false),
        ),
        (
            "INSERT INTO tally.metrics (metric, kind) VALUES ('', 'consumable')",
            errors::missing_id("metric", true),
        ),
        (
            "INSERT INTO tally.metrics (metric, kind) VALUES (repeat('m', 256), 'consumable')",
            errors::too_long("metric", 256),
        ),
        (
            "INSERT INTO tally.metrics (metric, kind) VALUES ('sms', 'monthly')",
            errors::unknown_metric_kind("sms", Some("monthly")),
        ),
        (
            "INSERT INTO tally.metrics (metric, kind) VALUES ('sms', NULL)",
            errors::unknown_metric_kind("sms", None),
        ),
        (
            "INSERT INTO tally.metrics (metric, kind, stripe_meter_event) VALUES ('sms', 'consumable', '')",
            errors::empty_meter_event("sms"),
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(reported(&mut client, sql), expected, "{sql}");
    }
    let late = shown(&mut client, "9999-06-01 00:00:00+00");
    assert_eq!(
        reported(
            &mut client,
            "SELECT tally.start_period('nobody', '9999-06-01 00:00:00+00')"
        ),
        errors::period_out_of_range(None, &late, "NULL")
    );
}

#[test]
fn plan_and_limit_checks_say_what_the_catalogue_says() {
    let db = TestDb::create();
    let mut client = db.connect();
    let cases = [
        (
            "INSERT INTO tally.plans (plan_id) VALUES (NULL)",
            errors::missing_id("plan_id", false),
        ),
        (
            "INSERT INTO tally.plans (plan_id) VALUES ('')",
            errors::missing_id("plan_id", true),
        ),
        (
            "INSERT INTO tally.plans (plan_id) VALUES (repeat('é', 200))",
            errors::too_long("plan_id", 400),
        ),
        (
            "UPDATE tally.plan_limits SET max_units = -1 WHERE plan_id = 'free' AND metric = 'chatbots'",
            errors::negative_max_units("free", "chatbots", -1),
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(reported(&mut client, sql), expected, "{sql}");
    }
    let late = shown(&mut client, "9999-06-01 00:00:00+00");
    assert_eq!(
        reported(
            &mut client,
            "SELECT tally.start_period('nobody', '9999-06-01 00:00:00+00')"
        ),
        errors::period_out_of_range(None, &late, "NULL")
    );
}

#[test]
fn tenant_checks_say_what_the_catalogue_says() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute("INSERT INTO tally.tenants (tenant_id) VALUES ('acme')")
        .unwrap();
    let (start, end) = ("2026-03-01 00:00:00+00", "2026-02-01 00:00:00+00");
    let (start_shown, end_shown) = (shown(&mut client, start), shown(&mut client, end));
    let early_shown = shown(&mut client, "1969-12-31 00:00:00+00");
    let cases = [
        (
            "INSERT INTO tally.tenants (tenant_id) VALUES (NULL)".to_string(),
            errors::missing_id("tenant_id", false),
        ),
        (
            "INSERT INTO tally.tenants (tenant_id) VALUES ('')".to_string(),
            errors::missing_id("tenant_id", true),
        ),
        (
            "INSERT INTO tally.tenants (tenant_id, status) VALUES ('o''neil', 'gold')".to_string(),
            errors::unknown_tenant_status(Some("o'neil"), Some("gold")),
        ),
        (
            "UPDATE tally.tenants SET period_start = 'infinity' WHERE tenant_id = 'acme'".to_string(),
            errors::period_not_finite(Some("acme"), "infinity", ""),
        ),
        (
            format!("UPDATE tally.tenants SET period_end = '{end}' WHERE tenant_id = 'acme'"),
            errors::period_end_without_start("acme", &end_shown),
        ),
        (
            format!(
                "UPDATE tally.tenants SET period_start = '{start}', period_end = '{end}' WHERE tenant_id = 'acme'"
            ),
            errors::period_end_not_after_start(Some("acme"), &start_shown, &end_shown),
        ),
        (
            "INSERT INTO tally.tenants (tenant_id) VALUES (repeat('t', 300))".to_string(),
            errors::too_long("tenant_id", 300),
        ),
        (
            "UPDATE tally.tenants SET period_start = '1969-12-31 00:00:00+00' WHERE tenant_id = 'acme'".to_string(),
            errors::period_out_of_range(Some("acme"), &early_shown, ""),
        ),
        (
            "UPDATE tally.tenants SET tenant_id = 'acme2' WHERE tenant_id = 'acme'".to_string(),
            errors::tenant_id_immutable("acme"),
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(reported(&mut client, &sql), expected, "{sql}");
    }
}

#[test]
fn a_tenant_without_a_plan_and_no_default_plan_is_refused_as_the_catalogue_says() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute("UPDATE tally.plans SET is_default = false")
        .unwrap();
    assert_eq!(
        reported(
            &mut client,
            "INSERT INTO tally.tenants (tenant_id) VALUES ('acme')"
        ),
        errors::no_default_plan()
    );
}

#[test]
fn provider_ids_linked_to_another_tenant_are_refused_as_the_catalogue_says() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id, stripe_customer_id, paddle_subscription_id)
             VALUES ('acme', 'cus_1', 'sub_1');
             INSERT INTO tally.tenants (tenant_id) VALUES ('globex');",
        )
        .unwrap();
    assert_eq!(
        reported(
            &mut client,
            "UPDATE tally.tenants SET stripe_customer_id = 'cus_1' WHERE tenant_id = 'globex'"
        ),
        errors::customer_linked_elsewhere("stripe", "cus_1", "acme")
    );
    assert_eq!(
        reported(
            &mut client,
            "INSERT INTO tally.tenants (tenant_id, paddle_subscription_id) VALUES ('initech', 'sub_1')"
        ),
        errors::subscription_linked_elsewhere("paddle", "sub_1", "acme")
    );
    // The library's own check says the same as the trigger.
    assert_eq!(
        reported(
            &mut client,
            "SELECT tally.link_provider_customer('globex', 'stripe', 'cus_1')"
        ),
        errors::customer_linked_elsewhere("stripe", "cus_1", "acme")
    );
    assert_eq!(
        reported(
            &mut client,
            "SELECT tally.link_provider_customer('globex', 'paddle', 'ctm_9', 'sub_1')"
        ),
        errors::subscription_linked_elsewhere("paddle", "sub_1", "acme")
    );
}

#[test]
fn a_tenant_with_unsent_usage_is_kept_as_the_catalogue_says() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "UPDATE tally.metrics SET stripe_meter_event = 'messages' WHERE metric = 'messages';
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             SELECT tally.check_and_increment_usage('acme', 'messages', 2);
             SELECT tally.check_and_increment_usage('acme', 'messages', 3);",
        )
        .unwrap();
    assert_eq!(
        reported(
            &mut client,
            "DELETE FROM tally.tenants WHERE tenant_id = 'acme'"
        ),
        errors::tenant_has_unsent_usage("acme", 2)
    );
}

#[test]
fn library_functions_raise_catalogue_entries() {
    let db = TestDb::create();
    let mut client = db.connect();
    let cases = [
        (
            "SELECT tally.check_and_increment_usage('nobody', 'messages')",
            errors::tenant_not_found("nobody"),
        ),
        (
            "SELECT tally.requeue_failed_usage_reports(ARRAY[9, 3, 9])",
            errors::report_not_found(&[3, 9]),
        ),
        (
            "SELECT tally.cleanup_idempotency_keys('1 hour')",
            errors::retention_too_short(Some("01:00:00"), "24:00:00"),
        ),
        (
            "SELECT tally.accept_subscription_event('acme', 'braintree', now())",
            errors::unknown_provider("braintree"),
        ),
        (
            "SELECT tally.check_and_increment_usage(repeat('x', 256), 'messages')",
            errors::too_long("tenant_id", 256),
        ),
    ];
    for (sql, expected) in cases {
        assert_eq!(reported(&mut client, sql), expected, "{sql}");
    }
    let late = shown(&mut client, "9999-06-01 00:00:00+00");
    assert_eq!(
        reported(
            &mut client,
            "SELECT tally.start_period('nobody', '9999-06-01 00:00:00+00')"
        ),
        errors::period_out_of_range(None, &late, "NULL")
    );
}
