//! Checks of the arguments callers pass, before any SQL runs. The SQL
//! functions take every argument as `Option` so a NULL is reported (22004)
//! instead of silently returning NULL, as a STRICT function would.

use crate::errors::{empty_argument, invalid_argument, null_argument, Failure};

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
