//! tally distributed by tenant on a real Citus cluster (a coordinator and two
//! workers on loopback, started by scripts/test.sh when Citus is installed;
//! each test says SKIPPED and passes without one). Every call goes through
//! the coordinator, as an application's would, as a role with tally_app.
//! The names start with `on_citus_` so the single-node runs can leave them
//! out.

use std::sync::{Arc, Barrier};
use std::thread;

use postgres::Client;
use tally_tests::citus::{self, tenants, CitusDb};

/// `calls` concurrent `check_and_increment_usage(tenant, metric, 1)` through
/// the coordinator, released together; returns how many were allowed.
fn race(db: &CitusDb, tenant: &str, metric: &str, calls: usize) -> usize {
    let barrier = Arc::new(Barrier::new(calls));
    let handles: Vec<_> = (0..calls)
        .map(|_| {
            let (barrier, mut app) = (barrier.clone(), db.connect_app());
            let (tenant, metric) = (tenant.to_string(), metric.to_string());
            thread::spawn(move || {
                barrier.wait();
                app.query_one(
                    "SELECT allowed FROM tally.check_and_increment_usage($1, $2, 1)",
                    &[&tenant, &metric],
                )
                .expect("check_and_increment_usage through the coordinator")
                .get::<_, bool>(0)
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|handle| handle.join().expect("a racing call"))
        .filter(|&allowed| allowed)
        .count()
}

fn used(client: &mut Client, tenant: &str, metric: &str) -> i64 {
    client
        .query_opt(
            "SELECT used FROM tally.usage_counters WHERE tenant_id = $1 AND metric = $2",
            &[&tenant, &metric],
        )
        .expect("read a counter")
        .map_or(0, |row| row.get(0))
}

fn take(client: &mut Client, tenant: &str, metric: &str, units: i64) -> bool {
    client
        .query_one(
            "SELECT allowed FROM tally.check_and_increment_usage($1, $2, $3)",
            &[&tenant, &metric, &units],
        )
        .expect("check_and_increment_usage")
        .get(0)
}

#[test]
fn on_citus_distribute_places_every_table_and_runs_once() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut coordinator = db.connect();
    let placed: Vec<(String, String)> = coordinator
        .query(
            "SELECT logicalrelid::text, partmethod::text FROM pg_dist_partition
              WHERE logicalrelid::text LIKE 'tally.%' ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    let hash = |table: &str| (format!("tally.{table}"), "h".to_string());
    let reference = |table: &str| (format!("tally.{table}"), "n".to_string());
    let mut expected = vec![
        reference("alert_thresholds"),
        hash("alerts"),
        reference("api_key_hashes"),
        hash("api_keys"),
        reference("count_enforcements"),
        hash("idempotency_keys"),
        reference("link_conflicts"),
        reference("metrics"),
        reference("plan_limits"),
        reference("plans"),
        reference("provider_events"),
        reference("provider_links"),
        reference("reference_secret"),
        hash("tenants"),
        hash("usage_counters"),
        hash("usage_reports"),
    ];
    expected.sort();
    assert_eq!(placed, expected);
    // Tenant tables are colocated with tally.tenants; the guard stays a
    // plain table on each node.
    let colocations: i64 = coordinator
        .query_one(
            "SELECT count(DISTINCT colocationid) FROM pg_dist_partition
              WHERE logicalrelid::text LIKE 'tally.%' AND partmethod = 'h'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(colocations, 1);
    // Every foreign key is back.
    let foreign_keys: i64 = coordinator
        .query_one(
            "SELECT count(*) FROM pg_constraint
              WHERE connamespace = 'tally'::regnamespace AND contype = 'f'
                AND conrelid IN (SELECT logicalrelid FROM pg_dist_partition)",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(foreign_keys, 10);
    let again: bool = coordinator
        .query_one("SELECT tally.distribute()", &[])
        .unwrap()
        .get(0);
    assert!(!again, "a second distribute changes nothing");
}

#[test]
fn on_citus_five_concurrent_at_four_of_five_allow_exactly_one() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = db.connect();
    for tenant in tenants(&mut admin, "free", 10, "five") {
        assert!(take(&mut admin, &tenant, "chatbots", 4));
        assert_eq!(race(&db, &tenant, "chatbots", 5), 1, "{tenant}");
        assert_eq!(used(&mut admin, &tenant, "chatbots"), 5, "{tenant}");
    }
}

#[test]
fn on_citus_ten_concurrent_at_ninety_five_of_a_hundred_allow_exactly_five() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = db.connect();
    for tenant in tenants(&mut admin, "free", 10, "ninety-five") {
        assert!(take(&mut admin, &tenant, "messages", 95));
        assert_eq!(race(&db, &tenant, "messages", 10), 5, "{tenant}");
        assert_eq!(used(&mut admin, &tenant, "messages"), 100, "{tenant}");
    }
}

#[test]
fn on_citus_a_hundred_tenants_with_ten_concurrent_creators_each_get_their_limit() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let ids = tenants(&mut db.connect(), "starter", 100, "hundred");
    // 100 tenants x 10 creators, first use included, 20 connections at a time.
    let barrier = Arc::new(Barrier::new(20));
    let handles: Vec<_> = (0..20)
        .map(|worker| {
            let (barrier, mut app, ids) = (barrier.clone(), db.connect_app(), ids.clone());
            thread::spawn(move || {
                barrier.wait();
                let mut allowed = 0;
                for round in 0..50 {
                    let tenant = &ids[(worker * 5 + round / 10) % 100];
                    let row = app
                        .query_one(
                            "SELECT allowed FROM tally.check_and_increment_usage($1, 'chatbots', 1)",
                            &[tenant],
                        )
                        .expect("check_and_increment_usage through the coordinator");
                    allowed += usize::from(row.get::<_, bool>(0));
                }
                allowed
            })
        })
        .collect();
    let allowed: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    // The starter plan allows 3 chatbots a tenant: 300 of the 1,000 calls.
    assert_eq!(allowed, 300);
    let mut admin = db.connect();
    for tenant in &ids {
        assert_eq!(used(&mut admin, tenant, "chatbots"), 3, "{tenant}");
    }
}

#[test]
fn on_citus_a_plan_limit_change_reaches_counters_on_every_worker() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = db.connect();
    let ids = tenants(&mut admin, "free", 20, "limits");
    for tenant in &ids {
        assert!(take(&mut admin, tenant, "chatbots", 5));
        assert!(!take(&mut admin, tenant, "chatbots", 1));
    }
    // The tenants' counters are on both workers.
    let nodes: i64 = admin
        .query_one(
            "SELECT count(DISTINCT p.nodeport) FROM tally.usage_counters AS c,
                    LATERAL (SELECT nodeport FROM pg_dist_shard_placement
                              WHERE shardid = get_shard_id_for_distribution_column('tally.usage_counters', c.tenant_id)) AS p",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(nodes, 2);
    admin
        .batch_execute(
            "UPDATE tally.plan_limits SET max_units = 6 WHERE plan_id = 'free' AND metric = 'chatbots'",
        )
        .expect("a plan limit change through the coordinator");
    for tenant in &ids {
        assert!(take(&mut admin, tenant, "chatbots", 1), "{tenant}");
        assert!(!take(&mut admin, tenant, "chatbots", 1), "{tenant}");
    }
    admin
        .batch_execute(
            "UPDATE tally.plan_limits SET max_units = 2 WHERE plan_id = 'free' AND metric = 'chatbots'",
        )
        .unwrap();
    let check: (bool, i64, Option<i64>) = {
        let row = admin
            .query_one(
                "SELECT allowed, used, max_units FROM tally.check_and_increment_usage($1, 'chatbots', 1)",
                &[&ids[0]],
            )
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    };
    assert_eq!(check, (false, 6, Some(2)));
}

#[test]
fn on_citus_a_call_in_the_callers_transaction_commits_and_rolls_back_with_it() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = db.connect();
    let ids = tenants(&mut admin, "free", 4, "tx");
    admin
        .batch_execute(&format!(
            "CREATE TABLE messages (tenant_id text NOT NULL, body text);
             SELECT create_distributed_table('messages', 'tenant_id', colocate_with => 'tally.tenants');
             GRANT INSERT, SELECT ON messages TO {};",
            citus::APP_LOGIN
        ))
        .unwrap();
    let mut app = db.connect_app();
    for (i, tenant) in ids.iter().enumerate() {
        let mut tx = app.transaction().unwrap();
        tx.execute("INSERT INTO messages VALUES ($1, 'hello')", &[tenant])
            .unwrap();
        let allowed: bool = tx
            .query_one(
                "SELECT allowed FROM tally.check_and_increment_usage($1, 'messages', 1)",
                &[tenant],
            )
            .unwrap()
            .get(0);
        assert!(allowed);
        if i % 2 == 0 {
            tx.commit().unwrap();
        } else {
            tx.rollback().unwrap();
        }
    }
    for (i, tenant) in ids.iter().enumerate() {
        let expected = if i % 2 == 0 { 1 } else { 0 };
        let rows: i64 = admin
            .query_one(
                "SELECT count(*) FROM messages WHERE tenant_id = $1",
                &[tenant],
            )
            .unwrap()
            .get(0);
        assert_eq!(
            (rows, used(&mut admin, tenant, "messages")),
            (expected, expected),
            "{tenant}"
        );
    }
}

#[test]
fn on_citus_the_per_tenant_functions_run_through_the_coordinator() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = db.connect();
    let ids = tenants(&mut admin, "free", 2, "calls");
    let (acme, globex) = (&ids[0], &ids[1]);
    let mut app = db.connect_app();
    assert!(take(&mut app, acme, "chatbots", 3));
    let left: i64 = app
        .query_one("SELECT tally.decrement_usage($1, 'chatbots', 1)", &[acme])
        .unwrap()
        .get(0);
    assert_eq!(left, 2);
    let released: i64 = app
        .query_one(
            "SELECT tally.release_usage($1, 'chatbots', 1, 'r-1')",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert_eq!(released, 1);
    // An idempotency key counts once, and a repeat answers the first result.
    let keyed = |app: &mut Client| -> (bool, i64) {
        let row = app
            .query_one(
                "SELECT allowed, used FROM tally.check_and_increment_usage($1, 'messages', 7, 'k-1')",
                &[acme],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(keyed(&mut app), (true, 7));
    assert_eq!(keyed(&mut app), (true, 7));
    assert_eq!(used(&mut admin, acme, "messages"), 7);
    let summary: Vec<(String, i64)> = app
        .query(
            "SELECT metric, used FROM tally.usage_summary($1) ORDER BY 1",
            &[acme],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        summary,
        vec![("chatbots".to_string(), 1), ("messages".to_string(), 7)]
    );
    let standing: (String, String) = {
        let row = app
            .query_one(
                "SELECT plan_id, status FROM tally.tenant_standing($1)",
                &[acme],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!(standing, ("free".to_string(), "active".to_string()));
    let valid: bool = app
        .query_one(
            "SELECT valid FROM tally.validate_plan_change($1, 'starter')",
            &[acme],
        )
        .unwrap()
        .get(0);
    assert!(valid);
    // The operator's and the daemon's calls, as the superuser here.
    admin
        .batch_execute(&format!(
            "SELECT tally.change_plan('{acme}', 'starter', false);
             SELECT tally.sync_usage('{globex}', 'chatbots', 2);
             SELECT tally.set_tenant_status('{globex}', 'past_due');
             SELECT tally.start_period('{globex}', now(), now() + interval '1 month');
             SELECT tally.reset_usage('{globex}', 'messages');"
        ))
        .expect("per-tenant operations through the coordinator");
    assert!(!take(&mut app, acme, "chatbots", 3), "starter allows 3");
    assert_eq!(used(&mut admin, globex, "chatbots"), 2);
    let first: bool = admin
        .query_one("SELECT tally.attempt_event_lock('stripe', 'evt_1')", &[])
        .unwrap()
        .get(0);
    let again: bool = admin
        .query_one("SELECT tally.attempt_event_lock('stripe', 'evt_1')", &[])
        .unwrap()
        .get(0);
    assert_eq!((first, again), (true, false));
}

#[test]
fn distribute_without_citus_is_refused() {
    let db = tally_tests::TestDb::create();
    let error = db
        .connect()
        .query_one("SELECT tally.distribute()", &[])
        .unwrap_err();
    let error = error.as_db_error().expect("a database error");
    assert_eq!(
        (error.code().code(), error.message()),
        ("55000", "Citus is not installed in this database")
    );
}
