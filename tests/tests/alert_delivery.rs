//! Alerts delivered by tallyd as Standard Webhooks to a receiver that fails
//! 30% of the time: every alert arrives, signed so that the standardwebhooks
//! package (an independent implementation) verifies it, deduplicable by
//! webhook-id.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::{Request, Response, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tally_tests::server::Server;
use tally_tests::*;
use tokio::net::TcpListener;

/// whsec_ and the base64 of 32 bytes.
const SECRET: &str = "whsec_dGFsbHktdGVzdC1zZWNyZXQtMDEyMzQ1Njc4OWFiY2Q=";

#[derive(Clone, Debug)]
struct Delivery {
    headers: HashMap<String, String>,
    body: String,
}

/// An endpoint that answers 500 to a share of requests (seeded), and keeps
/// the requests it accepted.
#[derive(Clone)]
struct Receiver {
    url: String,
    accepted: Arc<Mutex<Vec<Delivery>>>,
    refused: Arc<Mutex<u64>>,
}

impl Receiver {
    async fn start(failure_rate: f64, seed: u64) -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver = Receiver {
            url: format!("http://{}/hooks/tally", listener.local_addr().unwrap()),
            accepted: Arc::default(),
            refused: Arc::default(),
        };
        let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
        let state = receiver.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (state, rng) = (state.clone(), rng.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                        let (state, rng) = (state.clone(), rng.clone());
                        async move {
                            let (parts, body) = request.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let fail = rng.lock().unwrap().gen_bool(failure_rate);
                            let status = if fail {
                                *state.refused.lock().unwrap() += 1;
                                StatusCode::INTERNAL_SERVER_ERROR
                            } else {
                                let headers = parts
                                    .headers
                                    .iter()
                                    .map(|(name, value)| {
                                        (name.to_string(), value.to_str().unwrap().to_string())
                                    })
                                    .collect();
                                let body = String::from_utf8(body.to_vec()).unwrap();
                                state
                                    .accepted
                                    .lock()
                                    .unwrap()
                                    .push(Delivery { headers, body });
                                StatusCode::NO_CONTENT
                            };
                            let mut response = Response::new(Full::new(Bytes::new()));
                            *response.status_mut() = status;
                            Ok::<_, std::convert::Infallible>(response)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        receiver
    }
}

/// Verify deliveries with the standardwebhooks Python package; their
/// payloads.
fn verify_independently(deliveries: &[Delivery]) -> Vec<serde_json::Value> {
    let python = std::env::var("TALLY_TEST_PYTHON").expect(
        "TALLY_TEST_PYTHON must name a Python with the standardwebhooks package (scripts/test.sh sets it up)",
    );
    let input = serde_json::json!({
        "secret": SECRET,
        "deliveries": deliveries
            .iter()
            .map(|d| serde_json::json!({"headers": d.headers, "body": d.body}))
            .collect::<Vec<_>>(),
    });
    let mut child = std::process::Command::new(python)
        .args(["-c", include_str!("standardwebhooks_verify.py")])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn every_alert_reaches_a_flaky_receiver_signed_and_deduplicable() {
    const TENANTS: usize = 20;
    let db = TestDb::create();
    let client = db.connect_async().await;
    client
        .batch_execute(&format!(
            "ALTER DATABASE {name} SET tally.report_backoff_base = '20ms';
             ALTER DATABASE {name} SET tally.report_backoff_max = '200ms';
             ALTER DATABASE {name} SET tally.report_max_attempts = 100;
             INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', 80);",
            name = db.name()
        ))
        .await
        .unwrap();
    for i in 0..TENANTS {
        let tenant = format!("tenant-{i:02}");
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id) VALUES ($1)",
                &[&tenant],
            )
            .await
            .unwrap();
        // 79 then 1 more: the second call crosses 80% of 100.
        for units in [79_i64, 1 + i as i64] {
            client
                .query_one(
                    "SELECT allowed FROM tally.check_and_increment_usage($1, 'messages', $2)",
                    &[&tenant, &units],
                )
                .await
                .unwrap();
        }
    }
    let expected: HashMap<String, (String, i64)> = client
        .query("SELECT identifier, tenant_id, used FROM tally.alerts", &[])
        .await
        .unwrap()
        .iter()
        .map(|row| (row.get(0), (row.get(1), row.get(2))))
        .collect();
    assert_eq!(expected.len(), TENANTS);

    let receiver = Receiver::start(0.3, 7).await;
    let endpoint = reqwest::Url::parse(&receiver.url).unwrap();
    let secret = tallyd::worker::webhook::WebhookSecret::parse(SECRET).unwrap();
    let mut alerts =
        tallyd::worker::alerts::AlertConfig::new(vec![endpoint], secret, Duration::from_secs(5));
    alerts.poll_interval = Duration::from_millis(20);
    let server = Server::start_adjusted(&db, |config| config.alerts = Some(alerts)).await;

    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pending: i64 = client
            .query_one(
                "SELECT count(*) FROM tally.alerts WHERE status <> 'completed'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if pending == 0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{pending} alerts not delivered within 60 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let delivered = server
        .metric("tally_alert_deliveries_total{outcome=\"delivered\"}")
        .await;
    let failed = server
        .metric("tally_alert_deliveries_total{outcome=\"failed\"}")
        .await;
    server.stop().await;

    let accepted = receiver.accepted.lock().unwrap().clone();
    let refused = *receiver.refused.lock().unwrap();
    assert!(
        refused > 0,
        "the receiver never failed: nothing was retried"
    );
    assert_eq!(delivered as usize, accepted.len());
    assert_eq!(failed as u64, refused);

    // Every alert arrived; repeats carry the same webhook-id and body.
    let mut by_id: HashMap<String, String> = HashMap::new();
    for delivery in &accepted {
        let id = delivery.headers["webhook-id"].clone();
        let body = by_id.entry(id).or_insert_with(|| delivery.body.clone());
        assert_eq!(*body, delivery.body);
    }
    let ids: HashSet<&String> = by_id.keys().collect();
    assert_eq!(ids, expected.keys().collect::<HashSet<_>>());

    // An independent implementation verifies every signature.
    let payloads = verify_independently(&accepted);
    assert_eq!(payloads.len(), accepted.len());
    for (delivery, payload) in accepted.iter().zip(&payloads) {
        let (tenant, used) = &expected[&delivery.headers["webhook-id"]];
        assert_eq!(payload["type"], "usage.threshold_crossed");
        assert!(payload["timestamp"].as_str().unwrap().ends_with('Z'));
        let data = &payload["data"];
        assert_eq!(data["tenant_id"], tenant.as_str());
        assert_eq!(data["metric"], "messages");
        assert_eq!(data["threshold"], 80);
        assert_eq!(data["used"], *used);
        assert_eq!(data["limit"], 100);
        assert!(data["period_start"].is_string() && data["period_end"].is_string());
        assert_eq!(delivery.headers["content-type"], "application/json");
    }
}
