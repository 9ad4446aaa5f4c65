//! The billing life cycle: renewals, tenant status and providers.

use super::period::Micros;

/// A renewal moves the period on only when it starts later than the stored
/// one: a retried or out-of-order event for the same or an older period
/// changes nothing. A tenant without a stored period accepts any.
pub fn is_newer_period(stored_start: Option<Micros>, new_start: Micros) -> bool {
    stored_start.is_none_or(|stored| new_start > stored)
}

/// Providers deliver subscription events out of order; each tenant keeps,
/// per provider, when the last applied one happened. An event that happened
/// before that is stale and changes nothing. A tie applies: Stripe stamps
/// events to the second, so two events of the same second are applied in
/// the order they arrive (unlike [`is_newer_period`], where the same period
/// again is a repeat and changes nothing).
pub fn is_current_subscription_event(last_applied: Option<Micros>, occurred_at: Micros) -> bool {
    last_applied.is_none_or(|last| occurred_at >= last)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    PastDue,
    ActionRequired,
    Canceled,
}

impl TenantStatus {
    pub const NAMES: &'static str = crate::errors::STATUS_NAMES;

    pub fn parse(status: &str) -> Option<TenantStatus> {
        match status {
            "active" => Some(TenantStatus::Active),
            "past_due" => Some(TenantStatus::PastDue),
            "action_required" => Some(TenantStatus::ActionRequired),
            "canceled" => Some(TenantStatus::Canceled),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::PastDue => "past_due",
            TenantStatus::ActionRequired => "action_required",
            TenantStatus::Canceled => "canceled",
        }
    }
}

/// A billing provider whose customers tally links to tenants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Stripe,
    Paddle,
}

impl Provider {
    pub fn parse(provider: &str) -> Option<Provider> {
        match provider {
            "stripe" => Some(Provider::Stripe),
            "paddle" => Some(Provider::Paddle),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Provider::Stripe => "stripe",
            Provider::Paddle => "paddle",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_later_period_is_a_renewal() {
        assert!(is_newer_period(None, 5));
        assert!(is_newer_period(Some(4), 5));
        assert!(!is_newer_period(Some(5), 5));
        assert!(!is_newer_period(Some(6), 5));
    }

    #[test]
    fn a_subscription_event_applies_unless_an_applied_one_happened_later() {
        // (last applied, occurred at, applies)
        let table = [
            (None, 5, true),
            (Some(4), 5, true),
            (Some(5), 5, true), // the same second: arrival order
            (Some(6), 5, false),
            (Some(i64::MIN), i64::MIN, true),
        ];
        for (last, at, applies) in table {
            assert_eq!(
                is_current_subscription_event(last, at),
                applies,
                "last {last:?}, at {at}"
            );
        }
    }

    #[test]
    fn statuses_and_providers_parse_exactly() {
        assert_eq!(TenantStatus::parse("past_due"), Some(TenantStatus::PastDue));
        assert_eq!(TenantStatus::parse("Past_Due"), None);
        assert_eq!(Provider::parse("paddle"), Some(Provider::Paddle));
        assert_eq!(Provider::parse("braintree"), None);
    }
}
