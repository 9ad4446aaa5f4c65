//! The command line: `tallyd <command>`, configured by flags or environment
//! variables. Operator commands print readable tables; `serve` logs.

use std::net::SocketAddr;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

mod commands;
mod format;

pub use format::{parse_age, parse_duration};

use crate::db::{self, admin, Migration};
use crate::telemetry::LogFormat;
use crate::worker::stripe::MeterClient;
use crate::worker::WorkerConfig;
use crate::{api_keys, plans_file};
use commands::{print_usage, reports, serve, worker};
use format::{or_dash, table};

#[derive(Debug, Parser)]
#[command(name = "tallyd", version, about = "tally's daemon and operator tool")]
pub struct Cli {
    /// Postgres connection URL of the database holding the tally extension.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the tally extension in the database, or upgrade it to the
    /// version this tallyd was built for.
    Migrate,
    /// Serve provider webhooks, the tenant API, health checks and metrics,
    /// and run the usage-report worker (unless --no-worker).
    Serve(ServeArgs),
    /// Run the usage-report worker alone: send usage reports to Stripe.
    Worker(WorkerCommandArgs),
    /// The usage-report queue: depth and failed reports.
    Reports {
        #[command(subcommand)]
        command: Option<ReportsCommand>,
    },
    /// Metrics, plans and limits.
    #[command(subcommand)]
    Plans(PlansCommand),
    /// Tenants.
    #[command(subcommand)]
    Tenants(TenantsCommand),
    /// A tenant's usage, as a table.
    Usage { tenant_id: String },
    /// Tenant API keys.
    #[command(subcommand, name = "api-key")]
    ApiKey(ApiKeyCommand),
    /// Forget old provider events, idempotency keys and completed usage reports.
    Cleanup {
        /// Age past which to forget them: 30d, 12h, 90m, …
        #[arg(long, default_value = "30d", value_parser = parse_age)]
        older_than: String,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "TALLY_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Stripe webhook signing secrets, comma-separated (several while rotating).
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub stripe_webhook_secret: String,
    /// Paddle webhook signing secrets, comma-separated.
    #[arg(
        long,
        env = "PADDLE_WEBHOOK_SECRET",
        hide_env_values = true,
        default_value = ""
    )]
    pub paddle_webhook_secret: String,
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
    #[command(flatten)]
    pub worker: WorkerArgs,
}

#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Stripe secret key, for sending usage reports.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,
    /// Stripe's API address (tests and the demo point it at a local fake).
    #[arg(
        long,
        env = "STRIPE_API_BASE",
        default_value = "https://api.stripe.com/"
    )]
    pub stripe_api_base: String,
    /// Usage reports sent per second at most (Stripe takes 1,000 meter events/s).
    #[arg(long, env = "TALLY_WORKER_RATE", default_value_t = 800.0)]
    pub worker_rate: f64,
    /// Sends in flight at most.
    #[arg(long, env = "TALLY_WORKER_CONCURRENCY", default_value_t = 16)]
    pub worker_concurrency: usize,
    /// Reports claimed at a time.
    #[arg(long, env = "TALLY_WORKER_BATCH", default_value_t = 100)]
    pub worker_batch: i32,
    /// How long a claim holds its reports: a worker that dies gives them back after it. 60s, 5m, …
    #[arg(long, env = "TALLY_WORKER_LEASE", default_value = "60s", value_parser = parse_duration)]
    pub worker_lease: std::time::Duration,
    /// Pause before looking again when the queue is empty. 250ms, 1s, …
    #[arg(long, env = "TALLY_WORKER_POLL", default_value = "250ms", value_parser = parse_duration)]
    pub worker_poll: std::time::Duration,
    /// Time allowed for one send to Stripe.
    #[arg(long, env = "TALLY_STRIPE_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub stripe_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub struct WorkerCommandArgs {
    #[command(flatten)]
    pub worker: WorkerArgs,
    /// Log format.
    #[arg(long, env = "TALLY_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

impl WorkerArgs {
    fn worker(&self) -> Result<Option<(MeterClient, WorkerConfig)>> {
        let Some(key) = self
            .stripe_secret_key
            .as_deref()
            .filter(|key| !key.is_empty())
        else {
            return Ok(None);
        };
        let rate_ok = self.worker_rate.is_finite() && self.worker_rate > 0.0;
        if !rate_ok || self.worker_concurrency == 0 || self.worker_batch <= 0 {
            bail!("the worker's rate, concurrency and batch must be positive");
        }
        let client = MeterClient::new(key, &self.stripe_api_base, self.stripe_timeout)?;
        let config = WorkerConfig {
            batch: self.worker_batch,
            lease: self.worker_lease,
            concurrency: self.worker_concurrency,
            rate: self.worker_rate,
            poll_interval: self.worker_poll,
        };
        Ok(Some((client, config)))
    }
}

#[derive(Debug, Subcommand)]
pub enum ReportsCommand {
    /// Put failed reports back in the queue.
    Retry {
        /// Report ids.
        ids: Vec<i64>,
        /// Every failed report.
        #[arg(long, conflicts_with = "ids")]
        all_failed: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum PlansCommand {
    /// Apply a plans file (TOML): the same file applied twice changes nothing.
    Apply { file: std::path::PathBuf },
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant, on the default plan unless --plan names one.
    Create {
        tenant_id: String,
        #[arg(long)]
        plan: Option<String>,
    },
    /// A tenant's plan, status, period, provider links, API keys and usage.
    Show { tenant_id: String },
}

#[derive(Debug, Subcommand)]
pub enum ApiKeyCommand {
    /// Make an API key for a tenant; it is shown once.
    Create {
        tenant_id: String,
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke an API key by its id (the part after `tly_`).
    Revoke { key_id: String },
}

fn database_url(cli: &Cli) -> Result<&str> {
    cli.database_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!("no database given: set DATABASE_URL or pass --database-url")
    })
}

pub async fn run(cli: Cli) -> Result<()> {
    let url = database_url(&cli)?.to_string();
    match cli.command {
        Command::Migrate => {
            let mut client = db::connect(&url).await?;
            match db::migrate(&mut client, crate::EXTENSION_VERSION).await? {
                Migration::Created { version } => println!("tally {version}: extension created"),
                Migration::Upgraded { from, to } => {
                    println!("tally {to}: extension upgraded from {from}")
                }
                Migration::Current { version } => {
                    println!("tally {version}: extension already current")
                }
            }
        }
        Command::Serve(args) => serve(&url, args).await?,
        Command::Worker(args) => worker(&url, args).await?,
        Command::Reports { command } => reports(&url, command).await?,
        Command::Plans(PlansCommand::Apply { file }) => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let plans = plans_file::parse(&text)
                .map_err(|error| anyhow::anyhow!("{}, {error}", file.display()))?;
            let mut client = db::connect(&url).await?;
            let changes =
                admin::apply_plans(&mut client, &plans)
                    .await
                    .map_err(
                        |error| match error.downcast_ref::<plans_file::PlanFileError>() {
                            Some(file_error) => anyhow::anyhow!("{}, {file_error}", file.display()),
                            None => error.context(format!("applying {}", file.display())),
                        },
                    )?;
            if changes.is_empty() {
                println!("{}: no changes", file.display());
            } else {
                let rows: Vec<Vec<String>> = changes
                    .iter()
                    .map(|c| vec![c.what.clone(), c.change.to_string()])
                    .collect();
                print!("{}", table(&["object", "change"], &rows));
            }
            if !admin::has_default_plan(&client).await? {
                println!("note: no plan is the default; tenants need an explicit plan");
            }
        }
        Command::Tenants(TenantsCommand::Create { tenant_id, plan }) => {
            let client = db::connect(&url).await?;
            let plan = admin::create_tenant(&client, &tenant_id, plan.as_deref())
                .await
                .map_err(|error| {
                    let message = error
                        .downcast_ref::<tokio_postgres::Error>()
                        .and_then(|e| e.as_db_error())
                        .map(|e| match e.code().code() {
                            "23505" => format!("tenant {tenant_id:?} already exists"),
                            "23503" => "no such plan".to_string(),
                            _ => e.message().to_string(),
                        });
                    match message {
                        Some(message) => anyhow::anyhow!(message),
                        None => error,
                    }
                })?;
            println!("tenant {tenant_id} created on plan {plan}");
        }
        Command::Tenants(TenantsCommand::Show { tenant_id }) => {
            let client = db::connect(&url).await?;
            let tenant = admin::tenant(&client, &tenant_id).await?;
            println!("tenant   {}", tenant.tenant_id);
            println!("plan     {}", tenant.plan_id);
            println!("status   {}", tenant.status);
            println!("period   {}", tenant.period);
            println!("stripe   {}", or_dash(tenant.stripe_customer_id));
            println!("paddle   {}", or_dash(tenant.paddle_customer_id));
            let keys: Vec<Vec<String>> = tenant
                .api_keys
                .iter()
                .map(|(id, label, state)| vec![id.clone(), or_dash(label.as_ref()), state.clone()])
                .collect();
            if keys.is_empty() {
                println!("api keys none");
            } else {
                print!("\n{}", table(&["api key id", "label", "state"], &keys));
            }
            println!();
            print_usage(&url, &tenant_id).await?;
        }
        Command::Usage { tenant_id } => print_usage(&url, &tenant_id).await?,
        Command::ApiKey(ApiKeyCommand::Create { tenant_id, label }) => {
            let client = db::connect(&url).await?;
            let key = api_keys::generate();
            admin::add_api_key(&client, &tenant_id, &key, label.as_deref()).await?;
            println!(
                "API key {} for tenant {tenant_id} (shown once; only its hash is stored):",
                key.key_id
            );
            println!("{}", key.key);
        }
        Command::ApiKey(ApiKeyCommand::Revoke { key_id }) => {
            let client = db::connect(&url).await?;
            if admin::revoke_api_key(&client, &key_id).await? {
                println!("API key {key_id} revoked");
            } else {
                println!("API key {key_id} was already revoked");
            }
        }
        Command::Cleanup { older_than } => {
            let mut client = db::connect(&url).await?;
            let cleaned = admin::cleanup(&mut client, &older_than).await?;
            let rows = vec![
                vec![
                    "provider events".to_string(),
                    cleaned.provider_events.to_string(),
                ],
                vec![
                    "idempotency keys".to_string(),
                    cleaned.idempotency_keys.to_string(),
                ],
                vec![
                    "completed usage reports".to_string(),
                    cleaned.usage_reports.to_string(),
                ],
            ];
            println!("older than {older_than}:");
            print!("{}", table(&["forgotten", "rows"], &rows));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signature::Secrets;

    #[test]
    fn the_extension_takes_the_workspace_version() {
        // `migrate` and /readyz expect tallyd's own version
        // (`EXTENSION_VERSION`): that holds only while the extension crate
        // inherits the one workspace version instead of declaring its own.
        let manifest = include_str!("../../../extension/Cargo.toml");
        assert!(manifest
            .lines()
            .any(|line| line.trim() == "version.workspace = true"));
    }

    #[test]
    fn serve_takes_its_secrets_from_the_environment_without_showing_them() {
        let help = Cli::try_parse_from(["tallyd", "serve", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("STRIPE_WEBHOOK_SECRET"));
        let cli = Cli::try_parse_from([
            "tallyd",
            "serve",
            "--stripe-webhook-secret",
            "whsec_a,whsec_b",
        ])
        .unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert_eq!(
            format!("{:?}", Secrets::parse(&args.stripe_webhook_secret)),
            "Secrets([redacted; 2])"
        );
    }
}
