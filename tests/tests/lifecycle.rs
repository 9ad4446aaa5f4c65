//! Webhook event locks and the usage-report queue, under real concurrency.

use std::collections::HashMap;

use tally_tests::*;

fn lock(client: &mut Client, event_id: &str) -> bool {
    client
        .query_one(
            "SELECT tally.attempt_event_lock('stripe', $1, 'invoice.paid')",
            &[&event_id],
        )
        .expect("attempt_event_lock")
        .get(0)
}

#[test]
fn a_thousand_attempts_on_one_event_over_twenty_connections_lock_it_once() {
    let db = TestDb::create();
    let results = race(&db, 20, 1_000, |client, _| lock(client, "evt_storm"));
    assert_eq!(results.iter().filter(|locked| **locked).count(), 1);
    let rows: i64 = db
        .connect()
        .query_one("SELECT count(*) FROM tally.provider_events", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 1);
}

#[test]
fn a_payload_too_large_to_keep_is_dropped_and_the_event_still_locked() {
    let db = TestDb::create();
    let mut client = db.connect();
    // Just over 16 KiB of JSON text, and just under.
    let big = format!("{{\"note\": \"{}\"}}", "x".repeat(16 * 1024));
    let small = format!("{{\"note\": \"{}\"}}", "x".repeat(16 * 1024 - 20));
    for (event_id, payload) in [("evt_big", &big), ("evt_small", &small)] {
        let locked: bool = client
            .query_one(
                "SELECT tally.attempt_event_lock('stripe', $1, 'invoice.paid', $2::text::jsonb)",
                &[&event_id, payload],
            )
            .unwrap()
            .get(0);
        assert!(locked, "{event_id}");
    }
    let kept: Vec<(String, bool)> = client
        .query(
            "SELECT event_id, payload IS NOT NULL FROM tally.provider_events ORDER BY event_id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("evt_big".to_string(), false),
            ("evt_small".to_string(), true)
        ]
    );
}

#[test]
fn a_lock_whose_transaction_rolled_back_is_available_again() {
    let db = TestDb::create();
    let mut client = db.connect();
    let mut transaction = client.transaction().unwrap();
    let locked: bool = transaction
        .query_one("SELECT tally.attempt_event_lock('stripe', 'evt_1')", &[])
        .unwrap()
        .get(0);
    assert!(locked);
    transaction.rollback().unwrap();
    assert!(lock(&mut client, "evt_1"));
    assert!(!lock(&mut client, "evt_1"));
}

#[test]
fn a_concurrent_duplicate_waits_for_the_first_and_then_gets_false() {
    let db = TestDb::create();
    let mut first = db.connect();
    let mut transaction = first.transaction().unwrap();
    assert!(transaction
        .query_one("SELECT tally.attempt_event_lock('stripe', 'evt_1')", &[])
        .unwrap()
        .get::<_, bool>(0));
    let duplicate = std::thread::spawn({
        let mut client = db.connect();
        move || lock(&mut client, "evt_1")
    });
    let mut observer = db.connect();
    wait_until(
        &mut observer,
        "the duplicate waits for the lock",
        |client| {
            client
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity
                  WHERE wait_event_type = 'Lock' AND datname = current_database()",
                    &[],
                )
                .unwrap()
                .get::<_, i64>(0)
                == 1
        },
    );
    transaction.commit().unwrap();
    assert!(!duplicate.join().unwrap());
}

#[test]
fn twenty_identical_renewals_reset_usage_once() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id, period_start) VALUES ('acme', '2030-01-01');
             SELECT tally.check_and_increment_usage('acme', 'messages', 90);",
        )
        .unwrap();
    let renewed = race(&db, 20, 20, |client, _| {
        client
            .query_one(
                "SELECT tally.start_period('acme', '2030-02-01', '2030-03-01')",
                &[],
            )
            .unwrap()
            .get::<_, bool>(0)
    });
    assert_eq!(renewed.iter().filter(|r| **r).count(), 1);
    assert_eq!(used(&mut client, "acme", "messages"), 0);
}

/// `count` pending reports for `acme`, written directly (as increments of a
/// billed metric would).
fn fill_queue(client: &mut Client, count: i64) {
    client
        .execute(
            "INSERT INTO tally.tenants (tenant_id, stripe_customer_id) VALUES ('acme', 'cus_acme')",
            &[],
        )
        .unwrap();
    client
        .execute(
            "INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units)
             SELECT 'acme', 'messages', 'tally_messages', 1 FROM generate_series(1, $1::bigint)",
            &[&count],
        )
        .unwrap();
}

/// Claim batches and complete them until the queue is empty; returns the
/// ids this worker claimed.
fn drain(client: &mut Client) -> Vec<i64> {
    let mut mine = Vec::new();
    loop {
        let (ids, tokens): (Vec<i64>, Vec<String>) = client
            .query(
                "SELECT id, lease_token::text FROM tally.claim_usage_reports(50, '5 minutes')",
                &[],
            )
            .unwrap()
            .iter()
            .map(|row| (row.get::<_, i64>(0), row.get::<_, String>(1)))
            .unzip();
        if ids.is_empty() {
            return mine;
        }
        client
            .execute(
                "SELECT tally.complete_usage_report(id, token::uuid)
                   FROM unnest($1::bigint[], $2::text[]) AS c (id, token)",
                &[&ids, &tokens],
            )
            .unwrap();
        mine.extend(ids);
    }
}

fn drain_with(workers: usize) {
    let db = TestDb::create();
    let mut client = db.connect();
    fill_queue(&mut client, 10_000);
    let claimed = race(&db, workers, workers, |client, _| drain(client));

    let mut times_claimed: HashMap<i64, usize> = HashMap::new();
    for id in claimed.iter().flatten() {
        *times_claimed.entry(*id).or_default() += 1;
    }
    assert_eq!(times_claimed.len(), 10_000, "every report claimed");
    assert!(
        times_claimed.values().all(|n| *n == 1),
        "a report was claimed twice"
    );
    assert!(
        claimed.iter().all(|ids| !ids.is_empty()),
        "a worker got nothing: {workers} workers"
    );
    let row = client
        .query_one(
            "SELECT count(*) FILTER (WHERE status = 'completed' AND attempts = 1), count(*)
               FROM tally.usage_reports",
            &[],
        )
        .unwrap();
    assert_eq!(
        (row.get::<_, i64>(0), row.get::<_, i64>(1)),
        (10_000, 10_000)
    );
}

#[test]
fn two_claimers_drain_ten_thousand_reports_each_exactly_once() {
    drain_with(2);
}

#[test]
fn four_claimers_drain_ten_thousand_reports_each_exactly_once() {
    drain_with(4);
}

fn claim_ids(client: &mut Client, lease: &str) -> Vec<i64> {
    client
        .query(
            "SELECT id FROM tally.claim_usage_reports(10, $1::text::interval)",
            &[&lease],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect()
}

fn terminate(client: &mut Client, pid: i32) {
    client
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .unwrap();
}

fn backend_pid(client: &mut Client) -> i32 {
    client
        .query_one("SELECT pg_backend_pid()", &[])
        .unwrap()
        .get(0)
}

#[test]
fn reports_of_a_worker_killed_mid_claim_are_claimable_at_once() {
    let db = TestDb::create();
    let mut client = db.connect();
    fill_queue(&mut client, 3);
    let mut worker = db.connect();
    let pid = backend_pid(&mut worker);
    let mut transaction = worker.transaction().unwrap();
    let held: Vec<i64> = transaction
        .query(
            "SELECT id FROM tally.claim_usage_reports(10, '1 hour')",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(held.len(), 3);
    // While its transaction is open, nobody else gets them.
    assert_eq!(claim_ids(&mut client, "1 hour"), Vec::<i64>::new());
    terminate(&mut client, pid);
    drop(transaction);
    wait_until(
        &mut client,
        "the killed worker's claim is rolled back",
        |client| claim_ids(client, "1 hour").len() == 3,
    );
}

#[test]
fn reports_of_a_worker_killed_while_sending_are_claimed_again_after_the_lease() {
    let db = TestDb::create();
    let mut client = db.connect();
    fill_queue(&mut client, 3);
    let mut worker = db.connect();
    let pid = backend_pid(&mut worker);
    // The claim commits; the worker dies while it sends.
    let held = claim_ids(&mut worker, "2 seconds");
    assert_eq!(held.len(), 3);
    terminate(&mut client, pid);
    assert_eq!(
        claim_ids(&mut client, "1 hour"),
        Vec::<i64>::new(),
        "claimed during the lease"
    );
    let mut reclaimed = Vec::new();
    wait_until(&mut client, "the lease expires", |client| {
        reclaimed = claim_ids(client, "1 hour");
        !reclaimed.is_empty()
    });
    assert_eq!(reclaimed, held);
    let attempts: Vec<i32> = client
        .query("SELECT attempts FROM tally.usage_reports ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(attempts, vec![2, 2, 2]);
}

#[test]
fn an_increment_rolled_back_leaves_no_report() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "UPDATE tally.metrics SET stripe_meter_event = 'tally_messages' WHERE metric = 'messages';
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');",
        )
        .unwrap();
    // Once through the slow path (first use), once through the fast path.
    for _ in 0..2 {
        let mut transaction = client.transaction().unwrap();
        transaction
            .query_one(
                "SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 3)",
                &[],
            )
            .unwrap();
        transaction.rollback().unwrap();
        assert!(check(&mut client, "acme", "messages", 1, None).allowed);
    }
    let reports: Vec<i64> = client
        .query("SELECT units FROM tally.usage_reports ORDER BY id", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(reports, vec![1, 1]);
}
