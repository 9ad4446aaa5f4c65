//! The tenant API through the real tallyd: keys, tenant isolation, every
//! endpoint, bad input, health, metrics and a graceful shutdown.

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

async fn call(
    server: &Server,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = match method {
        "GET" => server.http.get(server.url(path)),
        _ => server.http.post(server.url(path)),
    };
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
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

#[tokio::test(flavor = "multi_thread")]
async fn missing_wrong_and_revoked_keys_are_unauthorized() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    // The key with its last character changed (to one it is not).
    let last = if acme.ends_with('x') { 'y' } else { 'x' };
    let wrong = format!("{}{last}", &acme[..acme.len() - 1]);
    for key in [
        None,
        Some("tly_nope_nope"),
        Some(wrong.as_str()),
        Some("sk_live_something"),
    ] {
        let (status, body) = call(&server, "POST", "/v1/usage/messages/check", key, None).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (401, Some("unauthorized")),
            "{key:?}"
        );
    }
    let no_scheme = server
        .http
        .get(server.url("/v1/usage"))
        .header("authorization", acme.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(no_scheme.status(), 401);

    assert_eq!(
        call(&server, "GET", "/v1/usage", Some(&acme), None).await.0,
        200
    );
    let key_id = acme.split('_').nth(1).unwrap();
    assert!(tallyd::db::admin::revoke_api_key(&client, key_id)
        .await
        .unwrap());
    assert_eq!(
        call(&server, "GET", "/v1/usage", Some(&acme), None).await.0,
        401
    );
    assert_eq!(used(&client, "acme", "messages").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn one_tenants_key_never_reaches_another_tenant() {
    let (db, client, acme, globex) = setup().await;
    client
        .execute(
            "SELECT tally.check_and_increment_usage('globex', 'messages', 7)",
            &[],
        )
        .await
        .unwrap();
    let server = Server::start(&db).await;

    let (status, usage) = call(&server, "GET", "/v1/usage", Some(&acme), None).await;
    assert_eq!(status, 200);
    assert_eq!(usage["tenant_id"], "acme");
    assert_eq!(
        usage["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["used"].as_i64().unwrap())
            .sum::<i64>(),
        0
    );

    // A request cannot name a tenant: unknown fields are refused.
    let (status, body) = call(
        &server,
        "POST",
        "/v1/usage/messages/check",
        Some(&acme),
        Some(json!({"units": 1, "tenant_id": "globex"})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("malformed_json"))
    );
    let smuggled = server
        .http
        .post(server.url("/v1/usage/messages/check?tenant_id=globex"))
        .bearer_auth(&acme)
        .send()
        .await
        .unwrap();
    assert_eq!(smuggled.json::<Value>().await.unwrap()["used"], 1);
    assert_eq!(
        (
            used(&client, "acme", "messages").await,
            used(&client, "globex", "messages").await
        ),
        (1, 7)
    );

    let (_, globex_usage) = call(&server, "GET", "/v1/usage", Some(&globex), None).await;
    assert_eq!(globex_usage["tenant_id"], "globex");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn checks_count_refuse_and_honour_idempotency_keys() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    let check = |units: Value| {
        call(
            &server,
            "POST",
            "/v1/usage/messages/check",
            Some(&acme),
            Some(units),
        )
    };

    let (status, body) = check(json!({"units": 95})).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        json!({"allowed": true, "used": 95, "max_units": 100, "remaining": 5, "reason": null})
    );
    let (status, body) = check(json!({"units": 10})).await;
    assert_eq!(
        (status, body["allowed"].as_bool(), body["reason"].as_str()),
        (200, Some(false), Some("limit_exceeded"))
    );
    // No body: one unit.
    let (_, body) = call(
        &server,
        "POST",
        "/v1/usage/messages/check",
        Some(&acme),
        None,
    )
    .await;
    assert_eq!(body["used"], 96);

    for _ in 0..3 {
        let response = server
            .http
            .post(server.url("/v1/usage/messages/check"))
            .bearer_auth(&acme)
            .header("Idempotency-Key", "send-campaign-42")
            .json(&json!({"units": 2}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.json::<Value>().await.unwrap()["used"], 98);
    }
    assert_eq!(used(&client, "acme", "messages").await, 98);

    // Consumed units cannot be given back.
    let (status, body) = call(
        &server,
        "POST",
        "/v1/usage/messages/decrement",
        Some(&acme),
        Some(json!({"units": 8})),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("idempotency_key_required"))
    );
    let response = server
        .http
        .post(server.url("/v1/usage/messages/decrement"))
        .bearer_auth(&acme)
        .header("Idempotency-Key", "give-back-8")
        .json(&json!({"units": 8}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 422);
    assert_eq!(used(&client, "acme", "messages").await, 98);

    let not_in_plan = call(&server, "POST", "/v1/usage/seats/check", Some(&acme), None)
        .await
        .1;
    assert_eq!(not_in_plan["reason"], "not_in_plan");
    let outcome = "tally_usage_checks_total{outcome=\"limit_exceeded\"}";
    assert_eq!(server.metric(outcome).await, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_errors_and_change_nothing() {
    let (db, client, acme, _) = setup().await;
    let server = Server::start(&db).await;
    let post = |path: &'static str, body: &'static str| {
        server
            .http
            .post(server.url(path))
            .bearer_auth(&acme)
            .header("content-type", "application/json")
            .header("idempotency-key", "bad-request")
            .body(body)
            .send()
    };
    let cases = [
        ("/v1/usage/emails/check", "{}", 404, "metric_not_found"),
        (
            "/v1/usage/messages/check",
            r#"{"units": 0}"#,
            400,
            "invalid_request",
        ),
        (
            "/v1/usage/messages/check",
            r#"{"units": -3}"#,
            400,
            "invalid_request",
        ),
        (
            "/v1/usage/messages/check",
            r#"{"units": 1.5}"#,
            400,
            "malformed_json",
        ),
        (
            "/v1/usage/messages/check",
            r#"{"units": "five"}"#,
            400,
            "malformed_json",
        ),
        (
            "/v1/usage/messages/check",
            r#"{"units": 1"#,
            400,
            "malformed_json",
        ),
        (
            "/v1/usage/messages/decrement",
            r#"{"units": 0}"#,
            400,
            "invalid_request",
        ),
        (
            "/v1/plan/validate",
            r#"{"plan_id": "platinum"}"#,
            404,
            "plan_not_found",
        ),
        ("/v1/plan/validate", "{}", 400, "malformed_json"),
        ("/v1/nothing", "{}", 404, "not_found"),
    ];
    for (path, body, status, code) in cases {
        let response = post(path, body).await.unwrap();
        assert_eq!(response.status(), status, "{path} {body}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["code"], code, "{path} {body}");
        assert!(
            answer["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{path} {body}: {answer}"
        );
    }
    let huge = server
        .http
        .post(server.url("/v1/usage/messages/check"))
        .bearer_auth(&acme)
        .body(format!(
            r#"{{"units": 1, "pad": "{}"}}"#,
            "x".repeat(70_000)
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(huge.status(), 413);
    let long_key = server
        .http
        .post(server.url("/v1/usage/messages/check"))
        .bearer_auth(&acme)
        .header("Idempotency-Key", "k".repeat(300))
        .send()
        .await
        .unwrap();
    assert_eq!(long_key.status(), 400);
    assert_eq!(used(&client, "acme", "messages").await, 0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn plan_validation_explains_what_to_remove() {
    let (db, client, acme, _) = setup().await;
    client
        .batch_execute("UPDATE tally.tenants SET plan_id = 'growth'; SELECT tally.check_and_increment_usage('acme', 'chatbots', 5);")
        .await
        .unwrap();
    let server = Server::start(&db).await;
    let (status, body) = call(
        &server,
        "POST",
        "/v1/plan/validate",
        Some(&acme),
        Some(json!({"plan_id": "starter"})),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(body["valid"], false);
    assert_eq!(
        body["message"],
        "5 chatbots in use, the starter plan allows 3: remove 2 before switching"
    );
    assert_eq!(body["violations"][0]["excess"], 2);
    let (_, body) = call(
        &server,
        "POST",
        "/v1/plan/validate",
        Some(&acme),
        Some(json!({"plan_id": "growth"})),
    )
    .await;
    assert_eq!(body["valid"], true);
    assert_eq!(server.metric("tally_plan_changes_blocked_total").await, 1.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_readiness_and_metrics_answer() {
    let db = TestDb::create();
    let server = Server::start(&db).await;
    let healthz = server
        .http
        .get(server.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(healthz.status(), 200);
    let (status, body) = call(&server, "GET", "/readyz", None, None).await;
    assert_eq!(
        (status, body),
        (
            200,
            json!({"ready": true, "extension": tallyd::EXTENSION_VERSION})
        )
    );
    let metrics = server
        .http
        .get(server.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for family in [
        "tally_http_requests_total",
        "tally_http_request_duration_seconds_bucket",
        "tally_db_pool_connections",
    ] {
        assert!(metrics.contains(family), "{family} missing from\n{metrics}");
    }
    assert!(
        metrics.contains(r#"route="/readyz",method="GET",status="200""#),
        "{metrics}"
    );
    server.stop().await;

    // Without the extension, tallyd is alive but not ready.
    let bare = TestDb::create_empty();
    let server = Server::start(&bare).await;
    let (status, body) = call(&server, "GET", "/readyz", None, None).await;
    assert_eq!(status, 503);
    assert!(
        body["reason"].as_str().unwrap().contains("tallyd migrate"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shutting_down_finishes_the_requests_in_flight() {
    let (db, client, acme, _) = setup().await;
    client
        .execute(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 1)",
            &[],
        )
        .await
        .unwrap();
    let server = Server::start(&db).await;
    // Hold acme's counter so that a check waits inside tallyd.
    let mut holder = db.connect_async().await;
    let transaction = holder.transaction().await.unwrap();
    transaction
        .execute("SELECT FROM tally.usage_counters WHERE tenant_id = 'acme' AND metric = 'messages' FOR UPDATE", &[])
        .await
        .unwrap();
    let in_flight = tokio::spawn({
        let (http, url, key) = (
            server.http.clone(),
            server.url("/v1/usage/messages/check"),
            acme.clone(),
        );
        async move {
            http.post(url)
                .bearer_auth(key)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }
    });
    loop {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    server.shutdown.cancel();
    transaction.commit().await.unwrap();
    assert_eq!(in_flight.await.unwrap()["used"], 2);
    server.stop().await;
}
