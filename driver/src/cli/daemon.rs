//! The long-running commands, `serve` and `worker`: their flags and secrets
//! (from the environment, see `secrets`), turned into a [`Config`] or a
//! [`WorkerConfig`], and a shutdown on SIGTERM or ctrl-c.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::builder::BoolishValueParser;
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::format::{parse_span, Span};
use super::secrets;
use crate::db::events::BillingConfig;
use crate::http::Timeouts;
use crate::signature::Secrets;
use crate::telemetry::{self, LogFormat};
use crate::worker::alerts::AlertConfig;
use crate::worker::stripe::MeterClient;
use crate::worker::webhook::WebhookSecret;
use crate::worker::WorkerConfig;
use crate::Config;

/// Which checkout references tallyd trusts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CheckoutReferences {
    Any,
    Signed,
}

/// The shortest lease a worker takes: a send must start within a quarter of
/// it and be answered within nine tenths.
const MIN_LEASE: std::time::Duration = std::time::Duration::from_secs(1);

#[derive(Debug, Args)]
#[command(after_help = secrets::SERVE_HELP)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Database connections at most.
    #[arg(long, env = "TALLY_POOL_SIZE", default_value_t = 16)]
    pub pool_size: usize,
    /// Largest request body accepted, in bytes.
    #[arg(long, env = "TALLY_MAX_BODY_BYTES", default_value_t = 256 * 1024)]
    pub max_body_bytes: usize,
    /// Do not run the usage-report worker in this process.
    #[arg(long)]
    pub no_worker: bool,
    /// Which tenant references in checkouts link a customer: `any` (a bare
    /// tenant id or a signed reference; either links only a tenant that has
    /// no customer yet) or `signed` (only references from
    /// tally.checkout_reference).
    #[arg(
        long,
        env = "TALLY_CHECKOUT_REFERENCES",
        value_enum,
        default_value = "any"
    )]
    pub checkout_references: CheckoutReferences,
    /// How long an event for a customer not linked to any tenant is answered
    /// 503 (so the provider retries it), counted from when it happened;
    /// after, it is acknowledged and recorded as unlinked. 72h, 30m, …
    #[arg(long, env = "TALLY_UNLINKED_RETRY_WINDOW", default_value = "72h", value_parser = parse_span)]
    pub unlinked_retry_window: Span,
    /// Run even when the database role is a superuser (tallyd needs only a
    /// role granted tally_daemon); logs a warning.
    #[arg(long, env = "TALLY_ALLOW_SUPERUSER", value_parser = BoolishValueParser::new())]
    pub allow_superuser: bool,
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
    #[command(flatten)]
    pub timeouts: TimeoutArgs,
    /// Also serve /metrics, /readyz and /healthz on this address (an admin
    /// port kept off the public network); /metrics then leaves --listen.
    #[arg(long, env = "TALLY_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
}

/// How long each stage of a request may wait. Their defaults are
/// [`Timeouts::DEFAULT`].
#[derive(Debug, Args)]
pub struct TimeoutArgs {
    /// Time for a request's headers to arrive (the connection is closed after).
    #[arg(long, env = "TALLY_HEADER_TIMEOUT", default_value_t = Span(Timeouts::DEFAULT.header_read), value_parser = parse_span)]
    pub header_timeout: Span,
    /// Time for a request's body to arrive (408 after).
    #[arg(long, env = "TALLY_BODY_TIMEOUT", default_value_t = Span(Timeouts::DEFAULT.body_read), value_parser = parse_span)]
    pub body_timeout: Span,
    /// Time for a whole request (503 with Retry-After after).
    #[arg(long, env = "TALLY_REQUEST_TIMEOUT", default_value_t = Span(Timeouts::DEFAULT.request), value_parser = parse_span)]
    pub request_timeout: Span,
    /// Wait for a free database connection (503 with Retry-After after).
    #[arg(long, env = "TALLY_POOL_TIMEOUT", default_value_t = Span(Timeouts::DEFAULT.pool_wait), value_parser = parse_span)]
    pub pool_timeout: Span,
    /// Postgres statement_timeout on the server's connections.
    #[arg(long, env = "TALLY_STATEMENT_TIMEOUT", default_value_t = Span(Timeouts::DEFAULT.statement), value_parser = parse_span)]
    pub statement_timeout: Span,
    /// Postgres lock_timeout on the server's connections (503 with Retry-After after).
    #[arg(long, env = "TALLY_LOCK_TIMEOUT", default_value_t = Span(Timeouts::DEFAULT.lock), value_parser = parse_span)]
    pub lock_timeout: Span,
}

impl TimeoutArgs {
    fn timeouts(&self) -> Result<Timeouts> {
        let timeouts = Timeouts {
            header_read: self.header_timeout.0,
            body_read: self.body_timeout.0,
            request: self.request_timeout.0,
            pool_wait: self.pool_timeout.0,
            statement: self.statement_timeout.0,
            lock: self.lock_timeout.0,
        };
        let all = [
            timeouts.header_read,
            timeouts.body_read,
            timeouts.request,
            timeouts.pool_wait,
            timeouts.statement,
            timeouts.lock,
        ];
        if all.iter().any(Duration::is_zero) {
            bail!("timeouts must be positive");
        }
        Ok(timeouts)
    }
}

/// The worker's flags. Their defaults are [`WorkerConfig::DEFAULT`], so a
/// worker started from the command line and one started by a test (with
/// `WorkerConfig::default()`) behave alike.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Stripe's API address: https://, or http:// on a loopback address (tests
    /// and the demo point it at a local fake).
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        default_value = "https://api.stripe.com/"
    )]
    pub stripe_api_base: String,
    /// Usage reports sent per second at most (Stripe takes 1,000 meter events/s).
    #[arg(long, env = "TALLY_WORKER_RATE", default_value_t = WorkerConfig::DEFAULT.rate)]
    pub worker_rate: f64,
    /// Sends in flight at most.
    #[arg(long, env = "TALLY_WORKER_CONCURRENCY", default_value_t = WorkerConfig::DEFAULT.concurrency)]
    pub worker_concurrency: usize,
    /// Reports claimed at a time.
    #[arg(long, env = "TALLY_WORKER_BATCH", default_value_t = WorkerConfig::DEFAULT.batch)]
    pub worker_batch: i32,
    /// How long a claim holds its reports (1s to 1h): a worker that dies gives them back after it. 60s, 5m, …
    #[arg(long, env = "TALLY_WORKER_LEASE", default_value_t = Span(WorkerConfig::DEFAULT.lease), value_parser = parse_span)]
    pub worker_lease: Span,
    /// Pause before looking again when the queue is empty. 250ms, 1s, …
    #[arg(long, env = "TALLY_WORKER_POLL", default_value_t = Span(WorkerConfig::DEFAULT.poll_interval), value_parser = parse_span)]
    pub worker_poll: Span,
    /// Time allowed for one send to Stripe.
    #[arg(long, env = "TALLY_STRIPE_TIMEOUT", default_value = "10s", value_parser = parse_span)]
    pub stripe_timeout: Span,
}

#[derive(Debug, Args)]
#[command(after_help = secrets::WORKER_HELP)]
pub struct WorkerCommandArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    #[command(flatten)]
    pub alerts: AlertArgs,
    /// Run even when the database role is a superuser (tallyd needs only a
    /// role granted tally_daemon); logs a warning.
    #[arg(long, env = "TALLY_ALLOW_SUPERUSER", value_parser = BoolishValueParser::new())]
    pub allow_superuser: bool,
    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl WorkerArgs {
    /// The worker these flags describe with the Stripe secret key `key`;
    /// none without one.
    fn worker(&self, key: Option<&str>) -> Result<Option<(MeterClient, WorkerConfig)>> {
        let Some(key) = key.filter(|key| !key.is_empty()) else {
            return Ok(None);
        };
        let rate_ok = self.worker_rate.is_finite() && self.worker_rate > 0.0;
        if !rate_ok || self.worker_concurrency == 0 || self.worker_batch <= 0 {
            bail!("the worker's rate, concurrency and batch must be positive");
        }
        let lease_ms = i64::try_from(self.worker_lease.0.as_millis()).unwrap_or(i64::MAX);
        if !tally_rules::lease_in_bounds(lease_ms) || self.worker_lease.0 < MIN_LEASE {
            bail!(
                "--worker-lease must be between {} s and {} minutes: a claim holds reports that long",
                MIN_LEASE.as_secs(),
                tally_rules::MAX_LEASE_MS / 60_000
            );
        }
        let client = MeterClient::new(key, &self.stripe_api_base, self.stripe_timeout.0)?;
        let config = WorkerConfig {
            batch: self.worker_batch,
            lease: self.worker_lease.0,
            concurrency: self.worker_concurrency,
            rate: self.worker_rate,
            poll_interval: self.worker_poll.0,
        };
        Ok(Some((client, config)))
    }
}

/// Where threshold alerts go. The signing secret comes from
/// `TALLY_ALERT_SECRET` (or `_FILE`).
#[derive(Debug, Args)]
pub struct AlertArgs {
    /// Deliver threshold alerts to this endpoint (http:// or https://) as
    /// Standard Webhooks; repeat the flag, or separate with commas, for
    /// several. Needs TALLY_ALERT_SECRET.
    #[arg(long = "alert-url", env = "TALLY_ALERT_URL", value_delimiter = ',')]
    pub alert_urls: Vec<String>,
    /// Time allowed for one endpoint to answer an alert.
    #[arg(long, env = "TALLY_ALERT_TIMEOUT", default_value = "10s", value_parser = parse_span)]
    pub alert_timeout: Span,
}

impl AlertArgs {
    /// The alert worker these flags describe with the secret `secret`; none
    /// without an endpoint.
    pub fn alerts(&self, secret: Option<&str>) -> Result<Option<AlertConfig>> {
        let urls: Vec<&str> = self
            .alert_urls
            .iter()
            .map(|url| url.trim())
            .filter(|url| !url.is_empty())
            .collect();
        if urls.is_empty() {
            return Ok(None);
        }
        let endpoints = urls
            .iter()
            .enumerate()
            .map(|(index, url)| {
                let parsed = reqwest::Url::parse(url)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
                parsed.ok_or_else(|| {
                    anyhow::anyhow!(
                        "alert endpoint {} is not an http:// or https:// URL",
                        index + 1
                    )
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let Some(secret) = secret.filter(|secret| !secret.is_empty()) else {
            bail!("alert endpoints need a signing secret: set TALLY_ALERT_SECRET or TALLY_ALERT_SECRET_FILE (whsec_<base64>)");
        };
        let secret = WebhookSecret::parse(secret).map_err(|error| anyhow::anyhow!(error))?;
        if self.alert_timeout.0.is_zero() {
            bail!("--alert-timeout must be positive");
        }
        Ok(Some(AlertConfig::new(
            endpoints,
            secret,
            self.alert_timeout.0,
        )))
    }

    fn with_env_secret(&self) -> Result<Option<AlertConfig>> {
        let secret = secrets::from_env(secrets::TALLY_ALERT_SECRET)?;
        self.alerts(secret.as_deref())
    }
}

/// `tallyd serve`.
pub(super) async fn serve(url: &str, args: ServeArgs) -> Result<()> {
    telemetry::init(args.log_format);
    let secret = |name| -> Result<Secrets> {
        Ok(Secrets::parse(
            secrets::from_env(name)?.as_deref().unwrap_or(""),
        ))
    };
    let config = Config {
        database_url: url.to_string(),
        pool_size: args.pool_size,
        stripe_webhook_secrets: secret(secrets::STRIPE_WEBHOOK_SECRET)?,
        paddle_webhook_secrets: secret(secrets::PADDLE_WEBHOOK_SECRET)?,
        max_body_bytes: args.max_body_bytes,
        allow_superuser: args.allow_superuser,
        billing: BillingConfig {
            trust_unsigned_references: args.checkout_references == CheckoutReferences::Any,
            unlinked_retry_window: args.unlinked_retry_window.0,
        },
        timeouts: args.timeouts.timeouts()?,
        alerts: if args.no_worker {
            None
        } else {
            args.alerts.with_env_secret()?
        },
        worker: if args.no_worker {
            None
        } else {
            let key = secrets::from_env(secrets::STRIPE_SECRET_KEY)?;
            args.worker.worker(key.as_deref())?
        },
    };
    if config.stripe_webhook_secrets.is_empty() && config.paddle_webhook_secrets.is_empty() {
        tracing::warn!("no webhook secret is configured: provider webhooks are refused");
    }
    if !args.no_worker && config.worker.is_none() {
        tracing::warn!("no STRIPE_SECRET_KEY: usage reports are not sent (run a worker elsewhere, or pass --no-worker)");
    }
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    let admin = match args.admin_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("listening on {address} (admin)"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    crate::run_with_admin(config, listener, admin, shutdown).await
}

/// `tallyd worker`.
pub(super) async fn worker(url: &str, args: WorkerCommandArgs) -> Result<()> {
    telemetry::init(args.log_format);
    let key = secrets::from_env(secrets::STRIPE_SECRET_KEY)?;
    let reports = args.worker.worker(key.as_deref())?;
    let alerts = args.alerts.with_env_secret()?;
    if reports.is_none() && alerts.is_none() {
        bail!("no Stripe secret key and no alert endpoint: set STRIPE_SECRET_KEY or STRIPE_SECRET_KEY_FILE, or --alert-url");
    }
    if reports.is_none() {
        tracing::warn!("no STRIPE_SECRET_KEY: usage reports are not sent; delivering alerts only");
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    crate::run_workers(url, args.allow_superuser, reports, alerts, shutdown).await
}

/// Cancel on SIGTERM or ctrl-c: the server finishes what is in flight.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: finishing requests in flight");
    shutdown.cancel();
}
