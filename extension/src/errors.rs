//! Raising tally's errors. What each error says lives in one catalogue,
//! [`tally_rules::errors`]: its SQLSTATE, stable message, DETAIL and HINT.
//! This module turns a catalogue entry into a Postgres ERROR, so a caller's
//! mistake never reaches a caller as `XX000`.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

pub use tally_rules::errors::*;

/// The Postgres code of a state; None for tally's own class (TL), which
/// pgrx's reports cannot carry: those are raised by [`raise_at_top`].
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

/// A SQLSTATE as Postgres packs it: five characters, six bits each, the
/// first lowest.
pub const fn packed_code(code: &str) -> i32 {
    let bytes = code.as_bytes();
    let mut packed = 0;
    let mut i = 0;
    while i < 5 {
        packed |= ((bytes[i].wrapping_sub(b'0') & 0x3F) as i32) << (6 * i);
        i += 1;
    }
    packed
}

/// Raise a catalogue entry of any SQLSTATE, tally's own class included, as a
/// Postgres ERROR, the way Postgres' `ereport` does. [`Raise`] cannot carry
/// the TL class (pgrx's reports know only Postgres' own codes), so a
/// function that refuses with TL001 does its work inside pgrx's guard and
/// raises the refusal here, at its top.
///
/// # Safety
/// Must be called from the outermost frame of an `extern "C-unwind"`
/// function Postgres called, with nothing between it and Postgres holding a
/// value to drop: raising leaves through `longjmp`, which runs no
/// destructor. Everything of `failure` is copied into Postgres' error state
/// and dropped before that.
pub unsafe fn raise_at_top(failure: Failure) -> ! {
    use std::ffi::{c_char, c_int, CString};
    // Declared here rather than taken from pgrx's bindings, which guard
    // every call: a guarded errfinish would turn the ERROR back into a
    // report pgrx knows, losing the code.
    unsafe extern "C-unwind" {
        fn errstart(elevel: c_int, domain: *const c_char) -> bool;
        fn errcode(sqlerrcode: c_int) -> c_int;
        fn errmsg(fmt: *const c_char, ...) -> c_int;
        fn errdetail(fmt: *const c_char, ...) -> c_int;
        fn errhint(fmt: *const c_char, ...) -> c_int;
        fn errfinish(filename: *const c_char, lineno: c_int, funcname: *const c_char);
    }
    let text = |s: String| CString::new(s.replace('\0', "")).unwrap_or_default();
    let message = text(failure.message);
    let detail = failure.detail.map(text);
    let hint = failure.hint.map(text);
    // SAFETY: errstart opens an error report that the calls below fill;
    // each copies its "%s" argument before returning.
    unsafe {
        if errstart(pgrx::PgLogLevel::ERROR as c_int, std::ptr::null()) {
            errcode(packed_code(failure.state.code()));
            errmsg(c"%s".as_ptr(), message.as_ptr());
            if let Some(detail) = &detail {
                errdetail(c"%s".as_ptr(), detail.as_ptr());
            }
            if let Some(hint) = &hint {
                errhint(c"%s".as_ptr(), hint.as_ptr());
            }
        }
    }
    drop((message, detail, hint));
    // SAFETY: nothing is left to drop in this frame or its callers' (the
    // contract above); errfinish raises the ERROR and does not return.
    unsafe {
        errfinish(
            concat!(file!(), "\0").as_ptr().cast(),
            line!() as c_int,
            c"tally".as_ptr(),
        )
    };
    unreachable!("an ERROR report does not return")
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
            assert_eq!(packed_code(state.code()), code);
            // Postgres packs the five characters six bits each, first lowest.
            let unpacked: String = (0..5)
                .map(|i| (((code >> (6 * i)) & 0x3F) as u8 + b'0') as char)
                .collect();
            assert_eq!(unpacked, state.code());
        }
    }
}
