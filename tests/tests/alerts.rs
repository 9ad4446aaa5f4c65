//! Threshold alerts: written by the increment that crosses a threshold, in
//! its transaction, exactly once per tenant, metric, period and threshold.

use std::time::Duration;

use postgres::fallible_iterator::FallibleIterator;
use tally_rules::errors;
use tally_tests::*;

/// 80% and 100% of every plan's `messages` limit (free: 100).
const THRESHOLDS: &str = "
    INSERT INTO tally.alert_thresholds (metric, plan_id, percent)
    VALUES ('messages', NULL, 80), ('messages', NULL, 100);
";

fn new_tenant(client: &mut Client, tenant: &str) {
    client
        .execute(
            "INSERT INTO tally.tenants (tenant_id) VALUES ($1)",
            &[&tenant],
        )
        .expect("insert tenant");
}

/// (percent, threshold, used, max_units) of a tenant's alerts of a metric,
/// oldest first.
fn alerts(client: &mut Client, tenant: &str, metric: &str) -> Vec<(i32, i64, i64, i64)> {
    client
        .query(
            "SELECT percent, threshold, used, max_units FROM tally.alerts
              WHERE tenant_id = $1 AND metric = $2 ORDER BY id",
            &[&tenant, &metric],
        )
        .expect("read alerts")
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2), row.get(3)))
        .collect()
}

#[test]
fn fifty_concurrent_increments_crossing_eighty_percent_write_one_alert() {
    let db = TestDb::create();
    let mut client = db.connect();
    client.batch_execute(THRESHOLDS).unwrap();
    for round in 0..5 {
        let tenant = format!("acme-{round}");
        new_tenant(&mut client, &tenant);
        assert!(check(&mut client, &tenant, "messages", 40, None).allowed);
        assert_eq!(alerts(&mut client, &tenant, "messages"), vec![]);

        let racing = tenant.clone();
        let results = race(&db, 50, 50, move |client, _| {
            check(client, &racing, "messages", 1, None)
        });
        assert!(results.iter().all(|r| r.allowed), "{results:?}");
        assert_eq!(used(&mut client, &tenant, "messages"), 90);
        // The call that moved the count from 79 to 80 wrote it.
        assert_eq!(
            alerts(&mut client, &tenant, "messages"),
            vec![(80, 80, 80, 100)],
            "round {round}"
        );

        // The next threshold, and the refusals past the limit, once more.
        let racing = tenant.clone();
        let results = race(&db, 20, 20, move |client, _| {
            check(client, &racing, "messages", 1, None)
        });
        assert_eq!(results.iter().filter(|r| r.allowed).count(), 10);
        assert_eq!(
            alerts(&mut client, &tenant, "messages"),
            vec![(80, 80, 80, 100), (100, 100, 100, 100)],
            "round {round}"
        );
    }
}

#[test]
fn an_increment_crossing_two_thresholds_writes_both() {
    let db = TestDb::create();
    let mut client = db.connect();
    client.batch_execute(THRESHOLDS).unwrap();
    new_tenant(&mut client, "acme");
    assert!(check(&mut client, "acme", "messages", 100, None).allowed);
    assert_eq!(
        alerts(&mut client, "acme", "messages"),
        vec![(80, 80, 100, 100), (100, 100, 100, 100)]
    );
}

#[test]
fn a_rolled_back_crossing_leaves_no_alert() {
    let db = TestDb::create();
    let mut client = db.connect();
    client.batch_execute(THRESHOLDS).unwrap();
    new_tenant(&mut client, "acme");
    assert!(check(&mut client, "acme", "messages", 10, None).allowed);

    let mut tx = client.transaction().unwrap();
    let row = tx
        .query_one(
            "SELECT allowed FROM tally.check_and_increment_usage('acme', 'messages', 75)",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert_eq!(
        tx.query_one("SELECT count(*) FROM tally.alerts", &[])
            .unwrap()
            .get::<_, i64>(0),
        1,
        "the crossing wrote its alert in its transaction"
    );
    tx.rollback().unwrap();
    assert_eq!(alerts(&mut client, "acme", "messages"), vec![]);
    assert_eq!(used(&mut client, "acme", "messages"), 10);

    // The crossing made again, and committed, alerts.
    assert!(check(&mut client, "acme", "messages", 75, None).allowed);
    assert_eq!(
        alerts(&mut client, "acme", "messages"),
        vec![(80, 80, 85, 100)]
    );
}

#[test]
fn a_new_period_alerts_again() {
    let db = TestDb::create();
    let mut client = db.connect();
    client.batch_execute(THRESHOLDS).unwrap();
    client
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id, period_start, period_end)
             VALUES ('acme', now() - interval '2 days', now() + interval '28 days')",
        )
        .unwrap();
    assert!(check(&mut client, "acme", "messages", 85, None).allowed);
    assert!(check(&mut client, "acme", "messages", 1, None).allowed);
    assert_eq!(
        alerts(&mut client, "acme", "messages"),
        vec![(80, 80, 85, 100)]
    );

    let renewed: bool = client
        .query_one(
            "SELECT tally.start_period('acme', now() - interval '1 day', now() + interval '29 days')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(renewed);
    assert!(check(&mut client, "acme", "messages", 79, None).allowed);
    assert!(check(&mut client, "acme", "messages", 1, None).allowed);
    assert_eq!(
        alerts(&mut client, "acme", "messages"),
        vec![(80, 80, 85, 100), (80, 80, 80, 100)]
    );
    let periods: i64 = client
        .query_one(
            "SELECT count(DISTINCT period_start) FROM tally.alerts
              WHERE period_start <= now() AND period_end > period_start",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(periods, 2);
}

#[test]
fn an_allocation_alerts_once_however_it_moves() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('chatbots', 100)",
        )
        .unwrap();
    new_tenant(&mut client, "acme");
    for _ in 0..5 {
        assert!(check(&mut client, "acme", "chatbots", 1, None).allowed);
    }
    client
        .query_one("SELECT tally.decrement_usage('acme', 'chatbots', 2)", &[])
        .unwrap();
    assert!(check(&mut client, "acme", "chatbots", 2, None).allowed);
    assert_eq!(
        alerts(&mut client, "acme", "chatbots"),
        vec![(100, 5, 5, 5)]
    );
    let period: Option<std::time::SystemTime> = client
        .query_one("SELECT period_start FROM tally.alerts", &[])
        .unwrap()
        .get(0);
    assert_eq!(period, None);

    // A deleted tenant's alerts go with it.
    client
        .execute("DELETE FROM tally.tenants WHERE tenant_id = 'acme'", &[])
        .unwrap();
    assert_eq!(alerts(&mut client, "acme", "chatbots"), vec![]);
}

#[test]
fn thresholds_configured_later_and_per_plan_apply() {
    let db = TestDb::create();
    let mut client = db.connect();
    new_tenant(&mut client, "on-free");
    new_tenant(&mut client, "on-starter");
    client
        .execute("SELECT tally.change_plan('on-starter', 'starter')", &[])
        .unwrap();
    // Counters in use, their copies valid, before any threshold exists.
    assert!(check(&mut client, "on-free", "messages", 10, None).allowed);
    assert!(check(&mut client, "on-starter", "messages", 10, None).allowed);

    // tally_admin configures with plain SQL: 50% for starter only.
    let mut admin = db.connect_as("tally_admin");
    admin
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, plan_id, percent)
             VALUES ('messages', 'starter', 50)",
        )
        .unwrap();
    assert!(check(&mut client, "on-free", "messages", 60, None).allowed);
    assert!(check(&mut client, "on-starter", "messages", 990, None).allowed);
    assert_eq!(alerts(&mut client, "on-free", "messages"), vec![]);
    assert_eq!(
        alerts(&mut client, "on-starter", "messages"),
        vec![(50, 1000, 1000, 2000)]
    );

    // A threshold removed stops alerting.
    admin
        .batch_execute("DELETE FROM tally.alert_thresholds")
        .unwrap();
    assert!(check(&mut client, "on-starter", "messages", 1000, None).allowed);
    assert_eq!(alerts(&mut client, "on-starter", "messages").len(), 1);

    // Bad configuration is refused, with the catalogue's words, and changes
    // nothing.
    let out_of_range = [
        (
            "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', 0)",
            errors::alert_threshold_out_of_range("messages", None, Some(0)),
        ),
        (
            "INSERT INTO tally.alert_thresholds (metric, plan_id, percent) VALUES ('messages', 'starter', 101)",
            errors::alert_threshold_out_of_range("messages", Some("starter"), Some(101)),
        ),
        (
            "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', NULL)",
            errors::alert_threshold_out_of_range("messages", None, None),
        ),
    ];
    for (sql, expected) in out_of_range {
        let error = admin.batch_execute(sql).expect_err(sql);
        let db_error = error.as_db_error().expect("a database error");
        assert_eq!(
            (
                db_error.code().code(),
                db_error.message(),
                db_error.detail(),
                db_error.hint()
            ),
            (
                expected.state.code(),
                expected.message.as_str(),
                expected.detail.as_deref(),
                expected.hint.as_deref()
            ),
            "{sql}"
        );
    }
    for bad in [
        "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('nope', 80)",
        "INSERT INTO tally.alert_thresholds (metric, plan_id, percent) VALUES ('messages', 'nope', 80)",
    ] {
        assert!(admin.batch_execute(bad).is_err(), "{bad}");
    }
    admin
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', 80)",
        )
        .unwrap();
    assert!(admin
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', 80)"
        )
        .is_err());
    let count: i64 = admin
        .query_one("SELECT count(*) FROM tally.alert_thresholds", &[])
        .unwrap()
        .get(0);
    assert_eq!(count, 1);
    // tally_app cannot configure or read alerts.
    let mut app = db.connect_as("tally_app");
    assert!(app
        .batch_execute(
            "INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', 50)"
        )
        .is_err());
    assert!(app.batch_execute("SELECT * FROM tally.alerts").is_err());
}

#[test]
fn a_listening_connection_is_notified_on_commit() {
    let db = TestDb::create();
    let mut client = db.connect();
    client.batch_execute(THRESHOLDS).unwrap();
    new_tenant(&mut client, "acme");
    let mut listener = db.connect();
    listener.batch_execute("LISTEN tally_alerts").unwrap();

    assert!(check(&mut client, "acme", "messages", 79, None).allowed);
    assert!(check(&mut client, "acme", "messages", 1, None).allowed);

    let id: i64 = client
        .query_one("SELECT id FROM tally.alerts", &[])
        .unwrap()
        .get(0);
    let mut notifications = listener.notifications();
    let note = notifications
        .timeout_iter(Duration::from_secs(30))
        .next()
        .expect("read notifications")
        .expect("no notification within 30 s");
    assert_eq!(note.channel(), "tally_alerts");
    let payload: serde_json::Value = serde_json::from_str(note.payload()).unwrap();
    assert_eq!(
        payload,
        serde_json::json!({"id": id, "tenant_id": "acme", "metric": "messages", "percent": 80})
    );
}

#[test]
fn an_increment_that_crosses_nothing_reads_no_threshold_and_writes_no_alert() {
    let db = TestDb::create();
    let mut client = db.connect();
    client.batch_execute(THRESHOLDS).unwrap();
    new_tenant(&mut client, "acme");
    // The first call refreshes the counter's copy (reading the thresholds).
    assert!(check(&mut client, "acme", "messages", 1, None).allowed);

    // This backend's table statistics not yet flushed (which may include
    // earlier transactions' reads): what the calls add to them is theirs.
    let touched = |tx: &mut postgres::Transaction<'_>, table: &str| -> i64 {
        tx.query_one(
            "SELECT coalesce(seq_scan, 0) + coalesce(idx_scan, 0) + n_tup_ins
               FROM pg_stat_xact_user_tables WHERE schemaname = 'tally' AND relname = $1",
            &[&table],
        )
        .unwrap()
        .get(0)
    };
    // (Not `tenants`: within one transaction each UPDATE of a counter row
    // that the transaction already updated checks its foreign key.)
    let tables = ["alert_thresholds", "alerts"];
    let mut tx = client.transaction().unwrap();
    let before: Vec<i64> = tables.iter().map(|t| touched(&mut tx, t)).collect();
    for _ in 0..50 {
        let row = tx
            .query_one(
                "SELECT allowed FROM tally.check_and_increment_usage('acme', 'messages')",
                &[],
            )
            .unwrap();
        assert!(row.get::<_, bool>(0));
    }
    let after: Vec<i64> = tables.iter().map(|t| touched(&mut tx, t)).collect();
    assert_eq!(
        before, after,
        "reads of {tables:?} by calls that cross nothing"
    );
    // The 79th unit crosses 80%: now the thresholds are read and the alert
    // written.
    let row = tx
        .query_one(
            "SELECT allowed FROM tally.check_and_increment_usage('acme', 'messages', 29)",
            &[],
        )
        .unwrap();
    assert!(row.get::<_, bool>(0));
    assert!(touched(&mut tx, "alert_thresholds") > after[0]);
    assert!(touched(&mut tx, "alerts") > after[1]);
    tx.commit().unwrap();
    assert_eq!(
        alerts(&mut client, "acme", "messages"),
        vec![(80, 80, 80, 100)]
    );
}
