//! The billing life cycle: renewals, tenant status and providers.

use super::period::Micros;

/// A renewal moves the period on only when it starts later than the stored
/// one: a retried or out-of-order event for the same or an older period
/// changes nothing. A tenant without a stored period accepts any.
pub fn is_newer_period(stored_start: Option<Micros>, new_start: Micros) -> bool {
    stored_start.is_none_or(|stored| new_start > stored)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    PastDue,
    ActionRequired,
    Canceled,
}

impl TenantStatus {
    pub const NAMES: &'static str = "active, past_due, action_required, canceled";

    pub fn parse(status: &str) -> Option<TenantStatus> {
        match status {
            "active" => Some(TenantStatus::Active),
            "past_due" => Some(TenantStatus::PastDue),
            "action_required" => Some(TenantStatus::ActionRequired),
            "canceled" => Some(TenantStatus::Canceled),
            _ => None,
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
    fn statuses_and_providers_parse_exactly() {
        assert_eq!(TenantStatus::parse("past_due"), Some(TenantStatus::PastDue));
        assert_eq!(TenantStatus::parse("Past_Due"), None);
        assert_eq!(Provider::parse("paddle"), Some(Provider::Paddle));
        assert_eq!(Provider::parse("braintree"), None);
    }
}
