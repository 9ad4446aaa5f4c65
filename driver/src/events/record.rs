//! What tally keeps of a provider event (`tally.provider_events.payload`):
//! enough to understand it later — its id, type and time, and the ids of
//! the objects it names — and nothing else. Customer emails, names,
//! addresses and amounts stay with the provider.
//!
//! The record keeps the event's own layout, so it reads as the event with
//! everything else removed.

use serde_json::{Map, Value};

/// The ids a Stripe object may name, by field: a plain id, or an expanded
/// object whose `id` is taken.
const STRIPE_IDS: &[&str] = &[
    "customer",
    "subscription",
    "invoice",
    "payment_intent",
    "charge",
    "client_reference_id",
];

/// The ids a Paddle entity may name.
const PADDLE_IDS: &[&str] = &[
    "customer_id",
    "subscription_id",
    "transaction_id",
    "address_id",
    "business_id",
];

/// A Stripe event, reduced: `{"id", "type", "created", "api_version",
/// "data": {"object": {"id", "object", <ids>, "metadata": {"tenant_id"}}}}`.
pub fn stripe_record(event: &Value) -> Value {
    let mut record = pick(event, &["id", "type", "created", "api_version"]);
    if let Some(object) = event.pointer("/data/object") {
        let mut kept = pick(object, &["id", "object", "billing_reason", "status"]);
        for field in STRIPE_IDS {
            let id = object.get(*field).and_then(|value| match value {
                Value::String(id) => Some(id.clone()),
                expanded => expanded.get("id")?.as_str().map(str::to_string),
            });
            if let Some(id) = id {
                kept.insert(field.to_string(), Value::String(id));
            }
        }
        // Since API version 2025-03-31 an invoice names its subscription here.
        if let Some(id) = object
            .pointer("/parent/subscription_details/subscription")
            .and_then(Value::as_str)
        {
            kept.entry("subscription").or_insert(id.into());
        }
        insert_tenant_hint(&mut kept, object.pointer("/metadata/tenant_id"), "metadata");
        let mut data = Map::new();
        data.insert("object".into(), Value::Object(kept));
        record.insert("data".into(), Value::Object(data));
    }
    Value::Object(record)
}

/// A Paddle event, reduced: `{"event_id", "event_type", "occurred_at",
/// "notification_id", "data": {"id", "status", <ids>, "custom_data":
/// {"tenant_id"}}}`.
pub fn paddle_record(event: &Value) -> Value {
    let mut record = pick(
        event,
        &["event_id", "event_type", "occurred_at", "notification_id"],
    );
    if let Some(data) = event.get("data") {
        let mut kept = pick(data, &["id", "status", "origin"]);
        kept.extend(pick(data, PADDLE_IDS));
        insert_tenant_hint(
            &mut kept,
            data.pointer("/custom_data/tenant_id"),
            "custom_data",
        );
        record.insert("data".into(), Value::Object(kept));
    }
    Value::Object(record)
}

/// The fields of `value` named in `fields` that are strings or numbers.
fn pick(value: &Value, fields: &[&str]) -> Map<String, Value> {
    fields
        .iter()
        .filter_map(|field| {
            let kept = value
                .get(*field)
                .filter(|v| v.is_string() || v.is_number())?;
            Some((field.to_string(), kept.clone()))
        })
        .collect()
}

/// The tenant an event names (tally's own id, set by the app), under `parent`.
fn insert_tenant_hint(kept: &mut Map<String, Value>, tenant: Option<&Value>, parent: &str) {
    if let Some(tenant) = tenant.filter(|tenant| tenant.is_string()) {
        let mut hint = Map::new();
        hint.insert("tenant_id".into(), tenant.clone());
        kept.insert(parent.into(), Value::Object(hint));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_stripe_event_keeps_its_ids_and_loses_the_customer() {
        let event = json!({
            "id": "evt_1", "object": "event", "type": "invoice.paid", "created": 1_700_000_000,
            "api_version": "2025-03-31.basil", "livemode": false,
            "data": {"object": {
                "id": "in_1", "object": "invoice", "billing_reason": "subscription_cycle",
                "customer": "cus_1", "customer_email": "jane@example.com", "customer_name": "Jane Doe",
                "customer_address": {"line1": "1 Main St", "city": "Springfield"},
                "amount_paid": 4200, "currency": "usd", "charge": {"id": "ch_1", "amount": 4200},
                "parent": {"subscription_details": {"subscription": "sub_1"}},
                "metadata": {"tenant_id": "acme", "note": "vip"},
                "lines": {"data": [{"description": "Pro plan"}]}
            }}
        });
        assert_eq!(
            stripe_record(&event),
            json!({
                "id": "evt_1", "type": "invoice.paid", "created": 1_700_000_000,
                "api_version": "2025-03-31.basil",
                "data": {"object": {
                    "id": "in_1", "object": "invoice", "billing_reason": "subscription_cycle",
                    "customer": "cus_1", "charge": "ch_1", "subscription": "sub_1",
                    "metadata": {"tenant_id": "acme"}
                }}
            })
        );
        let checkout = json!({"id": "evt_2", "type": "checkout.session.completed", "created": 1,
            "data": {"object": {"id": "cs_1", "object": "checkout.session", "client_reference_id": "acme",
                "customer": {"id": "cus_1", "email": "jane@example.com"}, "subscription": "sub_1",
                "customer_details": {"email": "jane@example.com", "name": "Jane Doe"}}}});
        let record = stripe_record(&checkout).to_string();
        assert!(record.contains("cs_1") && record.contains("\"client_reference_id\":\"acme\""));
        assert!(
            !record.contains("jane") && !record.contains("Jane"),
            "{record}"
        );
    }

    #[test]
    fn a_paddle_event_keeps_its_ids_and_loses_the_customer() {
        let event = json!({
            "event_id": "evt_01", "event_type": "transaction.completed",
            "occurred_at": "2024-04-12T10:18:49.621022Z", "notification_id": "ntf_01",
            "data": {
                "id": "txn_01", "status": "completed", "origin": "subscription_recurring",
                "customer_id": "ctm_01", "subscription_id": "sub_01", "address_id": "add_01",
                "customer": {"email": "jane@example.com", "name": "Jane Doe"},
                "details": {"totals": {"total": "4200"}}, "custom_data": {"tenant_id": "acme", "x": "y"},
                "billing_details": {"payment_terms": {"interval": "month"}}
            }
        });
        assert_eq!(
            paddle_record(&event),
            json!({
                "event_id": "evt_01", "event_type": "transaction.completed",
                "occurred_at": "2024-04-12T10:18:49.621022Z", "notification_id": "ntf_01",
                "data": {
                    "id": "txn_01", "status": "completed", "origin": "subscription_recurring",
                    "customer_id": "ctm_01", "subscription_id": "sub_01", "address_id": "add_01",
                    "custom_data": {"tenant_id": "acme"}
                }
            })
        );
    }
}
