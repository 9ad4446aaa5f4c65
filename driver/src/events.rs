//! Provider events, read into what they mean for a tenant. Only the fields
//! tally uses are read, so a payload from an older or newer API version with
//! extra fields still works. Parsing happens after the signature is checked.

mod record;

pub use record::{paddle_record, stripe_record};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tally_rules::{Provider, TenantStatus};

/// A provider's customer, and the tenant its checkout named, if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    pub tenant_hint: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub customer: Customer,
    pub id: String,
    /// The status the tenant takes from the subscription.
    pub status: TenantStatus,
    pub price_id: Option<String>,
    pub period: Option<(DateTime<Utc>, DateTime<Utc>)>,
}

/// What an event asks of tally.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Reset usage, status active.
    PaymentSucceeded(Customer),
    /// Plan from the price, new period, status (canceled: the default plan).
    SubscriptionChanged(Subscription),
    /// Status past_due.
    PaymentFailed(Customer),
    /// Status action_required.
    ActionRequired(Customer),
    /// Link the customer (and subscription) to the tenant the checkout named.
    CheckoutCompleted {
        tenant_id: String,
        customer_id: String,
        subscription_id: Option<String>,
    },
    /// Recorded and acknowledged, nothing else.
    Ignored,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub provider: Provider,
    pub id: String,
    pub kind: String,
    pub occurred_at: DateTime<Utc>,
    pub effect: Effect,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the event has no {0}")]
    Missing(&'static str),
    #[error("the event's {0} is not valid")]
    Invalid(&'static str),
}

fn text<'a>(value: &'a Value, pointer: &str) -> Option<&'a str> {
    value
        .pointer(pointer)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn required(value: &Value, pointer: &str, name: &'static str) -> Result<String, ParseError> {
    text(value, pointer)
        .map(str::to_string)
        .ok_or(ParseError::Missing(name))
}

fn unix(seconds: Option<i64>) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(seconds?, 0).single()
}

fn rfc3339(value: Option<&str>) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(value?)
        .ok()
        .map(|at| at.with_timezone(&Utc))
}

/// A body as JSON, to be read by [`stripe_event`] or [`paddle_event`].
pub fn json(body: &[u8]) -> Result<Value, ParseError> {
    serde_json::from_slice(body).map_err(|error| ParseError::NotJson(error.to_string()))
}

/// A Stripe event (`{"id", "type", "created", "data": {"object": …}}`).
pub fn stripe_event(event: &Value) -> Result<Event, ParseError> {
    let id = required(event, "/id", "id")?;
    let kind = required(event, "/type", "type")?;
    let occurred_at = unix(event.pointer("/created").and_then(Value::as_i64))
        .ok_or(ParseError::Missing("created"))?;
    let object = event
        .pointer("/data/object")
        .ok_or(ParseError::Missing("data.object"))?;
    // `customer` is an id, or the customer object when expanded.
    let customer = || -> Result<Customer, ParseError> {
        let id = text(object, "/customer").or_else(|| text(object, "/customer/id"));
        Ok(Customer {
            id: id
                .ok_or(ParseError::Missing("data.object.customer"))?
                .to_string(),
            tenant_hint: text(object, "/metadata/tenant_id").map(str::to_string),
        })
    };
    let effect = match kind.as_str() {
        "invoice.paid" | "invoice.payment_succeeded" => Effect::PaymentSucceeded(customer()?),
        "invoice.payment_failed" | "charge.failed" => Effect::PaymentFailed(customer()?),
        "invoice.payment_action_required" => Effect::ActionRequired(customer()?),
        "customer.subscription.created"
        | "customer.subscription.updated"
        | "customer.subscription.deleted" => {
            let status = if kind == "customer.subscription.deleted" {
                TenantStatus::Canceled
            } else {
                match text(object, "/status").ok_or(ParseError::Missing("data.object.status"))? {
                    "active" | "trialing" => TenantStatus::Active,
                    "past_due" | "unpaid" | "paused" => TenantStatus::PastDue,
                    "incomplete" => TenantStatus::ActionRequired,
                    "canceled" | "incomplete_expired" => TenantStatus::Canceled,
                    _ => return Err(ParseError::Invalid("data.object.status")),
                }
            };
            // The period moved from the subscription to its items in API
            // version 2025-03-31; read either.
            let item = object.pointer("/items/data/0");
            let seconds = |field: &str| {
                object
                    .get(field)
                    .and_then(Value::as_i64)
                    .or_else(|| item?.get(field)?.as_i64())
            };
            let period =
                unix(seconds("current_period_start")).zip(unix(seconds("current_period_end")));
            Effect::SubscriptionChanged(Subscription {
                customer: customer()?,
                id: required(object, "/id", "data.object.id")?,
                status,
                price_id: item
                    .and_then(|item| text(item, "/price/id"))
                    .map(str::to_string),
                period,
            })
        }
        "checkout.session.completed" => match text(object, "/client_reference_id") {
            Some(tenant_id) => Effect::CheckoutCompleted {
                tenant_id: tenant_id.to_string(),
                customer_id: customer()?.id,
                subscription_id: text(object, "/subscription").map(str::to_string),
            },
            // A checkout tally did not start: nothing to link.
            None => Effect::Ignored,
        },
        _ => Effect::Ignored,
    };
    Ok(Event {
        provider: Provider::Stripe,
        id,
        kind,
        occurred_at,
        effect,
    })
}

/// A Paddle Billing event (`{"event_id", "event_type", "occurred_at", "data"}`).
pub fn paddle_event(event: &Value) -> Result<Event, ParseError> {
    let id = required(event, "/event_id", "event_id")?;
    let kind = required(event, "/event_type", "event_type")?;
    let occurred_at =
        rfc3339(text(event, "/occurred_at")).ok_or(ParseError::Invalid("occurred_at"))?;
    let data = event.pointer("/data").ok_or(ParseError::Missing("data"))?;
    let customer = || -> Result<Customer, ParseError> {
        Ok(Customer {
            id: required(data, "/customer_id", "data.customer_id")?,
            tenant_hint: text(data, "/custom_data/tenant_id").map(str::to_string),
        })
    };
    let effect = match kind.as_str() {
        "transaction.completed" | "transaction.paid" => Effect::PaymentSucceeded(customer()?),
        "transaction.payment_failed" | "transaction.past_due" => Effect::PaymentFailed(customer()?),
        kind if kind.starts_with("subscription.") => {
            let status = match text(data, "/status").ok_or(ParseError::Missing("data.status"))? {
                "active" | "trialing" => TenantStatus::Active,
                "past_due" | "paused" => TenantStatus::PastDue,
                "canceled" => TenantStatus::Canceled,
                _ => return Err(ParseError::Invalid("data.status")),
            };
            let period = rfc3339(text(data, "/current_billing_period/starts_at"))
                .zip(rfc3339(text(data, "/current_billing_period/ends_at")));
            Effect::SubscriptionChanged(Subscription {
                customer: customer()?,
                id: required(data, "/id", "data.id")?,
                status,
                price_id: text(data, "/items/0/price/id").map(str::to_string),
                period,
            })
        }
        _ => Effect::Ignored,
    };
    Ok(Event {
        provider: Provider::Paddle,
        id,
        kind,
        occurred_at,
        effect,
    })
}

/// The event type as a metrics label: known types as they are, anything
/// else as "other", so a provider cannot grow the label set.
pub fn type_label(kind: &str) -> &str {
    const KNOWN: &[&str] = &[
        "invoice.paid",
        "invoice.payment_succeeded",
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "charge.failed",
        "customer.subscription.created",
        "customer.subscription.updated",
        "customer.subscription.deleted",
        "checkout.session.completed",
        "transaction.completed",
        "transaction.paid",
        "transaction.payment_failed",
        "transaction.past_due",
        "subscription.created",
        "subscription.updated",
        "subscription.activated",
        "subscription.canceled",
        "subscription.past_due",
        "subscription.paused",
        "subscription.resumed",
        "subscription.trialing",
    ];
    KNOWN
        .iter()
        .find(|known| **known == kind)
        .copied()
        .unwrap_or("other")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn stripe(kind: &str, object: Value) -> Result<Event, ParseError> {
        stripe_event(
            &json!({"id": "evt_1", "type": kind, "created": 1_700_000_000, "data": {"object": object}}),
        )
    }

    fn customer(id: &str) -> Customer {
        Customer {
            id: id.into(),
            tenant_hint: None,
        }
    }

    #[test]
    fn stripe_payments_name_their_customer() {
        let event = stripe("invoice.paid", json!({"customer": "cus_1"})).unwrap();
        assert_eq!(
            (event.id.as_str(), event.occurred_at.timestamp()),
            ("evt_1", 1_700_000_000)
        );
        assert_eq!(event.effect, Effect::PaymentSucceeded(customer("cus_1")));
        let expanded = stripe(
            "charge.failed",
            json!({"customer": {"id": "cus_2", "object": "customer"}}),
        )
        .unwrap();
        assert_eq!(expanded.effect, Effect::PaymentFailed(customer("cus_2")));
        assert_eq!(
            stripe(
                "invoice.payment_action_required",
                json!({"customer": "cus_3"})
            )
            .unwrap()
            .effect,
            Effect::ActionRequired(customer("cus_3"))
        );
        assert_eq!(
            stripe("invoice.paid", json!({})),
            Err(ParseError::Missing("data.object.customer"))
        );
    }

    #[test]
    fn stripe_subscriptions_carry_plan_period_and_status() {
        let object = json!({
            "id": "sub_1", "customer": "cus_1", "status": "active", "metadata": {"tenant_id": "acme"},
            "items": {"data": [{"price": {"id": "price_pro"}, "current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}]}
        });
        let Effect::SubscriptionChanged(sub) = stripe("customer.subscription.updated", object)
            .unwrap()
            .effect
        else {
            panic!("not a subscription change");
        };
        assert_eq!(sub.id, "sub_1");
        assert_eq!(sub.customer.tenant_hint.as_deref(), Some("acme"));
        assert_eq!(sub.price_id.as_deref(), Some("price_pro"));
        assert_eq!(sub.status, TenantStatus::Active);
        let (start, end) = sub.period.unwrap();
        assert_eq!(
            (start.timestamp(), end.timestamp()),
            (1_700_000_000, 1_702_592_000)
        );

        // Older API versions keep the period on the subscription itself.
        let older = json!({"id": "sub_1", "customer": "cus_1", "status": "past_due",
                           "current_period_start": 1, "current_period_end": 2, "items": {"data": []}});
        let Effect::SubscriptionChanged(sub) = stripe("customer.subscription.created", older)
            .unwrap()
            .effect
        else {
            panic!("not a subscription change");
        };
        assert_eq!(
            (
                sub.status,
                sub.price_id,
                sub.period.map(|p| p.1.timestamp())
            ),
            (TenantStatus::PastDue, None, Some(2))
        );

        let deleted = json!({"id": "sub_1", "customer": "cus_1", "status": "active"});
        let Effect::SubscriptionChanged(sub) = stripe("customer.subscription.deleted", deleted)
            .unwrap()
            .effect
        else {
            panic!("not a subscription change");
        };
        assert_eq!(sub.status, TenantStatus::Canceled);
    }

    #[test]
    fn stripe_checkouts_link_only_when_they_name_a_tenant() {
        let linked = stripe(
            "checkout.session.completed",
            json!({"client_reference_id": "acme", "customer": "cus_1", "subscription": "sub_1"}),
        )
        .unwrap();
        assert_eq!(
            linked.effect,
            Effect::CheckoutCompleted {
                tenant_id: "acme".into(),
                customer_id: "cus_1".into(),
                subscription_id: Some("sub_1".into())
            }
        );
        let anonymous = stripe("checkout.session.completed", json!({"customer": "cus_1"})).unwrap();
        assert_eq!(anonymous.effect, Effect::Ignored);
    }

    #[test]
    fn unknown_types_are_ignored_and_bad_bodies_rejected() {
        assert_eq!(
            stripe("customer.created", json!({})).unwrap().effect,
            Effect::Ignored
        );
        assert!(matches!(json(b"{not json"), Err(ParseError::NotJson(_))));
        assert_eq!(
            stripe_event(&json!({"type": "invoice.paid"})),
            Err(ParseError::Missing("id"))
        );
        assert_eq!(
            stripe(
                "customer.subscription.updated",
                json!({"id": "sub_1", "customer": "c", "status": "weird"})
            ),
            Err(ParseError::Invalid("data.object.status"))
        );
    }

    fn paddle(kind: &str, data: Value) -> Result<Event, ParseError> {
        paddle_event(
            &json!({"event_id": "evt_01", "event_type": kind, "occurred_at": "2024-04-12T10:18:49.621022Z", "data": data}),
        )
    }

    #[test]
    fn paddle_events_read_the_same_way() {
        let paid = paddle(
            "transaction.completed",
            json!({"customer_id": "ctm_1", "custom_data": {"tenant_id": "acme"}}),
        )
        .unwrap();
        assert_eq!(paid.occurred_at.timestamp(), 1_712_917_129);
        assert_eq!(
            paid.effect,
            Effect::PaymentSucceeded(Customer {
                id: "ctm_1".into(),
                tenant_hint: Some("acme".into())
            })
        );

        let data = json!({"id": "sub_01", "customer_id": "ctm_1", "status": "canceled", "items": [{"price": {"id": "pri_1"}}],
                          "current_billing_period": {"starts_at": "2024-04-01T00:00:00Z", "ends_at": "2024-05-01T00:00:00Z"}});
        let Effect::SubscriptionChanged(sub) =
            paddle("subscription.canceled", data).unwrap().effect
        else {
            panic!("not a subscription change");
        };
        assert_eq!(
            (sub.status, sub.price_id.as_deref()),
            (TenantStatus::Canceled, Some("pri_1"))
        );
        assert!(sub.period.is_some());
        assert_eq!(
            paddle(
                "transaction.payment_failed",
                json!({"customer_id": "ctm_1"})
            )
            .unwrap()
            .effect,
            Effect::PaymentFailed(customer("ctm_1"))
        );
        assert_eq!(
            paddle("adjustment.created", json!({})).unwrap().effect,
            Effect::Ignored
        );
        assert_eq!(
            paddle_event(
                &json!({"event_id": "e", "event_type": "x", "occurred_at": "yesterday", "data": {}})
            ),
            Err(ParseError::Invalid("occurred_at"))
        );
    }

    #[test]
    fn metric_labels_are_bounded() {
        assert_eq!(type_label("invoice.paid"), "invoice.paid");
        assert_eq!(type_label("whatever.someone.sends"), "other");
    }
}
