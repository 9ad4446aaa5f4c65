//! Billing effects: what a provider event does to a tenant, one function
//! per provider-neutral effect — `apply_payment`, `apply_subscription`,
//! `apply_checkout` — called in the event's transaction after
//! `attempt_event_lock`, by tallyd or any other webhook handler. Each
//! returns what became of the event (`applied`, `stale`, `not_linked`,
//! `ignored`, `conflict`) and records it, with a note, on the event's row in
//! `tally.provider_events`. The decisions are the rules'
//! ([`rules::billing`]); `checkout_reference` signs the tenant references
//! apps put into checkouts.

use hmac::{Hmac, Mac};
use pgrx::prelude::*;
use sha2::Sha256;

use crate::args;
use crate::errors::{self, OrRaise, Raise};
use crate::rules::billing::{self, Authority, ConflictReason, LinkDecision, Outcome, PlanChoice};
use crate::rules::{Micros, Provider, TenantStatus};
use crate::spi::{self, Statement, BOOL, TEXT, TEXT_ARRAY, TIMESTAMPTZ};
use pgrx::spi::SpiClient;

/// The tenant a provider's customer or subscription is linked to.
static OWNER: Statement = Statement {
    sql: "SELECT tenant_id FROM tally.provider_links
           WHERE provider = $1 AND object = $2 AND object_id = $3",
    params: &[TEXT, TEXT, TEXT],
};

static LOCK_STRIPE_TENANT: Statement = Statement {
    sql: "SELECT period_start, stripe_customer_id, stripe_subscription_id, plan_id
            FROM tally.tenants WHERE tenant_id = $1 FOR NO KEY UPDATE",
    params: &[TEXT],
};

static LOCK_PADDLE_TENANT: Statement = Statement {
    sql: "SELECT period_start, paddle_customer_id, paddle_subscription_id, plan_id
            FROM tally.tenants WHERE tenant_id = $1 FOR NO KEY UPDATE",
    params: &[TEXT],
};

/// Fills in what is not linked yet, never replaces (the rules decided).
static LINK_STRIPE: Statement = Statement {
    sql: "UPDATE tally.tenants
             SET stripe_customer_id = coalesce(stripe_customer_id, $2),
                 stripe_subscription_id = coalesce(stripe_subscription_id, $3)
           WHERE tenant_id = $1",
    params: &[TEXT, TEXT, TEXT],
};

static LINK_PADDLE: Statement = Statement {
    sql: "UPDATE tally.tenants
             SET paddle_customer_id = coalesce(paddle_customer_id, $2),
                 paddle_subscription_id = coalesce(paddle_subscription_id, $3)
           WHERE tenant_id = $1",
    params: &[TEXT, TEXT, TEXT],
};

/// A canceled subscription lets go of its tenant, so the next one can link.
static UNLINK_STRIPE_SUBSCRIPTION: Statement = Statement {
    sql: "UPDATE tally.tenants SET stripe_subscription_id = NULL
           WHERE tenant_id = $1 AND stripe_subscription_id = $2",
    params: &[TEXT, TEXT],
};

static UNLINK_PADDLE_SUBSCRIPTION: Statement = Statement {
    sql: "UPDATE tally.tenants SET paddle_subscription_id = NULL
           WHERE tenant_id = $1 AND paddle_subscription_id = $2",
    params: &[TEXT, TEXT],
};

static STRIPE_PLANS: Statement = Statement {
    sql: "SELECT plan_id FROM tally.plans WHERE stripe_price_id = ANY ($1)",
    params: &[TEXT_ARRAY],
};

static PADDLE_PLANS: Statement = Statement {
    sql: "SELECT plan_id FROM tally.plans WHERE paddle_price_id = ANY ($1)",
    params: &[TEXT_ARRAY],
};

static DEFAULT_PLAN: Statement = Statement {
    sql: "SELECT plan_id FROM tally.plans WHERE is_default",
    params: &[],
};

static START_PERIOD: Statement = Statement {
    sql: "SELECT tally.start_period($1, $2, $3)",
    params: &[TEXT, TIMESTAMPTZ, TIMESTAMPTZ],
};

static SET_STATUS: Statement = Statement {
    sql: "SELECT tally.set_tenant_status($1, $2)",
    params: &[TEXT, TEXT],
};

/// The provider has charged for the plan: switch even over its limits.
static CHANGE_PLAN: Statement = Statement {
    sql: "SELECT (tally.change_plan($1, $2, $3)).valid",
    params: &[TEXT, TEXT, BOOL],
};

static ACCEPT_EVENT: Statement = Statement {
    sql: "SELECT tally.accept_subscription_event($1, $2, $3)",
    params: &[TEXT, TEXT, TIMESTAMPTZ],
};

static RECORD_CONFLICT: Statement = Statement {
    sql: "INSERT INTO tally.link_conflicts
              (provider, event_id, customer_id, subscription_id, named_tenant,
               existing_tenant, existing_customer, reason)
          VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    params: &[TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT, TEXT],
};

static RECORD_OUTCOME: Statement = Statement {
    sql: "UPDATE tally.provider_events SET outcome = $3, note = $4
           WHERE provider = $1 AND event_id = $2",
    params: &[TEXT, TEXT, TEXT, TEXT],
};

static SECRET: Statement = Statement {
    sql: "SELECT secret FROM tally.reference_secret",
    params: &[],
};

static TENANT_EXISTS: Statement = Statement {
    sql: "SELECT true FROM tally.tenants WHERE tenant_id = $1",
    params: &[TEXT],
};

/// The event being applied.
struct Event<'a> {
    provider: Provider,
    event_id: &'a str,
}

impl Event<'_> {
    fn provider(&self) -> &'static str {
        self.provider.as_str()
    }
}

fn provider(name: Option<&str>) -> Provider {
    let name = args::id("provider", name).or_raise();
    Provider::parse(name).unwrap_or_else(|| errors::unknown_provider(name).raise())
}

fn status(name: Option<&str>) -> TenantStatus {
    let name = args::id("status", name).or_raise();
    TenantStatus::parse(name)
        .unwrap_or_else(|| errors::unknown_tenant_status(None, Some(name)).raise())
}

fn optional_id<'a>(name: &str, value: Option<&'a str>) -> Option<&'a str> {
    value.map(|value| args::id(name, Some(value)).or_raise())
}

/// Record what became of the event on its row, and return its name.
fn finish(client: &mut SpiClient<'_>, event: &Event<'_>, outcome: Outcome, note: &str) -> String {
    spi::run(
        client,
        &RECORD_OUTCOME,
        &[
            event.provider().into(),
            event.event_id.into(),
            outcome.as_str().into(),
            note.into(),
        ],
    );
    outcome.as_str().to_string()
}

fn owner(client: &mut SpiClient<'_>, provider: Provider, object: &str, id: &str) -> Option<String> {
    spi::first_row(
        client,
        &OWNER,
        &[provider.as_str().into(), object.into(), id.into()],
    )
    .and_then(|row| spi::get::<String>(&row, 1))
}

/// A tenant's row, locked: its period, and its links for one provider.
struct Tenant {
    period_start: Option<Micros>,
    customer: Option<String>,
    subscription: Option<String>,
    plan_id: String,
}

fn lock_tenant(client: &mut SpiClient<'_>, provider: Provider, tenant_id: &str) -> Option<Tenant> {
    if tenant_id.is_empty() || tenant_id.len() > errors::MAX_ID_BYTES {
        return None;
    }
    let lock = match provider {
        Provider::Stripe => &LOCK_STRIPE_TENANT,
        Provider::Paddle => &LOCK_PADDLE_TENANT,
    };
    let row = spi::first_row(client, lock, &[tenant_id.into()])?;
    Some(Tenant {
        period_start: spi::get_micros(&row, 1),
        customer: spi::get(&row, 2),
        subscription: spi::get(&row, 3),
        plan_id: spi::get(&row, 4).unwrap_or_default(),
    })
}

type HmacSha256 = Hmac<Sha256>;

fn reference_mac(client: &mut SpiClient<'_>, tenant: &str) -> HmacSha256 {
    let secret = spi::first_row(client, &SECRET, &[])
        .and_then(|row| spi::get::<Vec<u8>>(&row, 1))
        .unwrap_or_else(|| errors::bug("tally.reference_secret is empty".into()));
    let mut mac = HmacSha256::new_from_slice(&secret)
        .unwrap_or_else(|_| errors::bug("HMAC takes a key of any length".into()));
    mac.update(billing::reference_message(tenant).as_bytes());
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A value from an event as `tally.link_conflicts` keeps it: at most 255
/// bytes, cut at a character boundary.
fn kept(value: &str) -> &str {
    let mut end = value.len().min(errors::MAX_ID_BYTES);
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    &value[..end]
}

/// What an event asks to link.
struct LinkAsk<'a> {
    reference: &'a str,
    customer: &'a str,
    subscription: Option<&'a str>,
    trust_unsigned: bool,
}

/// Link the customer (and subscription) to the tenant the reference names,
/// if the rules allow; else record the conflict. Ok: the tenant.
fn link(
    client: &mut SpiClient<'_>,
    event: &Event<'_>,
    ask: &LinkAsk<'_>,
) -> Result<String, String> {
    let parsed = billing::parse_reference(ask.reference);
    let named = match &parsed {
        billing::Reference::Plain(tenant) => tenant.to_string(),
        billing::Reference::Signed { tenant, .. } => tenant.clone(),
        billing::Reference::Malformed => ask.reference.to_string(),
    };
    let mut verify = |tenant: &str, mac_hex: &str| {
        unhex(mac_hex).is_some_and(|tag| {
            reference_mac(client, tenant)
                .verify_truncated_left(&tag)
                .is_ok()
        })
    };
    let trusted = billing::trusted_tenant(&parsed, ask.trust_unsigned, &mut verify);
    let (tenant, reason, existing_tenant, existing_customer) = match trusted {
        Err(reason) => (named, Some(reason), None, None),
        Ok(tenant) => {
            let row = lock_tenant(client, event.provider, &tenant);
            let customer_owner = owner(client, event.provider, "customer", ask.customer);
            let subscription_owner = ask
                .subscription
                .and_then(|sub| owner(client, event.provider, "subscription", sub));
            let request = billing::LinkRequest {
                tenant: &tenant,
                customer: ask.customer,
                subscription: ask.subscription,
                tenant_customer: row.as_ref().map(|row| row.customer.as_deref()),
                tenant_subscription: row.as_ref().and_then(|row| row.subscription.as_deref()),
                customer_owner: customer_owner.as_deref(),
                subscription_owner: subscription_owner.as_deref(),
            };
            match billing::link_decision(&request) {
                LinkDecision::Link {
                    customer,
                    subscription,
                } => {
                    if customer || subscription {
                        let statement = match event.provider {
                            Provider::Stripe => &LINK_STRIPE,
                            Provider::Paddle => &LINK_PADDLE,
                        };
                        let customer = customer.then_some(ask.customer);
                        let subscription = ask.subscription.filter(|_| subscription);
                        spi::run(
                            client,
                            statement,
                            &[tenant.as_str().into(), customer.into(), subscription.into()],
                        );
                    }
                    return Ok(tenant);
                }
                LinkDecision::Conflict(reason) => {
                    let other = customer_owner
                        .filter(|owner| *owner != tenant)
                        .or(subscription_owner.filter(|owner| *owner != tenant));
                    let existing_customer = row
                        .and_then(|row| row.customer)
                        .filter(|existing| existing != ask.customer);
                    (tenant, Some(reason), other, existing_customer)
                }
            }
        }
    };
    let reason = reason.unwrap_or(ConflictReason::NoSuchTenant);
    spi::run(
        client,
        &RECORD_CONFLICT,
        &[
            event.provider().into(),
            event.event_id.into(),
            ask.customer.into(),
            ask.subscription.into(),
            kept(&tenant).into(),
            existing_tenant.as_deref().into(),
            existing_customer.as_deref().into(),
            reason.as_str().into(),
        ],
    );
    Err(format!(
        "{} customer {} not linked to tenant {}: {}",
        event.provider(),
        errors::quoted(ask.customer),
        errors::quoted(&tenant),
        reason.as_str()
    ))
}

/// The tenant the customer is linked to; or, when the event names a tenant
/// (a reference), that tenant, linked now if the rules allow. Err: the
/// outcome and its note.
fn resolve(
    client: &mut SpiClient<'_>,
    event: &Event<'_>,
    customer: &str,
    subscription: Option<&str>,
    reference: Option<&str>,
    trust_unsigned: bool,
) -> Result<String, (Outcome, String)> {
    if let Some(tenant) = owner(client, event.provider, "customer", customer) {
        return Ok(tenant);
    }
    let Some(reference) = reference else {
        return Err((
            Outcome::NotLinked,
            format!(
                "{} customer {} is not linked to a tenant",
                event.provider(),
                errors::quoted(customer)
            ),
        ));
    };
    let ask = LinkAsk {
        reference,
        customer,
        subscription,
        trust_unsigned,
    };
    link(client, event, &ask).map_err(|note| (Outcome::Conflict, note))
}

fn set_status(client: &mut SpiClient<'_>, tenant: &str, status: TenantStatus) {
    spi::run(
        client,
        &SET_STATUS,
        &[tenant.into(), status.as_str().into()],
    );
}

/// A payment: `status` active for one that succeeded, past_due or
/// action_required for one that did not; `reason` the provider's word for
/// why it was billed (Stripe `billing_reason`, Paddle `origin`), which tells
/// a renewal; the period it pays for. Only a renewal for a newer period
/// starts it (consumables back to 0); a payment of another subscription
/// than the tenant's, or a successful one that is not a renewal, changes
/// nothing.
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn apply_payment(
    provider: Option<&str>,
    event_id: Option<&str>,
    customer_id: Option<&str>,
    status: Option<&str>,
    reason: default!(Option<&str>, NULL),
    subscription_id: default!(Option<&str>, NULL),
    period_start: default!(Option<TimestampWithTimeZone>, NULL),
    period_end: default!(Option<TimestampWithTimeZone>, NULL),
    reference: default!(Option<&str>, NULL),
    trust_unsigned: default!(Option<bool>, true),
) -> String {
    let event = Event {
        provider: self::provider(provider),
        event_id: args::id("event_id", event_id).or_raise(),
    };
    let customer = args::id("customer_id", customer_id).or_raise();
    let status = self::status(status);
    let subscription = optional_id("subscription_id", subscription_id);
    let period = period_start.map(|start| args::period(Some(start), period_end).or_raise());
    let trust_unsigned = trust_unsigned.unwrap_or(false);
    let renewal = billing::is_renewal(event.provider, reason);
    Spi::connect_mut(|client| {
        let tenant = match resolve(
            client,
            &event,
            customer,
            subscription,
            reference,
            trust_unsigned,
        ) {
            Ok(tenant) => tenant,
            Err((outcome, note)) => return finish(client, &event, outcome, &note),
        };
        let Some(row) = lock_tenant(client, event.provider, &tenant) else {
            return finish(client, &event, Outcome::NotLinked, "the tenant is gone");
        };
        if !billing::payment_concerns_tenant(row.subscription.as_deref(), subscription) {
            let note = format!(
                "pays for subscription {}, not the tenant's {}",
                errors::quoted(subscription.unwrap_or_default()),
                errors::quoted(row.subscription.as_deref().unwrap_or_default())
            );
            return finish(client, &event, Outcome::Ignored, &note);
        }
        let start = period.map(|(start, _)| start);
        match billing::payment_effect(status, renewal, start, row.period_start) {
            billing::PaymentEffect::StartPeriod => {
                let (start, end) =
                    period.unwrap_or_else(|| errors::bug("a renewal without its period".into()));
                spi::run(
                    client,
                    &START_PERIOD,
                    &[
                        tenant.as_str().into(),
                        spi::timestamptz(Some(start)),
                        spi::timestamptz(end),
                    ],
                );
                set_status(client, &tenant, TenantStatus::Active);
                finish(
                    client,
                    &event,
                    Outcome::Applied,
                    "renewal: a new period started",
                )
            }
            billing::PaymentEffect::SetStatus(status) => {
                set_status(client, &tenant, status);
                let note = format!("status {}", status.as_str());
                finish(client, &event, Outcome::Applied, &note)
            }
            billing::PaymentEffect::Nothing(outcome, why) => finish(client, &event, outcome, why),
        }
    })
}

/// A subscription created, changed or canceled. Only the tenant's linked
/// subscription (or, when none is linked, one whose price maps to a plan,
/// which is linked then) changes the tenant: its plan from whichever
/// item's price maps to a plan (two different plans: no guess, the plan
/// stays), its period (`start_period`), its status; canceled: the default
/// plan, status canceled, and the subscription unlinked. Events older than
/// the last one applied change nothing (`accept_subscription_event`).
#[allow(clippy::too_many_arguments)]
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn apply_subscription(
    provider: Option<&str>,
    event_id: Option<&str>,
    customer_id: Option<&str>,
    subscription_id: Option<&str>,
    status: Option<&str>,
    occurred_at: Option<TimestampWithTimeZone>,
    price_ids: default!(Option<Vec<Option<String>>>, NULL),
    period_start: default!(Option<TimestampWithTimeZone>, NULL),
    period_end: default!(Option<TimestampWithTimeZone>, NULL),
    reference: default!(Option<&str>, NULL),
    trust_unsigned: default!(Option<bool>, true),
) -> String {
    let event = Event {
        provider: self::provider(provider),
        event_id: args::id("event_id", event_id).or_raise(),
    };
    let customer = args::id("customer_id", customer_id).or_raise();
    let subscription = args::id("subscription_id", subscription_id).or_raise();
    let status = self::status(status);
    let occurred_at = occurred_at
        .ok_or_else(|| errors::null_argument("occurred_at"))
        .or_raise();
    let prices: Vec<String> = price_ids
        .unwrap_or_default()
        .into_iter()
        .flatten()
        .collect();
    let period = period_start.map(|start| args::period(Some(start), period_end).or_raise());
    let trust_unsigned = trust_unsigned.unwrap_or(false);
    let canceled = status == TenantStatus::Canceled;
    Spi::connect_mut(|client| {
        let tenant = match resolve(client, &event, customer, None, reference, trust_unsigned) {
            Ok(tenant) => tenant,
            Err((outcome, note)) => return finish(client, &event, outcome, &note),
        };
        let Some(row) = lock_tenant(client, event.provider, &tenant) else {
            return finish(client, &event, Outcome::NotLinked, "the tenant is gone");
        };
        let plans_statement = match event.provider {
            Provider::Stripe => &STRIPE_PLANS,
            Provider::Paddle => &PADDLE_PLANS,
        };
        let matched: Vec<String> = spi::run(client, plans_statement, &[prices.clone().into()])
            .filter_map(|row| spi::get::<String>(&row, 1))
            .collect();
        let choice = billing::plan_from_items(&matched);
        let authority = billing::subscription_authority(
            row.subscription.as_deref(),
            subscription,
            choice != PlanChoice::NoMatch,
            canceled,
        );
        match authority {
            Authority::Other => {
                let note = match &row.subscription {
                    Some(linked) => format!(
                        "subscription {} is not the tenant's {}",
                        errors::quoted(subscription),
                        errors::quoted(linked)
                    ),
                    None => format!(
                        "subscription {} has no plan's price and the tenant has no subscription",
                        errors::quoted(subscription)
                    ),
                };
                return finish(client, &event, Outcome::Ignored, &note);
            }
            Authority::Adopt => {
                let ask = LinkAsk {
                    reference: &tenant,
                    customer,
                    subscription: Some(subscription),
                    trust_unsigned: true,
                };
                if let Err(note) = link(client, &event, &ask) {
                    return finish(client, &event, Outcome::Conflict, &note);
                }
            }
            Authority::Linked => {}
        }
        let accepted = spi::first_row(
            client,
            &ACCEPT_EVENT,
            &[
                tenant.as_str().into(),
                event.provider().into(),
                occurred_at.into(),
            ],
        )
        .and_then(|row| spi::get::<bool>(&row, 1))
        .unwrap_or(false);
        if !accepted {
            return finish(
                client,
                &event,
                Outcome::Stale,
                "older than the last subscription event applied",
            );
        }
        let mut notes = Vec::new();
        let change_plan = |client: &mut SpiClient<'_>, plan: &str| {
            if plan != row.plan_id {
                spi::run(
                    client,
                    &CHANGE_PLAN,
                    &[tenant.as_str().into(), plan.into(), true.into()],
                );
            }
        };
        if canceled {
            let default = spi::first_row(client, &DEFAULT_PLAN, &[])
                .and_then(|row| spi::get::<String>(&row, 1));
            match default {
                Some(plan) => change_plan(client, &plan),
                None => notes.push("no default plan to move to".to_string()),
            }
            let unlink = match event.provider {
                Provider::Stripe => &UNLINK_STRIPE_SUBSCRIPTION,
                Provider::Paddle => &UNLINK_PADDLE_SUBSCRIPTION,
            };
            spi::run(
                client,
                unlink,
                &[tenant.as_str().into(), subscription.into()],
            );
        } else {
            match &choice {
                PlanChoice::Plan(plan) => change_plan(client, plan),
                PlanChoice::NoMatch => notes.push(format!(
                    "no plan has the prices {}: the plan is left as it is",
                    prices.join(", ")
                )),
                PlanChoice::Ambiguous(plans) => notes.push(format!(
                    "the prices map to the plans {}: the plan is left as it is",
                    plans.join(", ")
                )),
            }
            if let Some((start, end)) = period {
                spi::run(
                    client,
                    &START_PERIOD,
                    &[
                        tenant.as_str().into(),
                        spi::timestamptz(Some(start)),
                        spi::timestamptz(end),
                    ],
                );
            }
        }
        set_status(client, &tenant, status);
        notes.insert(0, format!("status {}", status.as_str()));
        finish(client, &event, Outcome::Applied, &notes.join("; "))
    })
}

/// A completed checkout that names a tenant (`reference`: the tenant id, or
/// a reference from `checkout_reference`): link the customer (and the
/// subscription) to it. A webhook never replaces a link: a tenant with
/// another customer for the provider, or a customer or subscription linked
/// to another tenant, is a conflict, recorded in `tally.link_conflicts`. An
/// unsigned reference is trusted only when `trust_unsigned`.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn apply_checkout(
    provider: Option<&str>,
    event_id: Option<&str>,
    customer_id: Option<&str>,
    reference: Option<&str>,
    subscription_id: default!(Option<&str>, NULL),
    trust_unsigned: default!(Option<bool>, true),
) -> String {
    let event = Event {
        provider: self::provider(provider),
        event_id: args::id("event_id", event_id).or_raise(),
    };
    let customer = args::id("customer_id", customer_id).or_raise();
    let reference = reference
        .filter(|reference| !reference.is_empty())
        .ok_or_else(|| errors::null_argument("reference"))
        .or_raise();
    let subscription = optional_id("subscription_id", subscription_id);
    let ask = LinkAsk {
        reference,
        customer,
        subscription,
        trust_unsigned: trust_unsigned.unwrap_or(false),
    };
    Spi::connect_mut(|client| match link(client, &event, &ask) {
        Ok(tenant) => {
            let note = format!("linked to tenant {}", errors::quoted(&tenant));
            finish(client, &event, Outcome::Applied, &note)
        }
        Err(note) => finish(client, &event, Outcome::Conflict, &note),
    })
}

/// A reference naming `tenant_id` for the app to put into a checkout
/// (Stripe `client_reference_id`, Paddle `custom_data.tenant_id`), signed
/// with a secret only tally's owner reads: a buyer cannot make one for
/// another tenant.
#[pg_extern(security_definer)]
#[search_path(pg_catalog, pg_temp)]
fn checkout_reference(tenant_id: Option<&str>) -> String {
    let tenant_id = args::id("tenant_id", tenant_id).or_raise();
    if tenant_id.len() > billing::MAX_SIGNED_TENANT_BYTES {
        errors::reference_tenant_too_long(tenant_id.len(), billing::MAX_SIGNED_TENANT_BYTES).raise()
    }
    Spi::connect_mut(|client| {
        if spi::first_row(client, &TENANT_EXISTS, &[tenant_id.into()]).is_none() {
            errors::tenant_not_found(tenant_id).raise()
        }
        let mac = reference_mac(client, tenant_id).finalize().into_bytes();
        billing::signed_reference(tenant_id, &hex(&mac))
    })
}
