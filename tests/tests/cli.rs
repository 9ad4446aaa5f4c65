//! The tallyd binary: operator commands, and `serve` as a process (JSON
//! logs without secrets, a clean stop on SIGTERM).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use tally_tests::server::{now, tallyd_binary};
use tally_tests::*;

/// Run tallyd as an operator does: `migrate` with a superuser, every
/// other command as a `tally_admin` login role.
fn tallyd(db: &TestDb, args: &[&str]) -> Output {
    let url = match args.first() {
        Some(&"migrate") => db.url().to_string(),
        _ => db.url_as("tally_admin"),
    };
    Command::new(tallyd_binary())
        .args(args)
        .env("DATABASE_URL", url)
        .output()
        .expect("run tallyd")
}

fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "tallyd failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn plans_file(text: &str) -> tempfile::TempPath {
    let mut file = tempfile::NamedTempFile::new().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.into_temp_path()
}

const PLANS: &str = r#"
[metrics.messages]
kind = "consumable"
stripe_meter_event = "tally_messages"

[metrics.chatbots]
kind = "allocation"

[plans.hobby]
default = true
limits = { messages = 50, chatbots = 1 }

[plans.pro]
stripe_price_id = "price_pro"
limits = { messages = "unlimited", chatbots = 20 }
"#;

fn configuration(client: &mut Client) -> String {
    client
        .query_one(
            "SELECT concat_ws(' | ',
                 (SELECT string_agg(format('%s', m), ',' ORDER BY metric) FROM tally.metrics m),
                 (SELECT string_agg(format('%s', p), ',' ORDER BY plan_id) FROM tally.plans p),
                 (SELECT string_agg(format('%s', l), ',' ORDER BY plan_id, metric) FROM tally.plan_limits l))",
            &[],
        )
        .unwrap()
        .get(0)
}

#[test]
fn applying_a_plans_file_twice_gives_the_same_state() {
    let db = TestDb::create_empty();
    db.connect()
        .batch_execute("CREATE EXTENSION tally")
        .unwrap();
    let file = plans_file(PLANS);
    let path = file.to_str().unwrap();
    let first = stdout(&tallyd(&db, &["plans", "apply", path]));
    assert!(
        first.contains("plan pro") && first.contains("created"),
        "{first}"
    );
    let state = configuration(&mut db.connect());
    let second = stdout(&tallyd(&db, &["plans", "apply", path]));
    assert!(second.contains("no changes"), "{second}");
    assert_eq!(configuration(&mut db.connect()), state);

    // Editing the file changes only what changed, and drops a limit it no
    // longer names.
    let edited = plans_file(&PLANS.replace("messages = 50, chatbots = 1", "messages = 80"));
    let third = stdout(&tallyd(&db, &["plans", "apply", edited.to_str().unwrap()]));
    assert!(
        third.contains("limit hobby.messages") && third.contains("limit hobby.chatbots  removed"),
        "{third}"
    );
    let limits: Vec<String> = db
        .connect()
        .query("SELECT metric || '=' || coalesce(max_units::text, '∞') FROM tally.plan_limits WHERE plan_id = 'hobby'", &[])
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(limits, vec!["messages=80"]);
}

#[test]
fn a_bad_plans_file_is_refused_naming_its_line_and_changes_nothing() {
    let db = TestDb::create();
    let before = configuration(&mut db.connect());
    let cases = [
        ("[metrics.x]\nkind = \"monthly\"\n", "line 2"),
        ("[plans.free]\nlimits = { messages = -1 }\n", "line 2"),
        (
            "[plans.free]\nlimits = { messages = 10 }\n\n[plans.new]\nlimits = { emails = 5 }\n",
            "line 5",
        ),
        ("[plans.free\n", "line 1"),
    ];
    for (text, line) in cases {
        let file = plans_file(text);
        let output = tallyd(&db, &["plans", "apply", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{text}");
        assert!(stderr.contains(line), "{text}: {stderr}");
    }
    assert_eq!(configuration(&mut db.connect()), before);
}

#[test]
fn tenants_keys_usage_and_cleanup_read_well() {
    let db = TestDb::create();
    assert_eq!(
        stdout(&tallyd(&db, &["tenants", "create", "acme"])),
        "tenant acme created on plan free\n"
    );
    let duplicate = tallyd(&db, &["tenants", "create", "acme"]);
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already exists"));
    assert_eq!(
        stdout(&tallyd(
            &db,
            &["tenants", "create", "globex", "--plan", "growth"]
        )),
        "tenant globex created on plan growth\n"
    );

    let created = stdout(&tallyd(
        &db,
        &["api-key", "create", "acme", "--label", "backend"],
    ));
    let key = created.lines().nth(1).unwrap();
    assert!(key.starts_with("tly_"), "{created}");
    let key_id = key.split('_').nth(1).unwrap();
    let mut client = db.connect();
    let stored: String = client
        .query_one("SELECT key_hash FROM tally.api_keys", &[])
        .unwrap()
        .get(0);
    assert_eq!(stored, tallyd::api_keys::hash(key));
    assert!(!stored.contains(key));

    check(&mut client, "acme", "messages", 12, None);
    let usage = stdout(&tallyd(&db, &["usage", "acme"]));
    assert!(
        usage.starts_with("acme on plan free (active)\nmetric"),
        "{usage}"
    );
    assert!(
        usage
            .lines()
            .any(|line| line.split_whitespace().collect::<Vec<_>>()[..5]
                == ["messages", "consumable", "12", "100", "88"]),
        "{usage}"
    );
    let shown = stdout(&tallyd(&db, &["tenants", "show", "acme"]));
    assert!(
        shown.contains(key_id) && shown.contains("backend") && !shown.contains(key),
        "{shown}"
    );

    assert_eq!(
        stdout(&tallyd(&db, &["api-key", "revoke", key_id])),
        format!("API key {key_id} revoked\n")
    );
    assert_eq!(
        stdout(&tallyd(&db, &["api-key", "revoke", key_id])),
        format!("API key {key_id} was already revoked\n")
    );
    assert!(!tallyd(&db, &["usage", "nobody"]).status.success());

    // Provider events are kept at least 3 days, the providers' retry window.
    let cleaned = stdout(&tallyd(&db, &["cleanup", "--older-than", "3d"]));
    assert!(cleaned.contains("idempotency keys"), "{cleaned}");
    assert!(!tallyd(&db, &["cleanup", "--older-than", "soon"])
        .status
        .success());
}

#[test]
fn migrate_creates_then_upgrades() {
    let db = TestDb::create_empty();
    let version = tallyd::EXTENSION_VERSION;
    assert_eq!(
        stdout(&tallyd(&db, &["migrate"])),
        format!("tally {version}: extension created\n")
    );
    assert_eq!(
        stdout(&tallyd(&db, &["migrate"])),
        format!("tally {version}: extension already current\n")
    );
    let old = TestDb::create_empty();
    old.connect()
        .batch_execute("CREATE EXTENSION tally VERSION '0.1.0'")
        .unwrap();
    assert_eq!(
        stdout(&tallyd(&old, &["migrate"])),
        format!("tally {version}: extension upgraded from 0.1.0\n")
    );
    let nowhere = Command::new(tallyd_binary())
        .args(["migrate"])
        .env(
            "DATABASE_URL",
            "postgresql://nobody:secret-password@127.0.0.1:1/db",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&nowhere.stderr);
    assert!(
        !nowhere.status.success()
            && stderr.contains("cannot connect")
            && !stderr.contains("secret-password"),
        "{stderr}"
    );
}

#[test]
fn serve_logs_json_without_secrets_and_stops_cleanly_on_sigterm() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute(
            "INSERT INTO tally.tenants (tenant_id, stripe_customer_id) VALUES ('acme', 'cus_acme')",
        )
        .unwrap();
    let key = tallyd::api_keys::generate();
    client
        .execute(
            "INSERT INTO tally.api_keys (key_id, tenant_id, key_hash) VALUES ($1, 'acme', $2)",
            &[&key.key_id, &key.hash],
        )
        .unwrap();
    let secret = "whsec_do_not_log_me";
    let mut child = Command::new(tallyd_binary())
        .args(["serve", "--listen", "127.0.0.1:0", "--log-format", "json"])
        .env("DATABASE_URL", db.url_as("tally_daemon"))
        .env("STRIPE_WEBHOOK_SECRET", secret)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let address = loop {
        let mut line = String::new();
        assert!(
            logs.read_line(&mut line).unwrap() > 0,
            "tallyd exited: {seen:?}"
        );
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        seen.push(line.clone());
        if entry["message"] == "tallyd listening" {
            break entry["address"].as_str().unwrap().to_string();
        }
    };

    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = serde_json::json!({"id": "evt_1", "type": "invoice.paid", "created": now(), "data": {"object": {"customer": "cus_acme"}}})
        .to_string();
    let signature = tallyd::signature::sign_stripe(secret, now(), body.as_bytes());
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let base = format!("http://{address}");
        let ok = http
            .post(format!("{base}/v1/usage/messages/check"))
            .bearer_auth(&key.key)
            .send()
            .await
            .unwrap();
        assert_eq!(ok.status(), 200);
        let webhook = http
            .post(format!("{base}/webhooks/stripe"))
            .header("Stripe-Signature", &signature)
            .body(body.clone());
        assert_eq!(webhook.send().await.unwrap().status(), 200);
        let forged = http
            .post(format!("{base}/webhooks/stripe"))
            .header("Stripe-Signature", signature.replace("v1=", "v1=0"))
            .body(body);
        assert_eq!(forged.send().await.unwrap().status(), 400);
        let wrong_key = http
            .get(format!("{base}/v1/usage"))
            .bearer_auth(format!("{}x", key.key))
            .send()
            .await
            .unwrap();
        assert_eq!(wrong_key.status(), 401);
    });

    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    let rest: Vec<String> = logs.lines().map(Result::unwrap).collect();
    seen.extend(rest);
    let all = seen.join("\n");
    assert!(status.success(), "tallyd exited with {status}: {all}");
    assert!(
        all.contains("shutting down") && all.contains("tallyd stopped"),
        "{all}"
    );
    assert!(
        all.contains("evt_1") && all.contains("webhook rejected"),
        "{all}"
    );
    let v1 = signature.split("v1=").nth(1).unwrap();
    for secret_thing in [secret, key.key.as_str(), v1, &key.hash] {
        assert!(
            !all.contains(secret_thing),
            "the logs contain a secret: {secret_thing}\n{all}"
        );
    }
}

#[test]
fn serve_and_worker_refuse_a_superuser_unless_told() {
    let db = TestDb::create();
    for command in ["serve", "worker"] {
        let output = Command::new(tallyd_binary())
            .args(
                [command, "--listen", "127.0.0.1:0"]
                    .into_iter()
                    .take(if command == "serve" { 3 } else { 1 }),
            )
            .env("DATABASE_URL", db.url())
            .env("STRIPE_SECRET_KEY", "sk_test_x")
            .env("STRIPE_API_BASE", "http://127.0.0.1:9")
            .env_remove("TALLY_ALLOW_SUPERUSER")
            .output()
            .expect("run tallyd");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{command} started as a superuser");
        assert!(stderr.contains("tally_daemon"), "{command}: {stderr}");
    }
}
