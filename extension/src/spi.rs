//! Every SQL statement tally runs, kept prepared for the backend's life.
//!
//! A statement is planned on its first use in a backend and kept with
//! `SPI_keepplan`, so later calls skip parsing and planning (the plan cache
//! still re-plans it if the schema changes). Parameters are always bound,
//! never formatted into the text. Each execution takes a fresh snapshot, so a
//! read that follows a row lock sees what the lock waited for.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use pgrx::datum::{DatumWithOid, FromDatum, IntoDatum, TimestampWithTimeZone};
use pgrx::pg_sys::{self, PgBuiltInOids, PgOid};
use pgrx::spi::{OwnedPreparedStatement, SpiClient, SpiHeapTupleData, SpiTupleTable};

use crate::errors::{self, Raise};
use crate::rules::Micros;

pub const TEXT: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTOID);
pub const INT4: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT4OID);
pub const INT8: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8OID);
pub const INTERVAL: PgOid = PgOid::BuiltIn(PgBuiltInOids::INTERVALOID);
pub const BOOL: PgOid = PgOid::BuiltIn(PgBuiltInOids::BOOLOID);
pub const TIMESTAMPTZ: PgOid = PgOid::BuiltIn(PgBuiltInOids::TIMESTAMPTZOID);
pub const JSONB: PgOid = PgOid::BuiltIn(PgBuiltInOids::JSONBOID);
pub const INT8_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::INT8ARRAYOID);
pub const TEXT_ARRAY: PgOid = PgOid::BuiltIn(PgBuiltInOids::TEXTARRAYOID);

/// A statement and the types of its parameters.
pub struct Statement {
    pub sql: &'static str,
    pub params: &'static [PgOid],
}

thread_local! {
    /// Kept plans, by the address of their (static) statement.
    static KEPT: RefCell<HashMap<usize, Rc<OwnedPreparedStatement>>> = RefCell::new(HashMap::new());
}

/// The statements are written for this version's schema. Between installing
/// a new library and `ALTER EXTENSION tally UPDATE`, the database still has
/// the old schema: say so, rather than fail on a missing column.
fn check_schema_version(client: &SpiClient<'_>) {
    const LIBRARY: &str = env!("CARGO_PKG_VERSION");
    let installed = client
        .select(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'tally'",
            Some(1),
            &[],
        )
        .ok()
        .and_then(|mut table| table.next())
        .and_then(|row| row.get::<String>(1).ok().flatten());
    if let Some(installed) = installed.filter(|installed| installed != LIBRARY) {
        errors::needs_update(LIBRARY, &installed).raise()
    }
}

fn kept(client: &SpiClient<'_>, statement: &'static Statement) -> Rc<OwnedPreparedStatement> {
    let key = statement as *const Statement as usize;
    if let Some(plan) = KEPT.with(|kept| kept.borrow().get(&key).cloned()) {
        return plan;
    }
    check_schema_version(client);
    let plan = client
        .prepare_mut(statement.sql, statement.params)
        .unwrap_or_else(|error| bug(format!("preparing a statement: {error}")))
        .keep();
    let plan = Rc::new(plan);
    KEPT.with(|kept| kept.borrow_mut().insert(key, plan.clone()));
    plan
}

/// Run a statement with its parameters bound.
pub fn run<'conn>(
    client: &mut SpiClient<'conn>,
    statement: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> SpiTupleTable<'conn> {
    let plan = kept(client, statement);
    client
        .update(&*plan, None, args)
        .unwrap_or_else(|error| bug(format!("running a statement: {error}")))
}

/// Run a statement and return its first row, if any.
pub fn first_row<'conn>(
    client: &mut SpiClient<'conn>,
    statement: &'static Statement,
    args: &[DatumWithOid<'_>],
) -> Option<SpiHeapTupleData<'conn>> {
    let mut table = run(client, statement, args);
    table.next()
}

/// Column `ordinal` (1-based) of a row.
pub fn get<T: FromDatum + IntoDatum>(row: &SpiHeapTupleData<'_>, ordinal: usize) -> Option<T> {
    row.get::<T>(ordinal)
        .unwrap_or_else(|error| bug(format!("reading column {ordinal}: {error}")))
}

pub fn get_micros(row: &SpiHeapTupleData<'_>, ordinal: usize) -> Option<Micros> {
    get::<TimestampWithTimeZone>(row, ordinal).map(|at| at.into_inner())
}

/// A `timestamptz` parameter from Postgres microseconds.
pub fn timestamptz(at: Option<Micros>) -> DatumWithOid<'static> {
    match at.map(TimestampWithTimeZone::try_from) {
        Some(Ok(at)) => at.into(),
        Some(Err(error)) => bug(format!("timestamp out of range: {error:?}")),
        None => DatumWithOid::null::<TimestampWithTimeZone>(),
    }
}

/// Run `work` with `pg_catalog` alone as the search path, whatever the
/// caller's is: no function, operator or type a caller plants in a schema
/// of its own can stand in for a built-in in tally's statements. The hot
/// functions use this instead of a `SET search_path` clause, which would
/// make every call save, parse and restore a setting (and re-check every
/// kept plan against the changed path). An error unwinds past the pop; the
/// transaction's (or subtransaction's) abort removes the override then.
pub fn with_catalog_search_path<T>(work: impl FnOnce() -> T) -> T {
    let mut path = pg_sys::OverrideSearchPath {
        addCatalog: true,
        ..Default::default()
    };
    // SAFETY: Postgres copies the path; an empty schema list with the
    // catalog added is a valid path.
    unsafe { pg_sys::PushOverrideSearchPath(&mut path) };
    let result = work();
    // SAFETY: pops the override pushed above, still the innermost one.
    unsafe { pg_sys::PopOverrideSearchPath() };
    result
}

/// The start of the current transaction, which is what `now()` returns.
pub fn now() -> Micros {
    // SAFETY: reads a field of the current transaction's state; always valid
    // inside a function call.
    unsafe { pg_sys::GetCurrentTransactionStartTimestamp() }
}

pub use crate::errors::bug;
