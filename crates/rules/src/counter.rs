//! What an increment or a decrement does to a counter.

use super::period::Micros;
use super::Kind;

/// What a plan allows of one metric.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Limit {
    /// The plan has no row for the metric: never allowed.
    NotInPlan,
    /// The plan's row has `max_units` NULL.
    Unlimited,
    Max(i64),
}

impl Limit {
    pub fn from_row(in_plan: bool, max_units: Option<i64>) -> Limit {
        match (in_plan, max_units) {
            (false, _) => Limit::NotInPlan,
            (true, None) => Limit::Unlimited,
            (true, Some(max)) => Limit::Max(max),
        }
    }

    /// `max_units` as callers see it: NULL when unlimited, 0 when not in the plan.
    pub fn max_units(self) -> Option<i64> {
        match self {
            Limit::NotInPlan => Some(0),
            Limit::Unlimited => None,
            Limit::Max(max) => Some(max),
        }
    }

    /// `max_units − used` clamped at 0, or `None` when unlimited.
    pub fn remaining(self, used: i64) -> Option<i64> {
        self.max_units().map(|max| max.saturating_sub(used).max(0))
    }
}

/// A stored usage counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Counter {
    pub used: i64,
    /// The period a consumable's count belongs to; `None` for allocations.
    pub period_start: Option<Micros>,
}

/// The counter as it stands in the current period. A consumable counted in an
/// older period (or never assigned one) starts again at 0; one counted in the
/// current or a newer period keeps its count. Allocations ignore periods.
pub fn current_count(kind: Kind, stored: Option<Counter>, period_start: Micros) -> Counter {
    let fresh = Counter {
        used: 0,
        period_start: (kind == Kind::Consumable).then_some(period_start),
    };
    match (kind, stored) {
        (_, None) => fresh,
        (Kind::Allocation, Some(counter)) => Counter {
            used: counter.used,
            period_start: None,
        },
        (Kind::Consumable, Some(counter)) => match counter.period_start {
            Some(stored_start) if stored_start >= period_start => counter,
            _ => fresh,
        },
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    LimitExceeded,
    NotInPlan,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::LimitExceeded => "limit_exceeded",
            Reason::NotInPlan => "not_in_plan",
        }
    }
}

/// The result of `check_and_increment_usage`, as the caller receives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    pub allowed: bool,
    pub used: i64,
    pub max_units: Option<i64>,
    pub remaining: Option<i64>,
    pub reason: Option<Reason>,
}

impl Outcome {
    pub fn allowed(used: i64, limit: Limit) -> Outcome {
        Outcome {
            allowed: true,
            used,
            max_units: limit.max_units(),
            remaining: limit.remaining(used),
            reason: None,
        }
    }

    pub fn refused(used: i64, limit: Limit, reason: Reason) -> Outcome {
        Outcome {
            allowed: false,
            used,
            max_units: limit.max_units(),
            remaining: limit.remaining(used),
            reason: Some(reason),
        }
    }
}

/// What an increment decided: the caller's result, and the counter to store
/// when it differs from the stored one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Change<T> {
    pub result: T,
    pub write: Option<Counter>,
}

/// The only way a counter can fail: adding units to an unlimited metric would
/// pass `i64::MAX`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overflow {
    pub used: i64,
    pub units: i64,
}

fn write_if_changed(stored: Option<Counter>, counter: Counter) -> Option<Counter> {
    stored.filter(|stored| *stored != counter).map(|_| counter)
}

/// Whether `units` (> 0) fit on top of `used` under `limit`. For an
/// unlimited metric they fit unless the sum would overflow. The fast path's
/// `UPDATE` (`FAST_INCREMENT` in extension/src/usage.rs) repeats this test in
/// SQL so that a fitting increment is one statement; the pg_test
/// `the_fast_path_decides_as_fits_does` pins the two together.
pub fn fits(limit: Limit, used: i64, units: i64) -> Result<bool, Overflow> {
    match limit {
        Limit::NotInPlan => Ok(false),
        // Both sides are non-negative, so the subtraction cannot overflow; a
        // count above its limit (after a sync) makes it negative.
        Limit::Max(max) => Ok(units <= max - used),
        Limit::Unlimited => used
            .checked_add(units)
            .map(|_| true)
            .ok_or(Overflow { used, units }),
    }
}

/// Add `units` (> 0) all or nothing. A refusal changes nothing but the lazy
/// period reset, which is kept. No counter is created for a refusal.
pub fn increment(
    kind: Kind,
    limit: Limit,
    stored: Option<Counter>,
    period_start: Micros,
    units: i64,
) -> Result<Change<Outcome>, Overflow> {
    debug_assert!(units > 0, "units are validated before the rules run");
    let current = current_count(kind, stored, period_start);
    if !fits(limit, current.used, units)? {
        let reason = if limit == Limit::NotInPlan {
            Reason::NotInPlan
        } else {
            Reason::LimitExceeded
        };
        return Ok(Change {
            result: Outcome::refused(current.used, limit, reason),
            write: write_if_changed(stored, current),
        });
    }
    let counter = Counter {
        used: current.used + units,
        ..current
    };
    Ok(Change {
        result: Outcome::allowed(counter.used, limit),
        write: Some(counter),
    })
}

/// Give back `units` (> 0), never below 0. Without a stored counter there is
/// nothing to give back: the result is 0 and nothing is created.
pub fn decrement(
    kind: Kind,
    stored: Option<Counter>,
    period_start: Micros,
    units: i64,
) -> Change<i64> {
    let Some(_) = stored else {
        return Change {
            result: 0,
            write: None,
        };
    };
    let current = current_count(kind, stored, period_start);
    let counter = Counter {
        used: current.used.saturating_sub(units).max(0),
        ..current
    };
    Change {
        result: counter.used,
        write: write_if_changed(stored, counter),
    }
}

/// Why a release (a tenant giving back units over the API) is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReleaseRefusal {
    /// Consumed units cannot be given back.
    Consumable,
    /// More than the tenant holds: `used` is what it holds.
    ExceedsUsed { used: i64 },
}

/// A release: `units` of an allocation given back, all or nothing. Unlike
/// [`decrement`] (an application correcting its own count), it never
/// clamps: more than is held is refused, and consumables are refused.
pub fn release(
    kind: Kind,
    stored: Option<Counter>,
    units: i64,
) -> Result<Change<i64>, ReleaseRefusal> {
    if kind == Kind::Consumable {
        return Err(ReleaseRefusal::Consumable);
    }
    let used = stored.map_or(0, |counter| counter.used);
    if units > used {
        return Err(ReleaseRefusal::ExceedsUsed { used });
    }
    let counter = Counter {
        used: used - units,
        period_start: None,
    };
    Ok(Change {
        result: counter.used,
        write: write_if_changed(stored, counter),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAY: Micros = 100;
    const JUNE: Micros = 200;

    fn counter(used: i64, period_start: Option<Micros>) -> Option<Counter> {
        Some(Counter { used, period_start })
    }

    #[test]
    fn current_count_resets_only_older_consumable_periods() {
        use Kind::*;
        let cases = [
            (Consumable, None, 0, Some(JUNE)),
            (Consumable, counter(7, Some(MAY)), 0, Some(JUNE)),
            (Consumable, counter(7, None), 0, Some(JUNE)),
            (Consumable, counter(7, Some(JUNE)), 7, Some(JUNE)),
            (Consumable, counter(7, Some(JUNE + 1)), 7, Some(JUNE + 1)),
            (Allocation, None, 0, None),
            (Allocation, counter(7, Some(MAY)), 7, None),
            (Allocation, counter(7, None), 7, None),
        ];
        for (kind, stored, used, period_start) in cases {
            assert_eq!(
                current_count(kind, stored, JUNE),
                Counter { used, period_start },
                "{kind:?} {stored:?}"
            );
        }
    }

    #[test]
    fn fits_compares_without_overflowing() {
        assert_eq!(fits(Limit::Max(5), 4, 1), Ok(true));
        assert_eq!(fits(Limit::Max(5), 5, 1), Ok(false));
        assert_eq!(fits(Limit::Max(0), 0, 1), Ok(false));
        assert_eq!(fits(Limit::Max(3), 9, 1), Ok(false));
        assert_eq!(
            fits(Limit::Max(i64::MAX), i64::MAX - 1, i64::MAX),
            Ok(false)
        );
        assert_eq!(fits(Limit::NotInPlan, 0, 1), Ok(false));
        assert_eq!(fits(Limit::Unlimited, i64::MAX - 1, 1), Ok(true));
        assert_eq!(
            fits(Limit::Unlimited, i64::MAX, 1),
            Err(Overflow {
                used: i64::MAX,
                units: 1
            })
        );
    }

    #[test]
    fn increments_fit_exactly_up_to_the_limit() {
        let change = increment(Kind::Allocation, Limit::Max(5), counter(4, None), JUNE, 1).unwrap();
        assert_eq!(change.result, Outcome::allowed(5, Limit::Max(5)));
        assert_eq!(change.result.remaining, Some(0));
        assert_eq!(change.write, counter(5, None));

        let change = increment(Kind::Allocation, Limit::Max(5), counter(5, None), JUNE, 1).unwrap();
        assert_eq!(
            change.result,
            Outcome::refused(5, Limit::Max(5), Reason::LimitExceeded)
        );
        assert_eq!(change.write, None);
    }

    #[test]
    fn bulk_increments_are_all_or_nothing() {
        let refused = increment(
            Kind::Consumable,
            Limit::Max(100),
            counter(70, Some(JUNE)),
            JUNE,
            50,
        )
        .unwrap();
        assert!(!refused.result.allowed);
        assert_eq!(
            (refused.result.used, refused.result.remaining),
            (70, Some(30))
        );
        assert_eq!(refused.write, None);

        let allowed = increment(
            Kind::Consumable,
            Limit::Max(100),
            counter(70, Some(JUNE)),
            JUNE,
            30,
        )
        .unwrap();
        assert_eq!(allowed.result, Outcome::allowed(100, Limit::Max(100)));
    }

    #[test]
    fn a_stale_period_resets_first_and_the_reset_is_kept_when_refused() {
        let allowed = increment(
            Kind::Consumable,
            Limit::Max(10),
            counter(10, Some(MAY)),
            JUNE,
            3,
        )
        .unwrap();
        assert_eq!(allowed.result, Outcome::allowed(3, Limit::Max(10)));
        assert_eq!(allowed.write, counter(3, Some(JUNE)));

        let refused = increment(
            Kind::Consumable,
            Limit::Max(10),
            counter(10, Some(MAY)),
            JUNE,
            11,
        )
        .unwrap();
        assert_eq!(
            refused.result,
            Outcome::refused(0, Limit::Max(10), Reason::LimitExceeded)
        );
        assert_eq!(refused.write, counter(0, Some(JUNE)));
    }

    #[test]
    fn a_refusal_creates_no_counter() {
        let refused = increment(Kind::Consumable, Limit::Max(2), None, JUNE, 3).unwrap();
        assert_eq!(refused.write, None);
        assert_eq!(refused.result.used, 0);
    }

    #[test]
    fn not_in_plan_reports_a_zero_limit() {
        let change = increment(
            Kind::Consumable,
            Limit::NotInPlan,
            counter(4, Some(JUNE)),
            JUNE,
            1,
        )
        .unwrap();
        assert_eq!(
            change.result,
            Outcome {
                allowed: false,
                used: 4,
                max_units: Some(0),
                remaining: Some(0),
                reason: Some(Reason::NotInPlan)
            }
        );
        assert_eq!(change.write, None);
    }

    #[test]
    fn unlimited_counts_until_the_counter_would_overflow() {
        let change = increment(
            Kind::Consumable,
            Limit::Unlimited,
            counter(i64::MAX - 1, Some(JUNE)),
            JUNE,
            1,
        )
        .unwrap();
        assert_eq!(change.result, Outcome::allowed(i64::MAX, Limit::Unlimited));
        assert_eq!(change.result.remaining, None);

        let overflow = increment(
            Kind::Consumable,
            Limit::Unlimited,
            counter(i64::MAX - 1, Some(JUNE)),
            JUNE,
            2,
        );
        assert_eq!(
            overflow,
            Err(Overflow {
                used: i64::MAX - 1,
                units: 2
            })
        );
    }

    #[test]
    fn huge_units_against_a_finite_limit_are_refused_not_overflowed() {
        let change = increment(
            Kind::Allocation,
            Limit::Max(i64::MAX),
            counter(5, None),
            JUNE,
            i64::MAX,
        )
        .unwrap();
        assert_eq!(change.result.reason, Some(Reason::LimitExceeded));
        assert_eq!(change.result.remaining, Some(i64::MAX - 5));
    }

    #[test]
    fn a_count_above_its_limit_refuses_and_shows_nothing_remaining() {
        let change = increment(Kind::Allocation, Limit::Max(3), counter(5, None), JUNE, 1).unwrap();
        assert_eq!(
            change.result,
            Outcome::refused(5, Limit::Max(3), Reason::LimitExceeded)
        );
        assert_eq!(change.result.remaining, Some(0));
    }

    #[test]
    fn decrements_stop_at_zero_and_never_create_a_counter() {
        assert_eq!(
            decrement(Kind::Allocation, None, JUNE, 1),
            Change {
                result: 0,
                write: None
            }
        );
        assert_eq!(
            decrement(Kind::Allocation, counter(3, None), JUNE, 1),
            Change {
                result: 2,
                write: counter(2, None)
            }
        );
        assert_eq!(
            decrement(Kind::Allocation, counter(1, None), JUNE, i64::MAX),
            Change {
                result: 0,
                write: counter(0, None)
            }
        );
        assert_eq!(
            decrement(Kind::Allocation, counter(0, None), JUNE, 1),
            Change {
                result: 0,
                write: None
            }
        );
        // A stale consumable has nothing to give back in this period.
        assert_eq!(
            decrement(Kind::Consumable, counter(9, Some(MAY)), JUNE, 2),
            Change {
                result: 0,
                write: counter(0, Some(JUNE))
            }
        );
    }

    #[test]
    fn releases_give_back_held_allocations_only() {
        use ReleaseRefusal::*;
        let cases = [
            (
                Kind::Allocation,
                counter(4, None),
                1,
                Ok((3, counter(3, None))),
            ),
            (
                Kind::Allocation,
                counter(4, None),
                4,
                Ok((0, counter(0, None))),
            ),
            (
                Kind::Allocation,
                counter(4, None),
                5,
                Err(ExceedsUsed { used: 4 }),
            ),
            (
                Kind::Allocation,
                counter(4, None),
                i64::MAX,
                Err(ExceedsUsed { used: 4 }),
            ),
            (Kind::Allocation, None, 1, Err(ExceedsUsed { used: 0 })),
            (
                Kind::Consumable,
                counter(100, Some(JUNE)),
                1,
                Err(Consumable),
            ),
            (Kind::Consumable, None, 1, Err(Consumable)),
        ];
        for (kind, stored, units, expected) in cases {
            let expected = expected.map(|(result, write)| Change { result, write });
            assert_eq!(
                release(kind, stored, units),
                expected,
                "{kind:?} {stored:?} {units}"
            );
        }
    }
}
