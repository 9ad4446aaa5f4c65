//! Upgrades: every released version, upgraded with `ALTER EXTENSION tally
//! UPDATE`, ends with exactly the schema of a fresh install and keeps its
//! data. (scripts/test.sh also runs the whole suite on upgraded databases.)

use tally_tests::*;

/// Every object of the extension, one line each, sorted: columns in order
/// with types, defaults and nullability, constraints, indexes, full function
/// definitions, triggers, comments, owners and privileges, and extension
/// membership.
const DESCRIBE_SCHEMA: &str = "
    SELECT string_agg(line, E'\\n' ORDER BY line) FROM (
        SELECT format('relation %s %s %s', c.relname, c.relkind, c.reloptions) AS line
          FROM pg_class c WHERE c.relnamespace = 'tally'::regnamespace
        UNION ALL
        SELECT format('column %s %s %s %s %s %s', c.relname, a.attnum, a.attname,
                      format_type(a.atttypid, a.atttypmod), a.attnotnull, pg_get_expr(d.adbin, d.adrelid))
          FROM pg_attribute a
          JOIN pg_class c ON c.oid = a.attrelid
          LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
         WHERE c.relnamespace = 'tally'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
        UNION ALL
        SELECT format('constraint %s %s %s', conrelid::regclass, conname, pg_get_constraintdef(oid))
          FROM pg_constraint WHERE connamespace = 'tally'::regnamespace
        UNION ALL
        SELECT format('index %s', pg_get_indexdef(i.indexrelid))
          FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid
         WHERE c.relnamespace = 'tally'::regnamespace
        UNION ALL
        SELECT format('function %s', pg_get_functiondef(p.oid))
          FROM pg_proc p WHERE p.pronamespace = 'tally'::regnamespace
        UNION ALL
        SELECT format('trigger %s', pg_get_triggerdef(t.oid))
          FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
         WHERE c.relnamespace = 'tally'::regnamespace AND NOT t.tgisinternal
        UNION ALL
        SELECT format('comment %s %s', pg_describe_object(classoid, objoid, objsubid), description)
          FROM pg_description WHERE objoid IN (
              SELECT oid FROM pg_class WHERE relnamespace = 'tally'::regnamespace
              UNION ALL SELECT oid FROM pg_proc WHERE pronamespace = 'tally'::regnamespace)
        UNION ALL
        SELECT format('owner %s %s %s', c.relname, c.relowner::regrole, c.relacl)
          FROM pg_class c WHERE c.relnamespace = 'tally'::regnamespace AND c.relkind IN ('r', 'c')
        UNION ALL
        SELECT format('privileges %s %s %s', p.oid::regprocedure, p.proowner::regrole, p.proacl)
          FROM pg_proc p WHERE p.pronamespace = 'tally'::regnamespace
        UNION ALL
        SELECT format('schema %s', n.nspacl) FROM pg_namespace n WHERE n.nspname = 'tally'
        UNION ALL
        SELECT format('member %s', pg_describe_object(classid, objid, objsubid))
          FROM pg_depend
         WHERE refclassid = 'pg_extension'::regclass AND deptype = 'e'
           AND refobjid = (SELECT oid FROM pg_extension WHERE extname = 'tally')
    ) AS lines";

/// Versions released before this one.
fn released_versions() -> Vec<String> {
    // One version for the workspace: this crate's is the extension's.
    let current = env!("CARGO_PKG_VERSION");
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../sql/released");
    let mut versions: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|error| panic!("{}: {error}", dir.display()))
        .filter_map(|entry| {
            let name = entry.ok()?.file_name().into_string().ok()?;
            Some(
                name.strip_prefix("tally--")?
                    .strip_suffix(".sql")?
                    .to_string(),
            )
        })
        .filter(|version| version != current)
        .collect();
    versions.sort();
    assert!(
        !versions.is_empty(),
        "no released versions in {}",
        dir.display()
    );
    versions
}

fn describe(client: &mut Client) -> String {
    client.query_one(DESCRIBE_SCHEMA, &[]).unwrap().get(0)
}

#[test]
fn every_released_version_upgrades_to_the_fresh_schema() {
    let fresh = TestDb::create_empty();
    let mut client = fresh.connect();
    client.batch_execute("CREATE EXTENSION tally").unwrap();
    let expected = describe(&mut client);
    assert!(
        expected.contains("function CREATE OR REPLACE FUNCTION tally.check_and_increment_usage")
    );

    for version in released_versions() {
        let upgraded = TestDb::create_empty();
        let mut client = upgraded.connect();
        client
            .batch_execute(&format!(
                "CREATE EXTENSION tally VERSION '{version}'; ALTER EXTENSION tally UPDATE;"
            ))
            .unwrap();
        let actual = describe(&mut client);
        let (expected_lines, actual_lines): (Vec<_>, Vec<_>) =
            (expected.lines().collect(), actual.lines().collect());
        let missing: Vec<_> = expected_lines
            .iter()
            .filter(|l| !actual_lines.contains(l))
            .collect();
        let extra: Vec<_> = actual_lines
            .iter()
            .filter(|l| !expected_lines.contains(l))
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "upgrading from {version} differs from a fresh install\nmissing: {missing:#?}\nextra: {extra:#?}"
        );
    }
}

#[test]
fn data_written_by_0_1_0_is_kept_and_used_after_the_upgrade() {
    let db = TestDb::create_empty();
    let mut client = db.connect();
    // 0.1.0's own schema, filled with plain SQL: the new library cannot run
    // 0.1.0's functions (see the next test).
    client
        .batch_execute(&format!(
            "CREATE EXTENSION tally VERSION '0.1.0'; {FIXTURE}
             UPDATE tally.metrics SET stripe_meter_event = 'tally_messages' WHERE metric = 'messages';
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             INSERT INTO tally.usage_counters (tenant_id, metric, used, period_start, max_units, calendar_period, limits_valid)
             VALUES ('acme', 'messages', 40, date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', 100, true, true),
                    ('acme', 'chatbots', 5, NULL, 5, false, true);
             INSERT INTO tally.idempotency_keys (tenant_id, idempotency_key, metric, units, allowed, used, max_units, remaining)
             VALUES ('acme', 'req-1', 'messages', 40, true, 40, 100, 60);
             ALTER EXTENSION tally UPDATE;"
        ))
        .unwrap();
    assert_eq!(
        check(&mut client, "acme", "messages", 40, Some("req-1")).used,
        40
    );
    assert_eq!(
        check(&mut client, "acme", "chatbots", 1, None)
            .reason
            .as_deref(),
        Some("limit_exceeded")
    );
    let next = check(&mut client, "acme", "messages", 10, None);
    assert_eq!((next.allowed, next.used), (true, 50));
    // The copy refreshed on the upgrade now carries the meter event.
    let reports: i64 = client
        .query_one("SELECT sum(units)::bigint FROM tally.usage_reports", &[])
        .unwrap()
        .get(0);
    assert_eq!(reports, 10);
}

#[test]
fn links_and_keys_written_by_0_4_0_are_found_after_the_upgrade() {
    let db = TestDb::create_empty();
    let mut client = db.connect();
    let hash = "a".repeat(64);
    client
        .batch_execute(&format!(
            "CREATE EXTENSION tally VERSION '0.4.0'; {FIXTURE}
             INSERT INTO tally.tenants (tenant_id, stripe_customer_id, stripe_subscription_id, paddle_customer_id)
             VALUES ('acme', 'cus_1', 'sub_1', 'ctm_1'), ('globex', NULL, NULL, NULL);
             INSERT INTO tally.api_keys (key_id, tenant_id, key_hash) VALUES ('k1', 'acme', '{hash}'),
                    ('k2', 'acme', '{}');
             UPDATE tally.api_keys SET revoked_at = now() WHERE key_id = 'k2';
             ALTER EXTENSION tally UPDATE;",
            "b".repeat(64)
        ))
        .unwrap();
    let links: Vec<(String, String, String)> = client
        .query(
            "SELECT provider || ' ' || object, object_id, tenant_id FROM tally.provider_links ORDER BY 1",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1), row.get(2)))
        .collect();
    let acme = |kind: &str, id: &str| (kind.to_string(), id.to_string(), "acme".to_string());
    assert_eq!(
        links,
        vec![
            acme("paddle customer", "ctm_1"),
            acme("stripe customer", "cus_1"),
            acme("stripe subscription", "sub_1"),
        ]
    );
    let tenant_of = |client: &mut Client, hash: &str| -> Option<String> {
        client
            .query_one("SELECT tally.tenant_for_api_key($1)", &[&hash])
            .unwrap()
            .get(0)
    };
    assert_eq!(tenant_of(&mut client, &hash).as_deref(), Some("acme"));
    assert_eq!(tenant_of(&mut client, &"b".repeat(64)), None);
    // The links still refuse a second owner.
    let error = client
        .batch_execute("SELECT tally.link_provider_customer('globex', 'stripe', 'cus_1')")
        .unwrap_err();
    assert_eq!(error.as_db_error().unwrap().code().code(), "23505");
}

#[test]
fn the_library_asks_for_an_update_of_an_older_schema() {
    let db = TestDb::create_empty();
    let mut client = db.connect();
    client
        .batch_execute(&format!("CREATE EXTENSION tally VERSION '0.1.0'; {FIXTURE} INSERT INTO tally.tenants VALUES ('acme')"))
        .unwrap();
    let error = client
        .query_one(
            "SELECT * FROM tally.check_and_increment_usage('acme', 'messages')",
            &[],
        )
        .unwrap_err();
    let error = error.as_db_error().expect("a database error");
    assert_eq!(error.code().code(), "55000");
    assert_eq!(error.message(), "tally needs an update");
    assert!(error
        .hint()
        .unwrap()
        .contains("ALTER EXTENSION tally UPDATE"));
}

#[test]
fn one_session_keeps_working_when_the_extension_is_dropped_and_created_again() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute("INSERT INTO tally.tenants (tenant_id) VALUES ('acme')")
        .unwrap();
    // Kept plans and the result type's OID are now cached in this backend.
    assert_eq!(check(&mut client, "acme", "messages", 3, Some("k")).used, 3);
    client
        .batch_execute(&format!(
            "DROP EXTENSION tally CASCADE; CREATE EXTENSION tally; {FIXTURE}
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');"
        ))
        .unwrap();
    // New tables and a new type with new OIDs: the same backend finds them.
    assert_eq!(check(&mut client, "acme", "messages", 2, Some("k")).used, 2);
    let validated: bool = client
        .query_one(
            "SELECT valid FROM tally.validate_plan_change('acme', 'starter')",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(validated);
}

/// The SQLSTATE and message `sql` fails with.
fn failure(client: &mut Client, sql: &str) -> (String, String) {
    let error = client
        .batch_execute(sql)
        .expect_err(&format!("{sql} should fail"));
    let error = error
        .as_db_error()
        .unwrap_or_else(|| panic!("{sql}: {error}"));
    (error.code().code().to_string(), error.message().to_string())
}

#[test]
fn queue_functions_of_older_versions_settle_nothing_without_a_lease_token() {
    // The SQL of 0.3.0 (fail without retry_after) and of 0.7.0 name
    // functions of this library that took no lease token: each refuses.
    let refuse = |version: &str, calls: &[&str]| {
        let db = TestDb::create_empty();
        let mut client = db.connect();
        client
            .batch_execute(&format!(
                "CREATE EXTENSION tally VERSION '{version}'; {FIXTURE}
                 INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
                 INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units, attempts, lease_until)
                 VALUES ('acme', 'messages', 'tally_messages', 1, 1, now() + interval '1 hour');"
            ))
            .unwrap();
        for call in calls {
            assert_eq!(
                failure(&mut client, call),
                ("55000".to_string(), "tally needs an update".to_string()),
                "{version}: {call}"
            );
        }
        let status: String = client
            .query_one("SELECT status FROM tally.usage_reports", &[])
            .unwrap()
            .get(0);
        assert_eq!(status, "pending", "{version}");
    };
    refuse(
        "0.3.0",
        &[
            "SELECT tally.fail_usage_report(1, 'timeout', true)",
            "SELECT tally.complete_usage_report(1)",
        ],
    );
    refuse(
        "0.7.0",
        &[
            "SELECT * FROM tally.claim_usage_reports(10, '1 minute')",
            "SELECT tally.complete_usage_report(1)",
            "SELECT tally.fail_usage_report(1, 'timeout', permanent => true)",
            "SELECT tally.requeue_failed_usage_reports(NULL)",
        ],
    );
}

#[test]
fn reports_of_0_7_0_keep_their_history_after_the_upgrade() {
    let db = TestDb::create_empty();
    let mut client = db.connect();
    client
        .batch_execute(&format!(
            "CREATE EXTENSION tally VERSION '0.7.0'; {FIXTURE}
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units, status, attempts, last_error, created_at, failed_at)
             VALUES ('acme', 'messages', 'tally_messages', 1, 'failed', 3, 'resource_missing', now() - interval '2 days', now()),
                    ('acme', 'messages', 'tally_messages', 2, 'pending', 0, NULL, now(), NULL);
             ALTER EXTENSION tally UPDATE;"
        ))
        .unwrap();
    let rows: Vec<(i32, bool)> = client
        .query(
            "SELECT sends, first_claimed_at IS NOT NULL FROM tally.usage_reports ORDER BY id",
            &[],
        )
        .unwrap()
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    assert_eq!(rows, vec![(3, true), (0, false)]);
    // Its first send may be two days old: requeueing it is a decision.
    assert_eq!(
        failure(&mut client, "SELECT tally.requeue_failed_usage_reports()"),
        (
            "55000".to_string(),
            "usage reports may be billed twice".to_string()
        )
    );
    // The token-less signatures are gone.
    assert_eq!(
        failure(&mut client, "SELECT tally.complete_usage_report(1)").0,
        "42883"
    );
}

#[test]
fn a_table_enforced_under_0_9_0_waits_for_the_update_then_keeps_counting() {
    let db = TestDb::create_empty();
    let mut client = db.connect();
    // What 0.9.0's enforce_count leaves on a table (its trigger and record),
    // written as plain SQL: the new library runs no 0.9.0 function.
    client
        .batch_execute(&format!(
            "CREATE EXTENSION tally VERSION '0.9.0'; {FIXTURE}
             INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
             CREATE TABLE chatbots (tenant_id text);
             INSERT INTO tally.count_enforcements (relid, metric, tenant_column)
             VALUES ('chatbots'::regclass, 'chatbots', 'tenant_id');
             CREATE TRIGGER tally_count_insert AFTER INSERT ON chatbots
                 REFERENCING NEW TABLE AS tally_new FOR EACH STATEMENT
                 EXECUTE FUNCTION tally._enforce_count_rows('chatbots', 'tenant_id', '');"
        ))
        .unwrap();
    // Before the update: no row is taken uncounted.
    assert_eq!(
        failure(&mut client, "INSERT INTO chatbots VALUES ('acme')"),
        ("55000".to_string(), "tally needs an update".to_string())
    );
    client
        .batch_execute("ALTER EXTENSION tally UPDATE")
        .unwrap();
    client
        .batch_execute("INSERT INTO chatbots SELECT 'acme' FROM generate_series(1, 5)")
        .unwrap();
    assert_eq!(used(&mut client, "acme", "chatbots"), 5);
    let (code, message) = failure(&mut client, "INSERT INTO chatbots VALUES ('acme')");
    assert_eq!(
        (code.as_str(), message.as_str()),
        ("TL001", "usage limit exceeded")
    );
    let rows: i64 = client
        .query_one("SELECT count(*) FROM chatbots", &[])
        .unwrap()
        .get(0);
    assert_eq!(rows, 5);
}
