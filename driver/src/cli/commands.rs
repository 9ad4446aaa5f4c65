//! The long-running commands (`serve`, `worker`) and the reports and usage
//! tables.

use anyhow::{bail, Context, Result};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::format::{or_dash, table};
use super::{ReportsCommand, ServeArgs, WorkerCommandArgs};
use crate::db;
use crate::signature::Secrets;
use crate::telemetry;
use crate::Config;

pub(super) async fn print_usage(url: &str, tenant_id: &str) -> Result<()> {
    let pool = db::pool(url, 1)?;
    let mut client = pool.get().await.context("connecting to the database")?;
    let usage = db::tenant_api::usage(&mut client, tenant_id)
        .await
        .map_err(|error| match db::sqlstate(&error) {
            Some("P0002") => anyhow::anyhow!("tenant {tenant_id:?} not found"),
            _ => error.into(),
        })?;
    let rows: Vec<Vec<String>> = usage
        .metrics
        .iter()
        .map(|m| {
            let period = match (m.period_start, m.period_end) {
                (Some(start), Some(end)) => format!(
                    "{} to {}",
                    start.format("%Y-%m-%d %H:%M"),
                    end.format("%Y-%m-%d %H:%M")
                ),
                _ => "-".into(),
            };
            vec![
                m.metric.clone(),
                m.kind.clone(),
                m.used.to_string(),
                m.max_units
                    .map_or_else(|| "unlimited".into(), |max| max.to_string()),
                or_dash(m.remaining),
                period,
            ]
        })
        .collect();
    println!(
        "{} on plan {} ({})",
        usage.tenant_id, usage.plan_id, usage.status
    );
    print!(
        "{}",
        table(
            &[
                "metric",
                "kind",
                "used",
                "limit",
                "remaining",
                "period (UTC)"
            ],
            &rows
        )
    );
    Ok(())
}

pub(super) async fn serve(url: &str, args: ServeArgs) -> Result<()> {
    telemetry::init(args.log_format);
    let config = Config {
        database_url: url.to_string(),
        pool_size: args.pool_size,
        stripe_webhook_secrets: Secrets::parse(&args.stripe_webhook_secret),
        paddle_webhook_secrets: Secrets::parse(&args.paddle_webhook_secret),
        max_body_bytes: args.max_body_bytes,
        worker: if args.no_worker {
            None
        } else {
            args.worker.worker()?
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
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    crate::run(config, listener, shutdown).await
}

pub(super) async fn worker(url: &str, args: WorkerCommandArgs) -> Result<()> {
    telemetry::init(args.log_format);
    let Some((client, config)) = args.worker.worker()? else {
        bail!("no Stripe secret key: set STRIPE_SECRET_KEY or pass --stripe-secret-key");
    };
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    crate::run_worker(url, client, config, shutdown).await
}

pub(super) async fn reports(url: &str, command: Option<ReportsCommand>) -> Result<()> {
    let pool = db::pool(url, 1)?;
    let client = pool.get().await.context("connecting to the database")?;
    match command {
        Some(ReportsCommand::Retry { ids, all_failed }) => {
            if ids.is_empty() && !all_failed {
                bail!("name the reports to retry, or pass --all-failed");
            }
            let ids = (!all_failed).then_some(ids.as_slice());
            let requeued = db::reports::requeue(&client, ids)
                .await
                .map_err(|error| match error.as_db_error() {
                    Some(db_error) if db_error.code().code() == "P0002" => {
                        anyhow::anyhow!(
                            "{}: {}",
                            db_error.message(),
                            db_error.detail().unwrap_or_default()
                        )
                    }
                    _ => error.into(),
                })?;
            println!(
                "{requeued} failed usage report{} back in the queue",
                if requeued == 1 { "" } else { "s" }
            );
        }
        None => {
            let stats = db::reports::stats(&client).await?;
            let age = stats
                .oldest_pending_seconds
                .map_or_else(|| "-".to_string(), |seconds| format!("{seconds:.0}s"));
            let queue = vec![vec![
                stats.pending.to_string(),
                stats.leased.to_string(),
                stats.due.to_string(),
                stats.failed.to_string(),
                age,
            ]];
            print!(
                "{}",
                table(
                    &["pending", "sending", "due now", "failed", "oldest pending"],
                    &queue
                )
            );
            let failed = db::reports::failed(&client, 100).await?;
            if !failed.is_empty() {
                let rows: Vec<Vec<String>> = failed
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.tenant_id.clone(),
                            r.metric.clone(),
                            r.units.to_string(),
                            r.attempts.to_string(),
                            r.failed_at.map_or_else(
                                || "-".into(),
                                |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
                            ),
                            r.last_error.clone().unwrap_or_default(),
                        ]
                    })
                    .collect();
                println!(
                    "\nfailed reports (newest first{}):",
                    if failed.len() == 100 {
                        ", the last 100"
                    } else {
                        ""
                    }
                );
                print!(
                    "{}",
                    table(
                        &[
                            "id",
                            "tenant",
                            "metric",
                            "units",
                            "attempts",
                            "failed at (UTC)",
                            "error"
                        ],
                        &rows
                    )
                );
                println!(
                    "\nput them back in the queue with: tallyd reports retry <id>… or --all-failed"
                );
            }
        }
    }
    Ok(())
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
