//! What older versions' SQL declares and this library must still answer.
//!
//! The install scripts of released versions (`sql/released/`) name C
//! symbols of the library: `CREATE EXTENSION tally VERSION '0.2.0'` (and a
//! database that has not yet run `ALTER EXTENSION tally UPDATE`) calls this
//! library by those names. Each symbol a released version names and the
//! current code no longer generates is kept here, with the version that
//! stopped using it.
//!
//! The usage-report functions of 0.7.0 and older claim and settle reports
//! without lease tokens. Their symbols are kept so that those versions'
//! scripts still load, but each refuses (`tally needs an update`): a report
//! is settled only with the token of its latest claim, so a worker whose
//! lease lapsed cannot settle a report another worker holds. None of them
//! reads its arguments, so a call with any of the old argument lists is
//! safe.

use pgrx::pg_sys;
use pgrx::prelude::*;

use crate::errors::{self, Raise};

/// `claim_usage_reports(batch, lease)` as 0.1.0 to 0.7.0 declare it,
/// returning no lease token (0.8.0 made `reports::claim_leased_reports`).
#[pg_extern(sql = false)]
fn claim_usage_reports_before_0_8_0() {
    errors::superseded_function("claim_usage_reports(batch, lease)").raise()
}

/// `complete_usage_report(id)` as 0.1.0 to 0.7.0 declare it.
#[pg_extern(sql = false)]
fn complete_usage_report_before_0_8_0() {
    errors::superseded_function("complete_usage_report(id)").raise()
}

/// `fail_usage_report(id, error, permanent, retry_after)` as 0.4.0 to 0.7.0
/// declare it.
#[pg_extern(sql = false)]
fn fail_usage_report_before_0_8_0() {
    errors::superseded_function("fail_usage_report(id, error, permanent, retry_after)").raise()
}

/// `fail_usage_report(id, error, permanent)` as 0.1.0 to 0.3.0 declare it,
/// before `retry_after`.
#[pg_extern(sql = false)]
fn fail_usage_report_before_0_4_0() {
    errors::superseded_function("fail_usage_report(id, error, permanent)").raise()
}

/// `requeue_failed_usage_reports(ids)` as 0.5.0 to 0.7.0 declare it, before
/// the guard against sending a report again after Stripe's dedupe window.
#[pg_extern(sql = false)]
fn requeue_failed_usage_reports_before_0_8_0() {
    errors::superseded_function("requeue_failed_usage_reports(ids)").raise()
}

/// `_enforce_apply_all(metric, tenants, deltas)`, which 0.9.0's PL/pgSQL
/// trigger function calls (0.10.0's trigger function is the library's and
/// applies a statement's changes itself). A database still on 0.9.0's SQL
/// needs the update before its enforced tables take rows again.
#[pg_extern(sql = false)]
fn _enforce_apply_all_before_0_10_0() {
    errors::needs_update(env!("CARGO_PKG_VERSION"), "0.9.0").raise()
}

/// Export `$old` (and its version-1 calling convention record, which
/// Postgres looks up next to it) as the symbol an older version's SQL
/// names, forwarding to the wrapper pgrx made for `$new`: pgrx derives a
/// symbol from its Rust function's name, so the old name is kept as an
/// alias here rather than as a Rust function that would read as the
/// current one.
macro_rules! old_symbol {
    ($old:ident, $old_finfo:ident => $new:ident, $new_finfo:ident) => {
        /// A symbol older versions' SQL names; see the module.
        ///
        /// # Safety
        ///
        /// Called by Postgres's function manager with a valid `fcinfo`,
        /// exactly as the wrapper it forwards to.
        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub unsafe extern "C-unwind" fn $old(fcinfo: pg_sys::FunctionCallInfo) -> pg_sys::Datum {
            // SAFETY: the same call, forwarded unchanged.
            unsafe { $new(fcinfo) }
        }

        #[unsafe(no_mangle)]
        #[doc(hidden)]
        pub extern "C" fn $old_finfo() -> &'static pg_sys::Pg_finfo_record {
            $new_finfo()
        }
    };
}

// 0.1.0 to 0.7.0.
old_symbol!(claim_usage_reports_wrapper, pg_finfo_claim_usage_reports_wrapper
    => claim_usage_reports_before_0_8_0_wrapper, pg_finfo_claim_usage_reports_before_0_8_0_wrapper);
old_symbol!(complete_usage_report_wrapper, pg_finfo_complete_usage_report_wrapper
    => complete_usage_report_before_0_8_0_wrapper, pg_finfo_complete_usage_report_before_0_8_0_wrapper);
// 0.4.0 to 0.7.0.
old_symbol!(fail_report_wrapper, pg_finfo_fail_report_wrapper
    => fail_usage_report_before_0_8_0_wrapper, pg_finfo_fail_usage_report_before_0_8_0_wrapper);
// 0.1.0 to 0.3.0.
old_symbol!(fail_usage_report_wrapper, pg_finfo_fail_usage_report_wrapper
    => fail_usage_report_before_0_4_0_wrapper, pg_finfo_fail_usage_report_before_0_4_0_wrapper);
// 0.5.0 to 0.7.0.
old_symbol!(requeue_failed_usage_reports_wrapper, pg_finfo_requeue_failed_usage_reports_wrapper
    => requeue_failed_usage_reports_before_0_8_0_wrapper, pg_finfo_requeue_failed_usage_reports_before_0_8_0_wrapper);
// 0.9.0.
old_symbol!(_enforce_apply_all_wrapper, pg_finfo__enforce_apply_all_wrapper
    => _enforce_apply_all_before_0_10_0_wrapper, pg_finfo__enforce_apply_all_before_0_10_0_wrapper);
