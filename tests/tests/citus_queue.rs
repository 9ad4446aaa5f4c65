//! The usage-report and alert queues of a distributed tally on a real Citus
//! cluster (see tests/tests/citus.rs): ids that no two nodes share, claims
//! on each worker node of the reports and alerts it holds, settling by
//! tenant and id, statistics and requeueing through the coordinator.

use std::collections::{BTreeMap, BTreeSet};

use postgres::Client;
use tally_tests::citus::{self, tenants, CitusDb};

/// `messages` billed, with alerts at 1% and 2% of its limit.
fn billed(db: &CitusDb) -> Client {
    let mut admin = db.connect();
    admin
        .batch_execute(
            "UPDATE tally.metrics SET stripe_meter_event = 'tally_messages' WHERE metric = 'messages';
             INSERT INTO tally.alert_thresholds (metric, percent) VALUES ('messages', 1), ('messages', 2);",
        )
        .expect("bill messages and alert on them");
    admin
}

/// One `check_and_increment_usage(tenant, 'messages', 1)` a statement,
/// through the coordinator as the app: each runs on the tenant's worker.
fn one_each(db: &CitusDb, tenants: &[String]) {
    let mut app = db.connect_app();
    for tenant in tenants {
        let allowed: bool = app
            .query_one(
                "SELECT allowed FROM tally.check_and_increment_usage($1, 'messages', 1)",
                &[tenant],
            )
            .expect("a delegated call")
            .get(0);
        assert!(allowed, "{tenant}");
    }
}

fn ids(client: &mut Client, table: &str) -> Vec<i64> {
    client
        .query(&format!("SELECT id FROM tally.{table} ORDER BY id"), &[])
        .expect("ids")
        .iter()
        .map(|row| row.get(0))
        .collect()
}

/// The worker port that holds each tenant's rows.
fn placements(db: &CitusDb, tenants: &[String]) -> BTreeMap<String, u16> {
    let mut coordinator = db.connect();
    tenants
        .iter()
        .map(|tenant| {
            let port: i32 = coordinator
                .query_one(
                    "SELECT n.nodeport FROM pg_dist_placement AS p
                       JOIN pg_dist_node AS n ON n.groupid = p.groupid
                      WHERE p.shardid = get_shard_id_for_distribution_column('tally.usage_reports', $1::text)",
                    &[tenant],
                )
                .expect("the tenant's placement")
                .get(0);
            (tenant.clone(), u16::try_from(port).unwrap())
        })
        .collect()
}

#[derive(Debug)]
struct Claimed {
    id: i64,
    tenant: String,
    token: String,
}

fn claim(client: &mut Client, sql: &str) -> Result<Vec<Claimed>, postgres::Error> {
    Ok(client
        .query(sql, &[])?
        .iter()
        .map(|row| Claimed {
            id: row.get(0),
            tenant: row.get(1),
            token: row.get(2),
        })
        .collect())
}

fn state_and_message(error: &postgres::Error) -> (String, String) {
    let db = error.as_db_error().expect("a database error");
    (db.code().code().to_string(), db.message().to_string())
}

#[test]
fn on_citus_reports_and_alerts_get_ids_no_other_node_hands_out() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = billed(&db);
    let ids_of = tenants(&mut admin, "free", 8, "ids");
    // One statement of several calls runs on the coordinator, which draws
    // the ids of the reports and alerts (1%) it writes...
    let allowed: i64 = admin
        .query_one(
            "SELECT count(*) FILTER (WHERE c.allowed)
               FROM unnest($1::text[]) AS t (tenant_id),
                    tally.check_and_increment_usage(t.tenant_id, 'messages', 1) AS c",
            &[&ids_of],
        )
        .expect("calls run on the coordinator")
        .get(0);
    assert_eq!(allowed, 8);
    // ...and each call of its own runs on its tenant's worker, which draws
    // from its own sequences (2%). These collided with the coordinator's.
    one_each(&db, &ids_of);
    for table in ["usage_reports", "alerts"] {
        let all = ids(&mut admin, table);
        let distinct: BTreeSet<i64> = all.iter().copied().collect();
        assert_eq!(all.len(), 16, "{table}: {all:?}");
        assert_eq!(distinct.len(), all.len(), "{table}: {all:?}");
    }
    // Running distribute() again (after adding a node, say) keeps each
    // node's range and what it has drawn.
    let again: bool = admin
        .query_one("SELECT tally.distribute()", &[])
        .unwrap()
        .get(0);
    assert!(!again);
    one_each(&db, &ids_of);
    let all = ids(&mut admin, "usage_reports");
    assert_eq!(all.iter().collect::<BTreeSet<_>>().len(), 24, "{all:?}");
}

#[test]
fn on_citus_each_worker_claims_the_reports_it_holds_and_settles_them_by_tenant() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = billed(&db);
    let ids_of = tenants(&mut admin, "free", 12, "claims");
    one_each(&db, &ids_of);
    let placed = placements(&db, &ids_of);
    let on_worker = |port: u16| -> BTreeSet<String> {
        placed
            .iter()
            .filter(|(_, &at)| at == port)
            .map(|(tenant, _)| tenant.clone())
            .collect()
    };
    assert!(ports[1..].iter().all(|&port| !on_worker(port).is_empty()));

    // The coordinator holds no shard: it refuses, and says where to claim.
    let claim_sql =
        "SELECT id, tenant_id, lease_token::text FROM tally.claim_usage_reports(100, '1 minute')";
    let refused =
        claim(&mut db.connect_daemon(ports[0]), claim_sql).expect_err("a claim on the coordinator");
    assert_eq!(
        state_and_message(&refused),
        (
            "55000".to_string(),
            "a distributed queue is claimed on the worker nodes".to_string()
        )
    );

    // Each worker claims exactly the reports of the tenants it holds, in
    // batches that span its shards.
    let mut claimed: BTreeMap<u16, Vec<Claimed>> = BTreeMap::new();
    for &port in &ports[1..] {
        let mut daemon = db.connect_daemon(port);
        let mut mine = claim(
            &mut daemon,
            "SELECT id, tenant_id, lease_token::text FROM tally.claim_usage_reports(2, '1 minute')",
        )
        .unwrap();
        assert_eq!(mine.len(), 2);
        mine.extend(claim(&mut daemon, claim_sql).unwrap());
        assert!(claim(&mut daemon, claim_sql).unwrap().is_empty());
        let tenants: BTreeSet<String> = mine.iter().map(|c| c.tenant.clone()).collect();
        assert_eq!(tenants, on_worker(port), "worker {port}");
        assert_eq!(mine.len(), tenants.len(), "one report a tenant");
        claimed.insert(port, mine);
    }

    // Settled by tenant and id: on the worker itself, or through the
    // coordinator (by tenant, or by id alone).
    let (first, second) = (&claimed[&ports[1]], &claimed[&ports[2]]);
    let mut on_first = db.connect_daemon(ports[1]);
    for report in first {
        on_first
            .execute(
                "SELECT tally.complete_usage_report($1, $2, $3::text::uuid)",
                &[&report.tenant, &report.id, &report.token],
            )
            .expect("complete on the worker");
    }
    let mut coordinator = db.connect_daemon(ports[0]);
    let stale = coordinator
        .execute(
            "SELECT tally.complete_usage_report($1, $2, gen_random_uuid())",
            &[&second[0].tenant, &second[0].id],
        )
        .expect_err("another claim's token");
    assert_eq!(
        state_and_message(&stale),
        ("55000".to_string(), "usage report lease lost".to_string())
    );
    let elsewhere = coordinator
        .execute(
            "SELECT tally.complete_usage_report($1, $2, $3::text::uuid)",
            &[&first[0].tenant, &second[0].id, &second[0].token],
        )
        .expect_err("a report of another tenant");
    assert_eq!(
        state_and_message(&elsewhere),
        ("P0002".to_string(), "usage report not found".to_string())
    );
    coordinator
        .execute(
            "SELECT tally.fail_usage_report($1, $2::text::uuid, 'resource_missing', true)",
            &[&second[0].id, &second[0].token],
        )
        .expect("fail by id alone through the coordinator");
    for report in &second[1..] {
        coordinator
            .execute(
                "SELECT tally.complete_usage_report($1, $2, $3::text::uuid)",
                &[&report.tenant, &report.id, &report.token],
            )
            .expect("complete through the coordinator");
    }
    let stats = "SELECT pending, failed FROM tally.usage_report_stats()";
    let row = coordinator.query_one(stats, &[]).unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 1));
    let statuses: BTreeMap<String, i64> = admin
        .query(
            "SELECT status, count(*) FROM tally.usage_reports GROUP BY status",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        statuses,
        BTreeMap::from([("completed".to_string(), 11), ("failed".to_string(), 1)])
    );

    // Requeued through the coordinator, it is claimed again on its worker.
    let requeued: i64 = admin
        .query_one(
            "SELECT tally.requeue_failed_usage_reports(ARRAY[$1::bigint])",
            &[&second[0].id],
        )
        .unwrap()
        .get(0);
    assert_eq!(requeued, 1);
    let again = claim(&mut db.connect_daemon(ports[2]), claim_sql).unwrap();
    assert_eq!(
        again.iter().map(|c| c.id).collect::<Vec<_>>(),
        vec![second[0].id]
    );
    assert_ne!(again[0].token, second[0].token);
}

#[test]
fn on_citus_each_worker_claims_the_alerts_it_holds() {
    let Some(ports) = citus::ports() else { return };
    let db = CitusDb::create(&ports, 4);
    let mut admin = billed(&db);
    let ids_of = tenants(&mut admin, "free", 10, "alerts");
    // 1% and 2% of 100: two alerts a tenant, written on its worker.
    one_each(&db, &ids_of);
    one_each(&db, &ids_of);
    let placed = placements(&db, &ids_of);
    let claim_sql =
        "SELECT id, tenant_id, lease_token::text FROM tally.claim_alerts(100, '1 minute')";
    let mut all = BTreeSet::new();
    for &port in &ports[1..] {
        let mut daemon = db.connect_daemon(port);
        let mine = claim(&mut daemon, claim_sql).unwrap();
        for alert in &mine {
            assert_eq!(placed[&alert.tenant], port, "{}", alert.tenant);
            daemon
                .execute(
                    "SELECT tally.complete_alert($1, $2, $3::text::uuid)",
                    &[&alert.tenant, &alert.id, &alert.token],
                )
                .expect("complete an alert on its worker");
            all.insert(alert.id);
        }
    }
    assert_eq!(all.len(), 20);
    let refused =
        claim(&mut db.connect_daemon(ports[0]), claim_sql).expect_err("a claim on the coordinator");
    assert_eq!(state_and_message(&refused).0, "55000");
    let row = admin
        .query_one("SELECT pending, completed FROM tally.alert_stats()", &[])
        .unwrap();
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (0, 20));
}
