//! The catalogue of every error tally raises: its SQLSTATE, its stable
//! lower-case message, the variable data for DETAIL and the remedy for HINT.
//!
//! The extension raises these (`extension/src/errors.rs` turns a [`Failure`]
//! into a Postgres ERROR); the PL/pgSQL checks on the configuration tables
//! repeat a few of them word for word, pinned to these builders by a test
//! (`tests/tests/error_catalogue.rs`); tallyd reads a database error back
//! into its own type by the SQLSTATE and the [`message`] constants. A new
//! error is added here first.

use std::fmt;

/// The SQLSTATEs tally raises. A caller's mistake is never `XX000`: that is
/// reserved for a broken invariant inside tally.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SqlState {
    /// 22023: a bad argument (units ≤ 0, an empty id, an unknown kind).
    InvalidParameterValue,
    /// 22004: NULL where a value is required.
    NullValueNotAllowed,
    /// 22003: a counter would pass the largest count.
    NumericValueOutOfRange,
    /// 22008: a billing period outside the years tally accepts.
    DatetimeFieldOverflow,
    /// P0002: an unknown tenant, plan, metric or report.
    NoDataFound,
    /// 55000: a plan change refused; a tenant with unsent usage; a database
    /// whose schema is older than the library.
    ObjectNotInPrerequisiteState,
    /// 23505: a provider customer already linked to another tenant.
    UniqueViolation,
    /// 42501: a `tally` schema that someone else made.
    InsufficientPrivilege,
    /// XX000: a bug in tally.
    InternalError,
    /// TL001: a row refused by `tally.enforce_count` (the units do not fit
    /// the tenant's limit). Class TL is tally's own: Postgres uses no class
    /// beginning with T, and the SQL standard leaves classes beginning with
    /// I–Z to implementations.
    EnforcedLimitExceeded,
}

impl SqlState {
    pub const ALL: [SqlState; 10] = [
        SqlState::InvalidParameterValue,
        SqlState::NullValueNotAllowed,
        SqlState::NumericValueOutOfRange,
        SqlState::DatetimeFieldOverflow,
        SqlState::InsufficientPrivilege,
        SqlState::NoDataFound,
        SqlState::ObjectNotInPrerequisiteState,
        SqlState::UniqueViolation,
        SqlState::InternalError,
        SqlState::EnforcedLimitExceeded,
    ];

    /// The five-character code, as Postgres reports it.
    pub const fn code(self) -> &'static str {
        match self {
            SqlState::InvalidParameterValue => "22023",
            SqlState::NullValueNotAllowed => "22004",
            SqlState::NumericValueOutOfRange => "22003",
            SqlState::DatetimeFieldOverflow => "22008",
            SqlState::InsufficientPrivilege => "42501",
            SqlState::NoDataFound => "P0002",
            SqlState::ObjectNotInPrerequisiteState => "55000",
            SqlState::UniqueViolation => "23505",
            SqlState::InternalError => "XX000",
            SqlState::EnforcedLimitExceeded => "TL001",
        }
    }

    pub fn from_code(code: &str) -> Option<SqlState> {
        SqlState::ALL.into_iter().find(|state| state.code() == code)
    }
}

impl fmt::Display for SqlState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

/// The stable messages a caller (tallyd among them) may match on. Messages
/// that name an argument (`units must be positive`) are built by the
/// functions below.
pub mod message {
    pub const TENANT_NOT_FOUND: &str = "tenant not found";
    pub const METRIC_NOT_FOUND: &str = "metric not found";
    pub const PLAN_NOT_FOUND: &str = "plan not found";
    pub const NO_DEFAULT_PLAN: &str = "no default plan";
    pub const REPORT_NOT_FOUND: &str = "usage report not found";
    pub const COUNTER_OUT_OF_RANGE: &str = "usage counter out of range";
    pub const STATEMENT_UNITS_OUT_OF_RANGE: &str = "units of one statement out of range";
    pub const CUSTOMER_LINKED_ELSEWHERE: &str = "customer already linked to another tenant";
    pub const SUBSCRIPTION_LINKED_ELSEWHERE: &str = "subscription already linked to another tenant";
    pub const PLAN_CHANGE_REFUSED: &str = "plan change refused";
    pub const TENANT_HAS_UNSENT_USAGE: &str = "tenant has unsent usage";
    pub const TENANT_ID_IMMUTABLE: &str = "tenant_id cannot change";
    pub const NEEDS_UPDATE: &str = "tally needs an update";
    pub const UNKNOWN_METRIC_KIND: &str = "unknown metric kind";
    pub const UNKNOWN_TENANT_STATUS: &str = "unknown tenant status";
    pub const UNKNOWN_PROVIDER: &str = "unknown provider";
    pub const PERIOD_NOT_FINITE: &str = "billing period must be finite";
    pub const PERIOD_OUT_OF_RANGE: &str = "billing period out of range";
    pub const SCHEMA_TAKEN: &str = "schema tally already exists";
    pub const PERIOD_END_WITHOUT_START: &str = "period_end needs a period_start";
    pub const PERIOD_END_NOT_AFTER_START: &str = "period_end must be after period_start";
    pub const NEGATIVE_MAX_UNITS: &str = "max_units must not be negative";
    pub const EMPTY_METER_EVENT: &str = "stripe_meter_event must not be empty";
    pub const UNITS_NOT_POSITIVE: &str = "units must be positive";
    pub const KEY_TOO_LONG: &str = "idempotency_key is too long";
    pub const RESETS_CONSUMABLES_ONLY: &str = "reset_usage resets consumables only";
    pub const REFERENCE_TENANT_TOO_LONG: &str = "tenant_id is too long for a checkout reference";
    pub const LEASE_LOST: &str = "usage report lease lost";
    pub const ALERT_NOT_FOUND: &str = "alert not found";
    pub const ALERT_THRESHOLD_OUT_OF_RANGE: &str = "alert threshold out of range";
    pub const ALERT_LEASE_LOST: &str = "alert lease lost";
    pub const RESEND_MAY_BILL_TWICE: &str = "usage reports may be billed twice";
    pub const IDEMPOTENCY_KEY_REUSED: &str = "idempotency key reused with other arguments";
    pub const RELEASES_ALLOCATIONS_ONLY: &str = "release_usage releases allocations only";
    pub const RELEASE_EXCEEDS_USED: &str = "release exceeds the units in use";
    pub const INTERNAL: &str = "tally internal error";
    pub const ENFORCED_LIMIT_EXCEEDED: &str = "usage limit exceeded";
    pub const COLUMN_NOT_FOUND: &str = "column not found";
    pub const UNITS_COLUMN_NOT_INTEGER: &str = "units_column must be an integer column";
    pub const TENANT_COLUMN_NOT_BUILT_IN: &str = "tenant_column must be of a built-in type";
    pub const METRIC_ENFORCED_ELSEWHERE: &str = "metric already enforced on another table";
    pub const NOT_ENFORCED: &str = "table is not under enforce_count";
    pub const CLAIMED_ON_WORKERS: &str = "a distributed queue is claimed on the worker nodes";
}

/// One error as a caller sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    pub state: SqlState,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl Failure {
    pub fn new(state: SqlState, message: impl Into<String>) -> Failure {
        Failure {
            state,
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
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message, self.state)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Failure {}

use SqlState::*;

mod queue;
pub use queue::*;

/// The most of a caller's value a message repeats, in characters.
pub const MAX_ECHOED_CHARS: usize = 100;

/// An identifier as it is shown in DETAIL: quoted like a SQL literal (the
/// way PL/pgSQL's `format('%L')` shows it), so an empty or odd id is still
/// visible; a long one is cut at [`MAX_ECHOED_CHARS`] and marked with `…`.
pub fn quoted(value: &str) -> String {
    match value.char_indices().nth(MAX_ECHOED_CHARS) {
        None => format!("'{}'", value.replace('\'', "''")),
        Some((cut, _)) => format!("'{}'…", value[..cut].replace('\'', "''")),
    }
}

// Arguments of the SQL functions.

pub fn null_argument(name: &str) -> Failure {
    Failure::new(NullValueNotAllowed, format!("{name} must not be null"))
        .hint(format!("pass a value for {name}"))
}

pub fn empty_argument(name: &str) -> Failure {
    Failure::new(InvalidParameterValue, format!("{name} must not be empty"))
        .hint(format!("pass a non-empty {name}"))
}

/// The longest id (tenant, metric, plan, event, customer) and idempotency key
/// tally takes, in bytes. Stripe's idempotency keys have the same bound.
pub const MAX_ID_BYTES: usize = 255;

pub fn too_long(name: &str, bytes: usize) -> Failure {
    Failure::new(InvalidParameterValue, format!("{name} is too long"))
        .detail(format!("{bytes} bytes, at most {MAX_ID_BYTES}"))
        .hint(format!("use an id of at most {MAX_ID_BYTES} bytes"))
}

pub fn units_not_positive(units: i64) -> Failure {
    Failure::new(InvalidParameterValue, message::UNITS_NOT_POSITIVE)
        .detail(format!("units = {units}"))
        .hint("pass a positive number of units; give units back with tally.decrement_usage")
}

pub fn empty_idempotency_key() -> Failure {
    empty_argument("idempotency_key")
        .hint("pass NULL for a call without a key, or a unique key per logical request")
}

pub fn idempotency_key_too_long(bytes: usize, max: usize) -> Failure {
    Failure::new(InvalidParameterValue, message::KEY_TOO_LONG)
        .detail(format!("{bytes} bytes, at most {max}"))
        .hint("use a shorter key, such as a UUID or a hash of the request")
}

/// An idempotency key sent again with other arguments: `differences` says
/// what changed.
pub fn idempotency_key_reused(key: &str, differences: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::IDEMPOTENCY_KEY_REUSED)
        .detail(format!("idempotency key {}: {differences}", quoted(key)))
        .hint("send a new key for each logical request; repeat a key only with the same arguments")
}

/// A release (a tenant giving units back) of a consumable.
pub fn releases_allocations_only(metric: &str, kind: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::RELEASES_ALLOCATIONS_ONLY)
        .detail(format!("metric {} is a {kind}", quoted(metric)))
        .hint("consumed units cannot be given back; an operator corrects a count with tally.sync_usage")
}

/// A release of more units than the tenant holds.
pub fn release_exceeds_used(tenant_id: &str, metric: &str, used: i64, units: i64) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::RELEASE_EXCEEDS_USED)
        .detail(format!(
            "tenant {} uses {used} of metric {}, the release gives back {units}",
            quoted(tenant_id),
            quoted(metric)
        ))
        .hint(format!("give back at most {used}"))
}

/// A statement on a table under `tally.enforce_count` needs `units` more of
/// `metric` for a tenant than its limit leaves (`limit` None: the metric is
/// not in the tenant's plan). Raised by the trigger function
/// (`tally._enforce_count_rows`, extension/src/enforce.rs).
pub fn enforced_limit_exceeded(
    tenant_id: &str,
    metric: &str,
    used: i64,
    limit: Option<i64>,
    units: i64,
) -> Failure {
    let limit = limit.map_or_else(|| "not in plan".to_string(), |max| max.to_string());
    Failure::new(EnforcedLimitExceeded, message::ENFORCED_LIMIT_EXCEEDED)
        .detail(format!(
            "tenant {}, metric {}: used {used}, limit {limit}, this statement needs {units}",
            quoted(tenant_id),
            quoted(metric)
        ))
        .hint("remove rows of this tenant, or move the tenant to a plan with a higher limit")
}

// `tally.enforce_count`'s checks (PL/pgSQL, `sql/schema/enforce.sql`);
// `table` is shown as Postgres prints the regclass.

pub fn column_not_found(table: &str, column: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::COLUMN_NOT_FOUND)
        .detail(format!("{table} has no column {column}"))
        .hint("name the column holding the tenant_id")
}

/// `column_type`: None when the table has no such column.
pub fn units_column_not_integer(table: &str, column: &str, column_type: Option<&str>) -> Failure {
    Failure::new(InvalidParameterValue, message::UNITS_COLUMN_NOT_INTEGER)
        .detail(format!(
            "{table} column {column}: {}",
            column_type.unwrap_or("not found")
        ))
        .hint("name a smallint, integer or bigint column, or none for one unit a row")
}

/// A tenant column of a type the table's owner made (a cast of theirs would
/// run with tally_owner's rights); `column_type` as Postgres prints it.
pub fn tenant_column_not_built_in(table: &str, column: &str, column_type: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::TENANT_COLUMN_NOT_BUILT_IN)
        .detail(format!("{table} column {column}: {column_type}"))
        .hint("use a column of a type Postgres defines (text, an integer, uuid, ...) or of a domain over one")
}

pub fn metric_enforced_elsewhere(metric: &str, table: &str) -> Failure {
    Failure::new(
        ObjectNotInPrerequisiteState,
        message::METRIC_ENFORCED_ELSEWHERE,
    )
    .detail(format!("metric {} is enforced on {table}", quoted(metric)))
    .hint("call tally.unenforce_count on that table first, or use another metric")
}

pub fn not_enforced(table: &str, metric: &str) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::NOT_ENFORCED)
        .detail(format!("{table}, metric {}", quoted(metric)))
        .hint("call tally.enforce_count first")
}

pub fn negative_count(name: &str, count: i64) -> Failure {
    Failure::new(
        InvalidParameterValue,
        format!("{name} must not be negative"),
    )
    .detail(format!("{name} = {count}"))
    .hint(format!("pass the {name} count, 0 or more"))
}

pub fn not_positive(name: &str, value: impl fmt::Display) -> Failure {
    Failure::new(InvalidParameterValue, format!("{name} must be positive"))
        .detail(format!("{name} = {value}"))
        .hint(format!("pass a {name} of 1 or more"))
}

pub fn interval_not_positive(name: &str, value: impl fmt::Display) -> Failure {
    Failure::new(
        InvalidParameterValue,
        format!("{name} must be a positive interval"),
    )
    .detail(format!("{name} = {value}"))
    .hint(format!("pass a {name} such as '5 minutes'"))
}

/// An interval longer than the function takes (`at_most`, as Postgres
/// prints the interval).
pub fn interval_too_long(name: &str, value: impl fmt::Display, at_most: &str) -> Failure {
    Failure::new(
        InvalidParameterValue,
        format!("{name} must be at most {at_most}"),
    )
    .detail(format!("{name} = {value}"))
    .hint(format!("pass a {name} of at most {at_most}"))
}

/// A retention shorter than the least the function keeps (`at_least`, as
/// Postgres prints the interval).
pub fn retention_too_short(older_than: Option<&str>, at_least: &str) -> Failure {
    Failure::new(
        InvalidParameterValue,
        format!("older_than must be at least {at_least}"),
    )
    .detail(format!("older_than = {}", older_than.unwrap_or("NULL")))
    .hint(format!(
        "pass an interval such as '30 days', of at least {at_least}"
    ))
}

/// A tenant id too long for a signed checkout reference (which must fit
/// Stripe's 200 characters of `client_reference_id`).
pub fn reference_tenant_too_long(bytes: usize, max: usize) -> Failure {
    Failure::new(InvalidParameterValue, message::REFERENCE_TENANT_TOO_LONG)
        .detail(format!(
            "tenant_id has {bytes} bytes, a signed reference takes at most {max}"
        ))
        .hint("link the customer with tally.link_provider_customer instead")
}

pub fn unknown_provider(provider: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::UNKNOWN_PROVIDER)
        .detail(format!("provider {}", quoted(provider)))
        .hint("provider is stripe or paddle")
}

pub fn resets_consumables_only(metric: &str, kind: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::RESETS_CONSUMABLES_ONLY)
        .detail(format!("metric {} is an {kind}", quoted(metric)))
        .hint("correct a standing count with tally.sync_usage or tally.decrement_usage")
}

// Values stored in the configuration tables, as the SQL functions and the
// tables' own checks report them. `tenant` is set when a tenants row is
// being checked.

/// A required id column (metric, plan_id, tenant_id) left NULL or empty in
/// a configuration table.
pub fn missing_id(column: &str, empty: bool) -> Failure {
    let hint = match column {
        "metric" => "name the metric, for example 'messages'",
        "plan_id" => "name the plan, for example 'starter'",
        _ => "use your application's id for the customer account",
    };
    if empty {
        Failure::new(InvalidParameterValue, format!("{column} must not be empty")).hint(hint)
    } else {
        Failure::new(NullValueNotAllowed, format!("{column} must not be null")).hint(hint)
    }
}

pub fn unknown_metric_kind(metric: &str, kind: Option<&str>) -> Failure {
    Failure::new(InvalidParameterValue, message::UNKNOWN_METRIC_KIND)
        .detail(format!(
            "metric {} has kind {}",
            quoted(metric),
            kind.map_or("NULL".into(), quoted)
        ))
        .hint("kind is 'consumable' (reset each billing period) or 'allocation' (a standing count such as seats)")
}

/// A threshold in tally.alert_thresholds that is not a whole percentage
/// from 1 to 100 (the table's trigger raises it).
pub fn alert_threshold_out_of_range(
    metric: &str,
    plan_id: Option<&str>,
    percent: Option<i32>,
) -> Failure {
    Failure::new(InvalidParameterValue, message::ALERT_THRESHOLD_OUT_OF_RANGE)
        .detail(format!(
            "metric {}, plan {}, percent {}",
            quoted(metric),
            plan_id.map_or("NULL".into(), quoted),
            percent.map_or("NULL".into(), |p| p.to_string())
        ))
        .hint("a threshold is a percentage of the metric's limit, from 1 to 100 (plan_id NULL: every plan)")
}

pub fn empty_meter_event(metric: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::EMPTY_METER_EVENT)
        .detail(format!("metric {}", quoted(metric)))
        .hint("give the Stripe meter's event name, or NULL if the metric is not billed")
}

pub fn negative_max_units(plan_id: &str, metric: &str, max_units: i64) -> Failure {
    Failure::new(InvalidParameterValue, message::NEGATIVE_MAX_UNITS)
        .detail(format!(
            "plan {}, metric {}, max_units {max_units}",
            quoted(plan_id),
            quoted(metric)
        ))
        .hint("use 0 to allow nothing, NULL for unlimited, or delete the row to leave the metric out of the plan")
}

/// The tenant statuses, as a hint lists them.
pub const STATUS_NAMES: &str = "active, past_due, action_required, canceled";

pub fn unknown_tenant_status(tenant: Option<&str>, status: Option<&str>) -> Failure {
    let status = status.map_or("NULL".into(), quoted);
    let detail = match tenant {
        Some(tenant) => format!("tenant {} has status {status}", quoted(tenant)),
        None => format!("status {status}"),
    };
    Failure::new(InvalidParameterValue, message::UNKNOWN_TENANT_STATUS)
        .detail(detail)
        .hint(format!("status is one of {STATUS_NAMES}"))
}

/// A period bound is infinite; `start` and `end` as Postgres prints them.
pub fn period_not_finite(tenant: Option<&str>, start: &str, end: &str) -> Failure {
    let failure = Failure::new(InvalidParameterValue, message::PERIOD_NOT_FINITE);
    match tenant {
        Some(tenant) => failure
            .detail(format!(
                "tenant {}, period {start} to {end}",
                quoted(tenant)
            ))
            .hint("give real timestamps, or NULL for calendar-month periods"),
        None => failure
            .detail(format!("period {start} to {end}"))
            .hint("give real timestamps"),
    }
}

/// A period bound outside [1970, 9999); `start` and `end` as Postgres
/// prints them.
pub fn period_out_of_range(tenant: Option<&str>, start: &str, end: &str) -> Failure {
    let detail = match tenant {
        Some(tenant) => format!("tenant {}, period {start} to {end}", quoted(tenant)),
        None => format!("period {start} to {end}"),
    };
    Failure::new(DatetimeFieldOverflow, message::PERIOD_OUT_OF_RANGE)
        .detail(detail)
        .hint("a billing period starts in 1970 or later and ends before 9999")
}

/// `CREATE EXTENSION` found a `tally` schema it did not make.
pub fn schema_taken(owner: &str) -> Failure {
    Failure::new(InsufficientPrivilege, message::SCHEMA_TAKEN)
        .detail(format!(
            "schema tally belongs to role {owner} and may hold objects of its own"
        ))
        .hint("drop or rename that schema after checking what is in it, then create the extension")
}

pub fn period_end_without_start(tenant: &str, end: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::PERIOD_END_WITHOUT_START)
        .detail(format!("tenant {}, period_end {end}", quoted(tenant)))
        .hint("set both, or only period_start (the period then lasts one month)")
}

pub fn period_end_not_after_start(tenant: Option<&str>, start: &str, end: &str) -> Failure {
    let detail = match tenant {
        Some(tenant) => format!("tenant {}, period {start} to {end}", quoted(tenant)),
        None => format!("period {start} to {end}"),
    };
    Failure::new(InvalidParameterValue, message::PERIOD_END_NOT_AFTER_START)
        .detail(detail)
        .hint("a billing period is [period_start, period_end): the end comes after the start")
}

pub fn tenant_id_immutable(tenant: &str) -> Failure {
    Failure::new(InvalidParameterValue, message::TENANT_ID_IMMUTABLE)
        .detail(format!("tenant {}", quoted(tenant)))
        .hint("a tenant's id is its key everywhere: create a tenant with the new id instead")
}

// Things that do not exist.

pub fn tenant_not_found(tenant_id: &str) -> Failure {
    Failure::new(NoDataFound, message::TENANT_NOT_FOUND)
        .detail(format!("no tenant has tenant_id {}", quoted(tenant_id)))
        .hint("insert the tenant into tally.tenants first")
}

pub fn metric_not_found(metric: &str) -> Failure {
    Failure::new(NoDataFound, message::METRIC_NOT_FOUND)
        .detail(format!("no metric is named {}", quoted(metric)))
        .hint("declare the metric in tally.metrics first")
}

pub fn plan_not_found(plan_id: &str) -> Failure {
    Failure::new(NoDataFound, message::PLAN_NOT_FOUND)
        .detail(format!("no plan has plan_id {}", quoted(plan_id)))
        .hint("declare the plan in tally.plans first")
}

pub fn no_default_plan() -> Failure {
    Failure::new(NoDataFound, message::NO_DEFAULT_PLAN)
        .hint("mark one plan with is_default = true in tally.plans, or give the tenant a plan_id")
}

// Refusals.

/// A function of an older version's SQL, which settled or claimed usage
/// reports without lease tokens, called with this library.
pub fn superseded_function(signature: &str) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::NEEDS_UPDATE)
        .detail(format!(
            "{signature} is declared by the SQL of an older tally; this library settles usage reports only with the lease token of their claim"
        ))
        .hint("run ALTER EXTENSION tally UPDATE (or tallyd migrate)")
}

/// One statement on a table under `tally.enforce_count` whose rows hold,
/// for one tenant, more units than a count can.
pub fn statement_units_out_of_range(table: &str, metric: &str) -> Failure {
    Failure::new(
        NumericValueOutOfRange,
        message::STATEMENT_UNITS_OUT_OF_RANGE,
    )
    .detail(format!(
        "the rows of one tenant in one statement on {table} hold more than {} units of metric {}",
        i64::MAX,
        quoted(metric)
    ))
    .hint("write the rows in smaller statements, or with fewer units each")
}

pub fn counter_out_of_range(tenant_id: &str, metric: &str, used: i64, units: i64) -> Failure {
    Failure::new(NumericValueOutOfRange, message::COUNTER_OUT_OF_RANGE)
        .detail(format!(
            "tenant {}, metric {}: {used} used, adding {units} would pass the largest count, {}",
            quoted(tenant_id),
            quoted(metric),
            i64::MAX
        ))
        .hint("reset or sync the counter, or give the metric a finite limit")
}

pub fn customer_linked_elsewhere(provider: &str, customer_id: &str, other_tenant: &str) -> Failure {
    Failure::new(UniqueViolation, message::CUSTOMER_LINKED_ELSEWHERE)
        .detail(format!(
            "{provider} customer {} belongs to tenant {}",
            quoted(customer_id),
            quoted(other_tenant)
        ))
        .hint("one provider customer bills one tenant: unlink it from the other tenant first")
}

pub fn subscription_linked_elsewhere(
    provider: &str,
    subscription_id: &str,
    other_tenant: &str,
) -> Failure {
    Failure::new(UniqueViolation, message::SUBSCRIPTION_LINKED_ELSEWHERE)
        .detail(format!(
            "{provider} subscription {} belongs to tenant {}",
            quoted(subscription_id),
            quoted(other_tenant)
        ))
        .hint("one provider subscription bills one tenant: unlink it from the other tenant first")
}

pub fn plan_change_refused(message: &str) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::PLAN_CHANGE_REFUSED)
        .detail(message)
        .hint("free what the message names, or pass force => true to switch anyway")
}

pub fn tenant_has_unsent_usage(tenant_id: &str, pending: i64) -> Failure {
    Failure::new(
        ObjectNotInPrerequisiteState,
        message::TENANT_HAS_UNSENT_USAGE,
    )
    .detail(format!(
        "tenant {} has {pending} pending usage reports",
        quoted(tenant_id)
    ))
    .hint("let the worker send them (tallyd worker) or let them fail, then delete the tenant")
}

/// The library is newer than the schema in this database.
pub fn needs_update(library: &str, installed: &str) -> Failure {
    Failure::new(ObjectNotInPrerequisiteState, message::NEEDS_UPDATE)
        .detail(format!(
            "the installed library is tally {library}, this database has tally {installed}"
        ))
        .hint("run ALTER EXTENSION tally UPDATE (or tallyd migrate)")
}

/// A broken invariant inside tally, not a caller's mistake.
pub fn internal(what: impl Into<String>) -> Failure {
    Failure::new(InternalError, message::INTERNAL)
        .detail(what)
        .hint("please report this with the statement that caused it")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip_and_are_distinct() {
        for state in SqlState::ALL {
            assert_eq!(SqlState::from_code(state.code()), Some(state));
        }
        assert_eq!(SqlState::from_code("42P01"), None);
    }

    #[test]
    fn messages_are_stable_and_data_goes_to_detail() {
        let failure = tenant_not_found("o'brien");
        assert_eq!(failure.state, NoDataFound);
        assert_eq!(failure.message, "tenant not found");
        assert_eq!(
            failure.detail.as_deref(),
            Some("no tenant has tenant_id 'o''brien'")
        );
        assert!(failure.hint.is_some());
    }

    #[test]
    fn null_and_empty_have_distinct_codes() {
        assert_eq!(null_argument("metric").state, NullValueNotAllowed);
        assert_eq!(empty_argument("metric").state, InvalidParameterValue);
        assert_eq!(missing_id("plan_id", false).state, NullValueNotAllowed);
        assert_eq!(
            missing_id("plan_id", true).message,
            "plan_id must not be empty"
        );
    }

    #[test]
    fn long_values_are_cut_in_messages() {
        let long = "é".repeat(300);
        let shown = quoted(&long);
        assert_eq!(shown.chars().count(), MAX_ECHOED_CHARS + 3);
        assert!(shown.ends_with("'…"));
        assert_eq!(
            quoted(&"a".repeat(MAX_ECHOED_CHARS)).len(),
            MAX_ECHOED_CHARS + 2
        );
    }

    #[test]
    fn several_missing_reports_are_listed_in_one_detail() {
        assert_eq!(
            report_not_found(&[3, 9]).detail.as_deref(),
            Some("no usage report has id 3, 9")
        );
    }

    #[test]
    fn reports_that_may_be_billed_twice_are_named_up_to_a_limit() {
        assert!(resend_may_bill_twice(&[4])
            .detail
            .unwrap()
            .starts_with("usage report 4 was first claimed"));
        let many: Vec<i64> = (1..=25).collect();
        let detail = resend_may_bill_twice(&many).detail.unwrap();
        assert!(
            detail.starts_with("usage reports 1, 2, 3,") && detail.contains("20, and 5 more were"),
            "{detail}"
        );
    }

    #[test]
    fn a_status_without_a_tenant_names_only_the_status() {
        assert_eq!(
            unknown_tenant_status(None, Some("gold")).detail.as_deref(),
            Some("status 'gold'")
        );
        assert_eq!(
            unknown_tenant_status(Some("acme"), None).detail.as_deref(),
            Some("tenant 'acme' has status NULL")
        );
    }
}
