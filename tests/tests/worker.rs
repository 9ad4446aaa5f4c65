//! The usage-report worker against the local fake of Stripe: every billed
//! unit reaches Stripe once, whatever Stripe and the network do.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::json;
use tally_tests::fake_stripe::{FakeStripe, Faults};
use tally_tests::server::{tallyd_binary, Server};
use tally_tests::TestDb;
use tokio_util::sync::CancellationToken;

const KEY: &str = "sk_test_worker";

/// `messages` billed through meter `tally_messages`; tenants with Stripe
/// customers; retries fast (50 ms backoff, at most 1 s).
async fn setup(tenants: &[(&str, Option<&str>)]) -> (TestDb, tokio_postgres::Client) {
    let db = TestDb::create();
    let client = db.connect_async().await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {} SET tally.report_backoff_base = '50ms';
             ALTER DATABASE {} SET tally.report_backoff_max = '1s';
             UPDATE tally.metrics SET stripe_meter_event = 'tally_messages' WHERE metric = 'messages';
             UPDATE tally.plan_limits SET max_units = 1000000 WHERE plan_id = 'free' AND metric = 'messages';",
            db.name(),
            db.name()
        ))
        .await
        .unwrap();
    for (tenant, customer) in tenants {
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id, stripe_customer_id) VALUES ($1, $2)",
                &[tenant, customer],
            )
            .await
            .unwrap();
    }
    (db, client)
}

async fn count(client: &tokio_postgres::Client, tenant: &str, units: i64) {
    client
        .execute(
            "SELECT tally.check_and_increment_usage($1, 'messages', $2)",
            &[&tenant, &units],
        )
        .await
        .unwrap();
}

fn config(rate: f64) -> tallyd::worker::WorkerConfig {
    tallyd::worker::WorkerConfig {
        batch: 20,
        lease: Duration::from_secs(5),
        concurrency: 8,
        rate,
        poll_interval: Duration::from_millis(20),
    }
}

/// A worker in this process; cancel the token to stop it.
fn start_worker(
    db: &TestDb,
    fake: &FakeStripe,
    rate: f64,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    start_worker_with(db, fake, config(rate))
}

fn start_worker_with(
    db: &TestDb,
    fake: &FakeStripe,
    config: tallyd::worker::WorkerConfig,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let client =
        tallyd::worker::stripe::MeterClient::new(KEY, &fake.base_url, Duration::from_secs(5))
            .unwrap();
    let (shutdown, url) = (CancellationToken::new(), db.url_as("tally_daemon"));
    let token = shutdown.clone();
    let handle =
        tokio::spawn(async move { tallyd::run_worker(&url, false, client, config, token).await });
    (shutdown, handle)
}

/// A `tallyd worker` process, killed when dropped: a failing test leaves
/// none behind.
struct WorkerProcess(Child);

impl WorkerProcess {
    fn kill(&mut self) -> std::io::Result<()> {
        self.0.kill()
    }

    fn wait(&mut self) -> std::io::Result<std::process::ExitStatus> {
        self.0.wait()
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `tallyd worker` as a process of its own.
fn spawn_worker(db: &TestDb, fake: &FakeStripe, lease: &str) -> WorkerProcess {
    let child = Command::new(tallyd_binary())
        .args([
            "worker",
            "--worker-lease",
            lease,
            "--worker-rate",
            "500",
            "--worker-concurrency",
            "8",
            "--worker-batch",
            "20",
            "--worker-poll",
            "20ms",
        ])
        .env("DATABASE_URL", db.url_as("tally_daemon"))
        .env("STRIPE_SECRET_KEY", KEY)
        .env("STRIPE_API_BASE", &fake.base_url)
        .stderr(Stdio::null())
        .spawn()
        .expect("start tallyd worker");
    WorkerProcess(child)
}

async fn statuses(client: &tokio_postgres::Client) -> HashMap<String, i64> {
    client
        .query(
            "SELECT status, count(*) FROM tally.usage_reports GROUP BY status",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect()
}

async fn wait_for<F, Fut>(what: &str, mut done: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn nothing_pending(client: &tokio_postgres::Client) -> bool {
    !statuses(client).await.contains_key("pending")
}

#[tokio::test(flavor = "multi_thread")]
async fn reports_become_meter_events_and_are_completed() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    for units in [2, 3, 5] {
        count(&client, "acme", units).await;
    }
    let fake = FakeStripe::start(KEY, Faults::default()).await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("all reports are sent", || nothing_pending(&client)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    let rows = client
        .query("SELECT identifier, units, floor(extract(epoch FROM created_at))::bigint, status, attempts FROM tally.usage_reports ORDER BY id", &[])
        .await
        .unwrap();
    let events: HashMap<String, _> = fake
        .events()
        .into_iter()
        .map(|e| (e.identifier.clone(), e))
        .collect();
    assert_eq!(events.len(), 3);
    for row in &rows {
        let event = &events[&row.get::<_, String>(0)];
        assert_eq!(
            (
                event.value,
                event.timestamp,
                event.customer.as_str(),
                event.event_name.as_str()
            ),
            (row.get(1), row.get(2), "cus_acme", "tally_messages")
        );
        assert_eq!(
            (row.get::<_, String>(3), row.get::<_, i32>(4)),
            ("completed".to_string(), 1)
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_customer_stripe_rejects_fails_for_good_and_the_queue_goes_on() {
    let (db, client) = setup(&[("acme", Some("cus_acme")), ("ghost", Some("cus_ghost"))]).await;
    for tenant in ["ghost", "acme", "ghost", "acme"] {
        count(&client, tenant, 1).await;
    }
    let faults = Faults {
        unknown_customers: ["cus_ghost".to_string()].into(),
        ..Faults::default()
    };
    let fake = FakeStripe::start(KEY, faults).await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("all reports are settled", || nothing_pending(&client)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();

    assert_eq!(
        statuses(&client).await,
        HashMap::from([("completed".into(), 2), ("failed".into(), 2)])
    );
    let errors: Vec<String> = client
        .query(
            "SELECT last_error FROM tally.usage_reports WHERE status = 'failed' AND attempts = 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        errors,
        vec!["stripe 400 resource_missing: No such customer: 'cus_ghost'"; 2]
    );
    // Each poison pill was tried once, and acme's usage went through.
    assert_eq!(fake.requests(), 4);
    assert_eq!(
        fake.units_by_customer(),
        HashMap::from([("cus_acme".to_string(), 2)])
    );

    // The operator sees them, with the reason, and can put them back.
    let listing = Command::new(tallyd_binary())
        .arg("reports")
        .env("DATABASE_URL", db.url_as("tally_admin"))
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    assert!(
        listing.contains("ghost") && listing.matches("resource_missing").count() == 2,
        "{listing}"
    );
    let retry = Command::new(tallyd_binary())
        .args(["reports", "retry", "--all-failed"])
        .env("DATABASE_URL", db.url_as("tally_admin"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(retry.stdout).unwrap(),
        "2 failed usage reports back in the queue\n"
    );
    assert_eq!(statuses(&client).await.get("pending"), Some(&2));
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_rate_limits_and_dropped_connections_end_with_each_unit_counted_once() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    for _ in 0..40 {
        count(&client, "acme", 1).await;
    }
    let faults = Faults {
        server_errors: 0.3,
        rate_limited: 0.1,
        retry_after_seconds: 1,
        dropped: 0.2,
        ..Faults::default()
    };
    let fake = FakeStripe::start(KEY, faults).await;
    let (stop, worker) = start_worker(&db, &fake, 200.0);
    wait_for("all reports are sent", || nothing_pending(&client)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("completed".into(), 40)])
    );
    assert_eq!(fake.units_by_customer()["cus_acme"], 40);
    assert!(
        fake.requests() > 40,
        "no fault was injected: {} requests",
        fake.requests()
    );
    let retried: i64 = client
        .query_one(
            "SELECT count(*) FROM tally.usage_reports WHERE attempts > 1",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(retried > 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_retry_after_is_honoured() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    count(&client, "acme", 1).await;
    let faults = Faults {
        rate_limited: 1.0,
        retry_after_seconds: 30,
        ..Faults::default()
    };
    let fake = FakeStripe::start(KEY, faults).await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("the 429 is recorded", || async {
        client
            .query_one(
                "SELECT attempts = 1 AND lease_until IS NULL FROM tally.usage_reports",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    let row = client
        .query_one("SELECT extract(epoch FROM next_attempt_at - now())::float8, last_error FROM tally.usage_reports", &[])
        .await
        .unwrap();
    let (wait, error): (f64, String) = (row.get(0), row.get(1));
    // Retry-After (30 s) beat the backoff (50 ms here).
    assert!(wait > 25.0, "retried after {wait} s");
    assert_eq!(
        error,
        "stripe 429 rate_limit: Too many requests hit the API too quickly."
    );
    assert_eq!(fake.requests(), 1);
    stop.cancel();
    worker.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tenant_without_a_stripe_customer_waits_for_one_and_old_usage_is_given_up() {
    let (db, client) = setup(&[("newco", None), ("acme", Some("cus_acme"))]).await;
    count(&client, "newco", 4).await;
    // Usage from 40 days ago: more than Stripe accepts.
    client
        .execute(
            "INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units, created_at)
             VALUES ('acme', 'messages', 'tally_messages', 9, now() - interval '40 days')",
            &[],
        )
        .await
        .unwrap();
    let fake = FakeStripe::start(KEY, Faults::default()).await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("newco's report is retried", || async {
        client
            .query_one(
                "SELECT attempts >= 2 FROM tally.usage_reports WHERE tenant_id = 'newco'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    let old: (String, String) = {
        let row = client
            .query_one(
                "SELECT status, last_error FROM tally.usage_reports WHERE tenant_id = 'acme'",
                &[],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(old.0, "failed");
    assert!(
        old.1.contains("older than the 35 days Stripe accepts"),
        "{}",
        old.1
    );
    client
        .execute(
            "SELECT tally.link_provider_customer('newco', 'stripe', 'cus_newco')",
            &[],
        )
        .await
        .unwrap();
    wait_for("newco's report is sent", || nothing_pending(&client)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(
        fake.units_by_customer(),
        HashMap::from([("cus_newco".to_string(), 4)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_rate_limit_spaces_the_sends() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    for _ in 0..40 {
        count(&client, "acme", 1).await;
    }
    let fake = FakeStripe::start(KEY, Faults::default()).await;
    let (stop, worker) = start_worker(&db, &fake, 20.0);
    wait_for("all reports are sent", || nothing_pending(&client)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let received: Vec<u128> = fake.events().iter().map(|e| e.received_ms).collect();
    // 40 sends at 20/s: at least 39 intervals of 50 ms between first and last.
    let span = received.iter().max().unwrap() - received.iter().min().unwrap();
    assert!(span >= 1_900, "40 sends in {span} ms at 20/s");
}

#[tokio::test(flavor = "multi_thread")]
async fn stopping_finishes_the_sends_in_flight() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    for _ in 0..3 {
        count(&client, "acme", 1).await;
    }
    let fake = FakeStripe::start(
        KEY,
        Faults {
            delay: Duration::from_millis(800),
            ..Faults::default()
        },
    )
    .await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    let requests = || async { fake.requests() == 3 };
    wait_for("three sends are in flight", requests).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    // The answers arrived after the stop, and were recorded.
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("completed".into(), 3)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_send_whose_completion_was_lost_is_not_counted_twice() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    count(&client, "acme", 7).await;
    // Stripe records the event, then answers slowly; the worker dies waiting.
    let fake = FakeStripe::start(
        KEY,
        Faults {
            delay: Duration::from_secs(30),
            ..Faults::default()
        },
    )
    .await;
    let mut first = spawn_worker(&db, &fake, "2s");
    wait_for("Stripe has the event", || async {
        fake.events().len() == 1
    })
    .await;
    first.kill().unwrap();
    first.wait().unwrap();
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("pending".into(), 1)])
    );

    fake.set_faults(Faults::default());
    let mut second = spawn_worker(&db, &fake, "2s");
    wait_for("the report is completed", || nothing_pending(&client)).await;
    second.kill().unwrap();
    second.wait().unwrap();
    let attempts: i32 = client
        .query_one("SELECT attempts FROM tally.usage_reports", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(attempts, 2);
    assert_eq!(fake.requests(), 2);
    assert_eq!(fake.units_by_customer()["cus_acme"], 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_money_path_bills_every_allowed_unit_once() {
    let tenants: Vec<(String, String)> = (1..=20)
        .map(|n| (format!("t{n}"), format!("cus_{n}")))
        .collect();
    let named: Vec<(&str, Option<&str>)> = tenants
        .iter()
        .map(|(t, c)| (t.as_str(), Some(c.as_str())))
        .collect();
    let (db, client) = setup(&named).await;
    client
        .execute("UPDATE tally.plan_limits SET max_units = 60 WHERE plan_id = 'free' AND metric = 'messages'", &[])
        .await
        .unwrap();
    let mut keys = HashMap::new();
    for (tenant, _) in &tenants {
        let key = tallyd::api_keys::generate();
        tallyd::db::admin::add_api_key(&client, tenant, &key, None)
            .await
            .unwrap();
        keys.insert(tenant.clone(), key.key);
    }
    // Stripe fails about a fifth of the calls transiently and does not know
    // cus_7; two workers run against it.
    let faults = Faults {
        server_errors: 0.1,
        rate_limited: 0.05,
        retry_after_seconds: 1,
        dropped: 0.05,
        unknown_customers: ["cus_7".to_string()].into(),
        ..Faults::default()
    };
    let fake = FakeStripe::start(KEY, faults).await;
    let mut workers = vec![
        spawn_worker(&db, &fake, "2s"),
        spawn_worker(&db, &fake, "2s"),
    ];
    let server = Arc::new(Server::start(&db).await);

    // 40 clients, 800 calls of 1 to 5 units: more than the 60 each tenant
    // may use, so some are refused.
    let keys = Arc::new(keys);
    let calls: Vec<_> = (0..40)
        .map(|_| {
            let (server, keys) = (server.clone(), keys.clone());
            tokio::spawn(async move {
                let mut allowed: HashMap<String, i64> = HashMap::new();
                for _ in 0..20 {
                    let (tenant, units) = {
                        let mut rng = rand::thread_rng();
                        (
                            format!("t{}", rng.gen_range(1..=20)),
                            rng.gen_range(1..=5_i64),
                        )
                    };
                    let answer: serde_json::Value = server
                        .http
                        .post(server.url("/v1/usage/messages/check"))
                        .bearer_auth(&keys[&tenant])
                        .json(&json!({"units": units}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    if answer["allowed"] == true {
                        *allowed.entry(tenant).or_insert(0) += units;
                    }
                }
                allowed
            })
        })
        .collect();
    // One worker dies mid-batch and is started again.
    wait_for("Stripe has counted some usage", || async {
        fake.events().len() >= 60
    })
    .await;
    workers[0].kill().unwrap();
    workers[0].wait().unwrap();
    workers[0] = spawn_worker(&db, &fake, "2s");

    let mut allowed: HashMap<String, i64> = HashMap::new();
    for call in calls {
        for (tenant, units) in call.await.unwrap() {
            *allowed.entry(tenant).or_insert(0) += units;
        }
    }
    wait_for("nothing is pending", || nothing_pending(&client)).await;
    for worker in &mut workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }

    let failed: HashMap<String, i64> = client
        .query("SELECT tenant_id, sum(units)::bigint FROM tally.usage_reports WHERE status = 'failed' GROUP BY tenant_id", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let stripe = fake.units_by_customer();
    let mut refused_somewhere = false;
    for (tenant, customer) in &tenants {
        let allowed = allowed.get(tenant).copied().unwrap_or(0);
        let counted: i64 = client
            .query_one(
                "SELECT coalesce(max(used), 0) FROM tally.usage_counters WHERE tenant_id = $1",
                &[tenant],
            )
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            counted, allowed,
            "{tenant}: tally counted {counted}, the API allowed {allowed}"
        );
        assert!(allowed <= 60, "{tenant} went over its limit");
        refused_somewhere |= allowed > 55;
        let billed = stripe.get(customer).copied().unwrap_or(0);
        let lost = failed.get(tenant).copied().unwrap_or(0);
        assert_eq!(
            billed,
            allowed - lost,
            "{tenant}: Stripe has {billed}, allowed {allowed}, failed {lost}"
        );
        if customer == "cus_7" {
            assert_eq!((billed, lost), (0, allowed), "cus_7 is unknown to Stripe");
        } else {
            assert_eq!(lost, 0, "{tenant}: usage failed");
        }
    }
    assert!(
        refused_somewhere,
        "no tenant reached its limit: the test did not test refusals"
    );
    // Every failed report is listed, with its reason.
    let listing = Command::new(tallyd_binary())
        .arg("reports")
        .env("DATABASE_URL", db.url_as("tally_admin"))
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let failed_ids: Vec<i64> = client
        .query(
            "SELECT id FROM tally.usage_reports WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(!failed_ids.is_empty());
    for id in failed_ids {
        assert!(
            listing.lines().any(
                |line| line.starts_with(&format!("{id} ")) && line.contains("resource_missing")
            ),
            "report {id} missing from\n{listing}"
        );
    }

    // Then Stripe slows down past the leases (a worker's batch of 20 at 8
    // sends at a time would wait 2.4 s under a 2 s lease), cus_7 is created
    // in Stripe and its reports are requeued, and more usage arrives.
    fake.set_faults(Faults {
        delay: Duration::from_millis(1200),
        ..Faults::default()
    });
    let requests_before = fake.requests_by_identifier();
    let last_before: i64 = client
        .query_one("SELECT max(id) FROM tally.usage_reports", &[])
        .await
        .unwrap()
        .get(0);
    let requeued: Vec<i64> = client
        .query(
            "SELECT id FROM tally.usage_reports WHERE status = 'failed'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let retry = Command::new(tallyd_binary())
        .args(["reports", "retry", "--all-failed"])
        .env("DATABASE_URL", db.url_as("tally_admin"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8(retry.stdout).unwrap(),
        format!(
            "{} failed usage reports back in the queue\n",
            requeued.len()
        )
    );
    client
        .execute("UPDATE tally.plan_limits SET max_units = 1000 WHERE plan_id = 'free' AND metric = 'messages'", &[])
        .await
        .unwrap();
    let mut workers = vec![
        spawn_worker(&db, &fake, "2s"),
        spawn_worker(&db, &fake, "2s"),
    ];
    let more: Vec<_> = (0..8)
        .map(|client_number| {
            let (server, keys) = (server.clone(), keys.clone());
            tokio::spawn(async move {
                let mut allowed: HashMap<String, i64> = HashMap::new();
                for call in 0..5 {
                    let tenant = format!("t{}", (client_number * 5 + call) % 20 + 1);
                    let answer: serde_json::Value = server
                        .http
                        .post(server.url("/v1/usage/messages/check"))
                        .bearer_auth(&keys[&tenant])
                        .json(&json!({"units": 2}))
                        .send()
                        .await
                        .unwrap()
                        .json()
                        .await
                        .unwrap();
                    assert_eq!(answer["allowed"], true, "{answer}");
                    *allowed.entry(tenant).or_insert(0) += 2;
                }
                allowed
            })
        })
        .collect();
    for call in more {
        for (tenant, units) in call.await.unwrap() {
            *allowed.entry(tenant).or_insert(0) += units;
        }
    }
    wait_for("nothing is pending again", || nothing_pending(&client)).await;
    for worker in &mut workers {
        worker.kill().unwrap();
        worker.wait().unwrap();
    }

    // Nothing lost: every allowed unit is billed, cus_7's included.
    assert_eq!(
        statuses(&client).await.get("failed"),
        None,
        "reports failed"
    );
    let stripe = fake.units_by_customer();
    for (tenant, customer) in &tenants {
        let allowed = allowed.get(tenant).copied().unwrap_or(0);
        assert_eq!(
            stripe.get(customer).copied().unwrap_or(0),
            allowed,
            "{tenant}: Stripe's count differs from what tally allowed"
        );
    }
    // Nothing sent twice: each report of this round reached Stripe in one
    // request, however slow Stripe was.
    let sent_now: Vec<String> = client
        .query(
            "SELECT identifier FROM tally.usage_reports WHERE id > $1 OR id = ANY ($2)",
            &[&last_before, &requeued],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(sent_now.len(), requeued.len() + 40);
    let requests_after = fake.requests_by_identifier();
    for identifier in &sent_now {
        let sends = requests_after.get(identifier).copied().unwrap_or(0)
            - requests_before.get(identifier).copied().unwrap_or(0);
        assert_eq!(sends, 1, "report {identifier} was sent {sends} times");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn serve_runs_the_worker_and_reports_the_queue_in_its_metrics() {
    let (db, client) = setup(&[("acme", Some("cus_acme")), ("ghost", Some("cus_ghost"))]).await;
    count(&client, "acme", 2).await;
    count(&client, "ghost", 1).await;
    let fake = FakeStripe::start(
        KEY,
        Faults {
            unknown_customers: ["cus_ghost".to_string()].into(),
            ..Faults::default()
        },
    )
    .await;
    let server = Server::start_with_worker(&db, &fake.base_url, KEY).await;
    wait_for("the reports are settled", || nothing_pending(&client)).await;
    assert_eq!(
        server
            .metric("tally_report_sends_total{outcome=\"sent\"}")
            .await,
        1.0
    );
    assert_eq!(
        server
            .metric("tally_report_sends_total{outcome=\"permanent\"}")
            .await,
        1.0
    );
    assert_eq!(server.metric("tally_report_queue_failed").await, 1.0);
    assert_eq!(server.metric("tally_report_queue_pending").await, 0.0);
    server.stop().await;
    assert_eq!(
        fake.units_by_customer(),
        HashMap::from([("cus_acme".to_string(), 2)])
    );
}

/// `tallyd reports retry <args>` as the admin; its stdout, or its stderr if it
/// failed.
fn reports_retry(db: &TestDb, args: &[&str]) -> Result<String, String> {
    let output = Command::new(tallyd_binary())
        .args(["reports", "retry"])
        .args(args)
        .env("DATABASE_URL", db.url_as("tally_admin"))
        .output()
        .unwrap();
    if output.status.success() {
        Ok(String::from_utf8(output.stdout).unwrap())
    } else {
        Err(String::from_utf8(output.stderr).unwrap())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_slow_stripe_does_not_outlive_the_leases_and_each_report_is_sent_once() {
    let (db, client) = setup(&[("acme", Some("cus_acme"))]).await;
    for _ in 0..10 {
        count(&client, "acme", 1).await;
    }
    // Each answer takes 700 ms; a worker sends two at a time under a 2 s
    // lease: ten reports claimed at once would wait 3.5 s for their turn.
    let fake = FakeStripe::start(
        KEY,
        Faults {
            delay: Duration::from_millis(700),
            ..Faults::default()
        },
    )
    .await;
    let slow = tallyd::worker::WorkerConfig {
        batch: 20,
        lease: Duration::from_secs(2),
        concurrency: 2,
        rate: 100.0,
        poll_interval: Duration::from_millis(20),
    };
    let workers = [
        start_worker_with(&db, &fake, slow.clone()),
        start_worker_with(&db, &fake, slow),
    ];
    wait_for("all reports are sent", || nothing_pending(&client)).await;
    for (stop, worker) in workers {
        stop.cancel();
        worker.await.unwrap().unwrap();
    }
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("completed".into(), 10)])
    );
    let sends = fake.requests_by_identifier();
    assert_eq!(sends.len(), 10);
    assert!(
        sends.values().all(|n| *n == 1),
        "a report was sent more than once: {sends:?}"
    );
    assert_eq!(fake.requests(), 10);
    assert_eq!(fake.units_by_customer()["cus_acme"], 10);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requeued_report_is_sent_once_with_a_fresh_key_after_its_customer_is_fixed() {
    let (db, client) = setup(&[("ghost", Some("cus_ghost"))]).await;
    count(&client, "ghost", 2).await;
    count(&client, "ghost", 3).await;
    let fake = FakeStripe::start(
        KEY,
        Faults {
            unknown_customers: ["cus_ghost".to_string()].into(),
            ..Faults::default()
        },
    )
    .await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("both reports failed", || nothing_pending(&client)).await;
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("failed".into(), 2)])
    );

    // The customer is created in Stripe; the operator puts the reports back
    // (`tallyd reports retry --all-failed` does the same).
    fake.set_faults(Faults::default());
    let requeued: i64 = client
        .query_one("SELECT tally.requeue_failed_usage_reports()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(requeued, 2);
    wait_for("the requeued reports are settled", || {
        nothing_pending(&client)
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("completed".into(), 2)])
    );
    // One refused send and one counted send each, under two keys.
    assert_eq!(fake.units_by_customer()["cus_ghost"], 5);
    let sends = fake.requests_by_identifier();
    assert_eq!(sends.len(), 2);
    assert!(sends.values().all(|n| *n == 2), "{sends:?}");
    assert_eq!(fake.events().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn requeueing_a_report_first_sent_over_a_day_ago_needs_an_explicit_decision() {
    let (db, client) = setup(&[("ghost", Some("cus_ghost"))]).await;
    count(&client, "ghost", 2).await;
    count(&client, "ghost", 3).await;
    let fake = FakeStripe::start(
        KEY,
        Faults {
            unknown_customers: ["cus_ghost".to_string()].into(),
            ..Faults::default()
        },
    )
    .await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("both reports failed", || nothing_pending(&client)).await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let old: i64 = client
        .query_one(
            "UPDATE tally.usage_reports SET first_claimed_at = now() - interval '25 hours'
              WHERE id = (SELECT min(id) FROM tally.usage_reports) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let refused = reports_retry(&db, &["--all-failed"]).unwrap_err();
    assert!(
        refused.contains("usage reports may be billed twice")
            && refused.contains(&format!("usage report {old} was first claimed"))
            && refused.contains("--allow-resend-after-24h"),
        "{refused}"
    );
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("failed".into(), 2)])
    );
    assert_eq!(
        reports_retry(&db, &["--all-failed", "--allow-resend-after-24h"]).unwrap(),
        "2 failed usage reports back in the queue\n"
    );
    assert_eq!(
        statuses(&client).await,
        HashMap::from([("pending".into(), 2)])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_absurd_retry_after_is_clamped_and_does_not_stop_other_sends() {
    // Three customers Stripe throttles with Retry-After values no worker
    // should believe; their reports come first in the queue.
    let throttled = [
        ("h1", "cus_h1", "18446744073709551615".to_string()),
        ("h2", "cus_h2", (100_u64 * 365 * 86_400).to_string()),
        ("h3", "cus_h3", "Tue, 01 Jan 2126 00:00:00 GMT".to_string()),
    ];
    let mut tenants: Vec<(&str, Option<&str>)> = throttled
        .iter()
        .map(|(tenant, customer, _)| (*tenant, Some(*customer)))
        .collect();
    tenants.push(("acme", Some("cus_acme")));
    let (db, client) = setup(&tenants).await;
    for (tenant, _, _) in &throttled {
        count(&client, tenant, 1).await;
    }
    for _ in 0..5 {
        count(&client, "acme", 1).await;
    }
    let fake = FakeStripe::start(
        KEY,
        Faults {
            throttled: throttled
                .iter()
                .map(|(_, customer, after)| (customer.to_string(), after.clone()))
                .collect(),
            ..Faults::default()
        },
    )
    .await;
    let one_at_a_time = tallyd::worker::WorkerConfig {
        concurrency: 1,
        ..config(100.0)
    };
    let (stop, worker) = start_worker_with(&db, &fake, one_at_a_time);
    wait_for("acme's reports are sent and the 429s recorded", || async {
        client
            .query_one(
                "SELECT count(*) FILTER (WHERE tenant_id = 'acme' AND status = 'completed') = 5
                    AND count(*) FILTER (WHERE tenant_id <> 'acme' AND attempts = 1 AND lease_until IS NULL) = 3
                   FROM tally.usage_reports",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    let waits = client
        .query(
            "SELECT tenant_id, status, extract(epoch FROM next_attempt_at - now())::float8
               FROM tally.usage_reports WHERE tenant_id <> 'acme' ORDER BY tenant_id",
            &[],
        )
        .await
        .unwrap();
    for row in waits {
        let (tenant, status, wait): (String, String, f64) = (row.get(0), row.get(1), row.get(2));
        // Clamped to the hour of the backoff cap: retried within it.
        assert_eq!(status, "pending", "{tenant}");
        assert!(
            (3_000.0..=3_600.0).contains(&wait),
            "{tenant}: retried in {wait} s"
        );
    }
    assert_eq!(fake.requests(), 8);
    assert_eq!(fake.units_by_customer()["cus_acme"], 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_worker_in_serve_has_a_pool_of_its_own() {
    let (db, client) = setup(&[("acme", Some("cus_acme")), ("busy", Some("cus_busy"))]).await;
    let key = tallyd::api_keys::generate();
    tallyd::db::admin::add_api_key(&client, "busy", &key, None)
        .await
        .unwrap();
    count(&client, "busy", 1).await;
    let fake = FakeStripe::start(KEY, Faults::default()).await;
    // One connection for the HTTP server.
    let server = Server::start_with_worker_and_pool(&db, &fake.base_url, KEY, 1).await;
    wait_for("busy's first report is sent", || nothing_pending(&client)).await;

    // busy's counter is locked elsewhere: a request for busy waits on it,
    // holding the server's only connection.
    let mut locker = db.connect_async().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT FROM tally.usage_counters WHERE tenant_id = 'busy' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();
    let request = {
        let (http, url, key) = (
            server.http.clone(),
            server.url("/v1/usage/messages/check"),
            key.key.clone(),
        );
        tokio::spawn(async move {
            http.post(url)
                .bearer_auth(key)
                .json(&json!({"units": 1}))
                .send()
                .await
                .unwrap()
                .status()
        })
    };
    wait_for("the request waits for the lock", || async {
        client
            .query_one(
                "SELECT count(*) = 1 FROM pg_stat_activity
                  WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;

    // The worker still sends acme's usage meanwhile.
    count(&client, "acme", 3).await;
    wait_for(
        "acme's report is sent while the server's pool is taken",
        || nothing_pending(&client),
    )
    .await;
    assert_eq!(fake.units_by_customer()["cus_acme"], 3);
    assert!(!request.is_finished(), "the request did not wait");

    lock.rollback().await.unwrap();
    assert!(request.await.unwrap().is_success());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_answer_that_never_ends_is_read_only_so_far() {
    let (db, client) = setup(&[("big", Some("cus_big"))]).await;
    count(&client, "big", 1).await;
    let fake = FakeStripe::start(
        KEY,
        Faults {
            endless_answers: ["cus_big".to_string()].into(),
            ..Faults::default()
        },
    )
    .await;
    let (stop, worker) = start_worker(&db, &fake, 100.0);
    wait_for("the answer is recorded", || async {
        client
            .query_one(
                "SELECT last_error IS NOT NULL FROM tally.usage_reports",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
    })
    .await;
    stop.cancel();
    worker.await.unwrap().unwrap();
    // Stripe's error was read from the answer's first 64 KiB, without
    // waiting for an end that never comes.
    let error: String = client
        .query_one("SELECT last_error FROM tally.usage_reports", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(error, "stripe 500: An unknown error occurred.");
}
