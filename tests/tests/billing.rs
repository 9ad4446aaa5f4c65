//! Billing effects under hostile and untidy webhooks, through the real
//! tallyd over HTTP: buyer-set tenant references never move a linked
//! tenant, only renewals reset usage, only the tenant's own subscription
//! changes it, the plan comes from whichever item maps to one, and events
//! that can never apply are acknowledged after a bounded time.

use std::process::{Command, Output};

use serde_json::{json, Value};
use tally_tests::server::{now, tallyd_binary, Server};
use tally_tests::TestDb;

const DAY: i64 = 86_400;

/// The fixture's plans with provider prices; `acme` on `growth`, linked to
/// Stripe customer `cus_acme` and subscription `sub_acme`, and to Paddle
/// customer `ctm_acme`, in the period starting 10 days ago, with 80
/// messages counted; `globex`, linked to nothing.
async fn setup() -> (TestDb, tokio_postgres::Client, i64) {
    let db = TestDb::create();
    let client = db.connect_async().await;
    let start = now() - 10 * DAY;
    client
        .batch_execute(&format!(
            "UPDATE tally.plans SET stripe_price_id = 'price_starter', paddle_price_id = 'pri_starter' WHERE plan_id = 'starter';
             UPDATE tally.plans SET stripe_price_id = 'price_growth', paddle_price_id = 'pri_growth' WHERE plan_id = 'growth';
             INSERT INTO tally.tenants (tenant_id, plan_id, period_start, period_end)
                  VALUES ('acme', 'growth', to_timestamp({start}), to_timestamp({end}));
             INSERT INTO tally.tenants (tenant_id) VALUES ('globex');
             SELECT tally.link_provider_customer('acme', 'stripe', 'cus_acme', 'sub_acme');
             SELECT tally.link_provider_customer('acme', 'paddle', 'ctm_acme');
             SELECT tally.check_and_increment_usage('acme', 'messages', 80);",
            end = start + 30 * DAY
        ))
        .await
        .unwrap();
    (db, client, start)
}

fn stripe_event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": object}})
}

fn paddle_event(id: &str, kind: &str, occurred_at: &str, data: Value) -> Value {
    json!({"event_id": id, "event_type": kind, "occurred_at": occurred_at, "notification_id": "ntf_1", "data": data})
}

/// A paid Stripe invoice of `sub_acme` (API 2025-03-31 layout: the
/// subscription under `parent`, the period on the lines).
fn invoice(reason: &str, start: i64, end: i64) -> Value {
    json!({"id": "in_1", "object": "invoice", "customer": "cus_acme", "billing_reason": reason,
           "period_start": start - 30 * DAY, "period_end": start,
           "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_acme"}},
           "lines": {"data": [{"id": "il_1", "period": {"start": start, "end": end},
                               "pricing": {"price_details": {"price": "price_growth"}}}]}})
}

/// (plan, status, messages used, stripe customer, stripe subscription) of a tenant.
async fn tenant(
    client: &tokio_postgres::Client,
    tenant_id: &str,
) -> (String, String, i64, Option<String>, Option<String>) {
    let row = client
        .query_one(
            "SELECT plan_id, status,
                    (SELECT used FROM tally.usage_summary($1) WHERE metric = 'messages'),
                    stripe_customer_id, stripe_subscription_id
               FROM tally.tenants WHERE tenant_id = $1",
            &[&tenant_id],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4))
}

async fn status_of(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    (
        status,
        response.json::<Value>().await.unwrap_or(Value::Null),
    )
}

async fn add_messages(client: &tokio_postgres::Client, tenant_id: &str, units: i64) {
    client
        .execute(
            "SELECT tally.check_and_increment_usage($1, 'messages', $2)",
            &[&tenant_id, &units],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_naming_a_linked_tenant_does_not_take_it_over() {
    let (db, client, start) = setup().await;
    let server = Server::start(&db).await;
    // The attacker's own checkout names acme as its reference.
    let checkout = stripe_event(
        "evt_evil_checkout",
        "checkout.session.completed",
        now(),
        json!({"id": "cs_evil", "object": "checkout.session", "client_reference_id": "acme",
               "customer": "cus_evil", "subscription": "sub_evil"}),
    );
    let (status, body) = status_of(server.stripe(&checkout).await).await;
    assert_eq!(status, 200, "a conflict is acknowledged");
    assert_eq!(body["status"], "conflict");
    let acme = tenant(&client, "acme").await;
    assert_eq!(
        (acme.3.as_deref(), acme.4.as_deref()),
        (Some("cus_acme"), Some("sub_acme"))
    );
    // Then cancels: acme keeps its plan.
    let cancel = stripe_event(
        "evt_evil_cancel",
        "customer.subscription.deleted",
        now() + 1,
        json!({"id": "sub_evil", "object": "subscription", "customer": "cus_evil", "status": "canceled",
               "items": {"data": [{"price": {"id": "price_starter"}}]}}),
    );
    let (status, _) = status_of(server.stripe(&cancel).await).await;
    assert!(status == 200 || status == 503, "{status}");
    let acme = tenant(&client, "acme").await;
    assert_eq!((acme.0.as_str(), acme.1.as_str()), ("growth", "active"));
    // Paddle: custom data naming acme from another customer moves nothing.
    let paddle = paddle_event(
        "evt_evil_paddle",
        "transaction.completed",
        "2030-01-01T10:00:00Z",
        json!({"id": "txn_evil", "status": "completed", "origin": "web", "customer_id": "ctm_evil",
               "custom_data": {"tenant_id": "acme"}}),
    );
    let (status, _) = status_of(server.paddle(&paddle).await).await;
    assert_eq!(status, 200);
    let paddle_customer: Option<String> = client
        .query_one(
            "SELECT paddle_customer_id FROM tally.tenants WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(paddle_customer.as_deref(), Some("ctm_acme"));
    // The victim's own renewal still applies.
    let renewal = stripe_event(
        "evt_acme_paid",
        "invoice.paid",
        now(),
        invoice("subscription_cycle", start + 30 * DAY, start + 60 * DAY),
    );
    let (status, body) = status_of(server.stripe(&renewal).await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")));
    assert_eq!(tenant(&client, "acme").await.2, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn only_a_renewal_for_a_newer_period_resets_usage() {
    let (db, client, start) = setup().await;
    let server = Server::start(&db).await;
    // A manual invoice, a proration and a one-off: usage stays.
    for (i, reason) in ["manual", "subscription_update", "upcoming"]
        .iter()
        .enumerate()
    {
        let event = stripe_event(
            &format!("evt_not_renewal_{i}"),
            "invoice.paid",
            now(),
            invoice(reason, start + 30 * DAY, start + 60 * DAY),
        );
        let (status, _) = status_of(server.stripe(&event).await).await;
        assert_eq!(status, 200, "{reason}");
        assert_eq!(tenant(&client, "acme").await.2, 80, "{reason}");
    }
    // A renewal for the next period resets.
    let renewal = stripe_event(
        "evt_renewal",
        "invoice.payment_succeeded",
        now(),
        invoice("subscription_cycle", start + 30 * DAY, start + 60 * DAY),
    );
    assert_eq!(status_of(server.stripe(&renewal).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.2, 0);
    add_messages(&client, "acme", 7).await;
    // A 40-day-old redelivery (its own event id) of an older period's renewal.
    let late = stripe_event(
        "evt_forty_days_old",
        "invoice.paid",
        now() - 40 * DAY,
        invoice("subscription_cycle", start, start + 30 * DAY),
    );
    assert_eq!(status_of(server.stripe(&late).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.2, 7);
    // Paddle: only a recurring transaction resets, by its billing period.
    let paddle_period = json!({"starts_at": rfc3339(&client, start + 60 * DAY).await,
                               "ends_at": rfc3339(&client, start + 90 * DAY).await});
    let one_off = paddle_event(
        "evt_p_one_off",
        "transaction.completed",
        "2030-01-01T10:00:00Z",
        json!({"id": "txn_1", "status": "completed", "origin": "api", "customer_id": "ctm_acme",
               "billing_period": paddle_period.clone()}),
    );
    assert_eq!(status_of(server.paddle(&one_off).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.2, 7);
    let recurring = paddle_event(
        "evt_p_recurring",
        "transaction.completed",
        "2030-01-01T10:00:00Z",
        json!({"id": "txn_2", "status": "completed", "origin": "subscription_recurring", "customer_id": "ctm_acme",
               "billing_period": paddle_period.clone()}),
    );
    assert_eq!(status_of(server.paddle(&recurring).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.2, 0);
    server.stop().await;
}

/// Unix seconds as RFC 3339, as Paddle writes times.
async fn rfc3339(client: &tokio_postgres::Client, seconds: i64) -> String {
    client
        .query_one(
            "SELECT to_char(to_timestamp($1::bigint) AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
            &[&seconds],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn another_subscription_of_the_customer_changes_nothing() {
    let (db, client, _) = setup().await;
    let server = Server::start(&db).await;
    let addon = |id: &str, kind: &str, status: &str| {
        stripe_event(
            id,
            kind,
            now(),
            json!({"id": "sub_addon", "object": "subscription", "customer": "cus_acme", "status": status,
                   "items": {"data": [{"price": {"id": "price_addon"}, "current_period_start": now(), "current_period_end": now() + 30 * DAY}]}}),
        )
    };
    let created = addon(
        "evt_addon_created",
        "customer.subscription.created",
        "past_due",
    );
    assert_eq!(status_of(server.stripe(&created).await).await.0, 200);
    let deleted = addon(
        "evt_addon_deleted",
        "customer.subscription.deleted",
        "canceled",
    );
    let (status, body) = status_of(server.stripe(&deleted).await).await;
    assert_eq!(status, 200);
    let acme = tenant(&client, "acme").await;
    assert_eq!(
        (acme.0.as_str(), acme.1.as_str(), acme.2, acme.4.as_deref()),
        ("growth", "active", 80, Some("sub_acme")),
        "{body}"
    );
    assert_eq!(body["status"], "ignored");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_plan_comes_from_whichever_item_maps_to_a_plan() {
    let (db, client, _) = setup().await;
    let server = Server::start(&db).await;
    let subscription = |id: &str, created: i64, items: Value| {
        stripe_event(
            id,
            "customer.subscription.updated",
            created,
            json!({"id": "sub_acme", "object": "subscription", "customer": "cus_acme", "status": "active",
                   "items": {"data": items}}),
        )
    };
    // The metered price first, the base price second.
    let metered_first = subscription(
        "evt_items_1",
        now(),
        json!([{"price": {"id": "price_metered_messages"}}, {"price": {"id": "price_starter"}}]),
    );
    assert_eq!(status_of(server.stripe(&metered_first).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.0, "starter");
    // An endpoint pinned to an API version before 2020-08-27 sends `plan`.
    let legacy = subscription(
        "evt_items_2",
        now() + 1,
        json!([{"plan": {"id": "price_metered_messages"}}, {"plan": {"id": "price_growth"}}]),
    );
    assert_eq!(status_of(server.stripe(&legacy).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.0, "growth");
    // Two items naming two plans: no guess, the plan stays.
    let two_plans = subscription(
        "evt_items_3",
        now() + 2,
        json!([{"price": {"id": "price_starter"}}, {"price": {"id": "price_growth"}}]),
    );
    assert_eq!(status_of(server.stripe(&two_plans).await).await.0, 200);
    assert_eq!(tenant(&client, "acme").await.0, "growth");
    let note: String = client
        .query_one(
            "SELECT note FROM tally.provider_events WHERE event_id = 'evt_items_3'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(note.contains("growth, starter"), "{note}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_linked_elsewhere_is_an_acknowledged_conflict() {
    let (db, client, _) = setup().await;
    let server = Server::start(&db).await;
    // globex's checkout names acme's subscription.
    let checkout = stripe_event(
        "evt_dup_sub",
        "checkout.session.completed",
        now(),
        json!({"id": "cs_1", "object": "checkout.session", "client_reference_id": "globex",
               "customer": "cus_globex", "subscription": "sub_acme"}),
    );
    let (status, body) = status_of(server.stripe(&checkout).await).await;
    assert_eq!(
        (status, body["status"].as_str()),
        (200, Some("conflict")),
        "{body}"
    );
    let globex = tenant(&client, "globex").await;
    assert_eq!((globex.3, globex.4), (None, None));
    let reason: String = client
        .query_one(
            "SELECT reason FROM tally.link_conflicts WHERE event_id = 'evt_dup_sub'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reason, "subscription linked to another tenant");
    assert_eq!(tenant(&client, "acme").await.4.as_deref(), Some("sub_acme"));
    // In SQL, the catalogue's error.
    let error = client
        .execute(
            "SELECT tally.link_provider_customer('globex', 'stripe', 'cus_globex', 'sub_acme')",
            &[],
        )
        .await
        .unwrap_err();
    let error = error.as_db_error().unwrap();
    assert_eq!(
        (error.code().code(), error.message()),
        ("23505", "subscription already linked to another tenant")
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_for_a_customer_never_linked_is_acknowledged_after_the_retry_window() {
    let (db, client, _) = setup().await;
    let server = Server::start(&db).await;
    let fresh = stripe_event(
        "evt_stranger_fresh",
        "invoice.payment_failed",
        now(),
        json!({"customer": "cus_stranger"}),
    );
    assert_eq!(status_of(server.stripe(&fresh).await).await.0, 503);
    let old = stripe_event(
        "evt_stranger_old",
        "invoice.payment_failed",
        now() - 4 * DAY,
        json!({"customer": "cus_stranger"}),
    );
    let (status, body) = status_of(server.stripe(&old).await).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "unlinked");
    let recorded: Vec<Option<String>> = client
        .query(
            "SELECT outcome FROM tally.provider_events WHERE event_id LIKE 'evt_stranger%'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(recorded, vec![Some("not_linked".to_string())]);
    let unlinked = "tally_webhook_events_total{provider=\"stripe\",type=\"invoice.payment_failed\",outcome=\"unlinked\"}";
    assert_eq!(server.metric(unlinked).await, 1.0);
    let deferred = "tally_webhook_events_total{provider=\"stripe\",type=\"invoice.payment_failed\",outcome=\"deferred\"}";
    assert_eq!(server.metric(deferred).await, 1.0);
    let shown = stdout(&tallyd(&db, &["links", "unlinked"]));
    assert!(
        shown.contains("evt_stranger_old") && shown.contains("cus_stranger"),
        "{shown}"
    );
    assert!(!shown.contains("evt_stranger_fresh"), "{shown}");
    server.stop().await;
}

fn tallyd(db: &TestDb, args: &[&str]) -> Output {
    Command::new(tallyd_binary())
        .args(args)
        .env("DATABASE_URL", db.url_as("tally_admin"))
        .output()
        .expect("run tallyd")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "tallyd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

async fn connect_as(db: &TestDb, group: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&db.url_as(group), tokio_postgres::NoTls)
        .await
        .expect("connect as a tally role");
    tokio::spawn(connection);
    client
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signed_checkout_naming_another_tenant_does_not_move_it() {
    let (db, client, start) = setup().await;
    let server = Server::start_with_billing(
        &db,
        tallyd::db::events::BillingConfig {
            trust_unsigned_references: false,
            ..Default::default()
        },
    )
    .await;
    let app = connect_as(&db, "tally_app").await;
    let reference = |tenant: &'static str| {
        let app = &app;
        async move {
            app.query_one("SELECT tally.checkout_reference($1)", &[&tenant])
                .await
                .unwrap()
                .get::<_, String>(0)
        }
    };
    let acme_reference = reference("acme").await;
    let globex_reference = reference("globex").await;
    assert_ne!(acme_reference, globex_reference);
    assert!(acme_reference.len() <= 200 && acme_reference.starts_with("tly1_"));
    let checkout = |id: &str, reference: &str, customer: &str| {
        stripe_event(
            id,
            "checkout.session.completed",
            now(),
            json!({"id": format!("cs_{id}"), "object": "checkout.session", "client_reference_id": reference,
                   "customer": customer, "subscription": format!("sub_{customer}")}),
        )
    };
    // A signed reference of acme's own, in the attacker's checkout.
    let (status, body) = status_of(
        server
            .stripe(&checkout("evt_1", &acme_reference, "cus_evil"))
            .await,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("conflict")));
    // A reference for acme with a forged signature.
    let mut forged = acme_reference.clone().into_bytes();
    forged[5] = if forged[5] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    let (status, body) = status_of(
        server
            .stripe(&checkout("evt_2", &forged, "cus_other"))
            .await,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("conflict")));
    // A bare tenant id is not trusted in this mode, even for a free tenant.
    let (status, body) = status_of(
        server
            .stripe(&checkout("evt_3", "globex", "cus_globex"))
            .await,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("conflict")));
    assert_eq!(tenant(&client, "globex").await.3, None);
    // globex's own signed checkout links it.
    let (status, body) = status_of(
        server
            .stripe(&checkout("evt_4", &globex_reference, "cus_globex"))
            .await,
    )
    .await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")));
    let globex = tenant(&client, "globex").await;
    assert_eq!(
        (globex.3.as_deref(), globex.4.as_deref()),
        (Some("cus_globex"), Some("sub_cus_globex"))
    );
    // acme is untouched, and its own renewal applies.
    let acme = tenant(&client, "acme").await;
    assert_eq!(
        (acme.3.as_deref(), acme.4.as_deref()),
        (Some("cus_acme"), Some("sub_acme"))
    );
    let renewal = stripe_event(
        "evt_acme_paid",
        "invoice.paid",
        now(),
        invoice("subscription_cycle", start + 30 * DAY, start + 60 * DAY),
    );
    let (status, body) = status_of(server.stripe(&renewal).await).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("processed")));
    assert_eq!(tenant(&client, "acme").await.2, 0);

    // Recorded, counted, shown.
    let reasons: Vec<(String, String, Option<String>, String)> = client
        .query(
            "SELECT event_id, named_tenant, existing_customer, reason FROM tally.link_conflicts ORDER BY id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect();
    assert_eq!(
        reasons,
        vec![
            (
                "evt_1".into(),
                "acme".into(),
                Some("cus_acme".into()),
                "tenant has another customer".into()
            ),
            (
                "evt_2".into(),
                "acme".into(),
                None,
                "reference signature does not verify".into()
            ),
            (
                "evt_3".into(),
                "globex".into(),
                None,
                "unsigned reference not trusted".into()
            ),
        ]
    );
    let conflicts = "tally_webhook_events_total{provider=\"stripe\",type=\"checkout.session.completed\",outcome=\"conflict\"}";
    assert_eq!(server.metric(conflicts).await, 3.0);
    let shown = stdout(&tallyd(&db, &["links", "conflicts"]));
    assert!(shown.starts_with("recorded (UTC)"), "{shown}");
    assert!(
        shown.contains("cus_evil") && shown.contains("tenant has another customer"),
        "{shown}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn the_reference_secret_is_the_owners_alone() {
    let (db, _client, _) = setup().await;
    for group in ["tally_admin", "tally_daemon", "tally_app"] {
        let error = connect_as(&db, group)
            .await
            .query_one("SELECT secret FROM tally.reference_secret", &[])
            .await
            .unwrap_err();
        assert_eq!(
            error.as_db_error().map(|e| e.code().code()),
            Some("42501"),
            "{group}"
        );
    }
    // tallyd reads no plans or provider links itself any more.
    let daemon = connect_as(&db, "tally_daemon").await;
    for table in ["tally.plans", "tally.provider_links"] {
        let error = daemon
            .query(&format!("SELECT * FROM {table}"), &[])
            .await
            .unwrap_err();
        assert_eq!(
            error.as_db_error().map(|e| e.code().code()),
            Some("42501"),
            "{table}"
        );
    }
    let app = connect_as(&db, "tally_app").await;
    let error = app
        .query_one("SELECT tally.checkout_reference('nobody')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().map(|e| e.message()),
        Some("tenant not found")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn provider_events_are_kept_for_the_providers_retry_window() {
    let (db, client, _) = setup().await;
    let error = client
        .execute("SELECT tally.cleanup_provider_events('1 day')", &[])
        .await
        .unwrap_err();
    assert_eq!(
        error.as_db_error().map(|e| e.code().code()),
        Some("22023"),
        "{error}"
    );
    let output = tallyd(&db, &["cleanup", "--older-than", "1d"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 3 days"), "{stderr}");
}
