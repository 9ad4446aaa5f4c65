//! The errors of the usage-report and alert queues: settling, requeueing
//! and claiming reports and alerts.

use super::{message, Failure, SqlState::*};

/// One or more usage report ids that do not exist, in ascending order.
pub fn report_not_found(ids: &[i64]) -> Failure {
    let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
    Failure::new(NoDataFound, message::REPORT_NOT_FOUND)
        .detail(format!("no usage report has id {}", ids.join(", ")))
        .hint("list reports with tallyd reports, or in tally.usage_reports")
}

/// A worker or operator named alerts that do not exist.
pub fn alert_not_found(ids: &[i64]) -> Failure {
    Failure::new(NoDataFound, message::ALERT_NOT_FOUND)
        .detail(format!("no alert has id {}", listed_ids(ids)))
        .hint("list alerts with tallyd alerts, or in tally.alerts")
}

/// A worker settled an alert with the token of a claim that is no longer the
/// alert's: its lease lapsed and another claim took the alert.
pub fn alert_lease_lost(id: i64, attempts: i32) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::ALERT_LEASE_LOST)
        .detail(format!(
            "alert {id} was claimed again after this lease (attempt {attempts} holds it)"
        ))
        .hint("drop this result: the alert's current holder delivers and settles it; receivers deduplicate by webhook-id")
}

/// A worker settled a report with the token of a claim that is no longer
/// the report's: its lease lapsed and another claim took the report.
pub fn lease_lost(id: i64, attempts: i32) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::LEASE_LOST)
        .detail(format!(
            "usage report {id} was claimed again after this lease (attempt {attempts} holds it)"
        ))
        .hint("drop this result: the report's current holder sends and settles it, and the provider counts its identifier once")
}

/// The most report ids an error lists before it says how many more.
pub const MAX_LISTED_IDS: usize = 20;

fn listed_ids(ids: &[i64]) -> String {
    let mut shown: Vec<String> = ids
        .iter()
        .take(MAX_LISTED_IDS)
        .map(i64::to_string)
        .collect();
    if ids.len() > MAX_LISTED_IDS {
        shown.push(format!("and {} more", ids.len() - MAX_LISTED_IDS));
    }
    shown.join(", ")
}

/// Failed reports (ascending ids) first claimed 24 hours or more ago: a
/// send of theirs may have reached Stripe outside its 24-hour dedupe of
/// identifiers, so sending them again may bill them twice.
pub fn resend_may_bill_twice(ids: &[i64]) -> Failure {
    let (noun, verb) = if ids.len() == 1 {
        ("usage report", "was")
    } else {
        ("usage reports", "were")
    };
    Failure::new(
        ObjectNotInPrerequisiteState,
        message::RESEND_MAY_BILL_TWICE,
    )
    .detail(format!(
        "{noun} {} {verb} first claimed for sending 24 hours or more ago; \
         Stripe counts a meter event's identifier once within 24 hours only",
        listed_ids(ids)
    ))
    .hint("check in Stripe which of these meter events arrived (by identifier); requeue the others with allow_resend_after_24h => true (tallyd reports retry --allow-resend-after-24h)")
}

/// A claim on a node of a distributed tally that holds none of `table`'s
/// shards (the coordinator): each node claims what it holds.
pub fn claimed_on_workers(table: &str) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::CLAIMED_ON_WORKERS)
        .detail(format!("this node holds no shard of {table}"))
        .hint("run one tallyd worker against each worker node (its --database-url names the worker), not the coordinator")
}
