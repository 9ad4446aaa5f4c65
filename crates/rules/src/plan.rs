//! Which limits a plan change would break, and how to say so.

use super::counter::Limit;
use super::Kind;

/// One metric of a tenant, seen against a plan it may move to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricUse {
    pub metric: String,
    pub kind: Kind,
    /// The count in the current period.
    pub used: i64,
    pub new_limit: Limit,
}

/// A metric whose count is over the new plan's limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub metric: String,
    pub kind: Kind,
    pub used: i64,
    /// 0 when the new plan does not include the metric.
    pub new_limit: i64,
    pub included: bool,
    pub excess: i64,
    /// Allocations block a plan change; consumables are reported only (they
    /// run out with the period).
    pub blocking: bool,
}

/// Every metric over the new plan's limit, in the order given.
pub fn violations(uses: &[MetricUse]) -> Vec<Violation> {
    uses.iter()
        .filter_map(|usage| {
            let (new_limit, included) = match usage.new_limit {
                Limit::Unlimited => return None,
                Limit::NotInPlan => (0, false),
                Limit::Max(max) => (max, true),
            };
            (usage.used > new_limit).then(|| Violation {
                metric: usage.metric.clone(),
                kind: usage.kind,
                used: usage.used,
                new_limit,
                included,
                excess: usage.used - new_limit,
                blocking: usage.kind == Kind::Allocation,
            })
        })
        .collect()
}

/// A plan change validated: valid unless a violation blocks it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlanCheck {
    pub valid: bool,
    pub message: String,
    pub violations: Vec<Violation>,
}

/// Judge a move of `tenant_id` from `current_plan` to `new_plan`, with a
/// message a person can act on.
pub fn check_plan_change(
    tenant_id: &str,
    current_plan: &str,
    new_plan: &str,
    uses: &[MetricUse],
) -> PlanCheck {
    let violations = violations(uses);
    let describe = |violation: &Violation| {
        let Violation {
            metric,
            used,
            new_limit,
            excess,
            ..
        } = violation;
        let allowance = if violation.included {
            format!("the {new_plan} plan allows {new_limit}")
        } else {
            format!("the {new_plan} plan does not include {metric}")
        };
        if violation.blocking {
            format!("{used} {metric} in use, {allowance}: remove {excess} before switching")
        } else {
            format!("{used} {metric} used this period, {allowance}: further {metric} will be refused until the period renews")
        }
    };
    let blocking: Vec<String> = violations
        .iter()
        .filter(|v| v.blocking)
        .map(describe)
        .collect();
    let valid = blocking.is_empty();
    let message = if !valid {
        blocking.join("; ")
    } else {
        let mut message = if current_plan == new_plan {
            format!("{tenant_id} is already on the {new_plan} plan")
        } else {
            format!("{tenant_id} can switch to the {new_plan} plan")
        };
        for violation in &violations {
            message.push_str("; ");
            message.push_str(&describe(violation));
        }
        message
    };
    PlanCheck {
        valid,
        message,
        violations,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn uses(rows: &[(&str, Kind, i64, Limit)]) -> Vec<MetricUse> {
        rows.iter()
            .map(|(metric, kind, used, new_limit)| MetricUse {
                metric: metric.to_string(),
                kind: *kind,
                used: *used,
                new_limit: *new_limit,
            })
            .collect()
    }

    #[test]
    fn a_downgrade_below_an_allocation_is_blocked_with_a_remedy() {
        let check = check_plan_change(
            "acme",
            "growth",
            "starter",
            &uses(&[("chatbots", Kind::Allocation, 5, Limit::Max(3))]),
        );
        assert!(!check.valid);
        assert_eq!(
            check.message,
            "5 chatbots in use, the starter plan allows 3: remove 2 before switching"
        );
        assert_eq!(check.violations.len(), 1);
        assert_eq!(
            (check.violations[0].excess, check.violations[0].blocking),
            (2, true)
        );
    }

    #[test]
    fn several_blocking_violations_are_joined() {
        let check = check_plan_change(
            "acme",
            "growth",
            "free",
            &uses(&[
                ("chatbots", Kind::Allocation, 5, Limit::Max(1)),
                ("messages", Kind::Consumable, 500, Limit::Max(100)),
                ("seats", Kind::Allocation, 2, Limit::NotInPlan),
            ]),
        );
        assert!(!check.valid);
        assert_eq!(
            check.message,
            "5 chatbots in use, the free plan allows 1: remove 4 before switching; \
             2 seats in use, the free plan does not include seats: remove 2 before switching"
        );
        assert_eq!(check.violations.len(), 3);
        assert!(!check.violations[1].blocking);
        assert_eq!(
            (check.violations[2].new_limit, check.violations[2].excess),
            (0, 2)
        );
    }

    #[test]
    fn consumables_over_the_limit_are_listed_but_do_not_block() {
        let check = check_plan_change(
            "acme",
            "growth",
            "starter",
            &uses(&[
                ("chatbots", Kind::Allocation, 2, Limit::Max(3)),
                ("messages", Kind::Consumable, 150, Limit::Max(100)),
            ]),
        );
        assert!(check.valid);
        assert_eq!(
            check.message,
            "acme can switch to the starter plan; 150 messages used this period, the starter plan allows 100: \
             further messages will be refused until the period renews"
        );
        assert_eq!(check.violations.len(), 1);
    }

    #[test]
    fn unused_and_unlimited_metrics_never_violate() {
        let check = check_plan_change(
            "acme",
            "growth",
            "growth",
            &uses(&[
                ("seats", Kind::Allocation, 0, Limit::NotInPlan),
                ("messages", Kind::Consumable, i64::MAX, Limit::Unlimited),
            ]),
        );
        assert_eq!(
            check,
            PlanCheck {
                valid: true,
                message: "acme is already on the growth plan".into(),
                violations: vec![]
            }
        );
    }
}
