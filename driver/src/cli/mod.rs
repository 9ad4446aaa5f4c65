//! The command line: `tallyd <command>`, configured by flags or environment
//! variables. Operator commands print readable tables; `serve` logs.
//!
//! This module is the command tree and its dispatch, one handler per
//! subcommand: `serve` and `worker` in `daemon`, the queue in `reports`,
//! everything else an operator runs in `operator`.

use anyhow::Result;
use clap::{Parser, Subcommand};

mod alerts;
mod daemon;
mod format;
mod links;
mod operator;
mod reports;
mod secrets;

pub use daemon::{ServeArgs, WorkerArgs, WorkerCommandArgs};
pub use format::{parse_age, parse_duration, Span};

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
    /// version this tallyd was built for, then check that it lives in schema
    /// tally, owned by a superuser or tally_owner.
    Migrate {
        /// Postgres connection URL of a role allowed to create and upgrade
        /// the extension. Defaults to DATABASE_URL (--database-url): give
        /// this one when serve and worker connect as a less privileged role.
        #[arg(long, env = "TALLY_ADMIN_DATABASE_URL", hide_env_values = true)]
        admin_database_url: Option<String>,
    },
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
    /// Threshold alerts: the queue and the newest alerts.
    Alerts {
        #[command(subcommand)]
        command: Option<AlertsCommand>,
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
    /// Tenant links webhooks asked for: refused links and events of
    /// customers never linked.
    #[command(subcommand)]
    Links(LinksCommand),
    /// Forget old provider events, idempotency keys and completed usage reports.
    Cleanup {
        /// Age past which to forget them: 30d, 12h, 90m, …
        #[arg(long, default_value = "30d", value_parser = parse_age)]
        older_than: String,
    },
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
        /// Also requeue reports first sent 24 hours or more ago. Stripe counts
        /// a meter event's identifier once within 24 hours only: check in
        /// Stripe that their events did not arrive, or they may be billed twice.
        #[arg(long)]
        allow_resend_after_24h: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertsCommand {
    /// Put failed alerts back in the queue (delivered again with the same
    /// webhook-id).
    Retry {
        /// Alert ids.
        ids: Vec<i64>,
        /// Every failed alert.
        #[arg(long, conflicts_with = "ids")]
        all_failed: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum LinksCommand {
    /// Links a webhook asked for and tally refused (a webhook never
    /// replaces a link), newest first.
    Conflicts,
    /// Events acknowledged without effect because their customer was never
    /// linked to a tenant within the retry window, newest first.
    Unlinked,
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
    if let Command::Migrate {
        admin_database_url: Some(admin_url),
    } = &cli.command
    {
        return operator::migrate(admin_url).await;
    }
    let url = database_url(&cli)?.to_string();
    let url = url.as_str();
    match cli.command {
        Command::Migrate { .. } => operator::migrate(url).await,
        Command::Serve(args) => daemon::serve(url, args).await,
        Command::Worker(args) => daemon::worker(url, args).await,
        Command::Reports { command: None } => reports::show(url).await,
        Command::Reports {
            command:
                Some(ReportsCommand::Retry {
                    ids,
                    all_failed,
                    allow_resend_after_24h,
                }),
        } => reports::retry(url, &ids, all_failed, allow_resend_after_24h).await,
        Command::Alerts { command: None } => alerts::show(url).await,
        Command::Alerts {
            command: Some(AlertsCommand::Retry { ids, all_failed }),
        } => alerts::retry(url, &ids, all_failed).await,
        Command::Plans(PlansCommand::Apply { file }) => operator::apply_plans(url, &file).await,
        Command::Tenants(TenantsCommand::Create { tenant_id, plan }) => {
            operator::create_tenant(url, &tenant_id, plan.as_deref()).await
        }
        Command::Tenants(TenantsCommand::Show { tenant_id }) => {
            operator::show_tenant(url, &tenant_id).await
        }
        Command::Usage { tenant_id } => operator::usage(url, &tenant_id).await,
        Command::ApiKey(ApiKeyCommand::Create { tenant_id, label }) => {
            operator::create_api_key(url, &tenant_id, label.as_deref()).await
        }
        Command::ApiKey(ApiKeyCommand::Revoke { key_id }) => {
            operator::revoke_api_key(url, &key_id).await
        }
        Command::Links(LinksCommand::Conflicts) => links::conflicts(url).await,
        Command::Links(LinksCommand::Unlinked) => links::unlinked(url).await,
        Command::Cleanup { older_than } => operator::cleanup(url, &older_than).await,
    }
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
    fn secrets_are_not_taken_on_the_command_line() {
        let help = Cli::try_parse_from(["tallyd", "serve", "--help"])
            .unwrap_err()
            .to_string();
        assert!(help.contains("STRIPE_WEBHOOK_SECRET_FILE") || help.contains("NAME_FILE"));
        assert!(help.contains("STRIPE_WEBHOOK_SECRET") && help.contains("STRIPE_SECRET_KEY"));
        for flag in [
            "--stripe-webhook-secret",
            "--paddle-webhook-secret",
            "--stripe-secret-key",
        ] {
            assert!(Cli::try_parse_from(["tallyd", "serve", flag, "x"]).is_err());
            assert!(!help.contains(flag), "{flag}");
        }
        assert_eq!(
            format!("{:?}", Secrets::parse("whsec_a,whsec_b")),
            "Secrets([redacted; 2])"
        );
    }

    #[test]
    fn migrate_takes_an_admin_url_and_serve_may_be_allowed_a_superuser() {
        let cli = Cli::try_parse_from([
            "tallyd",
            "migrate",
            "--admin-database-url",
            "postgres://admin@db/app",
        ])
        .unwrap();
        let Command::Migrate { admin_database_url } = cli.command else {
            panic!("not migrate")
        };
        assert_eq!(
            admin_database_url.as_deref(),
            Some("postgres://admin@db/app")
        );
        let help = Cli::try_parse_from(["tallyd", "migrate", "--help"])
            .unwrap_err()
            .to_string();
        assert!(
            help.contains("TALLY_ADMIN_DATABASE_URL") && help.contains("Defaults to DATABASE_URL")
        );

        let cli = Cli::try_parse_from(["tallyd", "worker", "--allow-superuser"]).unwrap();
        let Command::Worker(args) = cli.command else {
            panic!("not worker")
        };
        assert!(args.allow_superuser);
        let cli = Cli::try_parse_from(["tallyd", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        assert!(!args.allow_superuser || std::env::var_os("TALLY_ALLOW_SUPERUSER").is_some());
    }
}
