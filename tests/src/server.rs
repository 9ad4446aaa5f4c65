//! A real tallyd for a test: in this process on port 0 ([`Server`]), or as
//! the built binary ([`tallyd_binary`]).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::TestDb;

pub const STRIPE_SECRET: &str = "whsec_test_current";
pub const PADDLE_SECRET: &str = "pdl_ntfset_test";

/// tallyd serving a test database on 127.0.0.1 with a port of its own.
pub struct Server {
    pub base: String,
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
    pub http: reqwest::Client,
}

impl Server {
    /// Start tallyd with the test webhook secrets (Stripe's accepts a
    /// previous secret too, as during a rotation).
    pub async fn start(db: &TestDb) -> Server {
        Server::start_with(
            db,
            &format!("whsec_test_previous,{STRIPE_SECRET}"),
            PADDLE_SECRET,
        )
        .await
    }

    pub async fn start_with(db: &TestDb, stripe_secrets: &str, paddle_secrets: &str) -> Server {
        Server::start_configured(db, stripe_secrets, paddle_secrets, None, |_| {}).await
    }

    /// tallyd with its webhooks configured by `billing` (which checkout
    /// references it trusts, how long unlinked events are retried).
    pub async fn start_with_billing(
        db: &TestDb,
        billing: tallyd::db::events::BillingConfig,
    ) -> Server {
        Server::start_configured(
            db,
            &format!("whsec_test_previous,{STRIPE_SECRET}"),
            PADDLE_SECRET,
            None,
            |config| config.billing = billing,
        )
        .await
    }

    /// tallyd with its usage-report worker sending to `stripe_api_base`.
    pub async fn start_with_worker(db: &TestDb, stripe_api_base: &str, stripe_key: &str) -> Server {
        Server::start_with_worker_and_pool(db, stripe_api_base, stripe_key, 16).await
    }

    /// The same, with `pool_size` connections for the HTTP server.
    pub async fn start_with_worker_and_pool(
        db: &TestDb,
        stripe_api_base: &str,
        stripe_key: &str,
        pool_size: usize,
    ) -> Server {
        let client = tallyd::worker::stripe::MeterClient::new(
            stripe_key,
            stripe_api_base,
            Duration::from_secs(5),
        )
        .expect("Stripe client");
        let config = tallyd::worker::WorkerConfig {
            poll_interval: Duration::from_millis(20),
            ..Default::default()
        };
        let worker = Some((client, config));
        Server::start_configured(db, STRIPE_SECRET, PADDLE_SECRET, worker, |config| {
            config.pool_size = pool_size
        })
        .await
    }

    /// tallyd with the test secrets and a configuration `adjust` changes
    /// (a pool size, timeouts).
    pub async fn start_adjusted(db: &TestDb, adjust: impl FnOnce(&mut tallyd::Config)) -> Server {
        Server::start_configured(db, STRIPE_SECRET, PADDLE_SECRET, None, adjust).await
    }

    async fn start_configured(
        db: &TestDb,
        stripe_secrets: &str,
        paddle_secrets: &str,
        worker: Option<(
            tallyd::worker::stripe::MeterClient,
            tallyd::worker::WorkerConfig,
        )>,
        adjust: impl FnOnce(&mut tallyd::Config),
    ) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let base = format!("http://{}", listener.local_addr().unwrap());
        let mut config = tallyd::Config {
            database_url: db.url_as("tally_daemon"),
            pool_size: 16,
            stripe_webhook_secrets: tallyd::signature::Secrets::parse(stripe_secrets),
            paddle_webhook_secrets: tallyd::signature::Secrets::parse(paddle_secrets),
            max_body_bytes: 64 * 1024,
            allow_superuser: false,
            billing: Default::default(),
            worker,
            timeouts: Default::default(),
            alerts: None,
        };
        adjust(&mut config);
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(tallyd::run(config, listener, shutdown.clone()));
        Server {
            base,
            shutdown,
            handle,
            http: reqwest::Client::new(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// POST a Stripe event signed with the current secret.
    pub async fn stripe(&self, body: &serde_json::Value) -> reqwest::Response {
        let body = body.to_string();
        let signature = tallyd::signature::sign_stripe(STRIPE_SECRET, now(), body.as_bytes());
        self.webhook("/webhooks/stripe", "Stripe-Signature", &signature, body)
            .await
    }

    /// POST a Paddle event signed with the current secret.
    pub async fn paddle(&self, body: &serde_json::Value) -> reqwest::Response {
        let body = body.to_string();
        let signature = tallyd::signature::sign_paddle(PADDLE_SECRET, now(), body.as_bytes());
        self.webhook("/webhooks/paddle", "Paddle-Signature", &signature, body)
            .await
    }

    pub async fn webhook(
        &self,
        path: &str,
        header: &str,
        signature: &str,
        body: String,
    ) -> reqwest::Response {
        self.http
            .post(self.url(path))
            .header(header, signature)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("webhook request")
    }

    /// The value of one Prometheus sample, 0 if absent.
    pub async fn metric(&self, sample: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|line| {
                line.strip_prefix(sample)
                    .and_then(|rest| rest.trim().parse().ok())
            })
            .unwrap_or(0.0)
    }

    /// Stop serving and wait for tallyd to finish what it was doing.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.handle)
            .await
            .expect("tallyd stops within 30 s")
            .expect("tallyd task")
            .expect("tallyd run");
    }
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// The tallyd binary built next to this test (scripts/test.sh builds it),
/// or the one `TALLY_TEST_TALLYD` names (when several checkouts share one
/// target directory, `target/debug/tallyd` is whichever was built last).
pub fn tallyd_binary() -> std::path::PathBuf {
    if let Some(path) = std::env::var_os("TALLY_TEST_TALLYD") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("test executable");
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory")
        .join("tallyd");
    assert!(
        binary.exists(),
        "{} is missing: build it first with cargo build -p tallyd",
        binary.display()
    );
    binary
}
