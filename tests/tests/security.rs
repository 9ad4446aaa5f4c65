//! The security model against the attacks it was built for: a planted
//! overload of a built-in, a `tally` schema made by someone else, an
//! application role that tries to go around the functions, and a
//! transaction that touches many tenants.

use std::sync::{Arc, Barrier};
use std::thread;

use tally_rules::errors;
use tally_tests::*;

/// The SQLSTATE and message `sql` fails with.
fn failure(client: &mut Client, sql: &str) -> (String, String) {
    let error = client
        .batch_execute(sql)
        .expect_err(&format!("{sql} should fail"));
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {error}"));
    (db.code().code().to_string(), db.message().to_string())
}

/// A non-superuser login role of this test's own.
fn mallory(admin: &mut Client, db: &TestDb) -> String {
    let name = format!("mallory_{}", db.name());
    admin
        .batch_execute(&format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER; GRANT CREATE ON DATABASE {db} TO {name};",
            db = db.name()
        ))
        .unwrap();
    name
}

fn drop_role(admin: &mut Client, role: &str) {
    let _ = admin.batch_execute(&format!("DROP OWNED BY {role} CASCADE; DROP ROLE {role};"));
}

fn connect_user(db: &TestDb, user: &str) -> Client {
    Client::connect(&db.url_for(user), NoTls).expect("connect as the test's own role")
}

#[test]
fn overloads_planted_in_public_never_run_inside_tally() {
    let db = TestDb::create();
    let mut admin = db.connect();
    let role = mallory(&mut admin, &db);
    admin
        .batch_execute(&format!("GRANT CREATE ON SCHEMA public TO {role}"))
        .unwrap();
    // Exact-type overloads of the variadic built-ins tally's statements and
    // checks call: each records that it ran, with whose rights.
    let mut attacker = connect_user(&db, &role);
    let mut plant = String::from(
        "CREATE TABLE public.planted_calls (caller text);
         GRANT INSERT ON public.planted_calls TO PUBLIC;",
    );
    for (name, args) in [
        ("format", "text, integer, integer"),
        ("format", "text, integer"),
        ("format", "text, text, text"),
        ("format", "text, text, bigint"),
        ("format", "text, text"),
        ("concat_ws", "text, text, text"),
    ] {
        plant.push_str(&format!(
            "CREATE FUNCTION public.{name}({args}) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN INSERT INTO public.planted_calls VALUES (current_user); RETURN 'planted'; END $$;"
        ));
    }
    // And an operator: the hot path's statements add and compare bigints.
    plant.push_str(
        "CREATE FUNCTION public.plus(bigint, bigint) RETURNS bigint LANGUAGE plpgsql AS $$
         BEGIN INSERT INTO public.planted_calls VALUES (current_user); RETURN $1 OPERATOR(pg_catalog.+) $2; END $$;
         CREATE OPERATOR public.+ (LEFTARG = bigint, RIGHTARG = bigint, FUNCTION = public.plus);",
    );
    attacker.batch_execute(&plant).unwrap();

    // A superuser with the default search_path runs what tallyd worker,
    // tallyd reports retry and an operator's plain SQL run.
    admin
        .batch_execute(
            "SET tally.report_max_attempts = 1;
             UPDATE tally.metrics SET stripe_meter_event = 'messages' WHERE metric = 'messages';
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             SELECT tally.check_and_increment_usage('acme', 'messages', 2);
             SELECT * FROM tally.claim_usage_reports(10, '1 minute');",
        )
        .unwrap();
    admin
        .batch_execute(
            "UPDATE tally.usage_reports SET lease_until = now() - interval '1 second';
             SELECT * FROM tally.claim_usage_reports(10, '1 minute');
             SELECT tally.requeue_failed_usage_reports(NULL);
             SELECT tally.check_and_increment_usage('acme', 'messages', 1);",
        )
        .unwrap();
    // A caller that puts its own schema before pg_catalog.
    admin
        .batch_execute(
            "SET search_path = public, pg_catalog;
             SELECT tally.check_and_increment_usage('acme', 'messages', 1);
             SELECT tally.check_and_increment_usage('acme', 'chatbots', 1);
             SELECT tally.decrement_usage('acme', 'chatbots', 1);
             RESET search_path;",
        )
        .unwrap();
    let planted_calls = |admin: &mut Client| -> i64 {
        admin
            .query_one("SELECT count(*) FROM public.planted_calls", &[])
            .unwrap()
            .get(0)
    };
    assert_eq!(
        planted_calls(&mut admin),
        0,
        "a planted function ran inside tally's queue or enforcement functions"
    );
    for bad in [
        "INSERT INTO tally.metrics (metric, kind) VALUES ('sms', 'monthly')",
        "INSERT INTO tally.plans (plan_id) VALUES (repeat('p', 300))",
        "DELETE FROM tally.tenants WHERE tenant_id = 'acme'",
    ] {
        failure(&mut admin, bad);
    }
    let calls = planted_calls(&mut admin);
    let superuser: bool = admin
        .query_one("SELECT rolsuper FROM pg_roles WHERE rolname = $1", &[&role])
        .unwrap()
        .get(0);
    drop(attacker);
    drop_role(&mut admin, &role);
    assert_eq!(calls, 0, "a planted function ran inside tally's checks");
    assert!(!superuser);
}

#[test]
fn create_extension_refuses_a_tally_schema_made_by_another_role() {
    let db = TestDb::create_empty();
    let mut admin = db.connect();
    let role = mallory(&mut admin, &db);
    connect_user(&db, &role)
        .batch_execute("CREATE SCHEMA tally")
        .unwrap();
    let error = admin.batch_execute("CREATE EXTENSION tally").unwrap_err();
    let error = error.as_db_error().unwrap();
    let expected = errors::schema_taken(&role);
    assert_eq!(
        (
            error.code().code(),
            error.message(),
            error.detail(),
            error.hint()
        ),
        (
            expected.state.code(),
            expected.message.as_str(),
            expected.detail.as_deref(),
            expected.hint.as_deref()
        )
    );
    // Nothing was installed.
    let installed: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_extension WHERE extname = 'tally'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(installed, 0);
    // The superuser's own empty schema is fine.
    admin
        .batch_execute("DROP SCHEMA tally; CREATE SCHEMA tally; CREATE EXTENSION tally;")
        .unwrap();
    drop_role(&mut admin, &role);
}

#[test]
fn an_app_role_enforces_but_cannot_go_around_the_functions() {
    let db = TestDb::create();
    db.connect()
        .batch_execute(
            "UPDATE tally.metrics SET stripe_meter_event = 'messages' WHERE metric = 'messages';
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme'), ('globex');",
        )
        .unwrap();
    let mut app = db.connect_as("tally_app");
    // Inside its own transaction, as an application does.
    let mut tx = app.transaction().unwrap();
    let first = tx
        .query_one(
            "SELECT allowed, used FROM tally.check_and_increment_usage('acme', 'messages', 3, 'k1')",
            &[],
        )
        .unwrap();
    assert_eq!((first.get::<_, bool>(0), first.get::<_, i64>(1)), (true, 3));
    tx.commit().unwrap();

    for sql in [
        "UPDATE tally.usage_counters SET max_units = NULL, used = 0",
        "INSERT INTO tally.usage_counters (tenant_id, metric) VALUES ('globex', 'chatbots')",
        "INSERT INTO tally.idempotency_keys (tenant_id, idempotency_key, metric, units, allowed, used)
         VALUES ('acme', 'forged', 'messages', 1000000, true, 0)",
        "INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units)
         VALUES ('globex', 'messages', 'messages', 1000)",
        "DELETE FROM tally.usage_reports",
        "SELECT * FROM tally.usage_counters",
        "UPDATE tally.plan_limits SET max_units = NULL",
        "UPDATE tally.tenants SET plan_id = 'growth'",
        "SELECT tally.sync_usage('acme', 'messages', 0)",
        "SELECT tally.change_plan('acme', 'growth', true)",
        "SELECT tally.reset_usage('acme')",
        "SELECT * FROM tally.claim_usage_reports(10, '1 minute')",
        "SELECT tally.requeue_failed_usage_reports(NULL)",
    ] {
        assert_eq!(failure(&mut app, sql).0, "42501", "{sql}");
    }

    // Five callers at 4 of 5 chatbots, each in its own transaction, as the
    // app role: exactly one gets the last seat.
    db.connect()
        .batch_execute("SELECT tally.sync_usage('acme', 'chatbots', 4)")
        .unwrap();
    let barrier = Arc::new(Barrier::new(5));
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let (barrier, mut client) = (barrier.clone(), db.connect_as("tally_app"));
            thread::spawn(move || {
                let mut tx = client.transaction().unwrap();
                barrier.wait();
                let allowed: bool = tx
                    .query_one(
                        "SELECT allowed FROM tally.check_and_increment_usage('acme', 'chatbots')",
                        &[],
                    )
                    .unwrap()
                    .get(0);
                tx.commit().unwrap();
                allowed
            })
        })
        .collect();
    let allowed = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .filter(|allowed| *allowed)
        .count();
    assert_eq!(allowed, 1);
    assert_eq!(used(&mut db.connect(), "acme", "chatbots"), 5);
    let reports: i64 = db
        .connect()
        .query_one(
            "SELECT coalesce(sum(units), 0)::bigint FROM tally.usage_reports",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(reports, 3, "only the allowed increment is billed");
}

#[test]
fn one_transaction_can_first_touch_tens_of_thousands_of_tenants() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id)
             SELECT 't' || i FROM generate_series(1, 40000) AS i;",
        )
        .unwrap();
    // Each first use refreshes a counter's copy of its limits under locks
    // that must not pile up in the shared lock table (about 19,200 entries
    // on this cluster).
    let mut app = db.connect_as("tally_app");
    let mut tx = app.transaction().unwrap();
    let allowed: i64 = tx
        .query_one(
            "SELECT count(*) FILTER (WHERE (tally.check_and_increment_usage('t' || i, 'messages')).allowed)
               FROM generate_series(1, 40000) AS i",
            &[],
        )
        .unwrap()
        .get(0);
    tx.commit().unwrap();
    assert_eq!(allowed, 40000);
}

/// tallyd's role reaches tally only through functions: it can read no table
/// of tally's, so a compromised daemon cannot list other tenants, plans,
/// provider links, keys or the reference secret.
#[test]
fn the_daemon_role_reads_no_table_directly() {
    let db = TestDb::create();
    let mut admin = db.connect();
    let tables: Vec<String> = admin
        .query(
            "SELECT c.oid::regclass::text FROM pg_class c
              WHERE c.relnamespace = 'tally'::regnamespace AND c.relkind = 'r' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert!(tables.iter().any(|t| t == "tally.tenants"), "{tables:?}");
    let mut daemon = db.connect_as("tally_daemon");
    for table in &tables {
        let (state, _) = failure(&mut daemon, &format!("SELECT * FROM {table} LIMIT 1"));
        assert_eq!(state, "42501", "tally_daemon could read {table}");
    }
}
