-- Provider events: one row per webhook event processed, so that a retried
-- or duplicated delivery is recognised (tally.attempt_event_lock takes the
-- row in the event's own transaction; tally.cleanup_provider_events forgets
-- old ones). The billing-effect functions (apply_payment,
-- apply_subscription, apply_checkout) record on it what became of the
-- event: outcome applied, stale, not_linked, ignored or conflict, and a
-- note for people.

CREATE TABLE tally.provider_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    event_type  text,
    payload     jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    outcome     text,
    note        text,
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX provider_events_received_at ON tally.provider_events (received_at);

-- Links a webhook asked for and tally refused: a webhook never replaces a
-- link, and tenant references in checkouts are set by the buyer. Kept for
-- operators (tallyd links conflicts); nothing here changes a tenant.
CREATE TABLE tally.link_conflicts (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    provider          text NOT NULL,
    event_id          text NOT NULL,
    customer_id       text NOT NULL,
    subscription_id   text,
    named_tenant      text,
    existing_tenant   text,
    existing_customer text,
    reason            text NOT NULL,
    recorded_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX link_conflicts_recorded_at ON tally.link_conflicts (recorded_at);

-- The key that signs checkout references (tally.checkout_reference), made
-- at install from the server's strong random source. Only tally_owner
-- reads it. Kept by pg_dump, so references survive a restore.
CREATE TABLE tally.reference_secret (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    secret   bytea NOT NULL CHECK (octet_length(secret) >= 32)
);
INSERT INTO tally.reference_secret (secret)
VALUES (pg_catalog.decode(pg_catalog.replace(
            pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', ''), 'hex'));
SELECT pg_catalog.pg_extension_config_dump('tally.reference_secret', '');
