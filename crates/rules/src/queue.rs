//! When a usage report that failed to send is tried again, and when it is
//! given up; how long a claim may hold reports; when putting a failed report
//! back in the queue could bill it twice.

use crate::Micros;

/// The longest lease a claim may take: a worker that dies holding reports
/// gives them back within an hour at most.
pub const MAX_LEASE_MS: i64 = 3_600_000;

/// The longest wait a provider's `Retry-After` may impose on one report (the
/// default `tally.report_backoff_max` too): the SQL API counts a
/// `retry_after` up to this, tallyd clamps the header to it before it
/// passes it on.
pub const MAX_RETRY_AFTER_MS: i64 = 3_600_000;

/// Stripe counts a meter event once per identifier within a rolling 24
/// hours. A report first claimed longer ago than this may have reached
/// Stripe outside that window: sent again, it may be counted again.
pub const RESEND_WINDOW_MICROS: Micros = 24 * 3_600 * 1_000_000;

/// Whether sending a report again may bill it twice: it was first claimed
/// (and so may first have reached the provider) a [`RESEND_WINDOW_MICROS`]
/// or more before `now`. A report never claimed was never sent.
pub fn resend_may_bill_twice(first_claimed_at: Option<Micros>, now: Micros) -> bool {
    first_claimed_at.is_some_and(|at| now.saturating_sub(at) >= RESEND_WINDOW_MICROS)
}

/// Whether a lease of `lease_ms` is one a claim may take: positive and at
/// most [`MAX_LEASE_MS`].
pub fn lease_in_bounds(lease_ms: i64) -> bool {
    (1..=MAX_LEASE_MS).contains(&lease_ms)
}

/// Delays between attempts: `base · 2^(attempts−1)`, capped at `max`, then
/// lengthened by up to a quarter at random. Jitter only lengthens, so until
/// the cap each delay is longer than the one before (doubling beats +25%).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub base_ms: i64,
    pub max_ms: i64,
}

impl Backoff {
    /// The delay after failed attempt number `attempts` (1 for the first),
    /// with `jitter` drawn uniformly from `[0, 1)`.
    pub fn delay_ms(self, attempts: i32, jitter: f64) -> i64 {
        let doublings = attempts.saturating_sub(1).clamp(0, 62) as u32;
        let delay = self
            .base_ms
            .saturating_mul(1_i64 << doublings)
            .min(self.max_ms);
        delay + (delay as f64 * 0.25 * jitter.clamp(0.0, 1.0)) as i64
    }
}

/// What becomes of a report after a failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterFailure {
    /// Back in the queue, claimable again after the delay.
    Retry { delay_ms: i64 },
    /// Marked `failed`: kept and listed, never claimed again.
    Fail,
}

/// Whether a report has had all its allowed attempts. The claim statement
/// (`CLAIM` in extension/src/reports.rs) repeats this test in SQL, to give
/// up reports whose last lease ran out without a second round trip; the
/// pg_tests `the_last_allowed_attempt_ends_the_report` and
/// `a_lease_that_runs_out_after_the_last_attempt_fails_the_report` pin the
/// two to the same count.
pub fn attempts_exhausted(attempts: i32, max_attempts: i32) -> bool {
    attempts >= max_attempts
}

/// A permanent failure, or the failure of the last allowed attempt, ends a
/// report; anything else is retried after the backoff, or after the
/// provider's `Retry-After` when that is longer. A `Retry-After` counts for
/// [`MAX_RETRY_AFTER_MS`] at most: a provider cannot park a report for
/// longer than an hour.
pub fn after_failure(
    attempts: i32,
    max_attempts: i32,
    permanent: bool,
    retry_after_ms: Option<i64>,
    backoff: Backoff,
    jitter: f64,
) -> AfterFailure {
    if permanent || attempts_exhausted(attempts, max_attempts) {
        AfterFailure::Fail
    } else {
        let delay_ms = backoff
            .delay_ms(attempts.max(1), jitter)
            .max(retry_after_ms.unwrap_or(0).clamp(0, MAX_RETRY_AFTER_MS));
        AfterFailure::Retry { delay_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKOFF: Backoff = Backoff {
        base_ms: 10_000,
        max_ms: 3_600_000,
    };

    #[test]
    fn delays_double_from_the_base_up_to_the_cap() {
        let delays: Vec<i64> = (1..=11)
            .map(|attempt| BACKOFF.delay_ms(attempt, 0.0))
            .collect();
        assert_eq!(
            delays,
            [
                10_000, 20_000, 40_000, 80_000, 160_000, 320_000, 640_000, 1_280_000, 2_560_000,
                3_600_000, 3_600_000
            ]
        );
        assert_eq!(BACKOFF.delay_ms(i32::MAX, 0.0), 3_600_000);
        assert_eq!(BACKOFF.delay_ms(0, 0.0), 10_000);
    }

    #[test]
    fn jitter_adds_at_most_a_quarter_and_delays_still_grow() {
        assert_eq!(BACKOFF.delay_ms(1, 0.999_999), 12_499);
        assert_eq!(BACKOFF.delay_ms(3, 0.5), 45_000);
        // The longest delay of one attempt is shorter than the shortest of the next.
        for attempt in 1..9 {
            assert!(BACKOFF.delay_ms(attempt, 0.999_999) < BACKOFF.delay_ms(attempt + 1, 0.0));
        }
        assert!(BACKOFF.delay_ms(20, 0.999_999) < 3_600_000 * 5 / 4);
    }

    #[test]
    fn a_report_ends_on_a_permanent_failure_or_its_last_attempt() {
        assert_eq!(
            after_failure(1, 10, false, None, BACKOFF, 0.0),
            AfterFailure::Retry { delay_ms: 10_000 }
        );
        assert_eq!(
            after_failure(9, 10, false, None, BACKOFF, 0.0),
            AfterFailure::Retry {
                delay_ms: 2_560_000
            }
        );
        assert_eq!(
            after_failure(10, 10, false, None, BACKOFF, 0.0),
            AfterFailure::Fail
        );
        assert_eq!(
            after_failure(1, 10, true, None, BACKOFF, 0.0),
            AfterFailure::Fail
        );
        // Failed before it was ever claimed: treated as the first attempt.
        assert_eq!(
            after_failure(0, 10, false, None, BACKOFF, 0.0),
            AfterFailure::Retry { delay_ms: 10_000 }
        );
    }

    #[test]
    fn a_longer_retry_after_wins_over_the_backoff() {
        let retry = |after| after_failure(1, 10, false, Some(after), BACKOFF, 0.0);
        assert_eq!(retry(60_000), AfterFailure::Retry { delay_ms: 60_000 });
        assert_eq!(retry(1_000), AfterFailure::Retry { delay_ms: 10_000 });
        // It counts for an hour at most.
        assert_eq!(
            retry(i64::MAX),
            AfterFailure::Retry {
                delay_ms: 3_600_000
            }
        );
        assert_eq!(retry(-5), AfterFailure::Retry { delay_ms: 10_000 });
        // It does not keep a report past its last attempt.
        assert_eq!(
            after_failure(10, 10, false, Some(1_000), BACKOFF, 0.0),
            AfterFailure::Fail
        );
    }

    #[test]
    fn a_resend_may_bill_twice_once_the_first_claim_is_a_day_old() {
        let day = RESEND_WINDOW_MICROS;
        let now = 800_000_000_000_000;
        assert!(!resend_may_bill_twice(None, now));
        assert!(!resend_may_bill_twice(Some(now), now));
        assert!(!resend_may_bill_twice(Some(now - day + 1), now));
        assert!(resend_may_bill_twice(Some(now - day), now));
        assert!(resend_may_bill_twice(Some(i64::MIN), now));
        // A claim "in the future" (clocks) is not old.
        assert!(!resend_may_bill_twice(Some(now + day), now));
    }

    #[test]
    fn leases_are_positive_and_an_hour_at_most() {
        for (lease, ok) in [
            (0, false),
            (-1, false),
            (1, true),
            (60_000, true),
            (3_600_000, true),
            (3_600_001, false),
            (i64::MAX, false),
        ] {
            assert_eq!(lease_in_bounds(lease), ok, "{lease}");
        }
    }
}
