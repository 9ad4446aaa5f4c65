//! Provider events, applied in ONE transaction: the event lock first, then
//! the effect. A duplicate finds the lock taken and changes nothing; an
//! effect that fails rolls the lock back with it, so the provider's retry is
//! processed.

use deadpool_postgres::Transaction;
use serde_json::Value;
use tally_rules::{Provider, TenantStatus};

use super::{execute, query_one, query_opt, Client, Error};
use crate::events::{Customer, Effect, Event, Subscription};

/// What became of an event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its effect was applied to this tenant.
    Processed { tenant_id: String },
    /// Seen before: nothing changed.
    Duplicate,
    /// Recorded, no effect: an unknown type, or a subscription event older
    /// than the last one applied.
    Ignored { why: &'static str },
    /// Cannot be applied yet (its customer is not linked to a tenant): not
    /// recorded, so the provider's retry is processed once it can be.
    Deferred { why: String },
}

pub async fn apply(client: &mut Client, event: &Event, payload: &Value) -> Result<Outcome, Error> {
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
    let outcome = effect(&transaction, event).await?;
    if let Outcome::Deferred { .. } = outcome {
        transaction.rollback().await?;
    } else {
        transaction.commit().await?;
    }
    Ok(outcome)
}

async fn effect(tx: &Transaction<'_>, event: &Event) -> Result<Outcome, Error> {
    let provider = event.provider;
    let (customer, status) = match &event.effect {
        Effect::Ignored => {
            return Ok(Outcome::Ignored {
                why: "no effect for this event type",
            })
        }
        Effect::CheckoutCompleted {
            tenant_id,
            customer_id,
            subscription_id,
        } => {
            if !tenant_exists(tx, tenant_id).await? {
                return Ok(Outcome::Deferred {
                    why: format!("the checkout names tenant {tenant_id:?}, which does not exist"),
                });
            }
            link(
                tx,
                tenant_id,
                provider,
                customer_id,
                subscription_id.as_deref(),
            )
            .await?;
            return Ok(Outcome::Processed {
                tenant_id: tenant_id.clone(),
            });
        }
        Effect::SubscriptionChanged(subscription) => {
            return subscription_changed(tx, event, subscription).await;
        }
        Effect::PaymentSucceeded(customer) => (customer, TenantStatus::Active),
        Effect::PaymentFailed(customer) => (customer, TenantStatus::PastDue),
        Effect::ActionRequired(customer) => (customer, TenantStatus::ActionRequired),
    };
    let Some(tenant_id) = tenant_of(tx, provider, customer).await? else {
        return Ok(not_linked(provider, customer));
    };
    if let Effect::PaymentSucceeded(_) = event.effect {
        execute(tx, "SELECT tally.reset_usage($1)", &[&tenant_id]).await?;
    }
    set_status(tx, &tenant_id, status).await?;
    Ok(Outcome::Processed { tenant_id })
}

async fn subscription_changed(
    tx: &Transaction<'_>,
    event: &Event,
    sub: &Subscription,
) -> Result<Outcome, Error> {
    let provider = event.provider;
    let Some(tenant_id) = tenant_of(tx, provider, &sub.customer).await? else {
        return Ok(not_linked(provider, &sub.customer));
    };
    let current: bool = query_one(
        tx,
        "SELECT tally.accept_subscription_event($1, $2, $3)",
        &[&tenant_id, &provider.as_str(), &event.occurred_at],
    )
    .await?
    .get(0);
    if !current {
        return Ok(Outcome::Ignored {
            why: "older than the last subscription event applied",
        });
    }
    link(tx, &tenant_id, provider, &sub.customer.id, Some(&sub.id)).await?;
    let plan = if sub.status == TenantStatus::Canceled {
        query_opt(tx, "SELECT plan_id FROM tally.plans WHERE is_default", &[])
            .await?
            .map(|row| row.get(0))
    } else {
        match &sub.price_id {
            Some(price) => plan_for_price(tx, provider, price).await?,
            None => None,
        }
    };
    match plan {
        Some(plan_id) => {
            // The provider has already charged for this plan: switch even if
            // usage is over its limits (further use is refused).
            execute(
                tx,
                "SELECT tally.change_plan(t.tenant_id, $2, force => true) FROM tally.tenants AS t
                  WHERE t.tenant_id = $1 AND t.plan_id <> $2",
                &[&tenant_id, &plan_id],
            )
            .await?;
        }
        None if sub.status != TenantStatus::Canceled => {
            tracing::warn!(
                event_id = %event.id,
                tenant_id = %tenant_id,
                price_id = sub.price_id.as_deref().unwrap_or(""),
                "no plan has this subscription's price id: the tenant's plan is left as it is"
            );
        }
        None => {
            tracing::warn!(event_id = %event.id, tenant_id = %tenant_id, "canceled, but no default plan to move to")
        }
    }
    if let (Some((start, end)), false) = (sub.period, sub.status == TenantStatus::Canceled) {
        execute(
            tx,
            "SELECT tally.start_period($1, $2, $3)",
            &[&tenant_id, &start, &end],
        )
        .await?;
    }
    set_status(tx, &tenant_id, sub.status).await?;
    Ok(Outcome::Processed { tenant_id })
}

fn not_linked(provider: Provider, customer: &Customer) -> Outcome {
    Outcome::Deferred {
        why: format!(
            "{} customer {:?} is not linked to a tenant yet",
            provider.as_str(),
            customer.id
        ),
    }
}

async fn tenant_exists(tx: &Transaction<'_>, tenant_id: &str) -> Result<bool, Error> {
    Ok(query_opt(
        tx,
        "SELECT FROM tally.tenants WHERE tenant_id = $1",
        &[&tenant_id],
    )
    .await?
    .is_some())
}

/// The tenant a customer is linked to; or, when the checkout named a tenant
/// (Stripe `metadata.tenant_id`, Paddle `custom_data.tenant_id`), that
/// tenant, linked now.
async fn tenant_of(
    tx: &Transaction<'_>,
    provider: Provider,
    customer: &Customer,
) -> Result<Option<String>, Error> {
    // Provider ids are unique in tally.provider_links, keyed by the id.
    let sql = "SELECT tenant_id FROM tally.provider_links
                WHERE provider = $1 AND object = 'customer' AND object_id = $2";
    if let Some(row) = query_opt(tx, sql, &[&provider.as_str(), &customer.id]).await? {
        return Ok(Some(row.get(0)));
    }
    match &customer.tenant_hint {
        Some(tenant_id) if tenant_exists(tx, tenant_id).await? => {
            link(tx, tenant_id, provider, &customer.id, None).await?;
            Ok(Some(tenant_id.clone()))
        }
        _ => Ok(None),
    }
}

async fn link(
    tx: &Transaction<'_>,
    tenant_id: &str,
    provider: Provider,
    customer_id: &str,
    subscription_id: Option<&str>,
) -> Result<(), Error> {
    execute(
        tx,
        "SELECT tally.link_provider_customer($1, $2, $3, $4)",
        &[
            &tenant_id,
            &provider.as_str(),
            &customer_id,
            &subscription_id,
        ],
    )
    .await?;
    Ok(())
}

async fn plan_for_price(
    tx: &Transaction<'_>,
    provider: Provider,
    price_id: &str,
) -> Result<Option<String>, Error> {
    let sql = match provider {
        Provider::Stripe => "SELECT plan_id FROM tally.plans WHERE stripe_price_id = $1",
        Provider::Paddle => "SELECT plan_id FROM tally.plans WHERE paddle_price_id = $1",
    };
    Ok(query_opt(tx, sql, &[&price_id])
        .await?
        .map(|row| row.get(0)))
}

async fn set_status(
    tx: &Transaction<'_>,
    tenant_id: &str,
    status: TenantStatus,
) -> Result<(), Error> {
    execute(
        tx,
        "SELECT tally.set_tenant_status($1, $2)",
        &[&tenant_id, &status.as_str()],
    )
    .await?;
    Ok(())
}
