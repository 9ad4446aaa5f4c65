//! What tallyd relies on: API keys that find their tenant until revoked,
//! and subscription events applied in order.

use pgrx::prelude::*;

#[pg_schema]
mod tests {
    use super::super::*;

    fn run(sql: &str) {
        Spi::run(sql).unwrap_or_else(|error| panic!("{sql}: {error}"));
    }

    const HASH_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[pg_test]
    fn api_keys_find_their_tenant_until_revoked() {
        fixture();
        run(&format!("INSERT INTO tally.api_keys (key_id, tenant_id, key_hash) VALUES ('k1', 'acme', '{HASH_A}')"));
        assert_eq!(
            value::<String>(&format!("SELECT tally.tenant_for_api_key('{HASH_A}')")).as_deref(),
            Some("acme")
        );
        assert_eq!(
            value::<String>("SELECT tally.tenant_for_api_key('nope')"),
            None
        );
        run("UPDATE tally.api_keys SET revoked_at = now()");
        assert_eq!(
            value::<String>(&format!("SELECT tally.tenant_for_api_key('{HASH_A}')")),
            None
        );
    }

    #[pg_test]
    fn api_keys_store_hashes_only_and_go_with_their_tenant() {
        fixture();
        let refused =
            error_of("INSERT INTO tally.api_keys (key_id, tenant_id, key_hash) VALUES ('k1', 'acme', 'tly_plaintext_key')");
        assert_eq!(refused.map(|(code, ..)| code).as_deref(), Some("23514"));
        run(&format!("INSERT INTO tally.api_keys (key_id, tenant_id, key_hash) VALUES ('k1', 'acme', '{HASH_A}')"));
        run("DELETE FROM tally.tenants WHERE tenant_id = 'acme'");
        assert_eq!(value::<i64>("SELECT count(*) FROM tally.api_keys"), Some(0));
    }

    #[pg_test]
    fn subscription_events_older_than_the_last_applied_are_refused() {
        fixture();
        let accept = |provider: &str, at: &str| {
            value::<bool>(&format!(
                "SELECT tally.accept_subscription_event('acme', '{provider}', '{at}')"
            ))
            .unwrap()
        };
        assert!(accept("stripe", "2030-01-02 00:00"));
        assert!(!accept("stripe", "2030-01-01 00:00"));
        // The same second arrives in order: applied.
        assert!(accept("stripe", "2030-01-02 00:00"));
        assert!(accept("stripe", "2030-01-03 00:00"));
        // Each provider keeps its own order.
        assert!(accept("paddle", "2030-01-01 00:00"));
        assert_fails(
            "SELECT tally.accept_subscription_event('acme', 'chargebee', now())",
            "22023",
            "unknown provider",
        );
        assert_fails(
            "SELECT tally.accept_subscription_event('nobody', 'stripe', now())",
            "P0002",
            "tenant not found",
        );
        assert_fails(
            "SELECT tally.accept_subscription_event('acme', 'stripe', NULL)",
            "22004",
            "occurred_at must not be null",
        );
    }
}
