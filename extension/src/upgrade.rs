//! What older versions' SQL declares and this library must still answer.
//!
//! The install scripts of released versions (`sql/released/`) name C
//! symbols of the library: `CREATE EXTENSION tally VERSION '0.2.0'` (and a
//! database that has not yet run `ALTER EXTENSION tally UPDATE`) calls this
//! library by those names. Each symbol a released version names and the
//! current code no longer generates is kept here, with the version that
//! stopped using it.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::reports::record_failure;

/// `fail_usage_report(id, error, permanent)` as 0.1.0 to 0.3.0 declare it,
/// before `retry_after` (0.4.0 made the current one, `reports::fail_report`).
#[pg_extern(sql = false)]
fn fail_usage_report_before_0_4_0(
    id: Option<i64>,
    error: Option<&str>,
    permanent: default!(Option<bool>, false),
) {
    record_failure(id, error, permanent, None);
}

/// The C symbol those versions' scripts name (`fail_usage_report_wrapper`):
/// pgrx derives a symbol from its Rust function's name, so the old name is
/// kept as an alias here rather than as a Rust function that would read as
/// the current `fail_usage_report`.
///
/// # Safety
///
/// Called by Postgres's function manager with a valid `fcinfo`, exactly as
/// the wrapper it forwards to.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub unsafe extern "C-unwind" fn fail_usage_report_wrapper(
    fcinfo: pg_sys::FunctionCallInfo,
) -> pg_sys::Datum {
    // SAFETY: the same call, forwarded unchanged.
    unsafe { fail_usage_report_before_0_4_0_wrapper(fcinfo) }
}

/// The version-1 calling convention record Postgres looks up next to the
/// symbol above.
#[unsafe(no_mangle)]
#[doc(hidden)]
pub extern "C" fn pg_finfo_fail_usage_report_wrapper() -> &'static pg_sys::Pg_finfo_record {
    pg_finfo_fail_usage_report_before_0_4_0_wrapper()
}
