//! Errors a caller can cause. Each carries a standard SQLSTATE, a stable
//! lower-case message, the variable data in DETAIL and the remedy in HINT, so
//! that a mistake never reaches a caller as `XX000`.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq)]
pub struct Failure {
    pub code: PgSqlErrorCode,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Failure {
    fn new(code: PgSqlErrorCode, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    pub fn detail(mut self, detail: impl Into<String>) -> Failure {
        self.detail = Some(detail.into());
        self
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Failure {
        self.hint = Some(hint.into());
        self
    }

    /// Raise this as a Postgres ERROR: the statement and everything it wrote
    /// are rolled back.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.code, self.message, "tally");
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

pub fn null_argument(name: &str) -> Failure {
    Failure::new(
        PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED,
        format!("{name} must not be null"),
    )
    .hint(format!("pass a value for {name}"))
}

pub fn empty_argument(name: &str) -> Failure {
    Failure::new(
        PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
        format!("{name} must not be empty"),
    )
    .hint(format!("pass a non-empty {name}"))
}

pub fn invalid_argument(message: impl Into<String>) -> Failure {
    Failure::new(PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE, message)
}

pub fn tenant_not_found(tenant_id: &str) -> Failure {
    Failure::new(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, "tenant not found")
        .detail(format!("no tenant has tenant_id {}", quoted(tenant_id)))
        .hint("insert the tenant into tally.tenants first")
}

pub fn metric_not_found(metric: &str) -> Failure {
    Failure::new(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, "metric not found")
        .detail(format!("no metric is named {}", quoted(metric)))
        .hint("declare the metric in tally.metrics first")
}

pub fn plan_not_found(plan_id: &str) -> Failure {
    Failure::new(PgSqlErrorCode::ERRCODE_NO_DATA_FOUND, "plan not found")
        .detail(format!("no plan has plan_id {}", quoted(plan_id)))
        .hint("declare the plan in tally.plans first")
}

pub fn counter_out_of_range(tenant_id: &str, metric: &str, used: i64, units: i64) -> Failure {
    Failure::new(
        PgSqlErrorCode::ERRCODE_NUMERIC_VALUE_OUT_OF_RANGE,
        "usage counter out of range",
    )
    .detail(format!(
        "tenant {}, metric {}: {used} used, adding {units} would pass the largest count, {}",
        quoted(tenant_id),
        quoted(metric),
        i64::MAX
    ))
    .hint("reset or sync the counter, or give the metric a finite limit")
}

pub fn customer_linked_elsewhere(provider: &str, customer_id: &str, other_tenant: &str) -> Failure {
    Failure::new(
        PgSqlErrorCode::ERRCODE_UNIQUE_VIOLATION,
        "customer already linked to another tenant",
    )
    .detail(format!(
        "{provider} customer {} belongs to tenant {}",
        quoted(customer_id),
        quoted(other_tenant)
    ))
    .hint("one provider customer bills one tenant: unlink it from the other tenant first")
}

pub fn report_not_found(id: i64) -> Failure {
    Failure::new(
        PgSqlErrorCode::ERRCODE_NO_DATA_FOUND,
        "usage report not found",
    )
    .detail(format!("no usage report has id {id}"))
    .hint("list reports in tally.usage_reports")
}

pub fn plan_change_refused(message: &str) -> Failure {
    Failure::new(
        PgSqlErrorCode::ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        "plan change refused",
    )
    .detail(message)
    .hint("free what the message names, or pass force => true to switch anyway")
}

/// An identifier as it is shown in DETAIL: quoted like a SQL literal, so an
/// empty or odd id is still visible.
fn quoted(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_stable_and_data_goes_to_detail() {
        let failure = tenant_not_found("o'brien");
        assert_eq!(failure.code, PgSqlErrorCode::ERRCODE_NO_DATA_FOUND);
        assert_eq!(failure.message, "tenant not found");
        assert_eq!(
            failure.detail.as_deref(),
            Some("no tenant has tenant_id 'o''brien'")
        );
        assert!(failure.hint.is_some());
    }

    #[test]
    fn null_and_empty_arguments_have_distinct_codes() {
        assert_eq!(
            null_argument("metric").code,
            PgSqlErrorCode::ERRCODE_NULL_VALUE_NOT_ALLOWED
        );
        assert_eq!(
            empty_argument("metric").code,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE
        );
        assert_eq!(empty_argument("metric").message, "metric must not be empty");
    }
}
