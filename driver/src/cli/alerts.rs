//! `tallyd alerts`: the alert queue's depth and the newest alerts, and
//! `tallyd alerts retry`, which puts failed alerts back in the queue.

use anyhow::{anyhow, bail, Result};

use super::format::table;
use crate::db::{self, ErrorKind};

/// The most alerts listed at once.
const LISTED: i64 = 100;

/// `tallyd alerts`.
pub(super) async fn show(url: &str) -> Result<()> {
    let client = db::connect(url).await?;
    let stats = db::alerts::stats(&client).await?;
    let queue = vec![vec![
        stats.pending.to_string(),
        stats.leased.to_string(),
        stats.due.to_string(),
        stats.failed.to_string(),
        stats.completed.to_string(),
    ]];
    print!(
        "{}",
        table(
            &["pending", "delivering", "due now", "failed", "delivered"],
            &queue
        )
    );
    let alerts = db::alerts::list(&client, LISTED).await?;
    if alerts.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = alerts
        .iter()
        .map(|a| {
            vec![
                a.id.to_string(),
                a.tenant_id.clone(),
                a.metric.clone(),
                format!("{}%", a.percent),
                format!("{}/{}", a.used, a.max_units),
                a.created_at.format("%Y-%m-%d %H:%M:%S").to_string(),
                a.status.clone(),
                a.attempts.to_string(),
                a.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let cut = if alerts.len() as i64 == LISTED {
        format!(", the last {LISTED}")
    } else {
        String::new()
    };
    println!("\nalerts (newest first{cut}):");
    let headers = [
        "id",
        "tenant",
        "metric",
        "threshold",
        "used/limit",
        "crossed at (UTC)",
        "status",
        "attempts",
        "error",
    ];
    print!("{}", table(&headers, &rows));
    if stats.failed > 0 {
        println!(
            "\nput failed alerts back in the queue with: tallyd alerts retry <id>… or --all-failed"
        );
    }
    Ok(())
}

/// `tallyd alerts retry <id>… | --all-failed`.
pub(super) async fn retry(url: &str, ids: &[i64], all_failed: bool) -> Result<()> {
    let client = db::connect(url).await?;
    if ids.is_empty() && !all_failed {
        bail!("name the alerts to retry, or pass --all-failed");
    }
    let ids = (!all_failed).then_some(ids);
    let requeued = db::alerts::requeue(&client, ids)
        .await
        .map_err(|error| match error.kind() {
            // The detail lists the ids that do not exist.
            ErrorKind::NotFound(_) => anyhow!(
                "{}: {}",
                error.message().unwrap_or_default(),
                error.detail().unwrap_or_default()
            ),
            _ => error.into(),
        })?;
    println!(
        "{requeued} failed alert{} back in the queue",
        if requeued == 1 { "" } else { "s" }
    );
    Ok(())
}
