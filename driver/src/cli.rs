//! The command line: `tallyd <command>`, configured by flags or environment.

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::db::{self, Migration};

#[derive(Debug, Parser)]
#[command(name = "tallyd", version, about = "tally's daemon and operator tool")]
pub struct Cli {
    /// Postgres connection URL of the database holding the tally extension.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the tally extension in the database, or upgrade it to the
    /// version this tallyd was built for.
    Migrate,
}

fn database_url(cli: &Cli) -> Result<&str> {
    cli.database_url.as_deref().ok_or_else(|| {
        anyhow::anyhow!("no database given: set DATABASE_URL or pass --database-url")
    })
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Migrate => {
            let mut client = db::connect(database_url(&cli)?).await?;
            match db::migrate(&mut client, crate::EXTENSION_VERSION).await? {
                Migration::Created { version } => println!("tally {version}: extension created"),
                Migration::Upgraded { from, to } => {
                    println!("tally {to}: extension upgraded from {from}")
                }
                Migration::Current { version } => {
                    println!("tally {version}: extension already current")
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_expected_extension_version_is_the_extension_crates() {
        let manifest = include_str!("../../extension/Cargo.toml");
        let version = manifest
            .lines()
            .find_map(|line| line.strip_prefix("version = \""))
            .and_then(|rest| rest.strip_suffix('"'))
            .expect("extension version");
        assert_eq!(version, crate::EXTENSION_VERSION);
    }
}
