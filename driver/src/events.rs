//! Provider events, read into what they mean for a tenant. Only the fields
//! tally uses are read, so a payload from an older or newer API version with
//! extra fields still works. Parsing happens after the signature is checked.

mod record;

pub use record::{paddle_record, stripe_record};

use chrono::{DateTime, TimeZone, Utc};
use serde_json::Value;
use tally_rules::{Provider, TenantStatus};

/// A provider's customer, and the tenant reference its checkout carried, if
/// any (Stripe `metadata.tenant_id`, Paddle `custom_data.tenant_id`: set by
/// the buyer, so only a hint; see `tally.apply_checkout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id: String,
    pub reference: Option<String>,
}

/// A billing period, `[start, end)`.
pub type Period = (DateTime<Utc>, DateTime<Utc>);

/// A payment, succeeded or not (`tally.apply_payment`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payment {
    pub customer: Customer,
    /// Active for a payment that succeeded; past_due or action_required.
    pub status: TenantStatus,
    /// Why it was billed: Stripe's `billing_reason`, Paddle's `origin`.
    pub reason: Option<String>,
    pub subscription_id: Option<String>,
    /// The subscription period it pays for.
    pub period: Option<Period>,
}

/// A subscription created, changed or canceled (`tally.apply_subscription`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub customer: Customer,
    pub id: String,
    /// The status the tenant takes from the subscription.
    pub status: TenantStatus,
    /// Every item's price id, in the event's order.
    pub price_ids: Vec<String>,
    pub period: Option<Period>,
}

/// What an event asks of tally, independent of the provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    Payment(Payment),
    Subscription(Subscription),
    /// Link the customer (and subscription) to the tenant the checkout's
    /// reference names (`tally.apply_checkout`).
    Checkout {
        reference: String,
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

/// A Stripe field that holds an id, or the object when expanded.
fn id_of<'a>(object: &'a Value, field: &str) -> Option<&'a str> {
    text(object, &format!("/{field}")).or_else(|| text(object, &format!("/{field}/id")))
}

/// The subscription period a Stripe invoice pays for: its lines' `period`
/// (the invoice's own `period_start`/`period_end` cover the usage billed in
/// arrears, the previous period on a renewal). Metered lines carry the
/// previous period too, so the latest-starting line period is the new one;
/// one-off items (an empty period) do not count.
fn stripe_invoice_period(invoice: &Value) -> Option<Period> {
    invoice
        .pointer("/lines/data")
        .and_then(Value::as_array)?
        .iter()
        .filter_map(|line| {
            let start = line.pointer("/period/start").and_then(Value::as_i64)?;
            let end = line.pointer("/period/end").and_then(Value::as_i64)?;
            (end > start).then_some((start, end))
        })
        .max()
        .and_then(|(start, end)| unix(Some(start)).zip(unix(Some(end))))
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
        Ok(Customer {
            id: id_of(object, "customer")
                .ok_or(ParseError::Missing("data.object.customer"))?
                .to_string(),
            reference: text(object, "/metadata/tenant_id").map(str::to_string),
        })
    };
    let payment = |status| -> Result<Effect, ParseError> {
        Ok(Effect::Payment(Payment {
            customer: customer()?,
            status,
            reason: text(object, "/billing_reason").map(str::to_string),
            // Since API version 2025-03-31 an invoice names its
            // subscription under `parent`.
            subscription_id: id_of(object, "subscription")
                .or_else(|| text(object, "/parent/subscription_details/subscription"))
                .map(str::to_string),
            period: stripe_invoice_period(object),
        }))
    };
    let effect = match kind.as_str() {
        "invoice.paid" | "invoice.payment_succeeded" => payment(TenantStatus::Active)?,
        "invoice.payment_failed" => payment(TenantStatus::PastDue)?,
        "invoice.payment_action_required" => payment(TenantStatus::ActionRequired)?,
        // A charge names no subscription and no period.
        "charge.failed" => Effect::Payment(Payment {
            customer: customer()?,
            status: TenantStatus::PastDue,
            reason: None,
            subscription_id: None,
            period: None,
        }),
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
            let items: &[Value] = object
                .pointer("/items/data")
                .and_then(Value::as_array)
                .map_or(&[], Vec::as_slice);
            // The period moved from the subscription to its items in API
            // version 2025-03-31; read either.
            let seconds = |field: &str| {
                object.get(field).and_then(Value::as_i64).or_else(|| {
                    items
                        .iter()
                        .find_map(|item| item.get(field).and_then(Value::as_i64))
                })
            };
            let period =
                unix(seconds("current_period_start")).zip(unix(seconds("current_period_end")));
            // Each item's price; endpoints pinned to API versions before
            // 2020-08-27 send `plan` instead.
            let price_ids = items
                .iter()
                .filter_map(|item| id_of(item, "price").or_else(|| id_of(item, "plan")))
                .map(str::to_string)
                .collect();
            Effect::Subscription(Subscription {
                customer: customer()?,
                id: required(object, "/id", "data.object.id")?,
                status,
                price_ids,
                period,
            })
        }
        "checkout.session.completed" => {
            let reference = text(object, "/client_reference_id")
                .or_else(|| text(object, "/metadata/tenant_id"));
            match reference {
                Some(reference) => Effect::Checkout {
                    reference: reference.to_string(),
                    customer_id: customer()?.id,
                    subscription_id: id_of(object, "subscription").map(str::to_string),
                },
                // A checkout that names no tenant: nothing to link.
                None => Effect::Ignored,
            }
        }
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
            reference: text(data, "/custom_data/tenant_id").map(str::to_string),
        })
    };
    let period = |field: &str| {
        rfc3339(text(data, &format!("/{field}/starts_at")))
            .zip(rfc3339(text(data, &format!("/{field}/ends_at"))))
    };
    let payment = |status| -> Result<Effect, ParseError> {
        Ok(Effect::Payment(Payment {
            customer: customer()?,
            status,
            reason: text(data, "/origin").map(str::to_string),
            subscription_id: text(data, "/subscription_id").map(str::to_string),
            period: period("billing_period"),
        }))
    };
    let effect = match kind.as_str() {
        "transaction.completed" | "transaction.paid" => payment(TenantStatus::Active)?,
        "transaction.payment_failed" | "transaction.past_due" => payment(TenantStatus::PastDue)?,
        kind if kind.starts_with("subscription.") => {
            let status = match text(data, "/status").ok_or(ParseError::Missing("data.status"))? {
                "active" | "trialing" => TenantStatus::Active,
                "past_due" | "paused" => TenantStatus::PastDue,
                "canceled" => TenantStatus::Canceled,
                _ => return Err(ParseError::Invalid("data.status")),
            };
            let price_ids = data
                .get("items")
                .and_then(Value::as_array)
                .map_or(&[][..], Vec::as_slice)
                .iter()
                .filter_map(|item| text(item, "/price/id").or_else(|| text(item, "/price_id")))
                .map(str::to_string)
                .collect();
            Effect::Subscription(Subscription {
                customer: customer()?,
                id: required(data, "/id", "data.id")?,
                status,
                price_ids,
                period: period("current_billing_period"),
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
            reference: None,
        }
    }

    fn payment(event: Event) -> Payment {
        match event.effect {
            Effect::Payment(payment) => payment,
            other => panic!("not a payment: {other:?}"),
        }
    }

    fn subscription(event: Event) -> Subscription {
        match event.effect {
            Effect::Subscription(sub) => sub,
            other => panic!("not a subscription: {other:?}"),
        }
    }

    #[test]
    fn stripe_payments_name_their_customer_reason_subscription_and_period() {
        let event = stripe("invoice.paid", json!({"customer": "cus_1"})).unwrap();
        assert_eq!(
            (event.id.as_str(), event.occurred_at.timestamp()),
            ("evt_1", 1_700_000_000)
        );
        assert_eq!(
            payment(event),
            Payment {
                customer: customer("cus_1"),
                status: TenantStatus::Active,
                reason: None,
                subscription_id: None,
                period: None
            }
        );
        let expanded = payment(
            stripe(
                "charge.failed",
                json!({"customer": {"id": "cus_2", "object": "customer"}}),
            )
            .unwrap(),
        );
        assert_eq!(
            (expanded.customer, expanded.status),
            (customer("cus_2"), TenantStatus::PastDue)
        );
        assert_eq!(
            payment(
                stripe(
                    "invoice.payment_action_required",
                    json!({"customer": "cus_3"})
                )
                .unwrap()
            )
            .status,
            TenantStatus::ActionRequired
        );
        assert_eq!(
            stripe("invoice.paid", json!({})),
            Err(ParseError::Missing("data.object.customer"))
        );
        // A renewal (API 2025-03-31): subscription under parent, the new
        // period on the licensed line, the previous one on the metered line
        // and on the invoice itself, and a one-off item with no period.
        let renewal = payment(
            stripe(
                "invoice.payment_succeeded",
                json!({"customer": "cus_1", "billing_reason": "subscription_cycle",
                       "period_start": 100, "period_end": 200,
                       "parent": {"subscription_details": {"subscription": "sub_1"}},
                       "lines": {"data": [{"period": {"start": 100, "end": 200}},
                                          {"period": {"start": 200, "end": 300}},
                                          {"period": {"start": 250, "end": 250}}]}}),
            )
            .unwrap(),
        );
        assert_eq!(renewal.reason.as_deref(), Some("subscription_cycle"));
        assert_eq!(renewal.subscription_id.as_deref(), Some("sub_1"));
        let (start, end) = renewal.period.unwrap();
        assert_eq!((start.timestamp(), end.timestamp()), (200, 300));
        // Older API versions name the subscription on the invoice.
        let older = payment(
            stripe(
                "invoice.payment_failed",
                json!({"customer": "cus_1", "subscription": "sub_2"}),
            )
            .unwrap(),
        );
        assert_eq!(older.subscription_id.as_deref(), Some("sub_2"));
    }

    #[test]
    fn stripe_subscriptions_carry_every_price_period_and_status() {
        let object = json!({
            "id": "sub_1", "customer": "cus_1", "status": "active", "metadata": {"tenant_id": "acme"},
            "items": {"data": [
                {"price": {"id": "price_metered"}},
                {"price": {"id": "price_pro"}, "current_period_start": 1_700_000_000, "current_period_end": 1_702_592_000}]}
        });
        let sub = subscription(stripe("customer.subscription.updated", object).unwrap());
        assert_eq!(sub.id, "sub_1");
        assert_eq!(sub.customer.reference.as_deref(), Some("acme"));
        assert_eq!(sub.price_ids, ["price_metered", "price_pro"]);
        assert_eq!(sub.status, TenantStatus::Active);
        let (start, end) = sub.period.unwrap();
        assert_eq!(
            (start.timestamp(), end.timestamp()),
            (1_700_000_000, 1_702_592_000)
        );

        // Older API versions keep the period on the subscription itself,
        // and before 2020-08-27 the item names a plan.
        let older = json!({"id": "sub_1", "customer": "cus_1", "status": "past_due",
                           "current_period_start": 1, "current_period_end": 2,
                           "items": {"data": [{"plan": {"id": "plan_pro"}}]}});
        let sub = subscription(stripe("customer.subscription.created", older).unwrap());
        assert_eq!(
            (
                sub.status,
                sub.price_ids,
                sub.period.map(|p| p.1.timestamp())
            ),
            (TenantStatus::PastDue, vec!["plan_pro".to_string()], Some(2))
        );

        let deleted = json!({"id": "sub_1", "customer": "cus_1", "status": "active"});
        let sub = subscription(stripe("customer.subscription.deleted", deleted).unwrap());
        assert_eq!(sub.status, TenantStatus::Canceled);
        assert!(sub.price_ids.is_empty());
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
            Effect::Checkout {
                reference: "acme".into(),
                customer_id: "cus_1".into(),
                subscription_id: Some("sub_1".into())
            }
        );
        let by_metadata = stripe(
            "checkout.session.completed",
            json!({"metadata": {"tenant_id": "acme"}, "customer": "cus_1"}),
        )
        .unwrap();
        assert!(
            matches!(by_metadata.effect, Effect::Checkout { reference, .. } if reference == "acme")
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
            json!({"customer_id": "ctm_1", "custom_data": {"tenant_id": "acme"}, "origin": "subscription_recurring",
                   "subscription_id": "sub_01",
                   "billing_period": {"starts_at": "2024-04-01T00:00:00Z", "ends_at": "2024-05-01T00:00:00Z"}}),
        )
        .unwrap();
        assert_eq!(paid.occurred_at.timestamp(), 1_712_917_129);
        let paid = payment(paid);
        assert_eq!(
            paid.customer,
            Customer {
                id: "ctm_1".into(),
                reference: Some("acme".into())
            }
        );
        assert_eq!(
            (paid.reason.as_deref(), paid.subscription_id.as_deref()),
            (Some("subscription_recurring"), Some("sub_01"))
        );
        assert_eq!(paid.period.unwrap().0.timestamp(), 1_711_929_600);

        let data = json!({"id": "sub_01", "customer_id": "ctm_1", "status": "canceled",
                          "items": [{"price": {"id": "pri_meter"}}, {"price": {"id": "pri_1"}}],
                          "current_billing_period": {"starts_at": "2024-04-01T00:00:00Z", "ends_at": "2024-05-01T00:00:00Z"}});
        let sub = subscription(paddle("subscription.canceled", data).unwrap());
        assert_eq!(
            (sub.status, sub.price_ids),
            (
                TenantStatus::Canceled,
                vec!["pri_meter".into(), "pri_1".into()]
            )
        );
        assert!(sub.period.is_some());
        assert_eq!(
            payment(
                paddle(
                    "transaction.payment_failed",
                    json!({"customer_id": "ctm_1"})
                )
                .unwrap()
            )
            .status,
            TenantStatus::PastDue
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
