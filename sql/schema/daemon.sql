-- What tallyd needs from the extension (0.3.0): tenant API keys, and the
-- order of subscription events.

-- API keys: a tenant's credential for tallyd's tenant API. The key itself
-- is shown once when it is made and never stored: only the hex SHA-256 of
-- the whole key. key_id is its public part, for listings, logs and revoking.
CREATE TABLE tally.api_keys (
    key_id     text PRIMARY KEY CHECK (key_id <> ''),
    tenant_id  text NOT NULL REFERENCES tally.tenants ON DELETE CASCADE ON UPDATE CASCADE,
    key_hash   text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    label      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX api_keys_tenant ON tally.api_keys (tenant_id);

-- The tenant a key belongs to, if the key is known and not revoked.
CREATE FUNCTION tally.tenant_for_api_key(key_hash text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT k.tenant_id FROM tally.api_keys AS k
     WHERE k.key_hash = tenant_for_api_key.key_hash AND k.revoked_at IS NULL
$$;

-- Providers deliver subscription events out of order. Each tenant keeps the
-- time of the last one applied, per provider; an event older than that is
-- stale and changes nothing. Called in the event's transaction, under the
-- tenant's row lock, before its effect: true means apply it.
ALTER TABLE tally.tenants
    ADD COLUMN stripe_subscription_event_at timestamptz,
    ADD COLUMN paddle_subscription_event_at timestamptz;

CREATE FUNCTION tally.accept_subscription_event(tenant_id text, provider text, occurred_at timestamptz)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    last_applied timestamptz;
BEGIN
    IF tenant_id IS NULL OR provider IS NULL OR occurred_at IS NULL THEN
        RAISE EXCEPTION '% must not be null',
              CASE WHEN tenant_id IS NULL THEN 'tenant_id' WHEN provider IS NULL THEN 'provider' ELSE 'occurred_at' END
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass the tenant, the provider and when the event happened';
    ELSIF provider NOT IN ('stripe', 'paddle') THEN
        RAISE EXCEPTION 'unknown provider' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('provider %L', provider), HINT = 'provider is stripe or paddle';
    END IF;
    SELECT CASE provider WHEN 'stripe' THEN t.stripe_subscription_event_at ELSE t.paddle_subscription_event_at END
      INTO last_applied
      FROM tally.tenants AS t WHERE t.tenant_id = accept_subscription_event.tenant_id
       FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant not found' USING ERRCODE = 'no_data_found',
            DETAIL = format('no tenant has tenant_id %L', tenant_id),
            HINT = 'insert the tenant into tally.tenants first';
    END IF;
    -- Events of the same second (Stripe's resolution) apply in arrival order.
    IF last_applied > occurred_at THEN
        RETURN false;
    END IF;
    UPDATE tally.tenants AS t
       SET stripe_subscription_event_at = CASE provider WHEN 'stripe' THEN occurred_at ELSE t.stripe_subscription_event_at END,
           paddle_subscription_event_at = CASE provider WHEN 'paddle' THEN occurred_at ELSE t.paddle_subscription_event_at END
     WHERE t.tenant_id = accept_subscription_event.tenant_id;
    RETURN true;
END
$$;
