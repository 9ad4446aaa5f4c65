//! Checks of the arguments callers pass, before any SQL runs. The SQL
//! functions take every argument as `Option` so a NULL is reported (22004)
//! instead of silently returning NULL, as a STRICT function would.

use pgrx::datum::{Interval, TimestampWithTimeZone, Uuid};

use crate::errors::{self, empty_argument, null_argument, Failure, OrRaise};
use crate::rules::{self, Micros};

/// Stripe accepts idempotency keys of up to 255 characters; tally keeps the
/// same bound so a key can be passed through unchanged.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = errors::MAX_ID_BYTES;

/// A required, non-empty identifier (tenant, metric, plan, event, customer)
/// of at most [`errors::MAX_ID_BYTES`]: longer ones would only reach the
/// btree's own limit later, with a less helpful error.
pub fn id<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, Failure> {
    match value {
        None => Err(null_argument(name)),
        Some("") => Err(empty_argument(name)),
        Some(value) if value.len() > errors::MAX_ID_BYTES => {
            Err(errors::too_long(name, value.len()))
        }
        Some(value) => Ok(value),
    }
}

/// A positive number of units.
pub fn units(value: Option<i64>) -> Result<i64, Failure> {
    match value {
        None => Err(null_argument("units")),
        Some(units) if units <= 0 => Err(errors::units_not_positive(units)),
        Some(units) => Ok(units),
    }
}

/// An optional idempotency key: absent means none, but an empty or oversized
/// key is a mistake.
pub fn idempotency_key(value: Option<&str>) -> Result<Option<&str>, Failure> {
    match value {
        Some("") => Err(errors::empty_idempotency_key()),
        Some(key) if key.len() > MAX_IDEMPOTENCY_KEY_BYTES => Err(
            errors::idempotency_key_too_long(key.len(), MAX_IDEMPOTENCY_KEY_BYTES),
        ),
        key => Ok(key),
    }
}

/// A count that may be zero but not negative.
pub fn count(name: &str, value: Option<i64>) -> Result<i64, Failure> {
    match value {
        None => Err(null_argument(name)),
        Some(count) if count < 0 => Err(errors::negative_count(name, count)),
        Some(count) => Ok(count),
    }
}

/// A positive whole number, such as a batch size.
pub fn positive(name: &str, value: Option<i32>) -> Result<i32, Failure> {
    match value {
        None => Err(null_argument(name)),
        Some(n) if n <= 0 => Err(errors::not_positive(name, n)),
        Some(n) => Ok(n),
    }
}

/// A positive interval, in microseconds.
pub fn positive_interval(name: &str, value: Interval) -> Result<i64, Failure> {
    match i64::try_from(value.as_micros()) {
        Ok(micros) if micros > 0 => Ok(micros),
        _ => Err(errors::interval_not_positive(name, value)),
    }
}

/// A claim's lease: positive, and at most [`rules::MAX_LEASE_MS`].
pub fn lease(value: Interval) -> Result<i64, Failure> {
    if value.as_micros() > i128::from(rules::MAX_LEASE_MS) * 1_000 {
        return Err(errors::interval_too_long("lease", value, "01:00:00"));
    }
    positive_interval("lease", value)
}

/// A positive wait in milliseconds, however long (the caller clamps it).
pub fn positive_wait_ms(name: &str, value: Interval) -> Result<i64, Failure> {
    match value.as_micros() {
        micros if micros > 0 => Ok(i64::try_from(micros / 1_000).unwrap_or(i64::MAX)),
        _ => Err(errors::interval_not_positive(name, value)),
    }
}

/// A billing period: a start, and an end after it or none (one month).
pub fn period(
    start: Option<TimestampWithTimeZone>,
    end: Option<TimestampWithTimeZone>,
) -> Result<(Micros, Option<Micros>), Failure> {
    let shown =
        |at: Option<TimestampWithTimeZone>| at.map_or("NULL".to_string(), |at| at.to_string());
    let not_finite = || errors::period_not_finite(None, &shown(start), &shown(end));
    let Some(start_at) = start else {
        return Err(null_argument("period_start"));
    };
    if !start_at.is_finite() || end.is_some_and(|end| !end.is_finite()) {
        return Err(not_finite());
    }
    let (start_micros, end_micros) = (start_at.into_inner(), end.map(|end| end.into_inner()));
    if !rules::period_in_range(start_micros, end_micros) {
        return Err(errors::period_out_of_range(
            None,
            &shown(start),
            &shown(end),
        ));
    }
    if end_micros.is_some_and(|end| end <= start_micros) {
        return Err(errors::period_end_not_after_start(
            None,
            &shown(start),
            &shown(end),
        ));
    }
    Ok((start_micros, end_micros))
}

/// A required argument, raising 22004 when it is NULL.
pub fn required<T>(name: &str, value: Option<T>) -> T {
    value.ok_or_else(|| null_argument(name)).or_raise()
}

/// The longest error text kept on a report or an alert.
const MAX_ERROR_CHARS: usize = 2_000;

/// What a worker says of a failed send (`fail_usage_report`,
/// `fail_alert`), checked.
pub struct SendFailure {
    pub token: Uuid,
    /// Cut at [`MAX_ERROR_CHARS`].
    pub error: String,
    pub permanent: bool,
    pub retry_after_ms: Option<i64>,
}

impl SendFailure {
    pub fn new(
        lease_token: Option<Uuid>,
        error: Option<&str>,
        permanent: Option<bool>,
        retry_after: Option<Interval>,
    ) -> SendFailure {
        let retry_after_ms =
            retry_after.map(|after| positive_wait_ms("retry_after", after).or_raise());
        SendFailure {
            token: required("lease_token", lease_token),
            error: required("error", error)
                .chars()
                .take(MAX_ERROR_CHARS)
                .collect(),
            permanent: required("permanent", permanent),
            retry_after_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::errors::SqlState::*;

    #[test]
    fn ids_must_be_present_and_non_empty() {
        assert_eq!(id("tenant_id", Some("acme")), Ok("acme"));
        assert_eq!(
            id("tenant_id", None).unwrap_err().state,
            NullValueNotAllowed
        );
        let empty = id("tenant_id", Some("")).unwrap_err();
        assert_eq!(
            (empty.state, empty.message.as_str()),
            (InvalidParameterValue, "tenant_id must not be empty")
        );
    }

    #[test]
    fn units_must_be_positive() {
        assert_eq!(units(Some(1)), Ok(1));
        assert_eq!(units(Some(i64::MAX)), Ok(i64::MAX));
        assert_eq!(units(None).unwrap_err().state, NullValueNotAllowed);
        for bad in [0, -1, i64::MIN] {
            let failure = units(Some(bad)).unwrap_err();
            assert_eq!(failure.state, InvalidParameterValue);
            assert_eq!(failure.detail, Some(format!("units = {bad}")));
        }
    }

    #[test]
    fn counts_may_be_zero_but_not_negative() {
        assert_eq!(count("actual", Some(0)), Ok(0));
        assert_eq!(
            count("actual", None).unwrap_err().state,
            NullValueNotAllowed
        );
        assert_eq!(
            count("actual", Some(-1)).unwrap_err().message,
            "actual must not be negative"
        );
        assert_eq!(
            positive("batch", Some(0)).unwrap_err().message,
            "batch must be positive"
        );
        assert_eq!(positive("batch", Some(1)), Ok(1));
    }

    #[test]
    fn idempotency_keys_are_optional_but_not_empty_or_huge() {
        assert_eq!(idempotency_key(None), Ok(None));
        assert_eq!(idempotency_key(Some("req-1")), Ok(Some("req-1")));
        assert!(idempotency_key(Some("")).is_err());
        let long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
        assert_eq!(
            idempotency_key(Some(&long)).unwrap_err().state,
            InvalidParameterValue
        );
        assert!(idempotency_key(Some(&long[1..])).is_ok());
    }

    #[test]
    fn ids_are_at_most_255_bytes() {
        let long = "é".repeat(128);
        let failure = id("tenant_id", Some(&long)).unwrap_err();
        assert_eq!(
            (
                failure.state,
                failure.message.as_str(),
                failure.detail.as_deref()
            ),
            (
                InvalidParameterValue,
                "tenant_id is too long",
                Some("256 bytes, at most 255")
            )
        );
        assert!(id("tenant_id", Some(&long[2..])).is_ok());
    }
}
