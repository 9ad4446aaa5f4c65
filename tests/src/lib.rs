//! Helpers for tally's integration tests: each test gets a fresh database
//! with the extension installed, in the cluster that `scripts/test.sh`
//! starts (`TALLY_TEST_DATABASE_URL` names its maintenance database).
//!
//! With `TALLY_TEST_UPGRADE_FROM=<version>`, every database installs that
//! released version and upgrades it with `ALTER EXTENSION tally UPDATE`, so
//! the whole suite runs again against an upgraded schema.

pub mod app_table;
pub mod citus;
pub mod fake_stripe;
pub mod server;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

pub use postgres::{Client, NoTls};

/// Metrics, plans and limits shared by the tests:
///
/// | plan            | messages | chatbots | seats |
/// |-----------------|----------|----------|-------|
/// | free (default)  | 100      | 5        | –     |
/// | starter         | 2000     | 3        | 2     |
/// | growth          | ∞        | 10       | 10    |
pub const FIXTURE: &str = "
    INSERT INTO tally.metrics (metric, kind) VALUES
        ('messages', 'consumable'), ('chatbots', 'allocation'), ('seats', 'allocation');
    INSERT INTO tally.plans (plan_id, is_default) VALUES
        ('free', true), ('starter', false), ('growth', false);
    INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES
        ('free', 'messages', 100), ('free', 'chatbots', 5),
        ('starter', 'messages', 2000), ('starter', 'chatbots', 3), ('starter', 'seats', 2),
        ('growth', 'messages', NULL), ('growth', 'chatbots', 10), ('growth', 'seats', 10);
";

fn admin_url() -> String {
    std::env::var("TALLY_TEST_DATABASE_URL").unwrap_or_else(|_| {
        panic!(
            "TALLY_TEST_DATABASE_URL is not set: run scripts/test.sh, which starts a cluster \
             with the extension installed, or point it at one (postgresql://user@host:port/postgres)"
        )
    })
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDb {
    name: String,
    url: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl TestDb {
    /// A fresh database with `CREATE EXTENSION tally` and the fixture.
    pub fn create() -> TestDb {
        off_runtime(TestDb::create_in_thread)
    }

    fn create_in_thread() -> TestDb {
        let db = TestDb::create_empty_in_thread();
        let install = match std::env::var("TALLY_TEST_UPGRADE_FROM") {
            Ok(version) => {
                format!("CREATE EXTENSION tally VERSION '{version}'; ALTER EXTENSION tally UPDATE;")
            }
            Err(_) => "CREATE EXTENSION tally;".to_string(),
        };
        db.connect()
            .batch_execute(&format!("{install} {FIXTURE}"))
            .expect("extension and fixture");
        db
    }

    /// A fresh database without the extension.
    pub fn create_empty() -> TestDb {
        off_runtime(TestDb::create_empty_in_thread)
    }

    fn create_empty_in_thread() -> TestDb {
        let admin = admin_url();
        let name = format!(
            "tally_test_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut client = Client::connect(&admin, NoTls).expect("connect to the test cluster");
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .expect("create database");
        let url = match admin.rfind('/') {
            Some(slash) => format!("{}/{name}", &admin[..slash]),
            None => panic!("TALLY_TEST_DATABASE_URL must end with /database"),
        };
        TestDb { name, url }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn connect(&self) -> Client {
        Client::connect(&self.url, NoTls).expect("connect to the test database")
    }

    /// This database's URL for the login role `user` (trust authentication:
    /// the test cluster is local and throwaway).
    pub fn url_for(&self, user: &str) -> String {
        match self.url.split_once("://").and_then(|(scheme, rest)| {
            let (_, host) = rest.split_once('@')?;
            Some(format!("{scheme}://{user}@{host}"))
        }) {
            Some(url) => url,
            None => panic!("TALLY_TEST_DATABASE_URL must look like postgresql://user@host:port/db"),
        }
    }

    /// This database's URL for a login role that is a member of `group`
    /// (`tally_app`, `tally_daemon` or `tally_admin`) and nothing else.
    pub fn url_as(&self, group: &str) -> String {
        self.url_for(&login_role(group))
    }

    /// A connection as a login role that is a member of `group` only.
    pub fn connect_as(&self, group: &str) -> Client {
        Client::connect(&self.url_as(group), NoTls).expect("connect as a tally role")
    }

    /// A connection for async tests (the blocking client cannot run inside
    /// an async runtime).
    pub async fn connect_async(&self) -> tokio_postgres::Client {
        let (client, connection) = tokio_postgres::connect(&self.url, tokio_postgres::NoTls)
            .await
            .expect("connect to the test database");
        tokio::spawn(connection);
        client
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        off_runtime(move || {
            if let Ok(mut client) = Client::connect(&admin_url(), NoTls) {
                let _ =
                    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

/// The login role the tests use for `group`: `tally_test_<group>`, made
/// once per cluster (roles are the cluster's), a member of `group` only,
/// never a superuser.
pub fn login_role(group: &str) -> String {
    static MADE: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let login = format!("tally_test_{}", group.trim_start_matches("tally_"));
    let mut made = MADE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if !made.contains(&login) {
        off_runtime(|| {
            let mut client =
                Client::connect(&admin_url(), NoTls).expect("connect to the test cluster");
            // Serialized across test processes: roles are shared by them all.
            let mut tx = client.transaction().expect("begin");
            tx.batch_execute(&format!(
                "SELECT pg_advisory_xact_lock(1952541900);
                 DO $$ BEGIN
                     IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{login}') THEN
                         CREATE ROLE {login} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
                     END IF;
                     IF NOT pg_has_role('{login}', '{group}', 'MEMBER') THEN
                         GRANT {group} TO {login};
                     END IF;
                 END $$;"
            ))
            .expect("make the login role");
            tx.commit().expect("commit");
        });
        made.push(login.clone());
    }
    login
}

/// Run blocking database work on a thread of its own, so that it works from
/// async tests too (the blocking client refuses to run inside a runtime).
fn off_runtime<T: Send>(work: impl FnOnce() -> T + Send) -> T {
    thread::scope(|scope| scope.spawn(work).join().expect("database setup panicked"))
}

/// The result of one `check_and_increment_usage` call.
pub use tallyd::db::tenant_api::Check;

pub fn check(
    client: &mut Client,
    tenant: &str,
    metric: &str,
    units: i64,
    key: Option<&str>,
) -> Check {
    let row = client
        .query_one(
            "SELECT allowed, used, max_units, remaining, reason
               FROM tally.check_and_increment_usage($1, $2, $3, $4)",
            &[&tenant, &metric, &units, &key],
        )
        .expect("check_and_increment_usage");
    Check {
        allowed: row.get(0),
        used: row.get(1),
        max_units: row.get(2),
        remaining: row.get(3),
        reason: row.get(4),
    }
}

pub fn used(client: &mut Client, tenant: &str, metric: &str) -> i64 {
    client
        .query_opt(
            "SELECT used FROM tally.usage_counters WHERE tenant_id = $1 AND metric = $2",
            &[&tenant, &metric],
        )
        .expect("read counter")
        .map_or(0, |row| row.get(0))
}

/// Run `calls` on `connections` connections of their own, all released at
/// once by a barrier after connecting; returns each call's result in order.
/// The callers connect as a `tally_admin` login role, never a superuser, so
/// the races run through the same grants an application's would.
/// Call `i` runs on connection `i % connections`.
pub fn race<T, F>(db: &TestDb, connections: usize, calls: usize, call: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(&mut Client, usize) -> T + Send + Sync + 'static,
{
    let call = Arc::new(call);
    let barrier = Arc::new(Barrier::new(connections));
    let handles: Vec<_> = (0..connections)
        .map(|worker| {
            let (call, barrier, mut client) =
                (call.clone(), barrier.clone(), db.connect_as("tally_admin"));
            thread::spawn(move || {
                barrier.wait();
                (worker..calls)
                    .step_by(connections)
                    .map(|i| (i, call(&mut client, i)))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut results: Vec<(usize, T)> = handles
        .into_iter()
        .flat_map(|handle| handle.join().expect("a racing caller panicked"))
        .collect();
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, result)| result).collect()
}

/// Poll `condition` every 10 ms until it holds; fail after a minute.
pub fn wait_until<F: FnMut(&mut Client) -> bool>(
    client: &mut Client,
    what: &str,
    mut condition: F,
) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !condition(client) {
        assert!(
            std::time::Instant::now() < deadline,
            "gave up waiting until {what}"
        );
        thread::sleep(std::time::Duration::from_millis(10));
    }
}
