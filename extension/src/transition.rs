//! What one statement on a table under `tally.enforce_count` did, per
//! tenant: read by the trigger function straight from the statement's
//! transition tables (the rows it inserted, deleted or changed), or for a
//! TRUNCATE from the table itself.

use std::collections::BTreeMap;
use std::ffi::{c_int, CStr};

use pgrx::pg_sys::{self, Oid};
use pgrx::prelude::*;
use pgrx::tupdesc::PgTupleDesc;

use crate::errors::{self, Raise};
use crate::spi;

/// The statement a trigger fired for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    Insert,
    Delete,
    Update,
    Truncate,
}

/// One firing of the trigger: the enforcement it serves (the trigger's
/// arguments: metric, tenant column, units column or '' for one unit a row)
/// and the statement's rows.
pub struct Firing {
    data: *mut pg_sys::TriggerData,
    pub operation: Operation,
    pub metric: String,
    pub tenant_column: String,
    pub units_column: Option<String>,
}

/// A statement's units per tenant, tenants in byte order (`COLLATE "C"`,
/// the order counters are locked in), and the least units any row it added
/// holds (0 when it added none).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sums {
    pub units: BTreeMap<String, i64>,
    pub lowest: i64,
}

/// Where a column is in the table's rows and how to read it.
struct Column {
    number: c_int,
    type_oid: Oid,
}

impl Firing {
    /// # Safety
    /// `fcinfo` must be the call info Postgres passed to a trigger function.
    pub unsafe fn from_fcinfo(fcinfo: pg_sys::FunctionCallInfo) -> Firing {
        // SAFETY: fcinfo is valid (the contract); its context, when it is a
        // TriggerData node, describes this firing and outlives the call.
        unsafe {
            let context = (*fcinfo).context;
            if context.is_null() || (*context).type_ != pg_sys::NodeTag::T_TriggerData {
                errors::bug("tally._enforce_count_rows called other than as a trigger".into())
            }
            let data = context.cast::<pg_sys::TriggerData>();
            let event = (*data).tg_event;
            if event & pg_sys::TRIGGER_EVENT_ROW != 0 {
                errors::bug("tally._enforce_count_rows fired for each row".into())
            }
            let operation = match event & pg_sys::TRIGGER_EVENT_OPMASK {
                pg_sys::TRIGGER_EVENT_INSERT => Operation::Insert,
                pg_sys::TRIGGER_EVENT_DELETE => Operation::Delete,
                pg_sys::TRIGGER_EVENT_UPDATE => Operation::Update,
                _ => Operation::Truncate,
            };
            let trigger = (*data).tg_trigger;
            if (*trigger).tgnargs != 3 {
                errors::bug(format!(
                    "tally._enforce_count_rows fired with {} arguments",
                    (*trigger).tgnargs
                ))
            }
            let argument = |i: usize| {
                CStr::from_ptr(*(*trigger).tgargs.add(i))
                    .to_str()
                    .unwrap_or_else(|_| errors::bug("a trigger argument is not UTF-8".into()))
                    .to_owned()
            };
            let units_column = argument(2);
            Firing {
                data,
                operation,
                metric: argument(0),
                tenant_column: argument(1),
                units_column: (!units_column.is_empty()).then_some(units_column),
            }
        }
    }

    /// The statement's units per tenant: an INSERT takes its rows' units, a
    /// DELETE or TRUNCATE gives them back, an UPDATE does both (old rows
    /// out, new rows in). Rows without a tenant count for no one.
    pub fn sums(&self) -> Sums {
        let mut sums = Sums::default();
        // SAFETY: data is the firing's TriggerData (from_fcinfo); the
        // transition tables it names are complete and live for the call.
        unsafe {
            let data = &*self.data;
            match self.operation {
                Operation::Insert => self.add_rows(data.tg_newtable, 1, &mut sums),
                Operation::Delete => self.add_rows(data.tg_oldtable, -1, &mut sums),
                Operation::Update => {
                    self.add_rows(data.tg_newtable, 1, &mut sums);
                    self.add_rows(data.tg_oldtable, -1, &mut sums);
                }
                Operation::Truncate => self.add_table(&mut sums),
            }
        }
        sums
    }

    fn relation_name(&self) -> String {
        // SAFETY: the trigger's relation is open and locked for the call.
        unsafe {
            let relid = (*(*self.data).tg_relation).rd_id;
            let name = pg_sys::get_rel_name(relid);
            let schema = pg_sys::get_namespace_name(pg_sys::get_rel_namespace(relid));
            if name.is_null() || schema.is_null() {
                errors::bug(format!("relation {relid:?} has no name"))
            }
            pgrx::spi::quote_qualified_identifier(
                CStr::from_ptr(schema).to_str().unwrap_or_default(),
                CStr::from_ptr(name).to_str().unwrap_or_default(),
            )
        }
    }

    /// A column of the table by name, or the enforcement's error when it is
    /// gone (renamed or dropped since `enforce_count`).
    fn column(&self, desc: &PgTupleDesc<'_>, name: &str, units: bool) -> Column {
        let found = desc
            .iter()
            .find(|attribute| !attribute.is_dropped() && attribute.name() == name);
        match found {
            Some(attribute) => {
                let type_oid = attribute.type_oid().value();
                if units && ![pg_sys::INT2OID, pg_sys::INT4OID, pg_sys::INT8OID].contains(&type_oid)
                {
                    errors::units_column_not_integer(
                        &self.relation_name(),
                        name,
                        Some(&type_name(type_oid)),
                    )
                    .raise()
                }
                // (As tally._enforce_check_columns: a type of the table
                // owner's own could bring a cast that the TRUNCATE query
                // would run with tally_owner's rights.)
                // SAFETY: a catalogue lookup of an existing type.
                let base = unsafe { pg_sys::getBaseType(type_oid) };
                if !units && base.to_u32() >= pg_sys::FirstNormalObjectId {
                    errors::tenant_column_not_built_in(
                        &self.relation_name(),
                        name,
                        &type_name(type_oid),
                    )
                    .raise()
                }
                Column {
                    number: c_int::from(attribute.num()),
                    type_oid,
                }
            }
            None if units => {
                errors::units_column_not_integer(&self.relation_name(), name, None).raise()
            }
            None => errors::column_not_found(&self.relation_name(), name).raise(),
        }
    }

    /// Add the rows of a transition table, each `sign` times its units.
    ///
    /// # Safety
    /// `store` must be one of the firing's transition tables.
    unsafe fn add_rows(&self, store: *mut pg_sys::Tuplestorestate, sign: i64, sums: &mut Sums) {
        if store.is_null() {
            errors::bug(format!(
                "{:?} trigger of metric {} without its transition table",
                self.operation, self.metric
            ))
        }
        // SAFETY: the relation is open for the call; the transition table
        // holds rows of its row type. A read pointer of our own leaves other
        // readers of the shared table where they are; the slot is dropped
        // before returning (and freed with the call's memory on an error).
        unsafe {
            let desc_ptr = (*(*self.data).tg_relation).rd_att;
            let desc = PgTupleDesc::from_pg_unchecked(desc_ptr);
            let tenant = self.column(&desc, &self.tenant_column, false);
            let units = self
                .units_column
                .as_deref()
                .map(|name| self.column(&desc, name, true));
            let text = TextOf::new(tenant.type_oid);
            let last = units
                .as_ref()
                .map_or(tenant.number, |u| u.number.max(tenant.number));
            let slot =
                pg_sys::MakeSingleTupleTableSlot(desc_ptr, &raw const pg_sys::TTSOpsMinimalTuple);
            let reader =
                pg_sys::tuplestore_alloc_read_pointer(store, pg_sys::EXEC_FLAG_REWIND as c_int);
            pg_sys::tuplestore_select_read_pointer(store, reader);
            pg_sys::tuplestore_rescan(store);
            while pg_sys::tuplestore_gettupleslot(store, true, false, slot) {
                pg_sys::slot_getsomeattrs(slot, last);
                let values = (*slot).tts_values;
                let nulls = (*slot).tts_isnull;
                let at = |column: &Column| (column.number - 1) as usize;
                if *nulls.add(at(&tenant)) {
                    continue;
                }
                let row_units = match &units {
                    None => 1,
                    Some(column) if *nulls.add(at(column)) => 0,
                    Some(column) => integer(*values.add(at(column)), column.type_oid),
                };
                if sign > 0 {
                    sums.lowest = sums.lowest.min(row_units);
                }
                text.with(*values.add(at(&tenant)), |tenant_id| {
                    self.add(sums, tenant_id, sign * row_units)
                });
            }
            pg_sys::ExecDropSingleTupleTableSlot(slot);
        }
    }

    /// Before a TRUNCATE: give back what the table's rows hold. Reads the
    /// table (as tally_owner, whom `enforce_count` granted SELECT on it).
    fn add_table(&self, sums: &mut Sums) {
        use pgrx::spi::quote_identifier;
        // The columns are checked first, as for the other statements.
        // SAFETY: the trigger's relation is open and locked for the call.
        let desc = unsafe { PgTupleDesc::from_pg_unchecked((*(*self.data).tg_relation).rd_att) };
        self.column(&desc, &self.tenant_column, false);
        if let Some(units) = self.units_column.as_deref() {
            self.column(&desc, units, true);
        }
        let tenant = quote_identifier(&self.tenant_column);
        let units = self.units_column.as_deref().map_or_else(
            || "1".to_string(),
            |units| format!("coalesce({}, 0)", quote_identifier(units)),
        );
        let query = format!(
            "SELECT {tenant}::text, sum({units})::bigint FROM {} WHERE {tenant} IS NOT NULL GROUP BY 1",
            self.relation_name()
        );
        let rows: Vec<(String, i64)> = spi::with_catalog_search_path(|| {
            Spi::connect(|client| {
                client
                    .select(&query, None, &[])
                    .unwrap_or_else(|error| {
                        errors::bug(format!("reading a truncated table: {error}"))
                    })
                    .filter_map(|row| Some((row.get::<String>(1).ok()??, row.get::<i64>(2).ok()??)))
                    .collect()
            })
        });
        for (tenant_id, units) in rows {
            self.add(sums, &tenant_id, -units);
        }
    }

    fn add(&self, sums: &mut Sums, tenant_id: &str, units: i64) {
        if !sums.units.contains_key(tenant_id) {
            sums.units.insert(tenant_id.to_owned(), 0);
        }
        let Some(sum) = sums.units.get_mut(tenant_id) else {
            unreachable!("inserted above")
        };
        *sum = sum.checked_add(units).unwrap_or_else(|| {
            errors::statement_units_out_of_range(&self.relation_name(), &self.metric).raise()
        });
    }
}

/// How a tenant column's values become tenant ids: the text of text-like
/// types as stored (a `character(n)` without its padding, as `::text` casts
/// it), anything else through its type's output function.
enum TextOf {
    Text { trim_padding: bool },
    Output(Oid),
}

impl TextOf {
    fn new(type_oid: Oid) -> TextOf {
        match type_oid {
            pg_sys::TEXTOID | pg_sys::VARCHAROID => TextOf::Text {
                trim_padding: false,
            },
            pg_sys::BPCHAROID => TextOf::Text { trim_padding: true },
            _ => {
                let mut output = Oid::INVALID;
                let mut varlena = false;
                // SAFETY: looks up a type's output function in the catalogue.
                unsafe { pg_sys::getTypeOutputInfo(type_oid, &mut output, &mut varlena) };
                TextOf::Output(output)
            }
        }
    }

    /// Call `use_it` with a value's tenant id: text-like values are read in
    /// place (detoasted first when stored out of line or compressed).
    ///
    /// # Safety
    /// `value` must be a non-null datum of the column's type.
    unsafe fn with<R>(&self, value: pg_sys::Datum, use_it: impl FnOnce(&str) -> R) -> R {
        // SAFETY: (the contract) a text-like datum is a varlena, readable
        // once detoasted; an output function takes a datum of its type and
        // returns a palloc'd string. Copies are freed once used.
        unsafe {
            let (bytes, copy): (&[u8], *mut std::ffi::c_void) = match self {
                TextOf::Text { .. } => {
                    let stored = value.cast_mut_ptr::<pg_sys::varlena>();
                    let plain = pg_sys::pg_detoast_datum_packed(stored);
                    let copy = if plain == stored {
                        std::ptr::null_mut()
                    } else {
                        plain.cast()
                    };
                    (pgrx::varlena::varlena_to_byte_slice(plain), copy)
                }
                TextOf::Output(output) => {
                    let text = pg_sys::OidOutputFunctionCall(*output, value);
                    (CStr::from_ptr(text).to_bytes(), text.cast())
                }
            };
            let text = std::str::from_utf8(bytes)
                .unwrap_or_else(|_| errors::bug("a tenant id is not UTF-8".into()));
            let text = match self {
                TextOf::Text { trim_padding: true } => text.trim_end_matches(' '),
                _ => text,
            };
            let result = use_it(text);
            if !copy.is_null() {
                pg_sys::pfree(copy);
            }
            result
        }
    }
}

/// A smallint, integer or bigint datum as i64.
fn integer(value: pg_sys::Datum, type_oid: Oid) -> i64 {
    match type_oid {
        pg_sys::INT2OID => i64::from(value.value() as i16),
        pg_sys::INT4OID => i64::from(value.value() as i32),
        _ => value.value() as i64,
    }
}

fn type_name(type_oid: Oid) -> String {
    // SAFETY: format_type_be returns a palloc'd name for any type oid.
    unsafe { CStr::from_ptr(pg_sys::format_type_be(type_oid)) }
        .to_string_lossy()
        .into_owned()
}
