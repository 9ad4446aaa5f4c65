//! `tallyd reports`: the usage-report queue's depth and its failed reports,
//! and `tallyd reports retry`, which puts failed reports back in the queue
//! (refusing, unless told, those first claimed 24 hours or more ago: a send
//! of theirs may have reached Stripe outside its dedupe window).

use anyhow::{anyhow, bail, Result};

use super::format::table;
use crate::db::{self, ErrorKind};

/// The most failed reports listed at once.
const LISTED: i64 = 100;

/// `tallyd reports`.
pub(super) async fn show(url: &str) -> Result<()> {
    let client = db::connect(url).await?;
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
    let failed = db::reports::failed(&client, LISTED).await?;
    if failed.is_empty() {
        return Ok(());
    }
    let rows: Vec<Vec<String>> = failed
        .iter()
        .map(|r| {
            vec![
                r.id.to_string(),
                r.tenant_id.clone(),
                r.metric.clone(),
                r.units.to_string(),
                r.attempts.to_string(),
                r.sends.to_string(),
                r.first_claimed_at.map_or_else(
                    || "-".into(),
                    |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ),
                r.failed_at.map_or_else(
                    || "-".into(),
                    |at| at.format("%Y-%m-%d %H:%M:%S").to_string(),
                ),
                r.last_error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let cut = if failed.len() as i64 == LISTED {
        format!(", the last {LISTED}")
    } else {
        String::new()
    };
    println!("\nfailed reports (newest first{cut}):");
    let headers = [
        "id",
        "tenant",
        "metric",
        "units",
        "attempts",
        "sends",
        "first sent (UTC)",
        "failed at (UTC)",
        "error",
    ];
    print!("{}", table(&headers, &rows));
    println!("\nput them back in the queue with: tallyd reports retry <id>… or --all-failed");
    println!(
        "(a report first sent 24 hours or more ago may have reached Stripe already: check, then pass --allow-resend-after-24h)"
    );
    Ok(())
}

/// `tallyd reports retry <id>… | --all-failed [--allow-resend-after-24h]`.
pub(super) async fn retry(
    url: &str,
    ids: &[i64],
    all_failed: bool,
    allow_resend_after_24h: bool,
) -> Result<()> {
    let client = db::connect(url).await?;
    if ids.is_empty() && !all_failed {
        bail!("name the reports to retry, or pass --all-failed");
    }
    let ids = (!all_failed).then_some(ids);
    let requeued = db::reports::requeue(&client, ids, allow_resend_after_24h)
        .await
        .map_err(|error| match error.kind() {
            // The detail lists the ids that do not exist.
            ErrorKind::NotFound(_) => anyhow!(
                "{}: {}",
                error.message().unwrap_or_default(),
                error.detail().unwrap_or_default()
            ),
            // The detail lists the reports that may be billed twice.
            ErrorKind::Refused => anyhow!(
                "{}: {}\nnothing was put back. Check in Stripe which of these meter events arrived \
                 (by their identifier in tally.usage_reports); retry the others with \
                 --allow-resend-after-24h",
                error.message().unwrap_or_default(),
                error.detail().unwrap_or_default()
            ),
            _ => error.into(),
        })?;
    println!(
        "{requeued} failed usage report{} back in the queue",
        if requeued == 1 { "" } else { "s" }
    );
    Ok(())
}
