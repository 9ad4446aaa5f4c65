//! Checks of the arguments callers pass, before any SQL runs. The SQL
//! functions take every argument as `Option` so a NULL is reported (22004)
//! instead of silently returning NULL, as a STRICT function would.

use pgrx::datum::{Interval, TimestampWithTimeZone};

use crate::errors::{empty_argument, invalid_argument, null_argument, Failure};
use crate::rules::Micros;

/// Stripe accepts idempotency keys of up to 255 characters; tally keeps the
/// same bound so a key can be passed through unchanged.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// A required, non-empty identifier (tenant, metric, plan).
pub fn id<'a>(name: &str, value: Option<&'a str>) -> Result<&'a str, Failure> {
    match value {
        None => Err(null_argument(name)),
        Some("") => Err(empty_argument(name)),
        Some(value) => Ok(value),
    }
}

/// A positive number of units.
pub fn units(value: Option<i64>) -> Result<i64, Failure> {
    match value {
        None => Err(null_argument("units")),
        Some(units) if units <= 0 => Err(invalid_argument("units must be positive")
            .detail(format!("units = {units}"))
            .hint("pass a positive number of units; give units back with tally.decrement_usage")),
        Some(units) => Ok(units),
    }
}

/// An optional idempotency key: absent means none, but an empty or oversized
/// key is a mistake.
pub fn idempotency_key(value: Option<&str>) -> Result<Option<&str>, Failure> {
    match value {
        Some("") => Err(empty_argument("idempotency_key")
            .hint("pass NULL for a call without a key, or a unique key per logical request")),
        Some(key) if key.len() > MAX_IDEMPOTENCY_KEY_BYTES => {
            Err(invalid_argument("idempotency_key is too long")
                .detail(format!(
                    "{} bytes, at most {MAX_IDEMPOTENCY_KEY_BYTES}",
                    key.len()
                ))
                .hint("use a shorter key, such as a UUID or a hash of the request"))
        }
        key => Ok(key),
    }
}

/// A count that may be zero but not negative.
pub fn count(name: &str, value: Option<i64>) -> Result<i64, Failure> {
    match value {
        None => Err(null_argument(name)),
        Some(count) if count < 0 => Err(invalid_argument(format!("{name} must not be negative"))
            .detail(format!("{name} = {count}"))
            .hint(format!("pass the {name} count, 0 or more"))),
        Some(count) => Ok(count),
    }
}

/// A positive whole number, such as a batch size.
pub fn positive(name: &str, value: Option<i32>) -> Result<i32, Failure> {
    match value {
        None => Err(null_argument(name)),
        Some(n) if n <= 0 => Err(invalid_argument(format!("{name} must be positive"))
            .detail(format!("{name} = {n}"))
            .hint(format!("pass a {name} of 1 or more"))),
        Some(n) => Ok(n),
    }
}

/// A positive interval, in microseconds.
pub fn positive_interval(name: &str, value: Interval) -> Result<i64, Failure> {
    match i64::try_from(value.as_micros()) {
        Ok(micros) if micros > 0 => Ok(micros),
        _ => Err(
            invalid_argument(format!("{name} must be a positive interval"))
                .detail(format!("{name} = {value}"))
                .hint(format!("pass a {name} such as '5 minutes'")),
        ),
    }
}

/// A billing period: a start, and an end after it or none (one month).
pub fn period(
    start: Option<TimestampWithTimeZone>,
    end: Option<TimestampWithTimeZone>,
) -> Result<(Micros, Option<Micros>), Failure> {
    let Some(start) = start.filter(|start| start.is_finite()) else {
        return Err(match start {
            None => null_argument("period_start"),
            Some(_) => {
                invalid_argument("billing period must be finite").hint("give real timestamps")
            }
        });
    };
    let (start_micros, end_micros) = (start.into_inner(), end.map(|end| end.into_inner()));
    match end {
        Some(end) if !end.is_finite() => {
            Err(invalid_argument("billing period must be finite").hint("give real timestamps"))
        }
        Some(end) if end.into_inner() <= start_micros => {
            Err(invalid_argument("period_end must be after period_start")
                .detail(format!("period {start} to {end}"))
                .hint(
                    "a billing period is [period_start, period_end): the end comes after the start",
                ))
        }
        _ => Ok((start_micros, end_micros)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pgrx::PgSqlErrorCode::*;

    #[test]
    fn ids_must_be_present_and_non_empty() {
        assert_eq!(id("tenant_id", Some("acme")), Ok("acme"));
        assert_eq!(
            id("tenant_id", None).unwrap_err().code,
            ERRCODE_NULL_VALUE_NOT_ALLOWED
        );
        let empty = id("tenant_id", Some("")).unwrap_err();
        assert_eq!(
            (empty.code, empty.message.as_str()),
            (
                ERRCODE_INVALID_PARAMETER_VALUE,
                "tenant_id must not be empty"
            )
        );
    }

    #[test]
    fn units_must_be_positive() {
        assert_eq!(units(Some(1)), Ok(1));
        assert_eq!(units(Some(i64::MAX)), Ok(i64::MAX));
        assert_eq!(
            units(None).unwrap_err().code,
            ERRCODE_NULL_VALUE_NOT_ALLOWED
        );
        for bad in [0, -1, i64::MIN] {
            let failure = units(Some(bad)).unwrap_err();
            assert_eq!(failure.code, ERRCODE_INVALID_PARAMETER_VALUE);
            assert_eq!(failure.detail, Some(format!("units = {bad}")));
        }
    }

    #[test]
    fn counts_may_be_zero_but_not_negative() {
        assert_eq!(count("actual", Some(0)), Ok(0));
        assert_eq!(
            count("actual", None).unwrap_err().code,
            ERRCODE_NULL_VALUE_NOT_ALLOWED
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
            idempotency_key(Some(&long)).unwrap_err().code,
            ERRCODE_INVALID_PARAMETER_VALUE
        );
        assert!(idempotency_key(Some(&long[1..])).is_ok());
    }
}
