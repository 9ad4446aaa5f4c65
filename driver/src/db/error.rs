//! The one error of the database layer. A failed statement is read once,
//! here, from its SQLSTATE and (for tally's own errors) its stable message,
//! both from the rules crate's catalogue (`tally_rules::errors`); HTTP
//! (`http::error`) and the CLI map the resulting [`ErrorKind`] to their own
//! answers and never look at a SQLSTATE themselves.

use std::fmt;

use tally_rules::errors::{message, SqlState};
use tokio_postgres::error::SqlState as PgState;

/// What a failed statement means to whoever called tallyd.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// P0002: the tenant, plan, metric or report the call named does not
    /// exist.
    NotFound(Missing),
    /// 22023, 22004: a bad argument.
    InvalidArgument,
    /// 22003: a counter would pass the largest count.
    OutOfRange,
    /// 55000: refused as things stand: a plan change over the new plan's
    /// limits, a tenant with unsent usage, a schema older than the library.
    Refused,
    /// 23505: the row exists already: a tenant id, or a provider customer or
    /// subscription linked to another tenant.
    AlreadyExists,
    /// 23503: a row names another that does not exist (a tenant's plan).
    MissingReference,
    /// 40001, 40P01: the transaction lost a race with another; the same call
    /// again may succeed.
    Conflict,
    /// 22023: an idempotency key sent again with another metric, other
    /// units, or to another function.
    KeyReused,
    /// 22023: a release (the API's decrement) of a consumable.
    NotAnAllocation,
    /// 55000: a release of more units than are in use.
    ExceedsUsed,
    /// 55000: the library is newer than the database's schema.
    NeedsUpdate,
    /// 55P03, 57014: a lock or statement timeout ran out (a row held by a
    /// long transaction, say); the same call later may succeed.
    Busy,
    /// Anything else: no connection, a missing privilege, a bug in tally
    /// (XX000).
    Other,
}

/// Which thing a P0002 says is missing, read from its stable message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Missing {
    Tenant,
    Plan,
    Metric,
    Report,
    /// Another P0002, such as no default plan.
    Other,
}

/// A failed statement: what it means, and the driver's error, whose text it
/// shows unchanged (so logs and CLI messages read as Postgres wrote them).
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    source: tokio_postgres::Error,
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The database's message, if the database answered: for tally's own
    /// errors, the stable lower-case text of its catalogue.
    pub fn message(&self) -> Option<&str> {
        self.source.as_db_error().map(|error| error.message())
    }

    /// The database's DETAIL, if any: the data of tally's own errors.
    pub fn detail(&self) -> Option<&str> {
        self.source.as_db_error().and_then(|error| error.detail())
    }

    /// The SQLSTATE, if the database answered.
    pub fn sqlstate(&self) -> Option<&str> {
        self.source.as_db_error().map(|error| error.code().code())
    }

    /// The constraint the statement violated, if any.
    pub fn constraint(&self) -> Option<&str> {
        self.source
            .as_db_error()
            .and_then(|error| error.constraint())
    }

    /// Log this error at ERROR with its SQLSTATE, message and constraint
    /// (the driver's own text says only "db error"). DETAIL is left out: it
    /// may carry a caller's data.
    pub fn log(&self, context: &str) {
        match self.source.as_db_error() {
            Some(db) => tracing::error!(
                sqlstate = db.code().code(),
                error_message = db.message(),
                constraint = db.constraint().unwrap_or(""),
                table = db.table().unwrap_or(""),
                "{context}: database error"
            ),
            None => tracing::error!(error = %self.source, "{context}"),
        }
    }
}

impl From<tokio_postgres::Error> for Error {
    fn from(source: tokio_postgres::Error) -> Error {
        let kind = source.as_db_error().map_or(ErrorKind::Other, |error| {
            kind(error.code(), error.message())
        });
        Error { kind, source }
    }
}

// Transparent, like `#[error(transparent)]`: wrapping a driver error in an
// `Error` changes neither its text nor its chain of causes.
impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.source)
    }
}

fn kind(code: &PgState, text: &str) -> ErrorKind {
    if let Some(state) = SqlState::from_code(code.code()) {
        return match state {
            SqlState::NoDataFound => ErrorKind::NotFound(missing(text)),
            SqlState::InvalidParameterValue if text == message::IDEMPOTENCY_KEY_REUSED => {
                ErrorKind::KeyReused
            }
            SqlState::InvalidParameterValue if text == message::RELEASES_ALLOCATIONS_ONLY => {
                ErrorKind::NotAnAllocation
            }
            SqlState::ObjectNotInPrerequisiteState if text == message::RELEASE_EXCEEDS_USED => {
                ErrorKind::ExceedsUsed
            }
            SqlState::ObjectNotInPrerequisiteState if text == message::NEEDS_UPDATE => {
                ErrorKind::NeedsUpdate
            }
            SqlState::InvalidParameterValue
            | SqlState::NullValueNotAllowed
            | SqlState::DatetimeFieldOverflow => ErrorKind::InvalidArgument,
            SqlState::NumericValueOutOfRange => ErrorKind::OutOfRange,
            SqlState::ObjectNotInPrerequisiteState => ErrorKind::Refused,
            SqlState::UniqueViolation => ErrorKind::AlreadyExists,
            // An app's own table under enforce_count: tallyd writes none.
            SqlState::EnforcedLimitExceeded => ErrorKind::Refused,
            // A role without a grant it needs: a deployment mistake.
            SqlState::InsufficientPrivilege | SqlState::InternalError => ErrorKind::Other,
        };
    }
    // Postgres's own, which tally does not raise but its tables and
    // transactions do.
    if *code == PgState::FOREIGN_KEY_VIOLATION {
        ErrorKind::MissingReference
    } else if *code == PgState::T_R_SERIALIZATION_FAILURE || *code == PgState::T_R_DEADLOCK_DETECTED
    {
        ErrorKind::Conflict
    } else if *code == PgState::LOCK_NOT_AVAILABLE || *code == PgState::QUERY_CANCELED {
        ErrorKind::Busy
    } else if *code == PgState::CHARACTER_NOT_IN_REPERTOIRE
        || *code == PgState::UNTRANSLATABLE_CHARACTER
    {
        // Bytes that are not text in the database's encoding (a NUL in a
        // path): the caller's.
        ErrorKind::InvalidArgument
    } else {
        ErrorKind::Other
    }
}

fn missing(text: &str) -> Missing {
    match text {
        message::TENANT_NOT_FOUND => Missing::Tenant,
        message::PLAN_NOT_FOUND => Missing::Plan,
        message::METRIC_NOT_FOUND => Missing::Metric,
        message::REPORT_NOT_FOUND => Missing::Report,
        _ => Missing::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(code: &str) -> PgState {
        PgState::from_code(code)
    }

    #[test]
    fn every_catalogued_state_has_a_meaning() {
        let table = [
            (
                "P0002",
                message::PLAN_NOT_FOUND,
                ErrorKind::NotFound(Missing::Plan),
            ),
            (
                "22023",
                message::UNITS_NOT_POSITIVE,
                ErrorKind::InvalidArgument,
            ),
            (
                "22004",
                "metric must not be null",
                ErrorKind::InvalidArgument,
            ),
            (
                "22003",
                message::COUNTER_OUT_OF_RANGE,
                ErrorKind::OutOfRange,
            ),
            ("55000", message::PLAN_CHANGE_REFUSED, ErrorKind::Refused),
            (
                "23505",
                message::CUSTOMER_LINKED_ELSEWHERE,
                ErrorKind::AlreadyExists,
            ),
            (
                "22008",
                message::PERIOD_OUT_OF_RANGE,
                ErrorKind::InvalidArgument,
            ),
            ("42501", message::SCHEMA_TAKEN, ErrorKind::Other),
            ("XX000", message::INTERNAL, ErrorKind::Other),
            (
                "TL001",
                message::ENFORCED_LIMIT_EXCEEDED,
                ErrorKind::Refused,
            ),
        ];
        for catalogued in SqlState::ALL {
            assert!(
                table.iter().any(|(code, ..)| *code == catalogued.code()),
                "{catalogued} has no row here"
            );
        }
        for (code, text, expected) in table {
            assert_eq!(kind(&state(code), text), expected, "{code} {text}");
        }
    }

    #[test]
    fn not_found_names_what_is_missing_by_its_stable_message() {
        let not_found = |text| kind(&state("P0002"), text);
        assert_eq!(
            not_found(message::TENANT_NOT_FOUND),
            ErrorKind::NotFound(Missing::Tenant)
        );
        assert_eq!(
            not_found(message::METRIC_NOT_FOUND),
            ErrorKind::NotFound(Missing::Metric)
        );
        assert_eq!(
            not_found(message::REPORT_NOT_FOUND),
            ErrorKind::NotFound(Missing::Report)
        );
        assert_eq!(
            not_found(message::NO_DEFAULT_PLAN),
            ErrorKind::NotFound(Missing::Other)
        );
    }

    #[test]
    fn postgres_states_tally_does_not_raise_are_read_too() {
        assert_eq!(kind(&state("23503"), ""), ErrorKind::MissingReference);
        assert_eq!(kind(&state("40001"), ""), ErrorKind::Conflict);
        assert_eq!(kind(&state("40P01"), ""), ErrorKind::Conflict);
        assert_eq!(kind(&state("42501"), ""), ErrorKind::Other);
        assert_eq!(kind(&state("55P03"), ""), ErrorKind::Busy);
        assert_eq!(kind(&state("57014"), ""), ErrorKind::Busy);
        assert_eq!(kind(&state("22021"), ""), ErrorKind::InvalidArgument);
    }

    #[test]
    fn tally_errors_with_an_answer_of_their_own_are_read_by_message() {
        let cases = [
            (
                "22023",
                message::IDEMPOTENCY_KEY_REUSED,
                ErrorKind::KeyReused,
            ),
            (
                "22023",
                message::RELEASES_ALLOCATIONS_ONLY,
                ErrorKind::NotAnAllocation,
            ),
            (
                "55000",
                message::RELEASE_EXCEEDS_USED,
                ErrorKind::ExceedsUsed,
            ),
            ("55000", message::NEEDS_UPDATE, ErrorKind::NeedsUpdate),
            (
                "55000",
                message::TENANT_HAS_UNSENT_USAGE,
                ErrorKind::Refused,
            ),
        ];
        for (code, text, expected) in cases {
            assert_eq!(kind(&state(code), text), expected, "{code} {text}");
        }
    }
}
