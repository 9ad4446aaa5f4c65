//! Threshold alerts: which thresholds a change of a count crosses, and how a
//! percentage of a limit becomes units.
//!
//! A threshold of `percent` of a limit is reached at the smallest count that
//! is at least that share of the limit: `ceil(limit * percent / 100)` units.
//! A change from `before` to `after` crosses it when `before` is below and
//! `after` at or above. A counter keeps the units of the next threshold above
//! its count, so that an increment that crosses nothing is decided by
//! arithmetic on the row it already updates ([`crosses`]).

/// Thresholds are whole percentages of a limit, from 1 to 100.
pub const MIN_PERCENT: i32 = 1;
pub const MAX_PERCENT: i32 = 100;

/// The units at which `percent` of `limit` is reached (rounded up), or none
/// for a percentage outside 1..=100, a negative limit, or a threshold that
/// cannot be crossed (a limit of 0 is reached before any use).
pub fn threshold_units(limit: i64, percent: i32) -> Option<i64> {
    if !(MIN_PERCENT..=MAX_PERCENT).contains(&percent) || limit <= 0 {
        return None;
    }
    let scaled = i128::from(limit) * i128::from(percent);
    let units = (scaled + 99) / 100;
    // units <= limit, so it fits in an i64; at least 1 since limit, percent > 0.
    i64::try_from(units).ok()
}

/// Whether a change to `after` reaches the next threshold a counter keeps
/// (none: no threshold is left). The only test on an increment's hot path.
pub fn crosses(next_alert: Option<i64>, after: i64) -> bool {
    next_alert.is_some_and(|next| after >= next)
}

/// A threshold a change crossed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Crossing {
    pub percent: i32,
    pub units: i64,
}

/// The thresholds (percentages of `limit`) a change from `before` to `after`
/// crosses, lowest first, each once.
pub fn crossed(limit: i64, percents: &[i32], before: i64, after: i64) -> Vec<Crossing> {
    let mut crossed: Vec<Crossing> = percents
        .iter()
        .filter_map(|&percent| {
            let units = threshold_units(limit, percent)?;
            (before < units && units <= after).then_some(Crossing { percent, units })
        })
        .collect();
    crossed.sort_by_key(|c| c.percent);
    crossed.dedup();
    crossed
}

/// The units of the lowest threshold above `used`: the copy a counter keeps.
/// None when no threshold is left (or none is configured, or the metric is
/// unlimited: pass `limit` None).
pub fn next_alert(limit: Option<i64>, percents: &[i32], used: i64) -> Option<i64> {
    let limit = limit?;
    percents
        .iter()
        .filter_map(|&percent| threshold_units(limit, percent))
        .filter(|&units| units > used)
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// limit, percents, before, after, the percents crossed.
    type CrossedCase = (i64, &'static [i32], i64, i64, &'static [i32]);
    /// limit, percents, used, the next threshold.
    type NextCase = (Option<i64>, &'static [i32], i64, Option<i64>);

    #[test]
    fn threshold_units_round_up() {
        let cases: &[(i64, i32, Option<i64>)] = &[
            (100, 80, Some(80)),
            (100, 100, Some(100)),
            (10, 80, Some(8)),
            (3, 80, Some(3)),    // 2.4 -> 3
            (7, 50, Some(4)),    // 3.5 -> 4
            (1, 1, Some(1)),     // 0.01 -> 1
            (1000, 1, Some(10)), // exact
            (i64::MAX, 100, Some(i64::MAX)),
            (i64::MAX, 50, Some(i64::MAX / 2 + 1)),
            (0, 80, None),
            (-5, 80, None),
            (100, 0, None),
            (100, 101, None),
            (100, -1, None),
        ];
        for &(limit, percent, want) in cases {
            assert_eq!(threshold_units(limit, percent), want, "{limit} {percent}");
        }
    }

    #[test]
    fn crossed_thresholds() {
        const BOTH: &[i32] = &[80, 100];
        let cases: &[CrossedCase] = &[
            (100, BOTH, 0, 79, &[]),
            (100, BOTH, 79, 80, &[80]),
            (100, BOTH, 80, 81, &[]), // already at 80%
            (100, BOTH, 70, 100, &[80, 100]),
            (100, BOTH, 99, 100, &[100]),
            (100, BOTH, 100, 120, &[]),
            (10, &[80], 7, 8, &[80]),
            (10, &[80], 8, 9, &[]),
            (3, &[80], 2, 3, &[80]), // 80% of 3 rounds up to 3
            (100, &[80, 80], 0, 90, &[80]),
            (100, &[100, 50], 0, 100, &[50, 100]),
            (100, &[], 0, 100, &[]),
            (100, BOTH, 90, 85, &[]), // a decrement crosses nothing
        ];
        for &(limit, percents, before, after, want) in cases {
            let got: Vec<i32> = crossed(limit, percents, before, after)
                .iter()
                .map(|c| c.percent)
                .collect();
            assert_eq!(got, want, "{limit} {percents:?} {before}->{after}");
        }
    }

    #[test]
    fn next_alert_is_the_lowest_threshold_above_the_count() {
        let cases: &[NextCase] = &[
            (Some(100), &[80, 100], 0, Some(80)),
            (Some(100), &[80, 100], 79, Some(80)),
            (Some(100), &[80, 100], 80, Some(100)),
            (Some(100), &[100, 80], 99, Some(100)),
            (Some(100), &[80, 100], 100, None),
            (Some(100), &[], 0, None),
            (None, &[80], 0, None),
            (Some(0), &[80], 0, None),
            (Some(3), &[80], 2, Some(3)),
        ];
        for &(limit, percents, used, want) in cases {
            assert_eq!(
                next_alert(limit, percents, used),
                want,
                "{limit:?} {percents:?} {used}"
            );
        }
    }

    #[test]
    fn crosses_is_reaching_the_kept_threshold() {
        let cases: &[(Option<i64>, i64, bool)] = &[
            (None, i64::MAX, false),
            (Some(80), 79, false),
            (Some(80), 80, true),
            (Some(80), 81, true),
        ];
        for &(next, after, want) in cases {
            assert_eq!(crosses(next, after), want, "{next:?} {after}");
        }
    }

    #[test]
    fn a_crossing_detected_by_the_copy_agrees_with_crossed() {
        // For every move within a small limit, `crosses` on the kept copy
        // says yes exactly when `crossed` finds a threshold.
        let percents = [25, 80, 100];
        for limit in 1..=12 {
            for before in 0..=limit {
                for after in before..=limit {
                    let next = next_alert(Some(limit), &percents, before);
                    assert_eq!(
                        crosses(next, after),
                        !crossed(limit, &percents, before, after).is_empty(),
                        "{limit} {before}->{after}"
                    );
                }
            }
        }
    }
}
