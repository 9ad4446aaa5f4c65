//! The one place that talks SQL to the extension: tenant API calls
//! (`tenant_api`), provider events (`events`), operator commands (`admin`),
//! and connections and migrations here.

pub mod admin;
pub mod events;
pub mod reports;
pub mod tenant_api;

use anyhow::{bail, Context, Result};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, NoTls};

/// A connection pool for the server. Connections are made lazily; a bad URL
/// is reported at once.
pub fn pool(url: &str, size: usize) -> Result<Pool> {
    let config: tokio_postgres::Config = url
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(size)
        .build()
        .context("building the database pool")
}

/// The SQLSTATE of a database error, if it is one.
pub fn sqlstate(error: &tokio_postgres::Error) -> Option<&str> {
    error.as_db_error().map(|error| error.code().code())
}

/// The installed extension's version, if it is installed.
pub async fn extension_version(client: &Client) -> Result<Option<String>, tokio_postgres::Error> {
    let row = client
        .query_opt(
            "SELECT extversion FROM pg_catalog.pg_extension WHERE extname = 'tally'",
            &[],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Connect to `url`, driving the connection on a background task. Errors
/// name the server but never the password.
pub async fn connect(url: &str) -> Result<Client> {
    let config: tokio_postgres::Config = url
        .parse()
        .context("DATABASE_URL is not a valid Postgres URL")?;
    let (client, connection) = config
        .connect(NoTls)
        .await
        .with_context(|| format!("cannot connect to the database at {}", describe(&config)))?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            eprintln!("database connection closed: {error}");
        }
    });
    Ok(client)
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

/// Create the extension, or upgrade it to `target`, in one transaction.
pub async fn migrate(client: &mut Client, target: &str) -> Result<Migration> {
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
    transaction.commit().await?;
    Ok(migration)
}
