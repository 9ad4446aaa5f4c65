//! Billing periods: the tenant's own, or the calendar month in UTC.

/// Microseconds since 2000-01-01 00:00 UTC: how Postgres stores `timestamptz`.
pub type Micros = i64;

pub const MICROS_PER_DAY: Micros = 86_400_000_000;
/// Days from 1970-01-01 to 2000-01-01.
pub(crate) const UNIX_DAYS_AT_PG_EPOCH: i64 = 10_957;

/// The earliest period start tally accepts: 1970-01-01 00:00 UTC.
pub const EARLIEST_PERIOD_START: Micros = -946_684_800_000_000;
/// Every period bound comes before 9999-01-01 00:00 UTC, so a month added to
/// a start always stays within what Postgres can store.
pub const PERIODS_END_BEFORE: Micros = 252_424_080_000_000_000;

/// Whether a stored or given period lies within the years tally accepts.
pub fn period_in_range(start: Micros, end: Option<Micros>) -> bool {
    (EARLIEST_PERIOD_START..PERIODS_END_BEFORE).contains(&start)
        && end.is_none_or(|end| end < PERIODS_END_BEFORE)
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
pub(crate) fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_lie_between_1970_and_9999() {
        assert!(period_in_range(0, None));
        assert!(period_in_range(EARLIEST_PERIOD_START, Some(0)));
        assert!(!period_in_range(EARLIEST_PERIOD_START - 1, None));
        assert!(!period_in_range(PERIODS_END_BEFORE, None));
        assert!(!period_in_range(0, Some(PERIODS_END_BEFORE)));
        // A month after the latest start is still a valid timestamp.
        let last = PERIODS_END_BEFORE - 1;
        assert!(add_one_month(last) > last);
    }

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
}
