//! One slow client or one locked counter must not stall other tenants:
//! connections are taken only when needed, every wait is bounded, and a
//! wait that runs out answers 503 with Retry-After.

use std::time::Duration;

use serde_json::{json, Value};
use tally_tests::server::Server;
use tally_tests::TestDb;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Generous: long enough for any honest request on a busy machine, far
/// shorter than forever.
const NOT_STUCK: Duration = Duration::from_secs(20);

/// Tenants `acme` and `globex`, each with an API key.
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

/// A request whose headers arrive and whose body never does.
async fn slow_request(server: &Server, key: &str) -> TcpStream {
    let address = server.base.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).await.unwrap();
    let head = format!(
        "POST /v1/usage/messages/check HTTP/1.1\r\nHost: {address}\r\n\
         Authorization: Bearer {key}\r\nContent-Type: application/json\r\n\
         Content-Length: 100\r\n\r\n{{\"units\""
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream
}

/// Whether tallyd has not answered `stream` yet.
fn unanswered(stream: &TcpStream) -> bool {
    let mut buffer = [0u8; 64];
    matches!(stream.try_read(&mut buffer), Err(error) if error.kind() == std::io::ErrorKind::WouldBlock)
}

async fn get(server: &Server, path: &str, key: Option<&str>) -> (u16, Value) {
    let mut request = server.http.get(server.url(path)).timeout(NOT_STUCK);
    if let Some(key) = key {
        request = request.bearer_auth(key);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|error| panic!("GET {path} is stuck: {error}"));
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_that_never_arrive_hold_no_connection() {
    let (db, _client, acme, globex) = setup().await;
    let server = Server::start_adjusted(&db, |config| config.pool_size = 4).await;
    // Let the pool make its connections first, as a server that has run a
    // while has.
    assert_eq!(get(&server, "/v1/usage", Some(&globex)).await.0, 200);

    let mut slow = Vec::new();
    for _ in 0..4 {
        slow.push(slow_request(&server, &acme).await);
    }
    // The slow requests reach tallyd's handlers before the others are sent.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (status, usage) = get(&server, "/v1/usage", Some(&globex)).await;
    assert_eq!((status, usage["tenant_id"].as_str()), (200, Some("globex")));
    assert_eq!(get(&server, "/readyz", None).await.0, 200);
    let check = server
        .http
        .post(server.url("/v1/usage/messages/check"))
        .bearer_auth(&globex)
        .json(&json!({"units": 1}))
        .timeout(NOT_STUCK)
        .send()
        .await
        .expect("a check is not stuck");
    assert_eq!(check.status(), 200);
    assert!(
        slow.iter().all(unanswered),
        "the slow requests are still open"
    );
    drop(slow);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_locked_counter_answers_503_and_stalls_no_other_tenant() {
    let (db, client, acme, globex) = setup().await;
    client
        .batch_execute(
            "SELECT tally.check_and_increment_usage('acme', 'messages', 1);
             SELECT tally.check_and_increment_usage('globex', 'messages', 1);",
        )
        .await
        .unwrap();
    let server = Server::start_adjusted(&db, |config| config.pool_size = 4).await;

    // Hold acme's counter row, as a long transaction elsewhere would.
    let mut locker = db.connect_async().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT used FROM tally.usage_counters WHERE tenant_id = 'acme' FOR UPDATE",
        &[],
    )
    .await
    .unwrap();

    // More checks for acme than the pool has connections.
    let blocked: Vec<_> = (0..6)
        .map(|_| {
            let request = server
                .http
                .post(server.url("/v1/usage/messages/check"))
                .bearer_auth(&acme)
                .json(&json!({"units": 1}))
                .timeout(NOT_STUCK)
                .send();
            tokio::spawn(request)
        })
        .collect();

    // globex is served meanwhile, reads and writes.
    let (status, usage) = get(&server, "/v1/usage", Some(&globex)).await;
    assert_eq!((status, usage["tenant_id"].as_str()), (200, Some("globex")));
    let check = server
        .http
        .post(server.url("/v1/usage/messages/check"))
        .bearer_auth(&globex)
        .json(&json!({"units": 1}))
        .timeout(NOT_STUCK)
        .send()
        .await
        .expect("globex's check is not stuck");
    assert_eq!(check.status(), 200);

    // acme's checks give up on the lock: 503 with Retry-After, nothing counted.
    for request in blocked {
        let response = request
            .await
            .unwrap()
            .expect("acme's check is answered while the row is still locked");
        assert_eq!(response.status(), 503);
        assert!(response.headers().contains_key("retry-after"));
        let body: Value = response.json().await.unwrap();
        let code = body["code"].as_str().unwrap_or_default();
        assert!(code == "busy" || code == "tenant_busy", "{body}");
    }
    lock.rollback().await.unwrap();
    let used: i64 = client
        .query_one(
            "SELECT used FROM tally.usage_counters WHERE tenant_id = 'acme' AND metric = 'messages'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, 1);
    server.stop().await;
}

/// What one phase of the load test measured.
struct Phase {
    requests: usize,
    errors: usize,
    seconds: f64,
    latencies_ms: Vec<f64>,
}

impl Phase {
    fn per_second(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    fn percentile(&self, p: f64) -> f64 {
        let index = ((self.latencies_ms.len() as f64 - 1.0) * p).round() as usize;
        self.latencies_ms.get(index).copied().unwrap_or(f64::NAN)
    }
}

/// `clients` tasks checking one unit for random tenants of `keys` for
/// `seconds`.
async fn check_load(server: &Server, keys: &[String], clients: usize, seconds: u64) -> Phase {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(seconds);
    let started = std::time::Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let (http, url, keys) = (
                server.http.clone(),
                server.url("/v1/usage/messages/check"),
                keys.to_vec(),
            );
            tokio::spawn(async move {
                let (mut latencies, mut errors, mut next) = (Vec::new(), 0, client);
                while tokio::time::Instant::now() < deadline {
                    next = (next * 7 + 3) % keys.len();
                    let sent = std::time::Instant::now();
                    let response = http
                        .post(&url)
                        .bearer_auth(&keys[next])
                        .json(&json!({"units": 1}))
                        .timeout(NOT_STUCK)
                        .send()
                        .await;
                    match response {
                        Ok(response) if response.status() == 200 => {
                            let _ = response.bytes().await;
                            latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                        }
                        _ => errors += 1,
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut phase = Phase {
        requests: 0,
        errors: 0,
        seconds: 0.0,
        latencies_ms: Vec::new(),
    };
    for task in tasks {
        let (latencies, errors) = task.await.unwrap();
        phase.errors += errors;
        phase.latencies_ms.extend(latencies);
    }
    phase.seconds = started.elapsed().as_secs_f64();
    phase.requests = phase.latencies_ms.len();
    phase.latencies_ms.sort_by(f64::total_cmp);
    phase
}

/// The load test of docs/benchmarks.md ("One slow client, one locked
/// counter"): other tenants' checks with and without 64 requests whose
/// bodies never arrive and a locked counter that 4 clients keep asking for.
/// Run with `--ignored --nocapture`; it prints, and asserts only that
/// nothing was stuck.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a load test: prints numbers for docs/benchmarks.md"]
async fn load_other_tenants_under_slow_clients_and_a_locked_counter() {
    const TENANTS: usize = 20;
    const CLIENTS: usize = 16;
    const SECONDS: u64 = 8;
    let db = TestDb::create();
    let client = db.connect_async().await;
    let mut keys = Vec::new();
    for tenant in 0..TENANTS + 2 {
        let tenant_id = format!("t{tenant}");
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ($1, 'growth')",
                &[&tenant_id],
            )
            .await
            .unwrap();
        let key = tallyd::api_keys::generate();
        tallyd::db::admin::add_api_key(&client, &tenant_id, &key, None)
            .await
            .unwrap();
        keys.push(key.key);
    }
    let (locked_key, slow_key) = (keys.pop().unwrap(), keys.pop().unwrap());
    let locked_tenant = format!("t{}", TENANTS + 1);
    client
        .execute(
            "SELECT tally.check_and_increment_usage($1, 'messages', 1)",
            &[&locked_tenant],
        )
        .await
        .unwrap();
    let server = Server::start(&db).await;
    // Warm up: the pool's connections and their prepared statements.
    check_load(&server, &keys, CLIENTS, 1).await;

    let quiet = check_load(&server, &keys, CLIENTS, SECONDS).await;

    let mut slow = Vec::new();
    for _ in 0..64 {
        slow.push(slow_request(&server, &slow_key).await);
    }
    let mut locker = db.connect_async().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute(
        "SELECT used FROM tally.usage_counters WHERE tenant_id = $1 FOR UPDATE",
        &[&locked_tenant],
    )
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let blocked: Vec<_> = (0..4)
        .map(|_| {
            let (http, url, key, stop) = (
                server.http.clone(),
                server.url("/v1/usage/messages/check"),
                locked_key.clone(),
                stop.clone(),
            );
            tokio::spawn(async move {
                let mut answers = std::collections::BTreeMap::<u16, usize>::new();
                while !stop.is_cancelled() {
                    let response = http
                        .post(&url)
                        .bearer_auth(&key)
                        .json(&json!({"units": 1}))
                        .timeout(NOT_STUCK)
                        .send()
                        .await
                        .expect("the locked tenant's check is answered");
                    *answers.entry(response.status().as_u16()).or_default() += 1;
                }
                answers
            })
        })
        .collect();
    let hostile = check_load(&server, &keys, CLIENTS, SECONDS).await;
    let slow_open = slow.iter().filter(|stream| unanswered(stream)).count();
    stop.cancel();
    let mut locked_answers = std::collections::BTreeMap::<u16, usize>::new();
    for task in blocked {
        for (status, count) in task.await.unwrap() {
            *locked_answers.entry(status).or_default() += count;
        }
    }
    lock.rollback().await.unwrap();
    drop(slow);

    println!("| phase | checks/s | p50 ms | p99 ms | max ms | errors |");
    println!("|---|---|---|---|---|---|");
    for (name, phase) in [("quiet", &quiet), ("slow clients + lock", &hostile)] {
        println!(
            "| {name} | {:.0} | {:.1} | {:.1} | {:.1} | {} |",
            phase.per_second(),
            phase.percentile(0.5),
            phase.percentile(0.99),
            phase.percentile(1.0),
            phase.errors
        );
    }
    println!(
        "ratio (hostile / quiet): throughput {:.2}, p50 {:.2}, p99 {:.2}",
        hostile.per_second() / quiet.per_second(),
        hostile.percentile(0.5) / quiet.percentile(0.5),
        hostile.percentile(0.99) / quiet.percentile(0.99)
    );
    println!("slow requests still open at the end: {slow_open} of 64");
    println!("the locked tenant's answers: {locked_answers:?}");
    assert!(hostile.requests > 0 && quiet.requests > 0);
    server.stop().await;
}
