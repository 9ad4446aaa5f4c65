//! `POST /webhooks/stripe` and `POST /webhooks/paddle`: verify the signature
//! on the raw body, then parse, then lock the event and apply its effect in
//! one transaction. Duplicates are answered 2xx and change nothing.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use serde_json::{json, Value};

use tally_rules::Provider;

use super::{ApiError, AppState, RawBody};
use crate::db::events::{self as db, Outcome};
use crate::events;
use crate::signature;

pub async fn stripe(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    receive(&state, Provider::Stripe, &headers, &body).await
}

pub async fn paddle(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Json<Value>, ApiError> {
    receive(&state, Provider::Paddle, &headers, &body).await
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

async fn receive(
    state: &AppState,
    provider: Provider,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Json<Value>, ApiError> {
    let name = provider.as_str();
    let rejected = |code: &'static str, message: String| {
        state.metrics.webhook(name, "unknown", "rejected");
        tracing::warn!(provider = name, reason = %message, "webhook rejected");
        ApiError::bad_request(code, message)
    };
    let (secrets, header_name, verify): (_, _, fn(_, _, _, _) -> _) = match provider {
        Provider::Stripe => (
            &state.stripe_secrets,
            "stripe-signature",
            signature::verify_stripe,
        ),
        Provider::Paddle => (
            &state.paddle_secrets,
            "paddle-signature",
            signature::verify_paddle,
        ),
    };
    if secrets.is_empty() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "webhook_not_configured",
            format!("no {name} webhook secret is configured on this server"),
        ));
    }
    let header = headers
        .get(header_name)
        .map(|value| value.to_str().unwrap_or(""));
    verify(header, body, secrets, now())
        .map_err(|error| rejected("invalid_signature", error.to_string()))?;

    let payload =
        events::json(body).map_err(|error| rejected("malformed_event", error.to_string()))?;
    let event = match provider {
        Provider::Stripe => events::stripe_event(&payload),
        Provider::Paddle => events::paddle_event(&payload),
    }
    .map_err(|error| rejected("malformed_event", error.to_string()))?;

    // Only ids and times are stored: the rest (customer details, amounts)
    // is the provider's.
    let record = match provider {
        Provider::Stripe => events::stripe_record(&payload),
        Provider::Paddle => events::paddle_record(&payload),
    };
    let mut client = state.client().await?;
    let outcome = db::apply(&mut client, &event, &record, &state.billing)
        .await
        .map_err(|error| {
            ApiError::from_db(
                &format!("applying {name} event {} ({})", event.id, event.kind),
                error,
            )
        })?;
    let label = outcome.label();
    state
        .metrics
        .webhook(name, events::type_label(&event.kind), label);
    tracing::info!(provider = name, event_id = %event.id, event_type = %event.kind, outcome = label, "webhook");
    match outcome {
        // Not recorded: the provider retries, and the retry is processed
        // once the customer is linked.
        Outcome::Deferred { why } => Err(ApiError::unavailable("not_ready", why, 60)),
        Outcome::Conflict | Outcome::Unlinked => {
            tracing::warn!(provider = name, event_id = %event.id, outcome = label,
                "webhook acknowledged without effect: see tallyd links");
            Ok(Json(json!({"status": label})))
        }
        _ => Ok(Json(json!({"status": label}))),
    }
}
