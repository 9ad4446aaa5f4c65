//! The one place that talks SQL to the extension: the tenant API
//! (`tenant_api`), provider events (`events`), the usage-report queue
//! (`reports`), operator commands (`admin`), and here the extension's own
//! version and migrations.
//!
//! Every connection tallyd opens is a [`Client`]: the server borrows them
//! from a [`Pool`] ([`PooledClient`] derefs to one), an operator command
//! opens one with [`connect`]. The hot statements go through the helpers
//! here ([`query`], [`query_one`], [`query_opt`], [`execute`]) on a
//! connection or a transaction ([`Session`]), prepared once per connection;
//! the operator statements, run once per process, take the plain
//! `tokio_postgres::Client` every [`Client`] derefs to. Whatever fails comes
//! back as one [`Error`].

pub mod admin;
pub mod alerts;
mod error;
pub mod events;
pub mod reports;
mod roles;
pub mod tenant_api;
pub mod tls;

use std::future::Future;

use anyhow::{bail, Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{GenericClient, Row, Statement};

/// A connection with its cache of prepared statements.
pub use deadpool_postgres::ClientWrapper as Client;
pub use deadpool_postgres::Pool;
pub use error::{Error, ErrorKind, Missing};
pub use roles::{check_extension_home, check_not_superuser, is_superuser, refuse_superuser};

/// A [`Client`] on loan from the [`Pool`]; it derefs to the [`Client`].
pub type PooledClient = deadpool_postgres::Client;

/// A connection pool for the server. Connections are made lazily; a bad URL
/// or root certificate is reported at once. Unless `allow_superuser`, a
/// connection whose role is a superuser is refused (see [`refuse_superuser`]).
pub fn pool(url: &str, size: usize, allow_superuser: bool) -> Result<Pool> {
    let (config, tls) = tls::parse(url)?;
    let manager = Manager::from_config(
        config,
        tls::connector(&tls)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager).max_size(size);
    if !allow_superuser {
        builder = builder.post_create(roles::refuse_superuser_hook());
    }
    builder.build().context("building the database pool")
}

/// How long a server connection may wait: for a connection from the pool,
/// for one statement, and for one lock.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Waits {
    /// For a connection from the pool (and for making a new one).
    pub pool: std::time::Duration,
    /// Postgres's `statement_timeout` on every connection.
    pub statement: std::time::Duration,
    /// Postgres's `lock_timeout` on every connection.
    pub lock: std::time::Duration,
}

/// A pool like [`pool`] whose every wait is bounded by `waits`: a caller
/// waits at most `waits.pool` for a connection, and each connection runs
/// with `statement_timeout` and `lock_timeout` set at startup (after any the
/// URL's `options` set).
pub fn bounded_pool(url: &str, size: usize, allow_superuser: bool, waits: Waits) -> Result<Pool> {
    let (mut config, tls) = tls::parse(url)?;
    let options = format!(
        "{} -c statement_timeout={} -c lock_timeout={}",
        config.get_options().unwrap_or_default(),
        waits.statement.as_millis(),
        waits.lock.as_millis()
    );
    config.options(options.trim_start());
    config.connect_timeout(waits.pool.max(std::time::Duration::from_secs(1)));
    let manager = Manager::from_config(
        config,
        tls::connector(&tls)?,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let mut builder = Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .wait_timeout(Some(waits.pool))
        .create_timeout(Some(waits.pool.max(std::time::Duration::from_secs(1))))
        .recycle_timeout(Some(waits.pool));
    if !allow_superuser {
        builder = builder.post_create(roles::refuse_superuser_hook());
    }
    builder.build().context("building the database pool")
}

/// The usage-report worker's own pool, apart from the server's: requests
/// cannot starve the worker of connections, nor the worker the requests.
/// Every wait is bounded by `wait`: for a free connection, to connect, to
/// check one before reuse, for a statement and for a lock.
pub fn worker_pool(
    url: &str,
    size: usize,
    allow_superuser: bool,
    wait: std::time::Duration,
) -> Result<Pool> {
    let waits = Waits {
        pool: wait,
        statement: wait,
        lock: wait,
    };
    bounded_pool(url, size, allow_superuser, waits)
}

/// The installed extension's version, if it is installed.
pub async fn extension_version(client: &tokio_postgres::Client) -> Result<Option<String>, Error> {
    let row = client
        .query_opt(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'tally'",
            &[],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// One connection, for an operator command. Errors name the server but
/// never the password.
pub async fn connect(url: &str) -> Result<Client> {
    let (config, tls) = tls::parse(url)?;
    let (client, connection) = config
        .connect(tls::connector(&tls)?)
        .await
        .with_context(|| format!("cannot connect to the database at {}", describe(&config)))?;
    let connection = tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(error = %error, "database connection closed");
        }
    });
    Ok(Client::new(client, connection))
}

/// `user@host:port/dbname`, for messages.
pub fn describe(config: &tokio_postgres::Config) -> String {
    let host = config
        .get_hosts()
        .first()
        .map(|host| match host {
            tokio_postgres::config::Host::Tcp(name) => name.clone(),
            tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
        })
        .unwrap_or_else(|| "localhost".into());
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "{}@{host}:{port}/{}",
        config.get_user().unwrap_or("(default user)"),
        config.get_dbname().unwrap_or("(default database)")
    )
}

/// What `migrate` did.
#[derive(Debug, PartialEq, Eq)]
pub enum Migration {
    Created { version: String },
    Upgraded { from: String, to: String },
    Current { version: String },
}

/// Create the extension, or upgrade it to `target`, in one transaction,
/// and check where it lives ([`check_extension_home`]) before committing.
pub async fn migrate(client: &mut tokio_postgres::Client, target: &str) -> Result<Migration> {
    let transaction = client.transaction().await?;
    let available = transaction
        .query_opt(
            "SELECT installed_version,
                    EXISTS (SELECT FROM pg_available_extension_versions WHERE name = 'tally' AND version = $1)
               FROM pg_available_extensions WHERE name = 'tally'",
            &[&target],
        )
        .await?;
    let Some(row) = available else {
        bail!(
            "the tally extension is not installed on the database server; \
             build and install it first (cargo pgrx install, or scripts/demo.sh on a local machine)"
        );
    };
    let (installed, target_available): (Option<String>, bool) = (row.get(0), row.get(1));
    if !target_available {
        bail!(
            "the database server does not have tally {target}, which this tallyd needs; \
             install the extension built from the same release"
        );
    }
    let migration = match installed {
        None => {
            transaction
                .batch_execute(&format!("CREATE EXTENSION tally VERSION '{target}'"))
                .await?;
            Migration::Created {
                version: target.into(),
            }
        }
        Some(installed) if installed == target => Migration::Current { version: installed },
        Some(installed) => {
            transaction
                .batch_execute(&format!("ALTER EXTENSION tally UPDATE TO '{target}'"))
                .await
                .with_context(|| format!("upgrading tally from {installed} to {target}"))?;
            Migration::Upgraded {
                from: installed,
                to: target.into(),
            }
        }
    };
    check_extension_home(&transaction).await?;
    transaction.commit().await?;
    Ok(migration)
}

/// Where statements run: a connection, or a transaction on one. Either way
/// a statement is prepared the first time its connection runs it and reused
/// after, so a call costs one round trip per statement and no planning.
pub trait Session: Sync {
    /// What runs a prepared statement: the connection or the transaction.
    type Runner: GenericClient + Sync;

    fn runner(&self) -> &Self::Runner;

    /// `sql`, prepared on this connection once.
    fn statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send;
}

impl Session for Client {
    type Runner = tokio_postgres::Client;

    fn runner(&self) -> &tokio_postgres::Client {
        self
    }

    fn statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(sql)
    }
}

impl<'a> Session for deadpool_postgres::Transaction<'a> {
    type Runner = tokio_postgres::Transaction<'a>;

    fn runner(&self) -> &tokio_postgres::Transaction<'a> {
        self
    }

    fn statement(
        &self,
        sql: &str,
    ) -> impl Future<Output = Result<Statement, tokio_postgres::Error>> + Send {
        self.prepare_cached(sql)
    }
}

pub async fn query(
    session: &impl Session,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Vec<Row>, Error> {
    let statement = session.statement(sql).await?;
    Ok(session.runner().query(&statement, params).await?)
}

pub async fn query_one(
    session: &impl Session,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Row, Error> {
    let statement = session.statement(sql).await?;
    Ok(session.runner().query_one(&statement, params).await?)
}

pub async fn query_opt(
    session: &impl Session,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<Option<Row>, Error> {
    let statement = session.statement(sql).await?;
    Ok(session.runner().query_opt(&statement, params).await?)
}

pub async fn execute(
    session: &impl Session,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, Error> {
    let statement = session.statement(sql).await?;
    Ok(session.runner().execute(&statement, params).await?)
}
