//! `tally.enforce_count`: enabling it on a table, and what the table's
//! shape can do to it (populated tables, column types, renamed columns, the
//! table's own triggers, units that overflow). The table and roles are
//! [`tally_tests::app_table`]'s.

use postgres::error::SqlState;
use tally_rules::errors;
use tally_tests::app_table::*;
use tally_tests::*;

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

#[test]
fn a_cast_of_the_table_owners_own_type_never_runs_as_tally_owner() {
    let db = setup("");
    let mut admin = db.connect();
    tenant(&mut admin, "a", "free");
    let mut owner = db.connect_as("tally_admin");
    // The table owner's own type, with a cast to text that writes down whose
    // rights it runs with: run by the sync or the TRUNCATE trigger (which
    // read the tenant column as text, as tally_owner), it would run as
    // tally_owner.
    owner
        .batch_execute(
            "CREATE TABLE app.ran_as (who text);
             GRANT INSERT ON app.ran_as TO PUBLIC;
             CREATE TYPE app.workspace AS ENUM ('a');
             CREATE FUNCTION app.workspace_text(app.workspace) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN
                 INSERT INTO app.ran_as VALUES (current_user);
                 RETURN 'a';
             END $$;
             GRANT EXECUTE ON FUNCTION app.workspace_text(app.workspace) TO PUBLIC;
             CREATE CAST (app.workspace AS text) WITH FUNCTION app.workspace_text(app.workspace);
             CREATE TABLE app.bots (tenant app.workspace);
             INSERT INTO app.bots VALUES ('a');",
        )
        .unwrap();
    let error = owner
        .query_one(
            "SELECT tally.enforce_count('app.bots', 'tenant', 'seats')",
            &[],
        )
        .unwrap_err();
    assert_eq!(
        failure(&error),
        errors::tenant_column_not_built_in("app.bots", "tenant", "app.workspace")
    );
    // A column retyped after enabling: the TRUNCATE trigger and a sync refuse.
    enforce(&db, "chatbots", None);
    insert(&mut db.connect_as("tally_app"), "a", 2).unwrap();
    owner
        .batch_execute(
            "ALTER TABLE app.chatbots ALTER COLUMN tenant_id TYPE app.workspace
                 USING tenant_id::text::app.workspace",
        )
        .unwrap();
    let retyped = errors::tenant_column_not_built_in("app.chatbots", "tenant_id", "app.workspace");
    let error = db
        .connect_as("tally_app")
        .batch_execute("TRUNCATE app.chatbots")
        .unwrap_err();
    assert_eq!(failure(&error), retyped);
    let error = owner
        .query_one(
            "SELECT tally._enforce_sync('app.chatbots'::regclass, 'chatbots')",
            &[],
        )
        .unwrap_err();
    assert_eq!(failure(&error), retyped);
    let ran_as: i64 = admin
        .query_one("SELECT count(*) FROM app.ran_as", &[])
        .unwrap()
        .get(0);
    assert_eq!(ran_as, 0, "the owner's cast ran inside tally");
    assert_eq!(used(&mut admin, "a", "chatbots"), 2);
}
