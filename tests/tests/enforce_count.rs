//! `tally.enforce_count`: limits enforced by triggers on an application's own
//! table, counted exactly under concurrent statements. The table and roles
//! are [`tally_tests::app_table`]'s.

use std::collections::HashMap;
use std::sync::{Arc, Barrier};
use std::thread;

use postgres::error::SqlState;
use postgres::Client;
use rand::Rng;
use tally_rules::errors;
use tally_tests::app_table::*;
use tally_tests::*;

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
