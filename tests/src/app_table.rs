//! An application's table for `tally.enforce_count`'s tests: schema `app`
//! owned by a `tally_admin` login role (which enables enforcement), written
//! by a login role that has `tally_app` and privileges on its tables only.

use postgres::Client;
use tally_rules::errors::{self, Failure};

use crate::{login_role, TestDb};

pub const TL001: &str = "TL001";

/// A database with schema `app` owned by the admin login role, and
/// `app.chatbots (id, tenant_id, units)` made by it, writable by the app role.
pub fn setup(extra_columns: &str) -> TestDb {
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

pub fn tenant(client: &mut Client, tenant: &str, plan: &str) {
    client
        .execute(
            "INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ($1, $2)",
            &[&tenant, &plan],
        )
        .unwrap();
}

pub fn enforce(db: &TestDb, metric: &str, units_column: Option<&str>) -> i64 {
    db.connect_as("tally_admin")
        .query_one(
            "SELECT tally.enforce_count('app.chatbots', 'tenant_id', $1, $2)",
            &[&metric, &units_column],
        )
        .expect("enforce_count")
        .get(0)
}

pub fn rows(client: &mut Client, tenant: &str) -> i64 {
    client
        .query_one(
            "SELECT count(*) FROM app.chatbots WHERE tenant_id = $1",
            &[&tenant],
        )
        .unwrap()
        .get(0)
}

/// The error a statement failed with, as the catalogue describes errors.
pub fn failure(error: &postgres::Error) -> Failure {
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

pub fn insert(client: &mut Client, tenant: &str, count: i64) -> Result<u64, postgres::Error> {
    client.execute(
        "INSERT INTO app.chatbots (tenant_id) SELECT $1 FROM generate_series(1, $2::bigint)",
        &[&tenant, &count],
    )
}
