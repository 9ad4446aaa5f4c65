//! `tallyd links conflicts` and `tallyd links unlinked`: what webhooks
//! asked of tenant links and tally refused or could not do. A webhook never
//! replaces a link; these are for an operator to look at (and, if the buyer
//! is right, link by hand with tally.link_provider_customer).

use anyhow::Result;

use super::format::table;
use crate::db::{self, admin};

/// The most rows listed at once.
const LISTED: i64 = 100;

fn print(rows: &[Vec<String>], headers: &[&str], none: &str) {
    if rows.is_empty() {
        println!("{none}");
        return;
    }
    print!("{}", table(headers, rows));
    if rows.len() as i64 == LISTED {
        println!("(the newest {LISTED})");
    }
}

/// `tallyd links conflicts`.
pub(super) async fn conflicts(url: &str) -> Result<()> {
    let client = db::connect(url).await?;
    let rows = admin::link_conflicts(&client, LISTED).await?;
    let headers = [
        "recorded (UTC)",
        "provider",
        "event",
        "customer",
        "subscription",
        "named tenant",
        "linked tenant",
        "tenant's customer",
        "reason",
    ];
    print(&rows, &headers, "no link conflicts");
    Ok(())
}

/// `tallyd links unlinked`.
pub(super) async fn unlinked(url: &str) -> Result<()> {
    let client = db::connect(url).await?;
    let rows = admin::unlinked_events(&client, LISTED).await?;
    let headers = ["received (UTC)", "provider", "event", "type", "customer"];
    print(
        &rows,
        &headers,
        "no events acknowledged for unlinked customers",
    );
    Ok(())
}
