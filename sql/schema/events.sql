-- Provider events: one row per webhook event processed, so that a retried
-- or duplicated delivery is recognised (tally.attempt_event_lock takes the
-- row in the event's own transaction; tally.cleanup_provider_events forgets
-- old ones).

CREATE TABLE tally.provider_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    event_type  text,
    payload     jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX provider_events_received_at ON tally.provider_events (received_at);
