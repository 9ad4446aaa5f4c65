//! The rules of metering as plain functions over plain values: which billing
//! period applies, what an increment or decrement does to a counter, and
//! which limits a plan change would break.
//!
//! Nothing here touches Postgres. The SQL functions load a counter under its
//! row lock, ask these functions what to do, and write the answer back, so
//! every rule is table-tested in memory and exercised end to end.

/// Microseconds since 2000-01-01 00:00 UTC: how Postgres stores `timestamptz`.
pub type Micros = i64;

pub const MICROS_PER_DAY: Micros = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
const UNIX_DAYS_AT_PG_EPOCH: i64 = 10_957;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Used up and reset each billing period (messages, sms, email).
    Consumable,
    /// A standing count changed only by increments, decrements and syncs
    /// (chatbots, seats).
    Allocation,
}

impl Kind {
    pub fn parse(kind: &str) -> Option<Kind> {
        match kind {
            "consumable" => Some(Kind::Consumable),
            "allocation" => Some(Kind::Allocation),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Consumable => "consumable",
            Kind::Allocation => "allocation",
        }
    }
}

/// A billing period, `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Period {
    pub start: Micros,
    pub end: Micros,
}

/// The tenant's current period: its stored `[period_start, period_end)` when
/// a start is set (no end means one month later), else the UTC calendar month
/// holding `now`. A passed end does not roll the period: a renewal does.
pub fn current_period(start: Option<Micros>, end: Option<Micros>, now: Micros) -> Period {
    match start {
        Some(start) => Period {
            start,
            end: end.unwrap_or_else(|| add_one_month(start)),
        },
        None => {
            let start = month_start(now);
            Period {
                start,
                end: add_one_month(start),
            }
        }
    }
}

/// Midnight UTC on the first day of the month holding `at`.
pub fn month_start(at: Micros) -> Micros {
    let (year, month, _) = civil_from_days(at.div_euclid(MICROS_PER_DAY) + UNIX_DAYS_AT_PG_EPOCH);
    (days_from_civil(year, month, 1) - UNIX_DAYS_AT_PG_EPOCH) * MICROS_PER_DAY
}

/// The same day and time of day one month later, in UTC, with the day clamped
/// to the month's length (January 31 + 1 month = February 28 or 29), as
/// Postgres adds `interval '1 month'`.
pub fn add_one_month(at: Micros) -> Micros {
    let days = at.div_euclid(MICROS_PER_DAY);
    let time_of_day = at.rem_euclid(MICROS_PER_DAY);
    let (year, month, day) = civil_from_days(days + UNIX_DAYS_AT_PG_EPOCH);
    let (year, month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let day = day.min(days_in_month(year, month));
    (days_from_civil(year, month, day) - UNIX_DAYS_AT_PG_EPOCH) * MICROS_PER_DAY + time_of_day
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: u32) -> u32 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date. Counts in 400-year
/// cycles (146,097 days each) from a year that starts in March, so the leap
/// day falls at the end of the counting year.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let (year, month) = (if month <= 2 { year - 1 } else { year }, i64::from(month));
    let cycle = year.div_euclid(400);
    let year_of_cycle = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_cycle = year_of_cycle * 365 + year_of_cycle / 4 - year_of_cycle / 100 + day_of_year;
    cycle * 146_097 + day_of_cycle - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let days = days + 719_468;
    let cycle = days.div_euclid(146_097);
    let day_of_cycle = days.rem_euclid(146_097);
    let year_of_cycle = (day_of_cycle - day_of_cycle / 1_460 + day_of_cycle / 36_524
        - day_of_cycle / 146_096)
        / 365;
    let day_of_year =
        day_of_cycle - (365 * year_of_cycle + year_of_cycle / 4 - year_of_cycle / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = cycle * 400 + year_of_cycle + i64::from(month <= 2);
    (year, month, day)
}

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
/// unlimited metric they fit unless the sum would overflow.
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

    /// 2024-`month`-`day` `hour`:00 UTC, in Postgres microseconds.
    fn at(year: i64, month: u32, day: u32, hour: i64) -> Micros {
        (days_from_civil(year, month, day) - UNIX_DAYS_AT_PG_EPOCH) * MICROS_PER_DAY
            + hour * 3_600_000_000
    }

    #[test]
    fn civil_dates_round_trip_and_match_known_days() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 1, 1), UNIX_DAYS_AT_PG_EPOCH);
        assert_eq!(days_from_civil(2024, 2, 29), 19_782);
        assert_eq!(days_from_civil(1969, 12, 31), -1);
        for days in (-800_000..800_000).step_by(97) {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days, "{y}-{m}-{d}");
        }
    }

    #[test]
    fn month_start_truncates_to_the_first_of_the_month_utc() {
        assert_eq!(month_start(at(2024, 3, 17, 13)), at(2024, 3, 1, 0));
        assert_eq!(month_start(at(2024, 3, 1, 0)), at(2024, 3, 1, 0));
        assert_eq!(month_start(at(2024, 2, 29, 23)), at(2024, 2, 1, 0));
        assert_eq!(month_start(at(1999, 12, 31, 23)), at(1999, 12, 1, 0));
        assert_eq!(month_start(at(1999, 12, 31, 23) - 1), at(1999, 12, 1, 0));
    }

    #[test]
    fn one_month_later_clamps_the_day_like_postgres() {
        assert_eq!(add_one_month(at(2024, 1, 31, 5)), at(2024, 2, 29, 5));
        assert_eq!(add_one_month(at(2023, 1, 31, 5)), at(2023, 2, 28, 5));
        assert_eq!(add_one_month(at(2024, 12, 15, 0)), at(2025, 1, 15, 0));
        assert_eq!(add_one_month(at(2024, 3, 31, 23)), at(2024, 4, 30, 23));
    }

    #[test]
    fn the_period_is_the_tenants_or_the_calendar_month() {
        let now = at(2024, 5, 20, 10);
        assert_eq!(
            current_period(None, None, now),
            Period {
                start: at(2024, 5, 1, 0),
                end: at(2024, 6, 1, 0)
            }
        );
        assert_eq!(
            current_period(Some(at(2024, 5, 10, 0)), None, now),
            Period {
                start: at(2024, 5, 10, 0),
                end: at(2024, 6, 10, 0)
            }
        );
        // A period whose end has passed stays current until a renewal.
        assert_eq!(
            current_period(Some(at(2024, 1, 1, 0)), Some(at(2024, 2, 1, 0)), now),
            Period {
                start: at(2024, 1, 1, 0),
                end: at(2024, 2, 1, 0)
            }
        );
    }

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
