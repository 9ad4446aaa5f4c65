//! `#[pg_test]`s: each runs inside a real Postgres backend, in a transaction
//! that is rolled back afterwards.

mod bad_input;
mod billing;
mod daemon;
mod enforcement;
mod lifecycle;
mod plan_changes;
mod queue;

use pgrx::prelude::*;

/// Metrics, plans and one tenant (`acme`, on the default `free` plan):
///
/// | plan            | messages | chatbots | seats | sms |
/// |-----------------|----------|----------|-------|-----|
/// | free (default)  | 100      | 1        | –     | –   |
/// | starter         | 2000     | 3        | 2     | –   |
/// | growth          | ∞        | 10       | 10    | 500 |
pub fn fixture() {
    Spi::run(
        "INSERT INTO tally.metrics (metric, kind) VALUES
             ('messages', 'consumable'), ('sms', 'consumable'),
             ('chatbots', 'allocation'), ('seats', 'allocation');
         INSERT INTO tally.plans (plan_id, is_default) VALUES
             ('free', true), ('starter', false), ('growth', false);
         INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES
             ('free', 'messages', 100), ('free', 'chatbots', 1),
             ('starter', 'messages', 2000), ('starter', 'chatbots', 3), ('starter', 'seats', 2),
             ('growth', 'messages', NULL), ('growth', 'chatbots', 10), ('growth', 'seats', 10),
             ('growth', 'sms', 500);
         INSERT INTO tally.tenants (tenant_id) VALUES ('acme');",
    )
    .expect("fixture");
}

/// `(allowed, used, max_units, remaining, reason)` of one call.
pub type Check = (bool, i64, Option<i64>, Option<i64>, Option<String>);

pub fn check(sql_args: &str) -> Check {
    Spi::connect_mut(|client| {
        let row = client
            .update(
                &format!("SELECT * FROM tally.check_and_increment_usage({sql_args})"),
                None,
                &[],
            )
            .expect("check_and_increment_usage")
            .first();
        (
            row.get::<bool>(1).unwrap().unwrap(),
            row.get::<i64>(2).unwrap().unwrap(),
            row.get::<i64>(3).unwrap(),
            row.get::<i64>(4).unwrap(),
            row.get::<String>(5).unwrap(),
        )
    })
}

pub fn allowed(used: i64, max: Option<i64>, remaining: Option<i64>) -> Check {
    (true, used, max, remaining, None)
}

pub fn refused(used: i64, max: i64, reason: &str) -> Check {
    (
        false,
        used,
        Some(max),
        Some((max - used).max(0)),
        Some(reason.to_string()),
    )
}

/// The first column of the first row, `None` for NULL or no row.
pub fn value<T: pgrx::datum::FromDatum + pgrx::datum::IntoDatum>(sql: &str) -> Option<T> {
    Spi::connect(|client| {
        let mut table = client.select(sql, Some(1), &[]).expect(sql);
        table.next().and_then(|row| row.get::<T>(1).expect(sql))
    })
}

pub fn used(tenant: &str, metric: &str) -> Option<i64> {
    value(&format!(
        "SELECT used FROM tally.usage_counters WHERE tenant_id = '{tenant}' AND metric = '{metric}'"
    ))
}

/// Everything tally stores, as one text: compared before and after a failed
/// call to show it changed nothing.
pub fn state() -> String {
    value::<String>(
        "SELECT concat_ws(' | ',
             (SELECT string_agg(format('%s', c), ',' ORDER BY tenant_id, metric) FROM tally.usage_counters c),
             (SELECT string_agg(format('%s', k), ',' ORDER BY tenant_id, idempotency_key) FROM tally.idempotency_keys k),
             (SELECT string_agg(format('%s', t), ',' ORDER BY tenant_id) FROM tally.tenants t),
             (SELECT string_agg(format('%s', l), ',' ORDER BY plan_id, metric) FROM tally.plan_limits l),
             (SELECT string_agg(format('%s', m), ',' ORDER BY metric) FROM tally.metrics m))",
    )
    .unwrap_or_default()
}

/// The error a statement raises, run in a subtransaction (a PL/pgSQL
/// exception block) so the test can go on: `(sqlstate, message, detail, hint)`.
pub fn error_of(sql: &str) -> Option<(String, String, String, String)> {
    Spi::run(
        "CREATE OR REPLACE FUNCTION pg_temp.error_of(statement text,
             OUT error_code text, OUT error_message text, OUT error_detail text, OUT error_hint text)
         LANGUAGE plpgsql AS $$
         BEGIN
             EXECUTE statement;
         EXCEPTION WHEN others THEN
             GET STACKED DIAGNOSTICS error_code = RETURNED_SQLSTATE, error_message = MESSAGE_TEXT,
                                     error_detail = PG_EXCEPTION_DETAIL, error_hint = PG_EXCEPTION_HINT;
         END
         $$",
    )
    .expect("error_of");
    Spi::connect(|client| {
        let row = client
            .select("SELECT * FROM pg_temp.error_of($1)", None, &[sql.into()])
            .expect("error_of")
            .first();
        let sqlstate = row.get::<String>(1).unwrap()?;
        Some((
            sqlstate,
            row.get::<String>(2).unwrap().unwrap_or_default(),
            row.get::<String>(3).unwrap().unwrap_or_default(),
            row.get::<String>(4).unwrap().unwrap_or_default(),
        ))
    })
}

/// Assert that `sql` fails with `sqlstate` and `message`, with a hint, and
/// changes nothing.
#[track_caller]
pub fn assert_fails(sql: &str, sqlstate: &str, message: &str) {
    let before = state();
    let error = error_of(sql);
    let Some((got_state, got_message, _detail, hint)) = error else {
        panic!("expected {sqlstate} from {sql}, but it succeeded");
    };
    assert_eq!(
        (got_state.as_str(), got_message.as_str()),
        (sqlstate, message),
        "{sql}"
    );
    assert!(!hint.is_empty(), "{sql}: no hint");
    assert_eq!(state(), before, "{sql} changed something");
}
