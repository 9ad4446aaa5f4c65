//! tally's settings. All are `SUSET` (a superuser or `ALTER SYSTEM` /
//! `ALTER DATABASE` sets them) and apply to the usage-report queue.

use pgrx::{GucContext, GucFlags, GucRegistry, GucSetting};

/// `tally.report_max_attempts`: how many times a usage report is claimed
/// before it is marked `failed` (its last failure, or its lease expiring
/// after the last claim, ends it). Default 10.
pub static REPORT_MAX_ATTEMPTS: GucSetting<i32> = GucSetting::<i32>::new(10);

/// `tally.report_backoff_base`: the delay after a report's first transient
/// failure; each further failure doubles it. Default 10 s.
pub static REPORT_BACKOFF_BASE_MS: GucSetting<i32> = GucSetting::<i32>::new(10_000);

/// `tally.report_backoff_max`: the longest delay between attempts, before
/// jitter (which adds up to a quarter more). Default 1 h.
pub static REPORT_BACKOFF_MAX_MS: GucSetting<i32> = GucSetting::<i32>::new(3_600_000);

/// `tally.report_lease`: how long a claim holds reports when
/// `claim_usage_reports` is not given a lease; a worker that dies holding
/// reports gives them back when the lease expires. Default 5 min, at most
/// an hour (the longest lease a claim may name).
pub static REPORT_LEASE_MS: GucSetting<i32> = GucSetting::<i32>::new(300_000);

const DAY_MS: i32 = 86_400_000;

/// Called once per backend from `_PG_init`.
pub fn register() {
    define();
    // A mistyped `tally.*` setting is an error rather than a silent no-op
    // (placeholders already set under the prefix are reported as warnings).
    // SAFETY: called from _PG_init with a static, NUL-terminated prefix.
    unsafe { pgrx::pg_sys::MarkGUCPrefixReserved(c"tally".as_ptr()) };
}

fn define() {
    GucRegistry::define_int_guc(
        c"tally.report_max_attempts",
        c"Claims of a usage report before it is marked failed.",
        c"A report whose last allowed attempt fails, or whose lease expires after it, is marked failed and stays queryable.",
        &REPORT_MAX_ATTEMPTS,
        1,
        1_000,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"tally.report_backoff_base",
        c"Delay after a usage report's first transient failure.",
        c"Each further failure doubles the delay, up to tally.report_backoff_max, plus up to 25% jitter.",
        &REPORT_BACKOFF_BASE_MS,
        1,
        DAY_MS,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"tally.report_backoff_max",
        c"Longest delay between attempts to send a usage report, before jitter.",
        c"",
        &REPORT_BACKOFF_MAX_MS,
        1,
        7 * DAY_MS,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"tally.report_lease",
        c"Lease of claimed usage reports when the claim names none.",
        c"",
        &REPORT_LEASE_MS,
        1,
        crate::rules::MAX_LEASE_MS as i32,
        GucContext::Suset,
        GucFlags::UNIT_MS,
    );
}
