//! Concurrency: real connections released together on one tenant.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use rand::Rng;
use tally_tests::*;

/// Repeat each race, so an interleaving that breaks the rule has many chances.
const ROUNDS: usize = 10;

#[test]
fn five_callers_at_four_of_five_admit_exactly_one() {
    let db = TestDb::create();
    let mut client = db.connect();
    for round in 0..ROUNDS {
        let tenant = format!("acme-{round}");
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id) VALUES ($1)",
                &[&tenant],
            )
            .unwrap();
        assert!(check(&mut client, &tenant, "chatbots", 4, None).allowed);

        let racing = tenant.clone();
        let results = race(&db, 5, 5, move |client, _| {
            check(client, &racing, "chatbots", 1, None)
        });
        let allowed: Vec<_> = results.iter().filter(|r| r.allowed).collect();
        assert_eq!(allowed.len(), 1, "round {round}: {results:?}");
        assert_eq!(allowed[0].used, 5);
        for refused in results.iter().filter(|r| !r.allowed) {
            assert_eq!(
                (refused.used, refused.reason.as_deref()),
                (5, Some("limit_exceeded"))
            );
        }
        assert_eq!(used(&mut client, &tenant, "chatbots"), 5);
    }
}

#[test]
fn ten_callers_at_ninety_five_of_a_hundred_admit_exactly_five() {
    let db = TestDb::create();
    let mut client = db.connect();
    for round in 0..ROUNDS {
        let tenant = format!("acme-{round}");
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id) VALUES ($1)",
                &[&tenant],
            )
            .unwrap();
        assert!(check(&mut client, &tenant, "messages", 95, None).allowed);

        let racing = tenant.clone();
        let results = race(&db, 10, 10, move |client, _| {
            check(client, &racing, "messages", 1, None)
        });
        let mut counts: Vec<i64> = results
            .iter()
            .filter(|r| r.allowed)
            .map(|r| r.used)
            .collect();
        counts.sort();
        // Each admitted caller saw its own count: 96, 97, ... 100.
        assert_eq!(
            counts,
            vec![96, 97, 98, 99, 100],
            "round {round}: {results:?}"
        );
        assert_eq!(used(&mut client, &tenant, "messages"), 100);
    }
}

#[test]
fn a_hundred_tenants_with_ten_callers_each_never_pass_their_limits() {
    let db = TestDb::create();
    let mut client = db.connect();
    let mut rng = rand::thread_rng();
    let tenants = 100;
    let limits: Vec<i64> = (0..tenants).map(|_| rng.gen_range(3..=15)).collect();
    for (t, limit) in limits.iter().enumerate() {
        let plan = format!("plan-{t}");
        client
            .batch_execute(&format!(
                "INSERT INTO tally.plans (plan_id) VALUES ('{plan}');
                 INSERT INTO tally.plan_limits VALUES ('{plan}', 'chatbots', {limit});
                 INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ('tenant-{t}', '{plan}');"
            ))
            .unwrap();
    }
    // 100 connections in ten groups of ten. At step k, the ten connections
    // of group g all call tenant 10g + k at once; after ten steps every
    // tenant has had ten concurrent callers, each adding 1 to 3 units.
    let units: Vec<i64> = (0..tenants * 10).map(|_| rng.gen_range(1..=3)).collect();
    let tenant_of = |call: usize| {
        let (step, connection) = (call / 100, call % 100);
        (connection / 10) * 10 + step
    };
    let planned: Vec<(usize, i64)> = (0..units.len())
        .map(|call| (tenant_of(call), units[call]))
        .collect();
    let calls = planned.clone();
    let results = race(&db, 100, calls.len(), move |client, i| {
        let (tenant, units) = calls[i];
        check(client, &format!("tenant-{tenant}"), "chatbots", units, None)
    });

    for (t, limit) in limits.iter().enumerate() {
        let counted = used(&mut client, &format!("tenant-{t}"), "chatbots");
        let mine: Vec<_> = planned
            .iter()
            .zip(&results)
            .filter(|((tenant, _), _)| *tenant == t)
            .collect();
        let allowed_units: i64 = mine
            .iter()
            .filter(|(_, r)| r.allowed)
            .map(|((_, units), _)| units)
            .sum();
        assert!(counted <= *limit, "tenant-{t}: {counted} > {limit}");
        assert_eq!(
            counted, allowed_units,
            "tenant-{t}: counter and allowed units differ"
        );
        // Nothing was refused that would have fit: counts only grow here, so a
        // refused call's units must not fit even on top of the final count.
        for ((_, units), result) in mine.iter().filter(|(_, r)| !r.allowed) {
            assert!(
                counted + units > *limit,
                "tenant-{t}: refused {units} with {counted}/{limit}"
            );
            assert_eq!(result.reason.as_deref(), Some("limit_exceeded"));
        }
    }
}

#[test]
fn twenty_concurrent_repeats_of_one_idempotency_key_count_once() {
    let db = TestDb::create();
    let mut client = db.connect();
    for round in 0..ROUNDS {
        let tenant = format!("acme-{round}");
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id) VALUES ($1)",
                &[&tenant],
            )
            .unwrap();
        let racing = tenant.clone();
        let results = race(&db, 20, 20, move |client, _| {
            check(client, &racing, "messages", 3, Some("send-42"))
        });
        assert!(
            results.iter().all(|r| *r == results[0]),
            "round {round}: {results:?}"
        );
        assert_eq!(results[0].used, 3);
        assert_eq!(used(&mut client, &tenant, "messages"), 3);
    }
}

#[test]
fn a_repeat_that_waits_for_a_rolled_back_first_call_counts_itself() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .execute("INSERT INTO tally.tenants (tenant_id) VALUES ('acme')", &[])
        .unwrap();
    // The first call holds the key in an open transaction while repeats queue
    // behind it; then it rolls back, and exactly one repeat counts.
    let mut first = db.connect();
    let mut transaction = first.transaction().unwrap();
    transaction
        .query_one(
            "SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 2, 'k')",
            &[],
        )
        .unwrap();
    let repeats = std::thread::spawn({
        let url = db.url().to_string();
        move || {
            let handles: Vec<_> = (0..5)
                .map(|_| {
                    let url = url.clone();
                    std::thread::spawn(move || {
                        let mut client = Client::connect(&url, NoTls).unwrap();
                        check(&mut client, "acme", "messages", 2, Some("k"))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect::<Vec<_>>()
        }
    });
    wait_until(&mut client, "all five repeats wait for the key", |client| {
        client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND datname = current_database()",
                &[],
            )
            .unwrap()
            .get::<_, i64>(0)
            == 5
    });
    transaction.rollback().unwrap();
    let results = repeats.join().unwrap();
    assert!(
        results.iter().all(|r| r.allowed && r.used == 2),
        "{results:?}"
    );
    assert_eq!(used(&mut client, "acme", "messages"), 2);
}

#[test]
fn a_rolled_back_caller_leaves_nothing_behind() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             CREATE TABLE chatbots (id serial PRIMARY KEY, tenant_id text NOT NULL);",
        )
        .unwrap();
    // The caller takes the seat and creates the chatbot in one transaction,
    // and its own write fails: neither happens.
    let mut transaction = client.transaction().unwrap();
    let taken = transaction
        .query_one("SELECT allowed FROM tally.check_and_increment_usage('acme', 'chatbots', 1, 'create-bot-1')", &[])
        .unwrap();
    assert!(taken.get::<_, bool>(0));
    transaction
        .execute("INSERT INTO chatbots (tenant_id) VALUES ('acme')", &[])
        .unwrap();
    transaction.rollback().unwrap();

    assert_eq!(used(&mut client, "acme", "chatbots"), 0);
    let keys: i64 = client
        .query_one("SELECT count(*) FROM tally.idempotency_keys", &[])
        .unwrap()
        .get(0);
    assert_eq!(keys, 0);
    // The retry with the same key counts, because the first never happened.
    assert_eq!(
        check(&mut client, "acme", "chatbots", 1, Some("create-bot-1")).used,
        1
    );
}

#[test]
fn a_plan_change_racing_increments_never_leaves_the_tenant_over_its_new_plan() {
    let db = TestDb::create();
    let mut client = db.connect();
    for round in 0..ROUNDS {
        let tenant = format!("acme-{round}");
        client
            .execute(
                "INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ($1, 'growth')",
                &[&tenant],
            )
            .unwrap();
        assert!(check(&mut client, &tenant, "chatbots", 2, None).allowed);

        // Eight callers add chatbots while one downgrades to starter (3).
        let racing = tenant.clone();
        let outcomes = race(&db, 9, 9, move |client, i| {
            if i == 4 {
                client
                    .query_one(
                        "SELECT valid FROM tally.change_plan($1, 'starter')",
                        &[&racing],
                    )
                    .map(|row| row.get::<_, bool>(0))
                    .map_err(|e| e.as_db_error().map(|e| e.code().code().to_string()))
            } else {
                Ok(check(client, &racing, "chatbots", 1, None).allowed)
            }
        });
        let plan: String = client
            .query_one(
                "SELECT plan_id FROM tally.tenants WHERE tenant_id = $1",
                &[&tenant],
            )
            .unwrap()
            .get(0);
        let count = used(&mut client, &tenant, "chatbots");
        let admitted = outcomes
            .iter()
            .enumerate()
            .filter(|(i, o)| *i != 4 && **o == Ok(true))
            .count() as i64;
        assert_eq!(count, 2 + admitted, "round {round}");
        match &outcomes[4] {
            Ok(true) => {
                assert_eq!(plan, "starter");
                assert!(count <= 3, "round {round}: {count} chatbots on starter");
            }
            Err(Some(code)) if code == "55000" => {
                assert_eq!(plan, "growth");
                assert!(
                    count > 3,
                    "round {round}: refused with only {count} chatbots"
                );
            }
            other => panic!("round {round}: change_plan returned {other:?}"),
        }
    }
}

#[test]
fn a_lowered_limit_binds_every_increment_after_it_commits() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .execute("INSERT INTO tally.tenants (tenant_id) VALUES ('acme')", &[])
        .unwrap();
    client.execute("UPDATE tally.plan_limits SET max_units = 100000 WHERE plan_id = 'free' AND metric = 'messages'", &[]).unwrap();
    assert!(check(&mut client, "acme", "messages", 1, None).allowed);

    // Six callers increment without pause; the limit drops from 100,000 to
    // 40 while they run, after at least 20 were counted.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..6)
        .map(|_| {
            let (stop, calls, mut caller) = (stop.clone(), calls.clone(), db.connect());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    check(&mut caller, "acme", "messages", 1, None);
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    wait_until(&mut client, "20 messages counted", |client| {
        used(client, "acme", "messages") >= 20
    });
    client.execute("UPDATE tally.plan_limits SET max_units = 40 WHERE plan_id = 'free' AND metric = 'messages'", &[]).unwrap();
    let at_commit = used(&mut client, "acme", "messages");
    // Let the callers make another 300 calls against the new limit.
    let calls_at_commit = calls.load(Ordering::Relaxed);
    wait_until(&mut client, "300 more calls", |_| {
        calls.load(Ordering::Relaxed) >= calls_at_commit + 300
    });
    stop.store(true, Ordering::Relaxed);
    callers.into_iter().for_each(|c| c.join().unwrap());
    let final_count = used(&mut client, "acme", "messages");
    assert!(
        final_count <= at_commit.max(40),
        "{final_count} after the limit became 40 at {at_commit}"
    );
    assert!(final_count >= at_commit);
}
