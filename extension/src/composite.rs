//! Results of tally's composite types (`tally.usage_check`,
//! `tally.plan_check`). A type's OID is looked up by name once per backend
//! and kept until the type catalog changes, so a call does not parse a type
//! name every time.

use std::cell::RefCell;
use std::collections::HashMap;

use pgrx::heap_tuple::PgHeapTuple;
use pgrx::pg_sys::{self, Datum};
use pgrx::{pg_guard, AllocatedByRust, PgTupleDesc};

use crate::spi::bug;

thread_local! {
    static TYPE_OIDS: RefCell<HashMap<&'static str, pg_sys::Oid>> = RefCell::new(HashMap::new());
}

/// Forget every cached OID when any type changes (a type dropped and created
/// again, as by `DROP EXTENSION` and `CREATE EXTENSION`, gets a new OID).
#[pg_guard]
unsafe extern "C-unwind" fn forget_type_oids(_arg: Datum, _cache_id: std::ffi::c_int, _hash: u32) {
    TYPE_OIDS.with(|oids| oids.borrow_mut().clear());
}

/// Called once per backend from `_PG_init`.
pub fn register_invalidation() {
    // SAFETY: registers a callback with the catalog cache; the function lives
    // as long as the library, which Postgres never unloads.
    unsafe {
        pg_sys::CacheRegisterSyscacheCallback(
            pg_sys::SysCacheIdentifier::TYPEOID as std::ffi::c_int,
            Some(forget_type_oids),
            Datum::from(0),
        );
    }
}

fn tuple_desc(type_name: &'static str) -> PgTupleDesc<'static> {
    let cached = TYPE_OIDS.with(|oids| oids.borrow().get(type_name).copied());
    let tupdesc = match cached {
        Some(oid) => PgTupleDesc::for_composite_type_by_oid(oid),
        None => PgTupleDesc::for_composite_type(type_name),
    };
    let tupdesc = tupdesc.unwrap_or_else(|| bug(format!("type {type_name} is missing")));
    TYPE_OIDS.with(|oids| oids.borrow_mut().insert(type_name, tupdesc.oid()));
    tupdesc
}

/// A value of the composite type `type_name` from its attributes, in order.
///
/// # Safety
///
/// `datums` must match the type's attributes in number, order and type.
pub unsafe fn build<const N: usize>(
    type_name: &'static str,
    datums: [Option<Datum>; N],
) -> PgHeapTuple<'static, AllocatedByRust> {
    // SAFETY: the caller vouches for the datums.
    unsafe { PgHeapTuple::from_datums(tuple_desc(type_name), datums) }
        .unwrap_or_else(|error| bug(format!("building {type_name}: {error}")))
}
