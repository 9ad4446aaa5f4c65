//! `tally.enforce_count`: limits enforced by triggers on an application's own
//! table. The table belongs to a `tally_admin` login role (its schema's
//! owner), which enables enforcement; the application writes as a login role
//! that has `tally_app` and privileges on that one table, nothing else.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;

use postgres::error::SqlState;
use postgres::Client;
use rand::Rng;
use tally_rules::errors::{self, Failure};
use tally_tests::*;

const TL001: &str = "TL001";

/// A database with schema `app` owned by the admin login role, and
/// `app.chatbots (id, tenant_id, units)` made by it, writable by the app role.
fn setup(extra_columns: &str) -> TestDb {
    let db = TestDb::create();
    let admin_login = login_role("tally_admin");
    let app_login = login_role("tally_app");
    db.connect()
        .batch_execute(&format!(
            "CREATE SCHEMA app AUTHORIZATION {admin_login};
             GRANT USAGE ON SCHEMA app TO {app_login};"
        ))
        .unwrap();
    db.connect_as("tally_admin")
        .batch_execute(&format!(
            "CREATE TABLE app.chatbots (id bigserial PRIMARY KEY, tenant_id text NOT NULL{extra_columns});
             GRANT SELECT, INSERT, UPDATE, DELETE, TRUNCATE ON app.chatbots TO {app_login};
             GRANT USAGE ON SEQUENCE app.chatbots_id_seq TO {app_login};"
        ))
        .unwrap();
    db
}

fn tenant(client: &mut Client, tenant: &str, plan: &str) {
    client
        .execute(
            "INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ($1, $2)",
            &[&tenant, &plan],
        )
        .unwrap();
}

fn enforce(db: &TestDb, metric: &str, units_column: Option<&str>) -> i64 {
    db.connect_as("tally_admin")
        .query_one(
            "SELECT tally.enforce_count('app.chatbots', 'tenant_id', $1, $2)",
            &[&metric, &units_column],
        )
        .expect("enforce_count")
        .get(0)
}

fn rows(client: &mut Client, tenant: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM app.chatbots WHERE tenant_id = $1",
            &[&tenant],
        )
        .unwrap()
        .get(0)
}

/// The error a statement failed with, as the catalogue describes errors.
fn failure(error: &postgres::Error) -> Failure {
    let db = error
        .as_db_error()
        .unwrap_or_else(|| panic!("not a database error: {error}"));
    Failure {
        state: errors::SqlState::from_code(db.code().code())
            .unwrap_or_else(|| panic!("SQLSTATE {} is not in the catalogue", db.code().code())),
        message: db.message().to_string(),
        detail: db.detail().map(str::to_string),
        hint: db.hint().map(str::to_string),
    }
}

fn insert(client: &mut Client, tenant: &str, count: i64) -> Result<u64, postgres::Error> {
    client.execute(
        "INSERT INTO app.chatbots (tenant_id) SELECT $1 FROM generate_series(1, $2::bigint)",
        &[&tenant, &count],
    )
}

#[test]
fn five_concurrent_inserts_at_four_of_five_commit_exactly_one() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    for round in 0..10 {
        let acme = format!("acme-{round}");
        tenant(&mut admin, &acme, "free");
        insert(&mut db.connect_as("tally_app"), &acme, 4).unwrap();
        assert_eq!(used(&mut admin, &acme, "chatbots"), 4);

        let barrier = Arc::new(Barrier::new(5));
        let results: Vec<_> = (0..5)
            .map(|_| {
                let (barrier, mut app, acme) =
                    (barrier.clone(), db.connect_as("tally_app"), acme.clone());
                thread::spawn(move || {
                    barrier.wait();
                    insert(&mut app, &acme, 1).map_err(|error| failure(&error))
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|handle| handle.join().unwrap())
            .collect();
        assert_eq!(
            results.iter().filter(|r| r.is_ok()).count(),
            1,
            "{results:?}"
        );
        for refused in results.iter().filter_map(|r| r.as_ref().err()) {
            assert_eq!(refused.state.code(), TL001);
            assert_eq!(
                refused,
                &errors::enforced_limit_exceeded(&acme, "chatbots", 5, Some(5), 1)
            );
        }
        assert_eq!(rows(&mut admin, &acme), 5);
        assert_eq!(used(&mut admin, &acme, "chatbots"), 5);
    }
}

#[test]
fn a_multi_row_insert_that_does_not_fit_writes_nothing() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    let mut app = db.connect_as("tally_app");
    tenant(&mut admin, "acme", "growth");
    tenant(&mut admin, "globex", "growth");
    insert(&mut app, "acme", 8).unwrap();

    let error = insert(&mut app, "acme", 10).unwrap_err();
    assert_eq!(
        failure(&error),
        errors::enforced_limit_exceeded("acme", "chatbots", 8, Some(10), 10)
    );
    // One statement for two tenants, one of which does not fit: nothing.
    let error = app
        .execute(
            "INSERT INTO app.chatbots (tenant_id) VALUES ('globex'), ('acme'), ('acme'), ('acme')",
            &[],
        )
        .unwrap_err();
    assert_eq!(failure(&error).state.code(), TL001);
    assert_eq!(
        (rows(&mut admin, "acme"), rows(&mut admin, "globex")),
        (8, 0)
    );
    assert_eq!(used(&mut admin, "acme", "chatbots"), 8);
    assert_eq!(used(&mut admin, "globex", "chatbots"), 0);

    // A row for a tenant tally does not know is refused too.
    let error = insert(&mut app, "initech", 1).unwrap_err();
    assert_eq!(failure(&error), errors::tenant_not_found("initech"));
    // What fits goes in.
    insert(&mut app, "acme", 2).unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 10);
}

#[test]
fn deletes_updates_and_moves_keep_counters_true() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    let mut app = db.connect_as("tally_app");
    tenant(&mut admin, "acme", "starter"); // 3 chatbots
    tenant(&mut admin, "globex", "free"); // 5 chatbots
    insert(&mut app, "acme", 3).unwrap();
    insert(&mut app, "globex", 4).unwrap();

    // A move to a tenant without room is refused whole.
    let error = app
        .execute(
            "UPDATE app.chatbots SET tenant_id = 'acme'
              WHERE id = (SELECT min(id) FROM app.chatbots WHERE tenant_id = 'globex')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::enforced_limit_exceeded("acme", "chatbots", 3, Some(3), 1)
    );
    // A move the other way fits.
    app.execute(
        "UPDATE app.chatbots SET tenant_id = 'globex'
          WHERE id = (SELECT min(id) FROM app.chatbots WHERE tenant_id = 'acme')",
        &[],
    )
    .unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 2);
    assert_eq!(used(&mut admin, "globex", "chatbots"), 5);
    // An update that touches neither column changes nothing.
    app.execute("UPDATE app.chatbots SET id = id", &[]).unwrap();
    assert_eq!(used(&mut admin, "globex", "chatbots"), 5);
    // DELETE gives back.
    app.execute("DELETE FROM app.chatbots WHERE tenant_id = 'globex'", &[])
        .unwrap();
    assert_eq!(used(&mut admin, "globex", "chatbots"), 0);
    insert(&mut app, "acme", 1).unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 3);
}

#[test]
fn a_random_concurrent_mix_leaves_every_counter_equal_to_its_rows() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    let tenants: Vec<String> = (0..6).map(|i| format!("t{i}")).collect();
    for (i, t) in tenants.iter().enumerate() {
        tenant(&mut admin, t, if i % 2 == 0 { "growth" } else { "free" });
    }
    let barrier = Arc::new(Barrier::new(8));
    let handles: Vec<_> = (0..8)
        .map(|_| {
            let (barrier, mut app, tenants) =
                (barrier.clone(), db.connect_as("tally_app"), tenants.clone());
            thread::spawn(move || {
                let mut rng = rand::thread_rng();
                let mut refused = 0;
                barrier.wait();
                // The statements lock the application's rows in id order, so
                // a deadlock could only come from the counters.
                for _ in 0..60 {
                    let a = &tenants[rng.gen_range(0..tenants.len())];
                    let b = &tenants[rng.gen_range(0..tenants.len())];
                    let k: i64 = rng.gen_range(1..4);
                    let mut tx = app.transaction().unwrap();
                    let result = match rng.gen_range(0..4) {
                        0 | 1 => tx.execute(
                            "INSERT INTO app.chatbots (tenant_id) SELECT $1 FROM generate_series(1, $2::bigint)",
                            &[a, &k],
                        ),
                        2 => tx.execute(
                            "DELETE FROM app.chatbots WHERE id IN
                               (SELECT id FROM app.chatbots WHERE tenant_id = $1
                                 ORDER BY id LIMIT $2 FOR UPDATE)",
                            &[a, &k],
                        ),
                        _ => tx.execute(
                            "UPDATE app.chatbots SET tenant_id = $2 WHERE id IN
                               (SELECT id FROM app.chatbots WHERE tenant_id = $1
                                 ORDER BY id LIMIT $3 FOR UPDATE)",
                            &[a, b, &k],
                        ),
                    };
                    match result {
                        Ok(_) if rng.gen_bool(0.25) => tx.rollback().unwrap(),
                        Ok(_) => tx.commit().unwrap(),
                        Err(error) => {
                            let code = error.code().cloned();
                            assert_eq!(
                                code.as_ref().map(SqlState::code),
                                Some(TL001),
                                "{error:?}"
                            );
                            refused += 1;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let refused: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert!(refused > 0, "the mix never reached a limit");
    for t in &tenants {
        assert_eq!(used(&mut admin, t, "chatbots"), rows(&mut admin, t), "{t}");
    }
}

#[test]
fn a_hundred_tenants_with_ten_concurrent_creators_each_get_exactly_their_limit() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    admin
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id, plan_id)
             SELECT 'tenant-' || i, 'free' FROM generate_series(1, 100) AS i",
        )
        .unwrap();
    let barrier = Arc::new(Barrier::new(10));
    let handles: Vec<_> = (0..10)
        .map(|_| {
            let (barrier, mut app) = (barrier.clone(), db.connect_as("tally_app"));
            thread::spawn(move || {
                barrier.wait();
                let mut refused = 0;
                for i in 1..=100 {
                    match insert(&mut app, &format!("tenant-{i}"), 1) {
                        Ok(_) => {}
                        Err(error) => {
                            assert_eq!(failure(&error).state.code(), TL001);
                            refused += 1;
                        }
                    }
                }
                refused
            })
        })
        .collect();
    let refused: i32 = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(refused, 100 * 5);
    let counts: HashMap<String, i64> = admin
        .query(
            "SELECT tenant_id, count(*) FROM app.chatbots GROUP BY 1",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(counts.len(), 100);
    for i in 1..=100 {
        let t = format!("tenant-{i}");
        assert_eq!(counts[&t], 5);
        assert_eq!(used(&mut admin, &t, "chatbots"), 5);
    }
}

#[test]
fn enabling_on_a_populated_table_syncs_and_can_be_undone() {
    let db = setup("");
    let mut admin = db.connect();
    for t in ["acme", "globex", "initech"] {
        tenant(&mut admin, t, "free");
    }
    let mut app = db.connect_as("tally_app");
    insert(&mut app, "acme", 2).unwrap();
    insert(&mut app, "globex", 7).unwrap(); // over the limit of 5 already
                                            // A count with no rows behind it.
    assert!(check(&mut admin, "initech", "chatbots", 3, None).allowed);

    assert_eq!(enforce(&db, "chatbots", None), 3);
    let counters =
        |admin: &mut Client| ["acme", "globex", "initech"].map(|t| used(admin, t, "chatbots"));
    assert_eq!(counters(&mut admin), [2, 7, 0]);
    // Again: harmless (initech's counter is 0 now, nothing to sync).
    assert_eq!(enforce(&db, "chatbots", None), 2);
    assert_eq!(counters(&mut admin), [2, 7, 0]);
    let listed: Vec<(String, String, String, String)> = admin
        .query(
            "SELECT table_name::text, metric, kind, tenant_column::text FROM tally.enforced_counts",
            &[],
        )
        .unwrap()
        .into_iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        listed,
        [(
            "app.chatbots".to_string(),
            "chatbots".to_string(),
            "allocation".to_string(),
            "tenant_id".to_string()
        )]
    );
    // Over the limit: refused until rows go.
    assert_eq!(
        failure(&insert(&mut app, "globex", 1).unwrap_err())
            .state
            .code(),
        TL001
    );
    app.execute(
        "DELETE FROM app.chatbots WHERE id IN (SELECT id FROM app.chatbots WHERE tenant_id = 'globex' LIMIT 3)",
        &[],
    )
    .unwrap();
    insert(&mut app, "globex", 1).unwrap();
    assert_eq!(counters(&mut admin), [2, 5, 0]);

    let removed: bool = db
        .connect_as("tally_admin")
        .query_one(
            "SELECT tally.unenforce_count('app.chatbots', 'chatbots')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(removed);
    let left: i64 = admin
        .query_one("SELECT count(*) FROM tally.enforced_counts", &[])
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
    insert(&mut app, "globex", 3).unwrap();
    assert_eq!(counters(&mut admin), [2, 5, 0]);
}

#[test]
fn truncate_gives_every_tenants_units_back() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    tenant(&mut admin, "acme", "free");
    tenant(&mut admin, "globex", "free");
    let mut app = db.connect_as("tally_app");
    insert(&mut app, "acme", 3).unwrap();
    insert(&mut app, "globex", 5).unwrap();
    app.batch_execute("TRUNCATE app.chatbots").unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 0);
    assert_eq!(used(&mut admin, "globex", "chatbots"), 0);
    insert(&mut app, "globex", 5).unwrap();
    assert_eq!(used(&mut admin, "globex", "chatbots"), 5);
}

#[test]
fn a_units_column_counts_its_value_and_consumables_count_inserts_only() {
    let db = setup(", recipients integer");
    let mut admin = db.connect();
    tenant(&mut admin, "acme", "free"); // 100 messages
    enforce(&db, "messages", Some("recipients"));
    let mut app = db.connect_as("tally_app");
    app.execute(
        "INSERT INTO app.chatbots (tenant_id, recipients) VALUES ('acme', 40), ('acme', 20)",
        &[],
    )
    .unwrap();
    assert_eq!(used(&mut admin, "acme", "messages"), 60);
    let error = app
        .execute(
            "INSERT INTO app.chatbots (tenant_id, recipients) VALUES ('acme', 41)",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::enforced_limit_exceeded("acme", "messages", 60, Some(100), 41)
    );
    let error = app
        .execute(
            "INSERT INTO app.chatbots (tenant_id, recipients) VALUES ('acme', -5)",
            &[],
        )
        .unwrap_err();
    assert_eq!(failure(&error), errors::negative_count("recipients", -5));
    // Consumables give nothing back.
    app.execute("DELETE FROM app.chatbots", &[]).unwrap();
    app.execute("TRUNCATE app.chatbots", &[]).unwrap();
    assert_eq!(used(&mut admin, "acme", "messages"), 60);
}

#[test]
fn updating_the_units_column_of_an_allocation_adjusts_by_the_difference() {
    let db = setup(", seats integer NOT NULL DEFAULT 1");
    let mut admin = db.connect();
    tenant(&mut admin, "acme", "growth"); // 10 seats
    enforce(&db, "seats", Some("seats"));
    let mut app = db.connect_as("tally_app");
    app.execute(
        "INSERT INTO app.chatbots (tenant_id, seats) VALUES ('acme', 4)",
        &[],
    )
    .unwrap();
    app.execute("UPDATE app.chatbots SET seats = 7", &[])
        .unwrap();
    assert_eq!(used(&mut admin, "acme", "seats"), 7);
    let error = app
        .execute("UPDATE app.chatbots SET seats = 12", &[])
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::enforced_limit_exceeded("acme", "seats", 7, Some(10), 5)
    );
    app.execute("UPDATE app.chatbots SET seats = 2", &[])
        .unwrap();
    assert_eq!(used(&mut admin, "acme", "seats"), 2);
}

#[test]
fn enabling_is_for_the_tables_owner_and_checks_its_arguments() {
    let db = setup("");
    let mut app = db.connect_as("tally_app");
    let error = app
        .query_one(
            "SELECT tally.enforce_count('app.chatbots', 'tenant_id', 'chatbots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
    let mut owner = db.connect_as("tally_admin");
    let error = owner
        .query_one(
            "SELECT tally.enforce_count('app.chatbots', 'tenant', 'chatbots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::column_not_found("app.chatbots", "tenant")
    );
    let error = owner
        .query_one(
            "SELECT tally.enforce_count('app.chatbots', 'tenant_id', 'chatbots', 'tenant_id')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::units_column_not_integer("app.chatbots", "tenant_id", Some("text"))
    );
    let error = owner
        .query_one(
            "SELECT tally.enforce_count(NULL, 'tenant_id', 'chatbots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(failure(&error), errors::null_argument("table_name"));
    // One table per metric.
    owner
        .batch_execute("CREATE TABLE app.bots (tenant_id text)")
        .unwrap();
    enforce(&db, "chatbots", None);
    let error = owner
        .query_one(
            "SELECT tally.enforce_count('app.bots', 'tenant_id', 'chatbots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::metric_enforced_elsewhere("chatbots", "app.chatbots")
    );
    let error = owner
        .query_one(
            "SELECT tally._enforce_sync('app.bots'::regclass, 'chatbots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::not_enforced("app.bots", "chatbots")
    );
    let error = owner
        .query_one(
            "SELECT tally.enforce_count('app.chatbots', 'tenant_id', 'robots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(failure(&error), errors::metric_not_found("robots"));
    // The app role cannot reach the counters another way.
    let error = app
        .query_one("SELECT tally._enforce_apply('acme', 'chatbots', -1)", &[])
        .unwrap_err();
    assert_eq!(error.code(), Some(&SqlState::INSUFFICIENT_PRIVILEGE));
}

#[test]
fn a_row_that_crosses_a_threshold_writes_its_alert_and_a_refused_one_none() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    admin
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, plan_id, percent)
             VALUES ('chatbots', NULL, 80), ('chatbots', NULL, 100)",
        )
        .unwrap();
    tenant(&mut admin, "acme", "free");
    let alerts = |admin: &mut Client| -> Vec<(i32, i64)> {
        admin
            .query(
                "SELECT percent, used FROM tally.alerts WHERE tenant_id = 'acme' ORDER BY percent",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get(0), row.get(1)))
            .collect()
    };
    let mut app = db.connect_as("tally_app");
    insert(&mut app, "acme", 3).unwrap();
    assert_eq!(alerts(&mut admin), vec![]);
    // 3 -> 4 of 5 reaches 80%, in the INSERT's own transaction.
    let mut transaction = app.transaction().unwrap();
    transaction
        .execute("INSERT INTO app.chatbots (tenant_id) VALUES ('acme')", &[])
        .unwrap();
    transaction.rollback().unwrap();
    assert_eq!(alerts(&mut admin), vec![], "a rolled-back row alerts");
    insert(&mut app, "acme", 1).unwrap();
    assert_eq!(alerts(&mut admin), vec![(80, 4)]);
    // Two more rows do not fit: refused whole, and 100% is not reached.
    let refused = insert(&mut app, "acme", 2).unwrap_err();
    assert_eq!(failure(&refused).state.code(), TL001);
    assert_eq!(alerts(&mut admin), vec![(80, 4)]);
    insert(&mut app, "acme", 1).unwrap();
    assert_eq!(alerts(&mut admin), vec![(80, 4), (100, 5)]);
    assert_eq!(
        used(&mut admin, "acme", "chatbots"),
        rows(&mut admin, "acme")
    );
}

#[test]
fn a_statement_over_many_tenants_counts_each_alerts_each_and_fails_whole() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    let tenants: Vec<String> = (0..12).map(|i| format!("bulk-{i:02}")).collect();
    for t in &tenants {
        tenant(&mut admin, t, "free");
    }
    let mut app = db.connect_as("tally_app");
    // Rows for every tenant in one statement, `per` each.
    let insert_all = |app: &mut Client, tenants: &[String], per: i64| {
        app.execute(
            "INSERT INTO app.chatbots (tenant_id)
             SELECT t FROM unnest($1::text[]) AS t, generate_series(1, $2::bigint)",
            &[&tenants, &per],
        )
    };
    // First use of every counter, then the counters all present.
    insert_all(&mut app, &tenants, 1).unwrap();
    insert_all(&mut app, &tenants, 2).unwrap();
    for t in &tenants {
        assert_eq!(used(&mut admin, t, "chatbots"), 3, "{t}");
    }
    // A threshold at 80% (4 of 5): the next statement crosses it for all.
    admin
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, plan_id, percent) VALUES ('chatbots', NULL, 80)",
        )
        .unwrap();
    insert_all(&mut app, &tenants, 1).unwrap();
    let alerted: i64 = admin
        .query_one(
            "SELECT count(DISTINCT tenant_id) FROM tally.alerts WHERE metric = 'chatbots' AND percent = 80",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(alerted, tenants.len() as i64);
    // Every tenant is at 4 of 5 but one, which a DELETE takes to 3: two
    // more rows each fit none but that one, so the statement fails whole,
    // naming the first tenant (in byte order) that has no room.
    admin
        .execute(
            "DELETE FROM app.chatbots WHERE id = (SELECT min(id) FROM app.chatbots WHERE tenant_id = 'bulk-07')",
            &[],
        )
        .unwrap();
    let refused = insert_all(&mut app, &tenants, 2).unwrap_err();
    assert_eq!(
        failure(&refused),
        errors::enforced_limit_exceeded("bulk-00", "chatbots", 4, Some(5), 2)
    );
    for t in &tenants {
        assert_eq!(
            used(&mut admin, t, "chatbots"),
            rows(&mut admin, t),
            "{t} after the refused statement"
        );
    }
    assert_eq!(used(&mut admin, "bulk-07", "chatbots"), 3);
    insert_all(&mut app, &tenants, 1).unwrap();
    for t in &tenants {
        assert_eq!(used(&mut admin, t, "chatbots"), rows(&mut admin, t), "{t}");
        assert!(rows(&mut admin, t) <= 5, "{t}");
    }
}

#[test]
fn tenant_columns_of_other_types_count_by_their_text() {
    let db = setup("");
    let mut admin = db.connect();
    tenant(&mut admin, "42", "starter");
    tenant(&mut admin, "acme", "free");
    let app_login = login_role("tally_app");
    let mut owner = db.connect_as("tally_admin");
    // An integer tenant column, with a row before enabling; and a padded
    // character(n) one, whose ids are counted without their padding (as
    // `::text` casts them).
    owner
        .batch_execute(&format!(
            "CREATE TABLE app.members (workspace integer, name text);
             CREATE TABLE app.bots (tenant character(10));
             GRANT SELECT, INSERT, DELETE, TRUNCATE ON app.members, app.bots TO {app_login};
             INSERT INTO app.members VALUES (42, 'first');
             SELECT tally.enforce_count('app.members', 'workspace', 'seats');
             SELECT tally.enforce_count('app.bots', 'tenant', 'chatbots');"
        ))
        .unwrap();
    assert_eq!(used(&mut admin, "42", "seats"), 1);
    let mut app = db.connect_as("tally_app");
    app.batch_execute("INSERT INTO app.members VALUES (42, 'second')")
        .unwrap();
    assert_eq!(used(&mut admin, "42", "seats"), 2);
    let error = app
        .batch_execute("INSERT INTO app.members VALUES (42, 'third')")
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::enforced_limit_exceeded("42", "seats", 2, Some(2), 1)
    );

    app.batch_execute("INSERT INTO app.bots VALUES ('acme'), ('acme'), ('acme')")
        .unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 3);
    app.batch_execute("DELETE FROM app.bots WHERE ctid = (SELECT min(ctid) FROM app.bots)")
        .unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 2);
    app.batch_execute("TRUNCATE app.bots").unwrap();
    assert_eq!(used(&mut admin, "acme", "chatbots"), 0);
}

#[test]
fn a_renamed_or_retyped_column_refuses_writes_until_enabled_again() {
    let db = setup(", units integer");
    enforce(&db, "seats", Some("units"));
    let mut admin = db.connect();
    tenant(&mut admin, "acme", "growth");
    let mut app = db.connect_as("tally_app");
    app.batch_execute("INSERT INTO app.chatbots (tenant_id, units) VALUES ('acme', 2)")
        .unwrap();
    let mut owner = db.connect_as("tally_admin");
    owner
        .batch_execute("ALTER TABLE app.chatbots RENAME COLUMN tenant_id TO workspace_id")
        .unwrap();
    let error = app
        .batch_execute("INSERT INTO app.chatbots (workspace_id, units) VALUES ('acme', 3)")
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::column_not_found("app.chatbots", "tenant_id")
    );
    owner
        .batch_execute("ALTER TABLE app.chatbots ALTER COLUMN units TYPE numeric")
        .unwrap();
    owner
        .batch_execute("ALTER TABLE app.chatbots RENAME COLUMN workspace_id TO tenant_id")
        .unwrap();
    let error = app
        .batch_execute("INSERT INTO app.chatbots (tenant_id, units) VALUES ('acme', 3)")
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::units_column_not_integer("app.chatbots", "units", Some("numeric"))
    );
    assert_eq!(rows(&mut admin, "acme"), 1);
    assert_eq!(used(&mut admin, "acme", "seats"), 2);
    owner
        .batch_execute("ALTER TABLE app.chatbots ALTER COLUMN units TYPE integer")
        .unwrap();
    app.batch_execute("INSERT INTO app.chatbots (tenant_id, units) VALUES ('acme', 3)")
        .unwrap();
    assert_eq!(used(&mut admin, "acme", "seats"), 5);
}

#[test]
fn the_tables_own_triggers_on_the_same_rows_see_every_row() {
    let db = setup("");
    enforce(&db, "chatbots", None);
    let mut admin = db.connect();
    tenant(&mut admin, "acme", "growth");
    let app_login = login_role("tally_app");
    // Statement triggers of the application that read the same transition
    // table, one firing before tally's (names sort first) and one after.
    db.connect_as("tally_admin")
        .batch_execute(&format!(
            "CREATE TABLE app.audit (trigger text, row_count bigint);
             GRANT INSERT ON app.audit TO {app_login};
             CREATE FUNCTION app.audit() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO app.audit SELECT TG_NAME, count(*) FROM added;
                 RETURN NULL;
             END $$;
             CREATE TRIGGER a_audit AFTER INSERT ON app.chatbots REFERENCING NEW TABLE AS added
                 FOR EACH STATEMENT EXECUTE FUNCTION app.audit();
             CREATE TRIGGER z_audit AFTER INSERT ON app.chatbots REFERENCING NEW TABLE AS added
                 FOR EACH STATEMENT EXECUTE FUNCTION app.audit();"
        ))
        .unwrap();
    insert(&mut db.connect_as("tally_app"), "acme", 7).unwrap();
    let seen: Vec<(String, i64)> = admin
        .query("SELECT trigger, row_count FROM app.audit ORDER BY 1", &[])
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        seen,
        vec![("a_audit".to_string(), 7), ("z_audit".to_string(), 7)]
    );
    assert_eq!(used(&mut admin, "acme", "chatbots"), 7);
}

#[test]
fn a_statement_whose_units_overflow_a_count_writes_nothing() {
    let db = setup(", units bigint");
    enforce(&db, "seats", Some("units"));
    let mut admin = db.connect();
    tenant(&mut admin, "acme", "growth");
    let mut app = db.connect_as("tally_app");
    let error = app
        .batch_execute(
            "INSERT INTO app.chatbots (tenant_id, units)
             VALUES ('acme', 5000000000000000000), ('acme', 5000000000000000000)",
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::statement_units_out_of_range("app.chatbots", "seats")
    );
    assert_eq!(rows(&mut admin, "acme"), 0);
    assert_eq!(used(&mut admin, "acme", "seats"), 0);
}
