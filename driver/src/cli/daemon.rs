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
use crate::http::Timeouts;
use crate::signature::Secrets;
use crate::telemetry::{self, LogFormat};
use crate::worker::stripe::MeterClient;
use crate::worker::WorkerConfig;
use crate::Config;

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
    /// Run even when the database role is a superuser (tallyd needs only a
    /// role granted tally_daemon); logs a warning.
    #[arg(long, env = "TALLY_ALLOW_SUPERUSER", value_parser = BoolishValueParser::new())]
    pub allow_superuser: bool,
    #[command(flatten)]
    pub worker: WorkerArgs,
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
    /// How long a claim holds its reports: a worker that dies gives them back after it. 60s, 5m, …
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
        timeouts: args.timeouts.timeouts()?,
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
    let Some((client, config)) = args.worker.worker(key.as_deref())? else {
        bail!("no Stripe secret key: set STRIPE_SECRET_KEY or STRIPE_SECRET_KEY_FILE");
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    crate::run_worker(url, args.allow_superuser, client, config, shutdown).await
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
