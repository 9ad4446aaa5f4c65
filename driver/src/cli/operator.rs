//! The operator commands, one handler each: `migrate`, `plans apply`,
//! `tenants create|show`, `usage`, `api-key create|revoke` and `cleanup`.
//! Each opens one connection when it needs the database, and reads what the
//! database layer says went wrong ([`db::ErrorKind`]) into a line for the
//! operator.

use std::path::Path;

use anyhow::{anyhow, Context, Result};

use super::format::{or_dash, table};
use crate::db::{self, admin, ErrorKind, Migration};
use crate::{api_keys, plans_file};

/// `tallyd migrate`.
pub(super) async fn migrate(url: &str) -> Result<()> {
    let mut client = db::connect(url).await?;
    match db::migrate(&mut client, crate::EXTENSION_VERSION).await? {
        Migration::Created { version } => println!("tally {version}: extension created"),
        Migration::Upgraded { from, to } => {
            println!("tally {to}: extension upgraded from {from}")
        }
        Migration::Current { version } => println!("tally {version}: extension already current"),
    }
    Ok(())
}

/// `tallyd plans apply <file>`. The file is read and checked before the
/// database is asked anything.
pub(super) async fn apply_plans(url: &str, file: &Path) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let plans = plans_file::parse(&text).map_err(|error| anyhow!("{}, {error}", file.display()))?;
    let mut client = db::connect(url).await?;
    let changes = admin::apply_plans(&mut client, &plans)
        .await
        .map_err(
            |error| match error.downcast_ref::<plans_file::PlanFileError>() {
                Some(file_error) => anyhow!("{}, {file_error}", file.display()),
                None => error.context(format!("applying {}", file.display())),
            },
        )?;
    if changes.is_empty() {
        println!("{}: no changes", file.display());
    } else {
        let rows: Vec<Vec<String>> = changes
            .iter()
            .map(|c| vec![c.what.clone(), c.change.to_string()])
            .collect();
        print!("{}", table(&["object", "change"], &rows));
    }
    if !admin::has_default_plan(&client).await? {
        println!("note: no plan is the default; tenants need an explicit plan");
    }
    Ok(())
}

/// `tallyd tenants create <tenant> [--plan <plan>]`.
pub(super) async fn create_tenant(url: &str, tenant_id: &str, plan: Option<&str>) -> Result<()> {
    let client = db::connect(url).await?;
    let plan = admin::create_tenant(&client, tenant_id, plan)
        .await
        .map_err(|error| match (error.kind(), error.message()) {
            (ErrorKind::AlreadyExists, Some(_)) => anyhow!("tenant {tenant_id:?} already exists"),
            (ErrorKind::MissingReference, Some(_)) => anyhow!("no such plan"),
            (_, Some(message)) => anyhow!(message.to_string()),
            (_, None) => error.into(),
        })?;
    println!("tenant {tenant_id} created on plan {plan}");
    Ok(())
}

/// `tallyd tenants show <tenant>`: the tenant, its keys, then its usage.
pub(super) async fn show_tenant(url: &str, tenant_id: &str) -> Result<()> {
    let mut client = db::connect(url).await?;
    let tenant = admin::tenant(&client, tenant_id).await?;
    println!("tenant   {}", tenant.tenant_id);
    println!("plan     {}", tenant.plan_id);
    println!("status   {}", tenant.status);
    println!("period   {}", tenant.period);
    println!("stripe   {}", or_dash(tenant.stripe_customer_id));
    println!("paddle   {}", or_dash(tenant.paddle_customer_id));
    let keys: Vec<Vec<String>> = tenant
        .api_keys
        .iter()
        .map(|(id, label, state)| vec![id.clone(), or_dash(label.as_ref()), state.clone()])
        .collect();
    if keys.is_empty() {
        println!("api keys none");
    } else {
        print!("\n{}", table(&["api key id", "label", "state"], &keys));
    }
    println!();
    print_usage(&mut client, tenant_id).await
}

/// `tallyd usage <tenant>`.
pub(super) async fn usage(url: &str, tenant_id: &str) -> Result<()> {
    let mut client = db::connect(url).await?;
    print_usage(&mut client, tenant_id).await
}

async fn print_usage(client: &mut db::Client, tenant_id: &str) -> Result<()> {
    let usage = db::tenant_api::usage(client, tenant_id)
        .await
        .map_err(|error| match error.kind() {
            ErrorKind::NotFound(_) => anyhow!("tenant {tenant_id:?} not found"),
            _ => error.into(),
        })?;
    let rows: Vec<Vec<String>> = usage
        .metrics
        .iter()
        .map(|m| {
            let period = match (m.period_start, m.period_end) {
                (Some(start), Some(end)) => format!(
                    "{} to {}",
                    start.format("%Y-%m-%d %H:%M"),
                    end.format("%Y-%m-%d %H:%M")
                ),
                _ => "-".into(),
            };
            vec![
                m.metric.clone(),
                m.kind.clone(),
                m.used.to_string(),
                m.max_units
                    .map_or_else(|| "unlimited".into(), |max| max.to_string()),
                or_dash(m.remaining),
                period,
            ]
        })
        .collect();
    println!(
        "{} on plan {} ({})",
        usage.tenant_id, usage.plan_id, usage.status
    );
    let headers = [
        "metric",
        "kind",
        "used",
        "limit",
        "remaining",
        "period (UTC)",
    ];
    print!("{}", table(&headers, &rows));
    Ok(())
}

/// `tallyd api-key create <tenant> [--label <label>]`: the key is printed
/// once and only its hash is stored.
pub(super) async fn create_api_key(url: &str, tenant_id: &str, label: Option<&str>) -> Result<()> {
    let client = db::connect(url).await?;
    let key = api_keys::generate();
    admin::add_api_key(&client, tenant_id, &key, label).await?;
    println!(
        "API key {} for tenant {tenant_id} (shown once; only its hash is stored):",
        key.key_id
    );
    println!("{}", key.key);
    Ok(())
}

/// `tallyd api-key revoke <key id>`.
pub(super) async fn revoke_api_key(url: &str, key_id: &str) -> Result<()> {
    let client = db::connect(url).await?;
    if admin::revoke_api_key(&client, key_id).await? {
        println!("API key {key_id} revoked");
    } else {
        println!("API key {key_id} was already revoked");
    }
    Ok(())
}

/// `tallyd cleanup [--older-than <age>]`.
pub(super) async fn cleanup(url: &str, older_than: &str) -> Result<()> {
    let mut client = db::connect(url).await?;
    let cleaned = admin::cleanup(&mut client, older_than)
        .await
        .map_err(|error| {
            // The database's refusal (say, too short an age) as it says it.
            let refusal = error
                .downcast_ref::<tokio_postgres::Error>()
                .and_then(|error| error.as_db_error())
                .map(|db| {
                    let mut text = db.message().to_string();
                    if let Some(detail) = db.detail() {
                        text += &format!(" ({detail})");
                    }
                    if let Some(hint) = db.hint() {
                        text += &format!(": {hint}");
                    }
                    text
                });
            match refusal {
                Some(text) => anyhow!("cleanup refused: {text}"),
                None => error,
            }
        })?;
    let rows = vec![
        vec![
            "provider events".to_string(),
            cleaned.provider_events.to_string(),
        ],
        vec![
            "idempotency keys".to_string(),
            cleaned.idempotency_keys.to_string(),
        ],
        vec![
            "completed usage reports".to_string(),
            cleaned.usage_reports.to_string(),
        ],
    ];
    println!("older than {older_than}:");
    print!("{}", table(&["forgotten", "rows"], &rows));
    Ok(())
}
