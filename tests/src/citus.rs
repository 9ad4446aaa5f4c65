//! A database on a local Citus cluster (a coordinator and workers that
//! scripts/test.sh starts when Citus is installed, named by
//! `TALLY_TEST_CITUS_PORTS`, the coordinator first), with tally installed
//! on the coordinator, the fixture, and `tally.distribute()` run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use postgres::{Client, NoTls};

use crate::FIXTURE;

/// The Citus cluster's ports, or None (after saying so on stderr) when the
/// tests run without one.
pub fn ports() -> Option<Vec<u16>> {
    match std::env::var("TALLY_TEST_CITUS_PORTS") {
        Ok(ports) => Some(
            ports
                .split(',')
                .map(|port| port.trim().parse().expect("TALLY_TEST_CITUS_PORTS: ports"))
                .collect(),
        ),
        Err(_) => {
            eprintln!(
                "SKIPPED: no Citus cluster (TALLY_TEST_CITUS_PORTS is not set; scripts/test.sh \
                 starts one when Citus is installed)"
            );
            None
        }
    }
}

/// One test's database on every node of the cluster, dropped when the test
/// ends.
pub struct CitusDb {
    name: String,
    ports: Vec<u16>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// The login role the tests connect as: a member of tally_app, made on
/// every node (roles are each cluster's own).
pub const APP_LOGIN: &str = "tally_citus_app";

/// The login role tallyd connects as in these tests: a member of
/// tally_daemon, made on every node.
pub const DAEMON_LOGIN: &str = "tally_citus_daemon";

fn url(port: u16, database: &str, user: &str) -> String {
    format!("postgresql://{user}@127.0.0.1:{port}/{database}")
}

impl CitusDb {
    /// A fresh distributed tally with `shards` shards per distributed table.
    pub fn create(ports: &[u16], shards: u32) -> CitusDb {
        // One at a time: installing tally makes and grants its roles, which
        // are every database's on a node, and Citus sends that to the
        // workers, where two installs at once collide.
        static CREATING: Mutex<()> = Mutex::new(());
        let _creating = CREATING
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let name = format!(
            "tally_citus_{}_{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let db = CitusDb {
            name: name.clone(),
            ports: ports.to_vec(),
        };
        for &port in ports {
            let mut node = Client::connect(&url(port, "postgres", "postgres"), NoTls)
                .expect("connect to a Citus node");
            node.batch_execute("SET citus.enable_create_database_propagation = off")
                .and_then(|()| node.batch_execute(&format!("CREATE DATABASE {name}")))
                .expect("create the database on a node");
            db.node(port)
                .batch_execute("CREATE EXTENSION citus")
                .expect("CREATE EXTENSION citus");
        }
        let mut coordinator = db.connect();
        coordinator
            .query_one(
                "SELECT citus_set_coordinator_host('127.0.0.1', $1)",
                &[&i32::from(ports[0])],
            )
            .expect("the coordinator's host");
        for &worker in &ports[1..] {
            coordinator
                .query_one(
                    "SELECT citus_add_node('127.0.0.1', $1)",
                    &[&i32::from(worker)],
                )
                .expect("add a worker");
        }
        coordinator
            .batch_execute(&format!("CREATE EXTENSION tally; {FIXTURE}"))
            .expect("install tally");
        // In a transaction of its own, once the extension has committed.
        coordinator
            .batch_execute(&format!("SET citus.shard_count = {shards}"))
            .and_then(|()| coordinator.batch_execute("SELECT tally.distribute()"))
            .expect("distribute tally");
        for &port in ports {
            db.node(port)
                .batch_execute(&format!(
                    "SET citus.enable_ddl_propagation = off;
                     DO $$ BEGIN
                         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{APP_LOGIN}') THEN
                             CREATE ROLE {APP_LOGIN} LOGIN;
                         END IF;
                         IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DAEMON_LOGIN}') THEN
                             CREATE ROLE {DAEMON_LOGIN} LOGIN;
                         END IF;
                     END $$;
                     GRANT tally_app TO {APP_LOGIN};
                     GRANT tally_daemon TO {DAEMON_LOGIN};"
                ))
                .expect("the app's login role");
        }
        db
    }

    /// A connection to this database on one node, as the superuser.
    pub fn node(&self, port: u16) -> Client {
        Client::connect(&url(port, &self.name, "postgres"), NoTls)
            .expect("connect to a node's database")
    }

    /// A connection to the coordinator, as the superuser.
    pub fn connect(&self) -> Client {
        self.node(self.ports[0])
    }

    /// A connection to the coordinator as the app's login role.
    pub fn connect_app(&self) -> Client {
        Client::connect(&url(self.ports[0], &self.name, APP_LOGIN), NoTls)
            .expect("connect to the coordinator as the app")
    }

    /// The URL of this database on one node, as `user`.
    pub fn url_on(&self, port: u16, user: &str) -> String {
        url(port, &self.name, user)
    }

    /// A connection to this database on one node as tallyd's login role.
    pub fn connect_daemon(&self, port: u16) -> Client {
        Client::connect(&self.url_on(port, DAEMON_LOGIN), NoTls)
            .expect("connect to a node as the daemon")
    }

    pub fn ports(&self) -> &[u16] {
        &self.ports
    }
}

impl Drop for CitusDb {
    fn drop(&mut self) {
        // Workers first: the coordinator's drop does not reach them.
        for &port in self.ports.iter().rev() {
            if let Ok(mut node) = Client::connect(&url(port, "postgres", "postgres"), NoTls) {
                let _ = node
                    .batch_execute("SET citus.enable_create_database_propagation = off")
                    .and_then(|()| {
                        node.batch_execute(&format!(
                            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                            self.name
                        ))
                    });
            }
        }
    }
}

/// `count` tenants on `plan`, named `<prefix>-<n>`, made through `client`.
pub fn tenants(client: &mut Client, plan: &str, count: usize, prefix: &str) -> Vec<String> {
    let ids: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    client
        .execute(
            "INSERT INTO tally.tenants (tenant_id, plan_id) SELECT unnest($1::text[]), $2",
            &[&ids, &plan],
        )
        .expect("tenants");
    ids
}
