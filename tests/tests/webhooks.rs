//! Provider webhooks through the real tallyd: signed Stripe and Paddle
//! events drive each effect; bad deliveries change nothing.

use serde_json::{json, Value};
use tally_tests::server::{now, Server, PADDLE_SECRET, STRIPE_SECRET};
use tally_tests::TestDb;

/// The fixture's plans with provider prices, and tenant `acme` on `free`
/// with 80 messages and 2 chatbots counted.
async fn setup() -> (TestDb, tokio_postgres::Client) {
    let db = TestDb::create();
    let client = db.connect_async().await;
    client
        .batch_execute(
            "UPDATE tally.plans SET stripe_price_id = 'price_starter', paddle_price_id = 'pri_starter' WHERE plan_id = 'starter';
             UPDATE tally.plans SET stripe_price_id = 'price_growth', paddle_price_id = 'pri_growth' WHERE plan_id = 'growth';
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             SELECT tally.check_and_increment_usage('acme', 'messages', 80);
             SELECT tally.check_and_increment_usage('acme', 'chatbots', 2);",
        )
        .await
        .unwrap();
    (db, client)
}

fn stripe_event(id: &str, kind: &str, created: i64, object: Value) -> Value {
    json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": object}})
}

fn stripe_subscription(price: &str, status: &str, start: i64, end: i64) -> Value {
    json!({"id": "sub_1", "object": "subscription", "customer": "cus_acme", "status": status,
           "items": {"data": [{"price": {"id": price}, "current_period_start": start, "current_period_end": end}]}})
}

/// A paid renewal invoice of acme's `sub_1` for the period starting at
/// `start` (a renewal resets usage only for a newer period).
fn renewal(start: i64) -> Value {
    json!({"object": "invoice", "customer": "cus_acme", "subscription": "sub_1",
           "billing_reason": "subscription_cycle",
           "lines": {"data": [{"period": {"start": start, "end": start + 30 * 86_400}}]}})
}

/// (plan, status, messages used, stripe customer) of acme.
async fn acme(client: &tokio_postgres::Client) -> (String, String, i64, Option<String>) {
    let row = client
        .query_one(
            "SELECT plan_id, status,
                    (SELECT used FROM tally.usage_summary('acme') WHERE metric = 'messages'),
                    stripe_customer_id
               FROM tally.tenants WHERE tenant_id = 'acme'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2), row.get(3))
}

async fn events_recorded(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM tally.provider_events", &[])
        .await
        .unwrap()
        .get(0)
}

async fn link_acme(server: &Server) {
    let checkout = stripe_event(
        "evt_checkout",
        "checkout.session.completed",
        now(),
        json!({"object": "checkout.session", "client_reference_id": "acme", "customer": "cus_acme", "subscription": "sub_1"}),
    );
    let response = server.stripe(&checkout).await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.json::<Value>().await.unwrap()["status"],
        "processed"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn stripe_events_drive_each_effect() {
    let (db, client) = setup().await;
    let server = Server::start(&db).await;
    link_acme(&server).await;
    assert_eq!(acme(&client).await.3.as_deref(), Some("cus_acme"));

    // Payment failed, action required, charge failed: status only.
    for (kind, status) in [
        ("invoice.payment_failed", "past_due"),
        ("invoice.payment_action_required", "action_required"),
        ("charge.failed", "past_due"),
    ] {
        let response = server
            .stripe(&stripe_event(
                &format!("evt_{kind}"),
                kind,
                now(),
                json!({"customer": "cus_acme"}),
            ))
            .await;
        assert_eq!(response.status(), 200, "{kind}");
        assert_eq!(acme(&client).await.1, status, "{kind}");
    }

    // A renewal paid: the new period, usage reset, status active.
    server
        .stripe(&stripe_event(
            "evt_paid",
            "invoice.paid",
            now(),
            renewal(now() - 2 * 86_400),
        ))
        .await;
    assert_eq!(
        acme(&client).await,
        ("free".into(), "active".into(), 0, Some("cus_acme".into()))
    );

    // Subscription updated: plan from the price, the new period, usage reset.
    client
        .execute(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 30)",
            &[],
        )
        .await
        .unwrap();
    let (start, end) = (now() - 3600, now() + 30 * 86_400);
    let response = server
        .stripe(&stripe_event(
            "evt_sub_1",
            "customer.subscription.updated",
            now(),
            stripe_subscription("price_growth", "active", start, end),
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(
        acme(&client).await,
        ("growth".into(), "active".into(), 0, Some("cus_acme".into()))
    );
    let period: (i64, i64) = {
        let row = client
            .query_one(
                "SELECT extract(epoch FROM period_start)::bigint, extract(epoch FROM period_end)::bigint,
                        stripe_subscription_id FROM tally.tenants WHERE tenant_id = 'acme'",
                &[],
            )
            .await
            .unwrap();
        assert_eq!(row.get::<_, String>(2), "sub_1");
        (row.get(0), row.get(1))
    };
    assert_eq!(period, (start, end));

    // Deleted: the default plan, canceled.
    server
        .stripe(&stripe_event(
            "evt_sub_2",
            "customer.subscription.deleted",
            now() + 1,
            stripe_subscription("price_growth", "canceled", start, end),
        ))
        .await;
    let (plan, status, ..) = acme(&client).await;
    assert_eq!((plan.as_str(), status.as_str()), ("free", "canceled"));

    // An unknown type is recorded and acknowledged.
    let before = events_recorded(&client).await;
    let response = server
        .stripe(&stripe_event(
            "evt_other",
            "customer.tax_id.created",
            now(),
            json!({}),
        ))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap()["status"], "ignored");
    assert_eq!(events_recorded(&client).await, before + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn paddle_events_drive_each_effect() {
    let (db, client) = setup().await;
    let server = Server::start(&db).await;
    let event = |id: &str, kind: &str, data: Value| json!({"event_id": id, "event_type": kind, "occurred_at": "2030-01-01T10:00:00.123456Z", "notification_id": "ntf_1", "data": data});
    // The checkout's custom data names the tenant: the customer gets linked.
    let paid = event(
        "evt_01",
        "transaction.completed",
        json!({"id": "txn_1", "status": "completed", "origin": "subscription_recurring",
               "customer_id": "ctm_acme", "custom_data": {"tenant_id": "acme"},
               "billing_period": {"starts_at": "2029-12-01T00:00:00Z", "ends_at": "2030-01-01T00:00:00Z"}}),
    );
    assert_eq!(server.paddle(&paid).await.status(), 200);
    let row = client
        .query_one("SELECT paddle_customer_id, status FROM tally.tenants", &[])
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, String>(0), row.get::<_, String>(1)),
        ("ctm_acme".into(), "active".into())
    );
    assert_eq!(acme(&client).await.2, 0);

    let subscription = event(
        "evt_02",
        "subscription.updated",
        json!({
        "id": "sub_01", "status": "past_due", "customer_id": "ctm_acme", "items": [{"price": {"id": "pri_starter"}}],
        "current_billing_period": {"starts_at": "2030-01-01T00:00:00Z", "ends_at": "2030-02-01T00:00:00Z"}}),
    );
    assert_eq!(server.paddle(&subscription).await.status(), 200);
    let (plan, status, ..) = acme(&client).await;
    assert_eq!((plan.as_str(), status.as_str()), ("starter", "past_due"));

    let failed = event(
        "evt_03",
        "transaction.payment_failed",
        json!({"customer_id": "ctm_acme"}),
    );
    assert_eq!(server.paddle(&failed).await.status(), 200);
    let canceled = json!({"event_id": "evt_04", "event_type": "subscription.canceled", "occurred_at": "2030-01-02T00:00:00Z",
                          "data": {"id": "sub_01", "status": "canceled", "customer_id": "ctm_acme", "items": []}});
    assert_eq!(server.paddle(&canceled).await.status(), 200);
    let (plan, status, ..) = acme(&client).await;
    assert_eq!((plan.as_str(), status.as_str()), ("free", "canceled"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signature_made_by_stripes_own_library_is_accepted() {
    let python = std::env::var("TALLY_TEST_PYTHON").expect(
        "TALLY_TEST_PYTHON must name a Python with the official stripe package (scripts/test.sh sets it up)",
    );
    let (db, client) = setup().await;
    let server = Server::start(&db).await;
    link_acme(&server).await;
    let body = stripe_event(
        "evt_signed_by_stripe",
        "invoice.paid",
        now(),
        renewal(now()),
    )
    .to_string();
    let header = std::process::Command::new(python)
        .args(["-c", include_str!("stripe_sign.py"), STRIPE_SECRET])
        .env("PAYLOAD", &body)
        .output()
        .expect("run python");
    assert!(
        header.status.success(),
        "{}",
        String::from_utf8_lossy(&header.stderr)
    );
    let header = String::from_utf8(header.stdout).unwrap();
    let response = server
        .webhook("/webhooks/stripe", "Stripe-Signature", header.trim(), body)
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(acme(&client).await.2, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_deliveries_are_refused_and_change_nothing() {
    let (db, client) = setup().await;
    let server = Server::start(&db).await;
    link_acme(&server).await;
    let before = (acme(&client).await, events_recorded(&client).await);
    let body = stripe_event(
        "evt_bad",
        "invoice.paid",
        now(),
        json!({"customer": "cus_acme"}),
    )
    .to_string();
    let signed = tallyd::signature::sign_stripe(STRIPE_SECRET, now(), body.as_bytes());
    let cases: Vec<(&str, Option<String>, String, u16, &str)> = vec![
        (
            "wrong signature",
            Some(format!("t={},v1={}", now(), "ab".repeat(32))),
            body.clone(),
            400,
            "invalid_signature",
        ),
        (
            "wrong secret",
            Some(tallyd::signature::sign_stripe(
                "whsec_wrong",
                now(),
                body.as_bytes(),
            )),
            body.clone(),
            400,
            "invalid_signature",
        ),
        (
            "stale timestamp",
            Some(tallyd::signature::sign_stripe(
                STRIPE_SECRET,
                now() - 301,
                body.as_bytes(),
            )),
            body.clone(),
            400,
            "invalid_signature",
        ),
        (
            "missing header",
            None,
            body.clone(),
            400,
            "invalid_signature",
        ),
        (
            "another body",
            Some(signed.clone()),
            body.replace("evt_bad", "evt_forged"),
            400,
            "invalid_signature",
        ),
        (
            "malformed JSON",
            Some(tallyd::signature::sign_stripe(
                STRIPE_SECRET,
                now(),
                b"{not json",
            )),
            "{not json".into(),
            400,
            "malformed_event",
        ),
        (
            "oversized",
            None,
            "x".repeat(65 * 1024),
            413,
            "body_too_large",
        ),
    ];
    for (case, header, body, status, code) in cases {
        let mut request = server.http.post(server.url("/webhooks/stripe")).body(body);
        if let Some(header) = header {
            request = request.header("Stripe-Signature", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), status, "{case}");
        assert_eq!(
            response.json::<Value>().await.unwrap()["code"],
            code,
            "{case}"
        );
    }
    // A signature with the previous secret still verifies (rotation).
    let rotated = tallyd::signature::sign_stripe("whsec_test_previous", now(), body.as_bytes());
    assert_eq!(
        server
            .webhook(
                "/webhooks/stripe",
                "Stripe-Signature",
                &rotated,
                body.clone()
            )
            .await
            .status(),
        200
    );
    assert_eq!(events_recorded(&client).await, before.1 + 1);
    assert_eq!(server.metric("tally_webhook_events_total{provider=\"stripe\",type=\"unknown\",outcome=\"rejected\"}").await, 6.0);

    // Paddle's header is checked the same way.
    let paddle_body = json!({"event_id": "evt_p", "event_type": "transaction.completed", "occurred_at": "2030-01-01T00:00:00Z",
                             "data": {"customer_id": "ctm_x"}}).to_string();
    let wrong = tallyd::signature::sign_paddle("pdl_wrong", now(), paddle_body.as_bytes());
    assert_eq!(
        server
            .webhook(
                "/webhooks/paddle",
                "Paddle-Signature",
                &wrong,
                paddle_body.clone()
            )
            .await
            .status(),
        400
    );
    let right = tallyd::signature::sign_paddle(PADDLE_SECRET, now(), paddle_body.as_bytes());
    // Right signature, unknown customer: not processed, not recorded, retried later.
    let response = server
        .webhook("/webhooks/paddle", "Paddle-Signature", &right, paddle_body)
        .await;
    assert_eq!(response.status(), 503);
    assert_eq!(events_recorded(&client).await, before.1 + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_concurrent_deliveries_of_one_event_take_effect_once() {
    let (db, client) = setup().await;
    let server = std::sync::Arc::new(Server::start(&db).await);
    link_acme(&server).await;
    let event = stripe_event("evt_storm", "invoice.paid", now(), renewal(now()));
    let deliveries: Vec<_> = (0..1_000)
        .map(|_| {
            let (server, event) = (server.clone(), event.clone());
            tokio::spawn(async move {
                server.stripe(&event).await.json::<Value>().await.unwrap()["status"].clone()
            })
        })
        .collect();
    let mut statuses = Vec::new();
    for delivery in deliveries {
        statuses.push(delivery.await.unwrap());
    }
    assert_eq!(statuses.iter().filter(|s| **s == "processed").count(), 1);
    assert_eq!(statuses.iter().filter(|s| **s == "duplicate").count(), 999);
    assert_eq!(acme(&client).await.2, 0);
    let processed = "tally_webhook_events_total{provider=\"stripe\",type=\"invoice.paid\",outcome=\"processed\"}";
    assert_eq!(server.metric(processed).await, 1.0);
    let rows: i64 = client
        .query_one(
            "SELECT count(*) FROM tally.provider_events WHERE event_id = 'evt_storm'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn subscription_events_out_of_order_change_nothing() {
    let (db, client) = setup().await;
    let server = Server::start(&db).await;
    link_acme(&server).await;
    let (start, end) = (now() - 60, now() + 86_400);
    let newer = stripe_event(
        "evt_new",
        "customer.subscription.updated",
        now(),
        stripe_subscription("price_growth", "active", start, end),
    );
    let older = stripe_event(
        "evt_old",
        "customer.subscription.updated",
        now() - 100,
        stripe_subscription("price_starter", "past_due", start, end),
    );
    assert_eq!(
        server.stripe(&newer).await.json::<Value>().await.unwrap()["status"],
        "processed"
    );
    let late = server.stripe(&older).await.json::<Value>().await.unwrap();
    assert_eq!(late["status"], "stale");
    let (plan, status, ..) = acme(&client).await;
    assert_eq!((plan.as_str(), status.as_str()), ("growth", "active"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_event_for_an_unlinked_customer_waits_for_the_link() {
    let (db, client) = setup().await;
    let server = Server::start(&db).await;
    let paid = stripe_event("evt_early", "invoice.paid", now(), renewal(now()));
    let early = server.stripe(&paid).await;
    assert_eq!(early.status(), 503);
    assert!(early.headers().contains_key("retry-after"));
    assert_eq!(early.json::<Value>().await.unwrap()["code"], "not_ready");
    assert_eq!(events_recorded(&client).await, 0);
    assert_eq!(acme(&client).await.2, 80);

    link_acme(&server).await;
    // The provider's retry of the same event is now processed.
    assert_eq!(
        server.stripe(&paid).await.json::<Value>().await.unwrap()["status"],
        "processed"
    );
    assert_eq!(acme(&client).await.2, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unconfigured_provider_is_refused() {
    let db = TestDb::create();
    let server = Server::start_with(&db, "whsec_only_stripe", "").await;
    let response = server
        .webhook(
            "/webhooks/paddle",
            "Paddle-Signature",
            "ts=1;h1=00",
            "{}".into(),
        )
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(
        response.json::<Value>().await.unwrap()["code"],
        "webhook_not_configured"
    );
    server.stop().await;
}
