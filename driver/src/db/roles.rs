//! Who tallyd is in the database, and where the extension lives: `serve`
//! and `worker` refuse a superuser unless told otherwise (they need only
//! `tally_daemon`), and `migrate` and `/readyz` check that the extension is
//! in schema `tally`, owned by a superuser or `tally_owner`, so no other
//! role can have planted objects in it.

use anyhow::{bail, Result};
use deadpool_postgres::{Hook, HookError};
use tokio_postgres::GenericClient;

/// The message for a superuser connection when none is allowed.
const SUPERUSER_REFUSED: &str = "tallyd serve and worker do not run as a superuser: \
     connect as a role granted tally_daemon (or pass --allow-superuser, TALLY_ALLOW_SUPERUSER=1)";

/// How long `serve` and `worker` wait at start to learn their role.
const START_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether the connection's role is a superuser.
pub async fn is_superuser(client: &tokio_postgres::Client) -> Result<bool, super::Error> {
    let row = client
        .query_one(
            "SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Fail with the fix named if the connection's role is a superuser.
pub async fn check_not_superuser(client: &tokio_postgres::Client) -> Result<()> {
    if is_superuser(client).await? {
        bail!(SUPERUSER_REFUSED);
    }
    Ok(())
}

/// Refuse a superuser, or allow one and say so loudly. For `serve` and
/// `worker` at start, on one connection of their pool.
pub async fn refuse_superuser(pool: &super::Pool, allow_superuser: bool) -> Result<()> {
    if allow_superuser {
        // A connection that fails here fails again, with context, on first use.
        if let Ok(Ok(client)) = tokio::time::timeout(START_CHECK_TIMEOUT, pool.get()).await {
            if is_superuser(&client).await.unwrap_or(false) {
                tracing::warn!(
                    "RUNNING AS A SUPERUSER (--allow-superuser): tallyd can do anything in this \
                     database; connect as a role granted tally_daemon instead"
                );
            }
        }
        return Ok(());
    }
    // A database that is down at start is /readyz's business, as before;
    // once it answers, the pool's hook refuses a superuser connection.
    match tokio::time::timeout(START_CHECK_TIMEOUT, pool.get()).await {
        Ok(Err(deadpool_postgres::PoolError::PostCreateHook(error))) => bail!("{error}"),
        Ok(Err(error)) => {
            tracing::warn!(error = %error, "the database does not answer yet");
            Ok(())
        }
        Err(_) => {
            tracing::warn!("the database does not answer yet");
            Ok(())
        }
        Ok(Ok(_)) => Ok(()),
    }
}

/// The pool's check on each new connection: a superuser's is refused.
pub(super) fn refuse_superuser_hook() -> Hook {
    Hook::async_fn(|client, _| {
        Box::pin(async move {
            match is_superuser(client).await {
                Ok(false) => Ok(()),
                Ok(true) => Err(HookError::message(SUPERUSER_REFUSED)),
                Err(error) => Err(HookError::message(format!(
                    "checking the connection's role: {error}"
                ))),
            }
        })
    })
}

/// Check that the extension is in schema `tally`, which a superuser or
/// `tally_owner` owns. Nothing to check if the extension is not installed.
pub async fn check_extension_home(client: &impl GenericClient) -> Result<()> {
    let row = client
        .query_opt(
            "SELECT n.nspname::text, r.rolname::text, r.rolsuper
               FROM pg_catalog.pg_extension e
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace
               JOIN pg_catalog.pg_roles r ON r.oid = n.nspowner
              WHERE e.extname = 'tally'",
            &[],
        )
        .await
        .map_err(super::Error::from)?;
    let Some(row) = row else {
        return Ok(());
    };
    let (schema, owner, owner_is_superuser): (String, String, bool) =
        (row.get(0), row.get(1), row.get(2));
    home_is_sound(&schema, &owner, owner_is_superuser)
}

fn home_is_sound(schema: &str, owner: &str, owner_is_superuser: bool) -> Result<()> {
    if schema != "tally" {
        bail!(
            "the tally extension is in schema {schema:?}, not \"tally\": \
             drop it and create it again with tallyd migrate"
        );
    }
    if !owner_is_superuser && owner != "tally_owner" {
        bail!(
            "schema tally is owned by {owner:?}, which is neither a superuser nor tally_owner: \
             that role could change tally's objects; ALTER SCHEMA tally OWNER TO tally_owner"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_extension_lives_in_tally_owned_by_a_superuser_or_tally_owner() {
        assert!(home_is_sound("tally", "postgres", true).is_ok());
        assert!(home_is_sound("tally", "tally_owner", false).is_ok());
        let planted = home_is_sound("tally", "app", false).unwrap_err();
        assert!(
            planted.to_string().contains("owned by \"app\""),
            "{planted}"
        );
        let moved = home_is_sound("public", "postgres", true).unwrap_err();
        assert!(moved.to_string().contains("schema \"public\""), "{moved}");
    }

    #[test]
    fn the_refusal_names_the_fix() {
        assert!(SUPERUSER_REFUSED.contains("connect as a role granted tally_daemon"));
    }
}
