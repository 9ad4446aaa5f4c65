//! Billing effects: what a provider event may do to a tenant. The extension's
//! `apply_payment`, `apply_subscription` and `apply_checkout` load the
//! tenant under its row lock, ask these functions, and write the answer.
//!
//! Tenant references in checkouts (Stripe `client_reference_id`,
//! `metadata.tenant_id`; Paddle `custom_data.tenant_id`) are set by the
//! buyer, so a reference never replaces a link: it links a customer only to
//! a tenant that has none for that provider yet, and only a customer no
//! other tenant has. Apps can vouch for a reference with one tally signed
//! ([`signed_reference`]).

use super::period::Micros;
use super::{Provider, TenantStatus};

/// What became of an event's effect; the SQL functions return its name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The effect was applied (or was already in place).
    Applied,
    /// Older than what the tenant already has: nothing changed.
    Stale,
    /// The customer is not linked to a tenant: nothing changed.
    NotLinked,
    /// Not the tenant's business (another subscription, a one-off invoice):
    /// nothing changed.
    Ignored,
    /// A link the event asked for was refused and recorded in
    /// `tally.link_conflicts`: nothing changed.
    Conflict,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Applied => "applied",
            Outcome::Stale => "stale",
            Outcome::NotLinked => "not_linked",
            Outcome::Ignored => "ignored",
            Outcome::Conflict => "conflict",
        }
    }
}

/// Whether a paid invoice (Stripe `billing_reason`) or transaction (Paddle
/// `origin`) renews the subscription's period. Manual, one-off and
/// proration invoices (`manual`, `subscription_update`, `upcoming`, …) and
/// Paddle's checkout, API and update transactions do not: the first period
/// of a Paddle subscription starts with its `subscription.created` event.
pub fn is_renewal(provider: Provider, reason: Option<&str>) -> bool {
    matches!(
        (provider, reason),
        (
            Provider::Stripe,
            Some("subscription_cycle" | "subscription_create")
        ) | (Provider::Paddle, Some("subscription_recurring"))
    )
}

/// What a payment event does to its tenant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PaymentEffect {
    /// A renewal for a newer period: start it (consumables back to 0) and
    /// set the status active.
    StartPeriod,
    /// Set the status only.
    SetStatus(TenantStatus),
    /// Change nothing, for this reason.
    Nothing(Outcome, &'static str),
}

/// What a payment does: `status` is what the payment says (active for a
/// payment that succeeded, past_due or action_required for one that did
/// not); `renewal` from [`is_renewal`]; `period_start` the period it pays
/// for, if known; `stored_start` the tenant's current period, if stored.
///
/// A successful payment that is not a renewal changes nothing: it pays for
/// something other than the plan's period, and the subscription's own
/// events carry its status. A renewal for the tenant's current period (a
/// retried payment after a failure) sets the status active without a
/// reset; one for an older period (a late or repeated delivery) changes
/// nothing.
pub fn payment_effect(
    status: TenantStatus,
    renewal: bool,
    period_start: Option<Micros>,
    stored_start: Option<Micros>,
) -> PaymentEffect {
    if status != TenantStatus::Active {
        return PaymentEffect::SetStatus(status);
    }
    if !renewal {
        return PaymentEffect::Nothing(
            Outcome::Ignored,
            "not a renewal: usage is reset only when a subscription period is paid",
        );
    }
    match (period_start, stored_start) {
        (None, _) => PaymentEffect::SetStatus(TenantStatus::Active),
        (Some(start), stored) if super::is_newer_period(stored, start) => {
            PaymentEffect::StartPeriod
        }
        (Some(start), Some(stored)) if start == stored => {
            PaymentEffect::SetStatus(TenantStatus::Active)
        }
        _ => PaymentEffect::Nothing(
            Outcome::Stale,
            "pays for a period older than the tenant's current one",
        ),
    }
}

/// Whether a payment that names `subscription` speaks for a tenant whose
/// linked subscription is `linked`: yes unless both are known and differ.
pub fn payment_concerns_tenant(linked: Option<&str>, subscription: Option<&str>) -> bool {
    match (linked, subscription) {
        (Some(linked), Some(subscription)) => linked == subscription,
        _ => true,
    }
}

/// Whose word a subscription event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Authority {
    /// The tenant's linked subscription.
    Linked,
    /// No subscription is linked and this one's price maps to a plan (and it
    /// is not canceled): link it and apply it.
    Adopt,
    /// Another subscription of the same customer (an add-on): ignored.
    Other,
}

pub fn subscription_authority(
    linked: Option<&str>,
    subscription: &str,
    maps_to_plan: bool,
    canceled: bool,
) -> Authority {
    match linked {
        Some(linked) if linked == subscription => Authority::Linked,
        Some(_) => Authority::Other,
        None if maps_to_plan && !canceled => Authority::Adopt,
        None => Authority::Other,
    }
}

/// The plan a subscription's items give.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PlanChoice {
    /// Exactly one plan matches (whatever the order of the items).
    Plan(String),
    /// No item's price maps to a plan.
    NoMatch,
    /// Items map to different plans, sorted: tally does not guess.
    Ambiguous(Vec<String>),
}

/// From the plans the items' prices map to (one entry per matching item).
pub fn plan_from_items<S: AsRef<str>>(matched: &[S]) -> PlanChoice {
    let mut plans: Vec<String> = matched.iter().map(|p| p.as_ref().to_string()).collect();
    plans.sort();
    plans.dedup();
    match plans.len() {
        0 => PlanChoice::NoMatch,
        1 => PlanChoice::Plan(plans.remove(0)),
        _ => PlanChoice::Ambiguous(plans),
    }
}

/// What is known when an event asks to link `customer` (and perhaps a
/// subscription) to `tenant` for one provider, read under the tenant's row
/// lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkRequest<'a> {
    pub tenant: &'a str,
    pub customer: &'a str,
    pub subscription: Option<&'a str>,
    /// None: no such tenant.
    pub tenant_customer: Option<Option<&'a str>>,
    pub tenant_subscription: Option<&'a str>,
    /// The tenant the customer is linked to, if any.
    pub customer_owner: Option<&'a str>,
    /// The tenant the subscription is linked to, if any.
    pub subscription_owner: Option<&'a str>,
}

/// Why a link was refused, as `tally.link_conflicts.reason` says it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConflictReason {
    NoSuchTenant,
    TenantHasAnotherCustomer,
    CustomerLinkedElsewhere,
    SubscriptionLinkedElsewhere,
    UnsignedReference,
    BadSignature,
}

impl ConflictReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ConflictReason::NoSuchTenant => "no such tenant",
            ConflictReason::TenantHasAnotherCustomer => "tenant has another customer",
            ConflictReason::CustomerLinkedElsewhere => "customer linked to another tenant",
            ConflictReason::SubscriptionLinkedElsewhere => "subscription linked to another tenant",
            ConflictReason::UnsignedReference => "unsigned reference not trusted",
            ConflictReason::BadSignature => "reference signature does not verify",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkDecision {
    /// Write the customer (it was not linked), and the subscription if
    /// `subscription` (the tenant had none).
    Link { customer: bool, subscription: bool },
    /// Refused: record it, change nothing.
    Conflict(ConflictReason),
}

/// A webhook never replaces a link: the customer is linked only to a tenant
/// with no customer for the provider, and only if no other tenant has it;
/// a subscription only to a tenant with none, and only if no other tenant
/// has it. The same link again is no change.
pub fn link_decision(request: &LinkRequest<'_>) -> LinkDecision {
    let Some(tenant_customer) = request.tenant_customer else {
        return LinkDecision::Conflict(ConflictReason::NoSuchTenant);
    };
    if request
        .customer_owner
        .is_some_and(|owner| owner != request.tenant)
    {
        return LinkDecision::Conflict(ConflictReason::CustomerLinkedElsewhere);
    }
    if tenant_customer.is_some_and(|existing| existing != request.customer) {
        return LinkDecision::Conflict(ConflictReason::TenantHasAnotherCustomer);
    }
    if request
        .subscription_owner
        .is_some_and(|owner| owner != request.tenant)
    {
        return LinkDecision::Conflict(ConflictReason::SubscriptionLinkedElsewhere);
    }
    LinkDecision::Link {
        customer: tenant_customer.is_none(),
        subscription: request.subscription.is_some() && request.tenant_subscription.is_none(),
    }
}

/// Signed references: `tly1_<32 hex: MAC>_<tenant id, base64url>`. Only
/// letters, digits, `_` and `-`, as Stripe's `client_reference_id` allows
/// (up to 200 characters: tenant ids up to [`MAX_SIGNED_TENANT_BYTES`]).
pub const SIGNED_PREFIX: &str = "tly1_";
/// Hex characters of the MAC kept in a reference (128 bits).
pub const MAC_HEX_CHARS: usize = 32;
/// The longest tenant id whose signed reference fits in 200 characters.
pub const MAX_SIGNED_TENANT_BYTES: usize = 120;

/// What the MAC of a reference covers.
pub fn reference_message(tenant: &str) -> String {
    format!("tally checkout reference v1\n{tenant}")
}

/// A reference naming `tenant`, signed with `mac_hex` (the hex HMAC of
/// [`reference_message`], cut to [`MAC_HEX_CHARS`]).
pub fn signed_reference(tenant: &str, mac_hex: &str) -> String {
    format!(
        "{SIGNED_PREFIX}{}_{}",
        &mac_hex[..MAC_HEX_CHARS.min(mac_hex.len())],
        base64url(tenant.as_bytes())
    )
}

/// A tenant reference as an event carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reference<'a> {
    /// A bare tenant id.
    Plain(&'a str),
    /// A signed reference: the tenant it names and its MAC (hex).
    Signed { tenant: String, mac_hex: &'a str },
    /// Looks signed but cannot be read.
    Malformed,
}

pub fn parse_reference(text: &str) -> Reference<'_> {
    let Some(rest) = text.strip_prefix(SIGNED_PREFIX) else {
        return Reference::Plain(text);
    };
    let (mac_hex, tenant) = match rest.split_at_checked(MAC_HEX_CHARS) {
        Some((mac, tenant)) => (mac, tenant.strip_prefix('_')),
        None => return Reference::Malformed,
    };
    let tenant = tenant
        .and_then(unbase64url)
        .and_then(|bytes| String::from_utf8(bytes).ok());
    match tenant {
        Some(tenant) if !tenant.is_empty() && mac_hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Reference::Signed { tenant, mac_hex }
        }
        _ => Reference::Malformed,
    }
}

/// Which tenant a reference names, if it may be trusted: a signed one whose
/// MAC verifies (`verifies`, constant time, is the caller's), an unsigned one
/// only when `trust_unsigned`.
pub fn trusted_tenant(
    reference: &Reference<'_>,
    trust_unsigned: bool,
    verifies: impl FnOnce(&str, &str) -> bool,
) -> Result<String, ConflictReason> {
    match reference {
        Reference::Plain(tenant) if trust_unsigned => Ok(tenant.to_string()),
        Reference::Plain(_) => Err(ConflictReason::UnsignedReference),
        Reference::Signed { tenant, mac_hex } if verifies(tenant, mac_hex) => Ok(tenant.clone()),
        Reference::Signed { .. } | Reference::Malformed => Err(ConflictReason::BadSignature),
    }
}

const BASE64URL: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Unpadded base64url.
pub fn base64url(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(BASE64URL[((n >> (18 - 6 * i)) & 63) as usize] as char);
        }
    }
    out
}

/// Unpadded base64url back to bytes; None if it is not.
pub fn unbase64url(text: &str) -> Option<Vec<u8>> {
    if text.len() % 4 == 1 {
        return None;
    }
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.as_bytes().chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            let value = BASE64URL.iter().position(|b| b == c)? as u32;
            n |= value << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
        // Unused low bits must be zero, so each text has one reading.
        let used = 8 * (chunk.len() - 1);
        if n & ((1 << (24 - used)) - 1) != 0 {
            return None;
        }
    }
    Some(out)
}

/// The least age `cleanup_provider_events` forgets: providers retry a
/// failed delivery for up to 3 days (Stripe), and a forgotten event that is
/// delivered again would be applied again.
pub const PROVIDER_EVENTS_KEPT_AT_LEAST_DAYS: i32 = 3;

/// The default time an event for a customer not linked to any tenant is
/// answered "retry later" (counted from when it happened), so the provider
/// delivers it again once the link exists; after it, it is acknowledged and
/// recorded as unlinked.
pub const UNLINKED_RETRY_WINDOW_SECONDS: i64 = 3 * 86_400;

/// Whether an event for an unlinked customer that happened at `occurred_at`
/// is still answered "retry later" at `now`, in microseconds.
pub fn keep_retrying_unlinked(occurred_at: Micros, now: Micros, window: Micros) -> bool {
    now.saturating_sub(occurred_at) < window
}

#[cfg(test)]
mod tests {
    use super::*;
    use TenantStatus::*;

    #[test]
    fn only_subscription_cycles_and_creations_renew() {
        let table = [
            (Provider::Stripe, Some("subscription_cycle"), true),
            (Provider::Stripe, Some("subscription_create"), true),
            (Provider::Stripe, Some("subscription_update"), false),
            (Provider::Stripe, Some("manual"), false),
            (Provider::Stripe, Some("upcoming"), false),
            (Provider::Stripe, Some("subscription_threshold"), false),
            (Provider::Stripe, None, false),
            (Provider::Stripe, Some("subscription_recurring"), false),
            (Provider::Paddle, Some("subscription_recurring"), true),
            (Provider::Paddle, Some("web"), false),
            (Provider::Paddle, Some("api"), false),
            (Provider::Paddle, Some("subscription_update"), false),
            (Provider::Paddle, Some("subscription_cycle"), false),
        ];
        for (provider, reason, renews) in table {
            assert_eq!(
                is_renewal(provider, reason),
                renews,
                "{provider:?} {reason:?}"
            );
        }
    }

    #[test]
    fn a_payment_resets_only_for_a_newer_period() {
        // (status, renewal, period start, stored start, effect)
        let table = [
            (Active, true, Some(20), Some(10), PaymentEffect::StartPeriod),
            (Active, true, Some(20), None, PaymentEffect::StartPeriod),
            (
                Active,
                true,
                Some(10),
                Some(10),
                PaymentEffect::SetStatus(Active),
            ),
            (
                Active,
                true,
                None,
                Some(10),
                PaymentEffect::SetStatus(Active),
            ),
            (
                PastDue,
                false,
                None,
                Some(10),
                PaymentEffect::SetStatus(PastDue),
            ),
            (
                ActionRequired,
                true,
                Some(5),
                Some(10),
                PaymentEffect::SetStatus(ActionRequired),
            ),
        ];
        for (status, renewal, start, stored, effect) in table {
            assert_eq!(
                payment_effect(status, renewal, start, stored),
                effect,
                "{status:?} {renewal} {start:?} {stored:?}"
            );
        }
        assert!(matches!(
            payment_effect(Active, true, Some(5), Some(10)),
            PaymentEffect::Nothing(Outcome::Stale, _)
        ));
        assert!(matches!(
            payment_effect(Active, false, Some(20), Some(10)),
            PaymentEffect::Nothing(Outcome::Ignored, _)
        ));
    }

    #[test]
    fn a_payment_of_another_subscription_is_not_the_tenants() {
        assert!(payment_concerns_tenant(Some("sub_1"), Some("sub_1")));
        assert!(!payment_concerns_tenant(Some("sub_1"), Some("sub_2")));
        assert!(payment_concerns_tenant(None, Some("sub_2")));
        assert!(payment_concerns_tenant(Some("sub_1"), None));
    }

    #[test]
    fn only_the_linked_subscription_or_a_planned_one_speaks_for_the_tenant() {
        // (linked, this, maps to a plan, canceled, authority)
        let table = [
            (Some("a"), "a", false, false, Authority::Linked),
            (Some("a"), "a", true, true, Authority::Linked),
            (Some("a"), "b", true, false, Authority::Other),
            (None, "b", true, false, Authority::Adopt),
            (None, "b", false, false, Authority::Other),
            (None, "b", true, true, Authority::Other),
        ];
        for (linked, this, maps, canceled, authority) in table {
            assert_eq!(
                subscription_authority(linked, this, maps, canceled),
                authority,
                "{linked:?} {this}"
            );
        }
    }

    #[test]
    fn the_plan_comes_from_any_item_and_two_plans_are_not_guessed() {
        assert_eq!(plan_from_items::<&str>(&[]), PlanChoice::NoMatch);
        assert_eq!(
            plan_from_items(&["growth"]),
            PlanChoice::Plan("growth".into())
        );
        assert_eq!(
            plan_from_items(&["growth", "growth"]),
            PlanChoice::Plan("growth".into())
        );
        assert_eq!(
            plan_from_items(&["starter", "growth"]),
            PlanChoice::Ambiguous(vec!["growth".into(), "starter".into()])
        );
    }

    #[test]
    fn a_webhook_never_replaces_a_link() {
        let base = LinkRequest {
            tenant: "acme",
            customer: "cus_1",
            subscription: Some("sub_1"),
            tenant_customer: Some(None),
            tenant_subscription: None,
            customer_owner: None,
            subscription_owner: None,
        };
        let link = |customer, subscription| LinkDecision::Link {
            customer,
            subscription,
        };
        let conflict = LinkDecision::Conflict;
        let table = [
            (base, link(true, true)),
            (
                LinkRequest {
                    tenant_customer: None,
                    ..base
                },
                conflict(ConflictReason::NoSuchTenant),
            ),
            (
                LinkRequest {
                    tenant_customer: Some(Some("cus_other")),
                    ..base
                },
                conflict(ConflictReason::TenantHasAnotherCustomer),
            ),
            (
                LinkRequest {
                    customer_owner: Some("globex"),
                    ..base
                },
                conflict(ConflictReason::CustomerLinkedElsewhere),
            ),
            (
                LinkRequest {
                    subscription_owner: Some("globex"),
                    ..base
                },
                conflict(ConflictReason::SubscriptionLinkedElsewhere),
            ),
            // The same link again.
            (
                LinkRequest {
                    tenant_customer: Some(Some("cus_1")),
                    customer_owner: Some("acme"),
                    tenant_subscription: Some("sub_1"),
                    subscription_owner: Some("acme"),
                    ..base
                },
                link(false, false),
            ),
            // The tenant's subscription stays; a new one is left to the
            // subscription events.
            (
                LinkRequest {
                    tenant_customer: Some(Some("cus_1")),
                    customer_owner: Some("acme"),
                    tenant_subscription: Some("sub_0"),
                    ..base
                },
                link(false, false),
            ),
            (
                LinkRequest {
                    subscription: None,
                    ..base
                },
                link(true, false),
            ),
        ];
        for (request, decision) in table {
            assert_eq!(link_decision(&request), decision, "{request:?}");
        }
    }

    #[test]
    fn references_round_trip_and_only_trusted_ones_name_a_tenant() {
        let mac = "0123456789abcdef0123456789abcdefffff";
        for tenant in ["acme", "o'brien", "é", "ab", "abc", "a_b-c.d"] {
            let signed = signed_reference(tenant, mac);
            assert!(signed
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-'));
            assert_eq!(
                parse_reference(&signed),
                Reference::Signed {
                    tenant: tenant.into(),
                    mac_hex: &mac[..MAC_HEX_CHARS]
                }
            );
        }
        let longest = "t".repeat(MAX_SIGNED_TENANT_BYTES);
        assert!(signed_reference(&longest, mac).len() <= 200);
        assert_eq!(parse_reference("acme"), Reference::Plain("acme"));
        for malformed in [
            "tly1_",
            "tly1_0123",
            "tly1_0123456789abcdef0123456789abcdeg_YWNtZQ",
            "tly1_0123456789abcdef0123456789abcdef_",
            "tly1_0123456789abcdef0123456789abcdef_Y",
        ] {
            assert_eq!(
                parse_reference(malformed),
                Reference::Malformed,
                "{malformed}"
            );
        }
        let yes = |_: &str, _: &str| true;
        let no = |_: &str, _: &str| false;
        let signed = parse_reference("tly1_0123456789abcdef0123456789abcdef_YWNtZQ");
        assert_eq!(trusted_tenant(&signed, false, yes), Ok("acme".into()));
        assert_eq!(
            trusted_tenant(&signed, true, no),
            Err(ConflictReason::BadSignature)
        );
        assert_eq!(
            trusted_tenant(&Reference::Plain("acme"), true, no),
            Ok("acme".into())
        );
        assert_eq!(
            trusted_tenant(&Reference::Plain("acme"), false, yes),
            Err(ConflictReason::UnsignedReference)
        );
        assert_eq!(
            trusted_tenant(&Reference::Malformed, true, yes),
            Err(ConflictReason::BadSignature)
        );
    }

    #[test]
    fn base64url_matches_the_standard_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64url(plain.as_bytes()), encoded);
            assert_eq!(unbase64url(encoded).as_deref(), Some(plain.as_bytes()));
        }
        assert_eq!(base64url(&[0xfb, 0xff]), "-_8");
        assert_eq!(unbase64url("Zh"), None, "non-zero unused bits");
        assert_eq!(unbase64url("Z"), None);
        assert_eq!(unbase64url("Zm9v!"), None);
    }

    #[test]
    fn unlinked_events_are_retried_within_the_window_only() {
        let window = 3 * 86_400 * 1_000_000;
        assert!(keep_retrying_unlinked(0, window - 1, window));
        assert!(!keep_retrying_unlinked(0, window, window));
        assert!(keep_retrying_unlinked(10, 5, window), "from the future");
        assert!(!keep_retrying_unlinked(i64::MIN, i64::MAX, window));
    }

    #[test]
    fn outcomes_have_stable_names() {
        let names: Vec<&str> = [
            Outcome::Applied,
            Outcome::Stale,
            Outcome::NotLinked,
            Outcome::Ignored,
            Outcome::Conflict,
        ]
        .iter()
        .map(|o| o.as_str())
        .collect();
        assert_eq!(
            names,
            ["applied", "stale", "not_linked", "ignored", "conflict"]
        );
    }
}
