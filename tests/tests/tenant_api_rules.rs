//! The tenant API's rules for keys and decrements, through the real tallyd:
//! an idempotency key buys one answer for one request, and a tenant can give
//! back only allocations it holds, once per key.

use serde_json::{json, Value};
use tally_tests::server::Server;
use tally_tests::TestDb;

/// Tenants `acme` and `globex` (both on `free`), each with an API key.
async fn setup() -> (TestDb, tokio_postgres::Client, String, String) {
    let db = TestDb::create();
    let client = db.connect_async().await;
    client
        .batch_execute("INSERT INTO tally.tenants (tenant_id) VALUES ('acme'), ('globex')")
        .await
        .unwrap();
    let mut keys = Vec::new();
    for tenant in ["acme", "globex"] {
        let key = tallyd::api_keys::generate();
        tallyd::db::admin::add_api_key(&client, tenant, &key, Some("test"))
            .await
            .unwrap();
        keys.push(key.key);
    }
    let globex = keys.pop().unwrap();
    (db, client, keys.pop().unwrap(), globex)
}

/// POST `body` to `path` with `key` and, if given, an `Idempotency-Key`.
async fn post(
    server: &Server,
    path: &str,
    key: &str,
    idempotency_key: Option<&str>,
    body: Value,
) -> (u16, Value) {
    let mut request = server.http.post(server.url(path)).bearer_auth(key);
    if let Some(idempotency_key) = idempotency_key {
        request = request.header("Idempotency-Key", idempotency_key);
    }
    let response = request.json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn used(client: &tokio_postgres::Client, tenant: &str, metric: &str) -> i64 {
    client
        .query_opt(
            "SELECT used FROM tally.usage_counters WHERE tenant_id = $1 AND metric = $2",
            &[&tenant, &metric],
        )
        .await
        .unwrap()
        .map_or(0, |row| row.get(0))
}

async fn reports(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one("SELECT count(*) FROM tally.usage_reports", &[])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idempotency_key_reused_with_other_units_or_metric_is_refused() {
    let (db, client, acme, _) = setup().await;
    client
        .batch_execute(
            "UPDATE tally.metrics SET stripe_meter_event = 'messages' WHERE metric = 'messages'",
        )
        .await
        .unwrap();
    let server = Server::start(&db).await;
    let check = "/v1/usage/messages/check";

    let (status, first) = post(&server, check, &acme, Some("k-1"), json!({"units": 1})).await;
    assert_eq!((status, first["used"].as_i64()), (200, Some(1)));
    // The same request again: the first answer.
    assert_eq!(
        post(&server, check, &acme, Some("k-1"), json!({"units": 1})).await,
        (200, first)
    );
    // The same key for a million units: refused, nothing counted or billed.
    let (status, body) = post(
        &server,
        check,
        &acme,
        Some("k-1"),
        json!({"units": 1_000_000}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    let message = body["message"].as_str().unwrap();
    assert!(
        message.contains("k-1") && message.contains("units"),
        "{message}"
    );
    // Another metric under the same key: refused too.
    let (status, body) = post(
        &server,
        "/v1/usage/chatbots/check",
        &acme,
        Some("k-1"),
        json!({"units": 1}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    assert_eq!(used(&client, "acme", "messages").await, 1);
    assert_eq!(used(&client, "acme", "chatbots").await, 0);
    assert_eq!(reports(&client).await, 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_consumable_cannot_be_given_back() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    for _ in 0..2 {
        post(
            &server,
            "/v1/usage/messages/check",
            &acme,
            None,
            json!({"units": 50}),
        )
        .await;
    }
    assert_eq!(used(&client, "acme", "messages").await, 100);

    let (status, body) = post(
        &server,
        "/v1/usage/messages/decrement",
        &acme,
        Some("give-back"),
        json!({"units": 100}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("not_an_allocation")),
        "{body}"
    );
    assert_eq!(used(&client, "acme", "messages").await, 100);
    let (_, check) = post(
        &server,
        "/v1/usage/messages/check",
        &acme,
        None,
        json!({"units": 1}),
    )
    .await;
    assert_eq!(check["allowed"], false);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_allocation_decrement_needs_a_key_counts_once_and_never_passes_zero() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    let (status, _) = post(
        &server,
        "/v1/usage/chatbots/check",
        &acme,
        None,
        json!({"units": 4}),
    )
    .await;
    assert_eq!(status, 200);
    let decrement = "/v1/usage/chatbots/decrement";

    // No key: refused.
    let (status, body) = post(&server, decrement, &acme, None, json!({"units": 1})).await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("idempotency_key_required")),
        "{body}"
    );
    assert_eq!(used(&client, "acme", "chatbots").await, 4);

    // The same key twice: one decrement, the same answer.
    let expected = (200, json!({"metric": "chatbots", "used": 3}));
    for _ in 0..2 {
        assert_eq!(
            post(
                &server,
                decrement,
                &acme,
                Some("bot-7"),
                json!({"units": 1})
            )
            .await,
            expected
        );
    }
    assert_eq!(used(&client, "acme", "chatbots").await, 3);

    // The same key for other units: refused.
    let (status, body) = post(
        &server,
        decrement,
        &acme,
        Some("bot-7"),
        json!({"units": 2}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    // A key used for a check cannot decrement.
    post(
        &server,
        "/v1/usage/chatbots/check",
        &acme,
        Some("k-check"),
        json!({"units": 1}),
    )
    .await;
    let (status, body) = post(
        &server,
        decrement,
        &acme,
        Some("k-check"),
        json!({"units": 1}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (422, Some("idempotency_key_reused")),
        "{body}"
    );
    assert_eq!(used(&client, "acme", "chatbots").await, 4);

    // More than is used: refused whole, nothing changes.
    let (status, body) = post(
        &server,
        decrement,
        &acme,
        Some("too-many"),
        json!({"units": i64::MAX}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("decrement_exceeds_used")),
        "{body}"
    );
    let (status, _) = post(&server, decrement, &acme, Some("five"), json!({"units": 5})).await;
    assert_eq!(status, 409);
    assert_eq!(used(&client, "acme", "chatbots").await, 4);
    // Exactly what is used: back to zero.
    assert_eq!(
        post(&server, decrement, &acme, Some("all"), json!({"units": 4})).await,
        (200, json!({"metric": "chatbots", "used": 0}))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_bytes_in_a_path_are_the_callers_mistake() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    for path in [
        "/v1/usage/mess%00ages/check",
        "/v1/usage/mess%FFages/check",
        "/v1/usage/%C3%28/check",
    ] {
        let response = server
            .http
            .post(server.url(path))
            .bearer_auth(&acme)
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (status, body["code"].as_str()),
            (400, Some("invalid_request")),
            "{path}: {body}"
        );
    }
    assert_eq!(used(&client, "acme", "messages").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_database_older_than_tallyd_is_unavailable_not_a_conflict() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    // What a library newer than the schema raises (see needs_update), planted
    // where every check passes: the tenant's row.
    client
        .batch_execute(&format!(
            "CREATE FUNCTION tally.stale() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 RAISE EXCEPTION USING ERRCODE = '55000', MESSAGE = '{}';
             END $$;
             CREATE TRIGGER stale BEFORE UPDATE ON tally.usage_counters
                 FOR EACH ROW EXECUTE FUNCTION tally.stale();
             INSERT INTO tally.usage_counters (tenant_id, metric) VALUES ('acme', 'messages');",
            tally_rules::errors::message::NEEDS_UPDATE
        ))
        .await
        .unwrap();
    let (status, body) = post(
        &server,
        "/v1/usage/messages/check",
        &acme,
        None,
        json!({"units": 1}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (503, Some("needs_update")),
        "{body}"
    );
    server.stop().await;
}
