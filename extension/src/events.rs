//! Provider events: `attempt_event_lock` (webhook idempotency) and
//! `accept_subscription_event` (the order of subscription events).

use pgrx::prelude::*;
use pgrx::JsonB;

use crate::args;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::{self, Provider};
use crate::spi::{self, Statement, TEXT, TIMESTAMPTZ};

/// A concurrent duplicate waits on the primary key until the first
/// transaction ends, then inserts nothing (or its row, if the first rolled
/// back and took its lock with it).
static LOCK_EVENT: Statement = Statement {
    sql: "INSERT INTO tally.provider_events (provider, event_id, event_type, payload)
          VALUES ($1, $2, $3, $4)
              ON CONFLICT ON CONSTRAINT provider_events_pkey DO NOTHING
       RETURNING true",
    params: &[TEXT, TEXT, TEXT, spi::JSONB],
};

static LOCK_STRIPE_EVENT_AT: Statement = Statement {
    sql: "SELECT stripe_subscription_event_at FROM tally.tenants WHERE tenant_id = $1
             FOR NO KEY UPDATE",
    params: &[TEXT],
};

static LOCK_PADDLE_EVENT_AT: Statement = Statement {
    sql: "SELECT paddle_subscription_event_at FROM tally.tenants WHERE tenant_id = $1
             FOR NO KEY UPDATE",
    params: &[TEXT],
};

static SET_STRIPE_EVENT_AT: Statement = Statement {
    sql: "UPDATE tally.tenants SET stripe_subscription_event_at = $2 WHERE tenant_id = $1",
    params: &[TEXT, TIMESTAMPTZ],
};

static SET_PADDLE_EVENT_AT: Statement = Statement {
    sql: "UPDATE tally.tenants SET paddle_subscription_event_at = $2 WHERE tenant_id = $1",
    params: &[TEXT, TIMESTAMPTZ],
};

const EVENT_HINT: &str = "pass the provider (stripe, paddle) and its event id";

/// The largest payload kept with an event, in bytes of its JSON text. A
/// larger one is not kept (the event is still locked): payloads are for
/// reading an event later, not an archive of everything a provider sends.
pub const MAX_PAYLOAD_BYTES: usize = 16 * 1024;

/// Webhook idempotency: lock first, then act, in one transaction. True for
/// the first caller only; a retry of an event whose transaction rolled back
/// gets true again. A payload larger than [`MAX_PAYLOAD_BYTES`] is not kept.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn attempt_event_lock(
    provider: Option<&str>,
    event_id: Option<&str>,
    event_type: default!(Option<&str>, NULL),
    payload: default!(Option<JsonB>, NULL),
) -> bool {
    let provider = args::id("provider", provider)
        .map_err(|failure| failure.hint(EVENT_HINT))
        .or_raise();
    let event_id = args::id("event_id", event_id)
        .map_err(|failure| failure.hint(EVENT_HINT))
        .or_raise();
    let event_type =
        event_type.map(|event_type| args::id("event_type", Some(event_type)).or_raise());
    let payload = payload.filter(|payload| {
        serde_json::to_string(&payload.0).map_or(0, |text| text.len()) <= MAX_PAYLOAD_BYTES
    });
    Spi::connect_mut(|client| {
        let args = [
            provider.into(),
            event_id.into(),
            event_type.into(),
            payload.into(),
        ];
        spi::first_row(client, &LOCK_EVENT, &args).is_some()
    })
}

/// Providers deliver subscription events out of order. Called in the
/// event's transaction, before its effect: locks the tenant row and answers
/// whether the event is to be applied ([`rules::is_current_subscription_event`]),
/// remembering when it happened if so.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn accept_subscription_event(
    tenant_id: Option<&str>,
    provider: Option<&str>,
    occurred_at: Option<TimestampWithTimeZone>,
) -> bool {
    const HINT: &str = "pass the tenant, the provider and when the event happened";
    let tenant_id = args::id("tenant_id", tenant_id)
        .map_err(|failure| failure.hint(HINT))
        .or_raise();
    let provider_name = args::id("provider", provider)
        .map_err(|failure| failure.hint(HINT))
        .or_raise();
    let occurred_at = occurred_at
        .ok_or_else(|| errors::null_argument("occurred_at").hint(HINT))
        .or_raise();
    let (lock, set) = match Provider::parse(provider_name) {
        Some(Provider::Stripe) => (&LOCK_STRIPE_EVENT_AT, &SET_STRIPE_EVENT_AT),
        Some(Provider::Paddle) => (&LOCK_PADDLE_EVENT_AT, &SET_PADDLE_EVENT_AT),
        None => errors::unknown_provider(provider_name).raise(),
    };
    Spi::connect_mut(|client| {
        let Some(row) = spi::first_row(client, lock, &[tenant_id.into()]) else {
            errors::tenant_not_found(tenant_id).raise()
        };
        let last_applied = spi::get_micros(&row, 1);
        if !rules::is_current_subscription_event(last_applied, occurred_at.into_inner()) {
            return false;
        }
        spi::run(client, set, &[tenant_id.into(), occurred_at.into()]);
        true
    })
}
