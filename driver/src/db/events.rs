//! Provider events, applied in ONE transaction: the event lock first, then
//! the effect, by the one extension function for it (`tally.apply_payment`,
//! `tally.apply_subscription`, `tally.apply_checkout`), which decides and
//! records what became of the event. A duplicate finds the lock taken and
//! changes nothing; an effect that fails rolls the lock back with it, so
//! the provider's retry is processed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use tally_rules::billing;

use super::{query_one, Client, Error};
use crate::events::{Effect, Event, Period};

/// How tallyd applies events: which tenant references it trusts, and how
/// long an event for a customer not linked to any tenant is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingConfig {
    /// Trust a bare tenant id in a checkout (it still never replaces a
    /// link). Off: only references signed by `tally.checkout_reference`.
    pub trust_unsigned_references: bool,
    /// Answer "retry later" to an event for an unlinked customer while it is
    /// younger than this (by when it happened); after, acknowledge it and
    /// record it as unlinked.
    pub unlinked_retry_window: Duration,
}

impl Default for BillingConfig {
    fn default() -> BillingConfig {
        BillingConfig {
            trust_unsigned_references: true,
            unlinked_retry_window: Duration::from_secs(
                billing::UNLINKED_RETRY_WINDOW_SECONDS as u64,
            ),
        }
    }
}

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect was applied.
    Processed,
    /// Seen before: nothing changed.
    Duplicate,
    /// Recorded, no effect: an unknown type, another subscription than the
    /// tenant's, a payment that is not a renewal.
    Ignored,
    /// Recorded, no effect: older than what the tenant has.
    Stale,
    /// Recorded, no effect: a link it asked for was refused
    /// (`tally.link_conflicts`).
    Conflict,
    /// Recorded, no effect: its customer was never linked to a tenant within
    /// the retry window.
    Unlinked,
    /// Cannot be applied yet (its customer is not linked to a tenant): not
    /// recorded, so the provider's retry is processed once it can be.
    Deferred { why: String },
}

impl Outcome {
    /// The label in metrics and logs, and the `status` answered.
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Processed => "processed",
            Outcome::Duplicate => "duplicate",
            Outcome::Ignored => "ignored",
            Outcome::Stale => "stale",
            Outcome::Conflict => "conflict",
            Outcome::Unlinked => "unlinked",
            Outcome::Deferred { .. } => "deferred",
        }
    }
}

fn period_bounds(period: Option<Period>) -> (Option<DateTime<Utc>>, Option<DateTime<Utc>>) {
    match period {
        Some((start, end)) => (Some(start), Some(end)),
        None => (None, None),
    }
}

pub async fn apply(
    client: &mut Client,
    event: &Event,
    payload: &Value,
    config: &BillingConfig,
) -> Result<Outcome, Error> {
    let transaction = client.transaction().await?;
    let provider = event.provider.as_str();
    let locked: bool = query_one(
        &transaction,
        "SELECT tally.attempt_event_lock($1, $2, $3, $4)",
        &[&provider, &event.id, &event.kind, payload],
    )
    .await?
    .get(0);
    if !locked {
        transaction.rollback().await?;
        return Ok(Outcome::Duplicate);
    }
    let trust = config.trust_unsigned_references;
    let (result, customer) = match &event.effect {
        Effect::Ignored => {
            transaction.commit().await?;
            return Ok(Outcome::Ignored);
        }
        Effect::Payment(payment) => {
            let (start, end) = period_bounds(payment.period);
            let row = query_one(
                &transaction,
                "SELECT tally.apply_payment($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
                &[
                    &provider,
                    &event.id,
                    &payment.customer.id,
                    &payment.status.as_str(),
                    &payment.reason,
                    &payment.subscription_id,
                    &start,
                    &end,
                    &payment.customer.reference,
                    &trust,
                ],
            )
            .await?;
            (row.get::<_, String>(0), &payment.customer.id)
        }
        Effect::Subscription(sub) => {
            let (start, end) = period_bounds(sub.period);
            let row = query_one(
                &transaction,
                "SELECT tally.apply_subscription($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                &[
                    &provider,
                    &event.id,
                    &sub.customer.id,
                    &sub.id,
                    &sub.status.as_str(),
                    &event.occurred_at,
                    &sub.price_ids,
                    &start,
                    &end,
                    &sub.customer.reference,
                    &trust,
                ],
            )
            .await?;
            (row.get::<_, String>(0), &sub.customer.id)
        }
        Effect::Checkout {
            reference,
            customer_id,
            subscription_id,
        } => {
            let row = query_one(
                &transaction,
                "SELECT tally.apply_checkout($1, $2, $3, $4, $5, $6)",
                &[
                    &provider,
                    &event.id,
                    customer_id,
                    reference,
                    subscription_id,
                    &trust,
                ],
            )
            .await?;
            (row.get::<_, String>(0), customer_id)
        }
    };
    let outcome = match result.as_str() {
        "applied" => Outcome::Processed,
        "stale" => Outcome::Stale,
        "conflict" => Outcome::Conflict,
        "not_linked" if keep_retrying(event.occurred_at, config) => Outcome::Deferred {
            why: format!("{provider} customer {customer:?} is not linked to a tenant yet"),
        },
        "not_linked" => Outcome::Unlinked,
        _ => Outcome::Ignored,
    };
    if let Outcome::Deferred { .. } = outcome {
        transaction.rollback().await?;
    } else {
        transaction.commit().await?;
    }
    Ok(outcome)
}

fn keep_retrying(occurred_at: DateTime<Utc>, config: &BillingConfig) -> bool {
    let window = i64::try_from(config.unlinked_retry_window.as_micros()).unwrap_or(i64::MAX);
    billing::keep_retrying_unlinked(
        occurred_at.timestamp_micros(),
        Utc::now().timestamp_micros(),
        window,
    )
}
