//! Raising tally's errors. What each error says lives in one catalogue,
//! [`tally_rules::errors`]: its SQLSTATE, stable message, DETAIL and HINT.
//! This module turns a catalogue entry into a Postgres ERROR, so a caller's
//! mistake never reaches a caller as `XX000`.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub use tally_rules::errors::*;

/// The Postgres code of a state; None for tally's own class (TL), which only
/// the PL/pgSQL trigger functions raise.
fn error_code(state: SqlState) -> Option<PgSqlErrorCode> {
    Some(match state {
        SqlState::InvalidParameterValue => PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        SqlState::NullValueNotAllowed => PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        SqlState::NumericValueOutOfRange => PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        SqlState::DatetimeFieldOverflow => PgSqlErrorCode::ERRCODE_DATETIME_FIELD_OVERFLOW,
        SqlState::InsufficientPrivilege => PgSqlErrorCode::ERRCODE_INSUFFICIENT_PRIVILEGE,
        SqlState::NoDataFound => PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
        SqlState::ObjectNotInPrerequisiteState => {
            PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
        }
        SqlState::UniqueViolation => PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        SqlState::InternalError => PgSqlErrorCode::ERRCODE_INTERNAL_ERROR,
        SqlState::EnforcedLimitExceeded => return None,
    })
}

/// Raise a catalogue entry as a Postgres ERROR: the statement and everything
/// it wrote are rolled back.
pub trait Raise {
    fn raise(self) -> !;
}

impl Raise for Failure {
    fn raise(self) -> ! {
        let Some(code) = error_code(self.state) else {
            bug(format!("{} raised outside PL/pgSQL", self.state))
        };
        let mut report = ErrorReport::new(code, self.message, "tally");
        if let Some(detail) = self.detail {
            report = report.set_detail(detail);
        }
        if let Some(hint) = self.hint {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("an ERROR report does not return")
    }
}

/// Unwrap a result whose error is a caller's mistake, raising it.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T, Failure> {
    fn or_raise(self) -> T {
        self.unwrap_or_else(|failure| failure.raise())
    }
}

/// A broken invariant inside tally: raised as XX000 so it is noticed and
/// fixed.
#[cold]
pub fn bug(what: String) -> ! {
    internal(what).raise()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_catalogue_state_maps_to_its_postgres_code() {
        for state in SqlState::ALL {
            let Some(code) = error_code(state) else {
                assert!(state.code().starts_with("TL"));
                continue;
            };
            let code = code as i32;
            // Postgres packs the five characters six bits each, first lowest.
            let unpacked: String = (0..5)
                .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
                .collect();
            assert_eq!(unpacked, state.code());
        }
    }
}
