//! What operators see of the real tallyd binary: an admin listener for
//! metrics and readiness, and database errors logged with their SQLSTATE,
//! message and constraint (never a key).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use tally_tests::server::tallyd_binary;
use tally_tests::TestDb;

/// Read JSON log lines until one says `message`; its `address`.
fn address_logged(logs: &mut impl BufRead, message: &str, seen: &mut Vec<String>) -> String {
    loop {
        let mut line = String::new();
        assert!(
            logs.read_line(&mut line).unwrap() > 0,
            "tallyd exited: {seen:?}"
        );
        let entry: Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
        seen.push(line.clone());
        if entry["message"] == message {
            return entry["address"].as_str().unwrap().to_string();
        }
    }
}

fn stop(mut child: Child, logs: impl BufRead, seen: &mut Vec<String>) {
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    seen.extend(logs.lines().map(Result::unwrap));
    assert!(status.success(), "tallyd exited with {status}");
}

#[test]
fn an_admin_listener_serves_metrics_and_readiness_and_errors_are_logged_with_their_state() {
    let db = TestDb::create();
    let mut client = db.connect();
    client
        .batch_execute("INSERT INTO tally.tenants (tenant_id) VALUES ('acme')")
        .unwrap();
    let key = tallyd::api_keys::generate();
    client
        .execute(
            "INSERT INTO tally.api_keys (key_id, tenant_id, key_hash) VALUES ($1, 'acme', $2)",
            &[&key.key_id, &key.hash],
        )
        .unwrap();
    let mut child = Command::new(tallyd_binary())
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
            "--no-worker",
        ])
        .env("DATABASE_URL", db.url_as("tally_daemon"))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut logs = BufReader::new(child.stderr.take().unwrap());
    let mut seen = Vec::new();
    let public = address_logged(&mut logs, "tallyd listening", &mut seen);
    let admin = address_logged(&mut logs, "tallyd admin endpoints listening", &mut seen);

    // A constraint the first increment of 10 violates: an error tallyd does
    // not expect, so a 500 that must be logged with what Postgres said.
    client
        .batch_execute(
            "ALTER TABLE tally.usage_counters ADD CONSTRAINT planted_small CHECK (used < 5)",
        )
        .unwrap();

    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let http = reqwest::Client::new();
        let get = |base: &str, path: &str| http.get(format!("http://{base}{path}")).send();
        // The admin listener: health, readiness and metrics, nothing else.
        assert_eq!(get(&admin, "/healthz").await.unwrap().status(), 200);
        assert_eq!(get(&admin, "/readyz").await.unwrap().status(), 200);
        let metrics = get(&admin, "/metrics").await.unwrap();
        assert_eq!(metrics.status(), 200);
        assert!(metrics.text().await.unwrap().contains("tally_"));
        assert_eq!(get(&admin, "/v1/usage").await.unwrap().status(), 404);
        // The public listener: no metrics, still health and readiness.
        assert_eq!(get(&public, "/metrics").await.unwrap().status(), 404);
        assert_eq!(get(&public, "/readyz").await.unwrap().status(), 200);
        assert_eq!(get(&public, "/healthz").await.unwrap().status(), 200);

        let failed = http
            .post(format!("http://{public}/v1/usage/messages/check"))
            .bearer_auth(&key.key)
            .json(&serde_json::json!({"units": 10}))
            .send()
            .await
            .unwrap();
        assert_eq!(failed.status(), 500);
    });
    stop(child, logs, &mut seen);

    let logged = seen
        .iter()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .find(|entry| entry["sqlstate"] == "23514")
        .unwrap_or_else(|| panic!("no log line with the SQLSTATE: {seen:#?}"));
    // The constraint's own field is logged whenever Postgres reports it (an
    // error raised again inside the extension keeps only its message).
    assert!(logged.get("constraint").is_some(), "{logged}");
    assert!(
        logged["error_message"]
            .as_str()
            .unwrap()
            .contains("violates check constraint \"planted_small\""),
        "{logged}"
    );
    let all = seen.join("\n");
    for secret in [key.key.as_str(), key.hash.as_str()] {
        assert!(!all.contains(secret), "the logs contain a key: {all}");
    }
}
