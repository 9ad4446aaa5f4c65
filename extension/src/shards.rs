//! Claiming a queue (usage reports, alerts) on a distributed tally.
//!
//! On Citus a claim cannot lock rows across shards (`FOR UPDATE SKIP
//! LOCKED` over a distributed table is refused), so each node claims from the
//! shards it holds: the claim statement runs once per local shard, with the
//! shard's name in place of the table's, until the batch is full. A node
//! that holds none (the coordinator) refuses: the queue is drained by one
//! worker per worker node. On one node the statement runs as it is.

use pgrx::datum::DatumWithOid;
use pgrx::spi::{SpiClient, SpiHeapTupleData};

use crate::errors::{self, Raise};
use crate::spi::{self, Statement, TEXT};

static DISTRIBUTED: Statement = Statement {
    sql: "SELECT tally._distributed($1::regclass)",
    params: &[TEXT],
};

static LOCAL_SHARDS: Statement = Statement {
    sql: "SELECT shard::text, colocated_shard::text
            FROM tally._local_shard_pairs($1::regclass, $2::regclass)",
    params: &[TEXT, TEXT],
};

/// A queue's claim: `statement` reads `table` (and, for the customer,
/// `colocated`, whose rows are the same tenants'); its first parameter is
/// the most rows to claim.
pub struct Claim {
    pub statement: &'static Statement,
    pub table: &'static str,
    pub colocated: Option<&'static str>,
}

/// Run `claim` for up to `batch` rows, with `args(limit)` as its
/// parameters, and `row` applied to each claimed row. `start` in `[0, 1)`
/// picks the local shard to begin with, so that no shard waits behind the
/// others for good.
pub fn claim<R>(
    client: &mut SpiClient<'_>,
    claim: &Claim,
    batch: i32,
    args: impl Fn(i32) -> Vec<DatumWithOid<'static>>,
    start: f64,
    mut row: impl FnMut(&SpiHeapTupleData<'_>) -> R,
) -> Vec<R> {
    let distributed = spi::first_row(client, &DISTRIBUTED, &[claim.table.into()])
        .and_then(|found| spi::get::<bool>(&found, 1))
        .unwrap_or(false);
    if !distributed {
        return spi::run(client, claim.statement, &args(batch))
            .map(|found| row(&found))
            .collect();
    }
    let colocated = claim.colocated.unwrap_or(claim.table);
    let shards: Vec<(String, String)> = spi::run(
        client,
        &LOCAL_SHARDS,
        &[claim.table.into(), colocated.into()],
    )
    .filter_map(|found| {
        Some((
            spi::get::<String>(&found, 1)?,
            spi::get::<String>(&found, 2)?,
        ))
    })
    .collect();
    if shards.is_empty() {
        errors::claimed_on_workers(claim.table).raise()
    }
    let first = ((start * shards.len() as f64) as usize).min(shards.len() - 1);
    let mut claimed = Vec::new();
    for (shard, colocated_shard) in shards[first..].iter().chain(&shards[..first]) {
        let left = batch - claimed.len() as i32;
        if left <= 0 {
            break;
        }
        let mut sql = claim.statement.sql.replace(claim.table, shard);
        if let Some(colocated) = claim.colocated {
            sql = sql.replace(colocated, colocated_shard);
        }
        let table = client
            .update(sql.as_str(), None, &args(left))
            .unwrap_or_else(|error| spi::bug(format!("claiming from shard {shard}: {error}")));
        claimed.extend(table.map(|found| row(&found)));
    }
    claimed
}
