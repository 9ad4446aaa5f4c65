-- API keys: a tenant's credential for tallyd's tenant API. The key itself is
-- shown once when it is made and never stored: only the hex SHA-256 of the
-- whole key. key_id is its public part, for listings, logs and revoking.
CREATE TABLE tally.api_keys (
    key_id     text NOT NULL CHECK (key_id <> ''),
    tenant_id  text NOT NULL REFERENCES tally.tenants ON DELETE CASCADE,
    key_hash   text NOT NULL CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    label      text,
    created_at timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz,
    PRIMARY KEY (tenant_id, key_id)
);
CREATE INDEX api_keys_key_id ON tally.api_keys (key_id);

-- The keys that are in force, by hash: the one place a hash is unique, and
-- the one lookup an unauthenticated request costs. Kept by the trigger
-- below: a key is here from its creation until it is revoked or deleted.
CREATE TABLE tally.api_key_hashes (
    key_hash  text PRIMARY KEY,
    tenant_id text NOT NULL,
    key_id    text NOT NULL
);

CREATE FUNCTION tally._index_api_key() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM tally.api_key_hashes AS h WHERE h.key_hash = OLD.key_hash;
    END IF;
    IF TG_OP <> 'DELETE' AND NEW.revoked_at IS NULL THEN
        INSERT INTO tally.api_key_hashes (key_hash, tenant_id, key_id)
        VALUES (NEW.key_hash, NEW.tenant_id, NEW.key_id);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER index_api_key AFTER INSERT OR DELETE OR UPDATE ON tally.api_keys
    FOR EACH ROW EXECUTE FUNCTION tally._index_api_key();

-- The tenant a key belongs to, if the key is known and not revoked.
CREATE FUNCTION tally.tenant_for_api_key(key_hash text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT h.tenant_id FROM tally.api_key_hashes AS h WHERE h.key_hash = tenant_for_api_key.key_hash
$$;

-- A tenant's plan and status, as the tenant API shows them (so tallyd needs
-- no SELECT on tally.tenants for it).
CREATE FUNCTION tally.tenant_standing(tenant_id text) RETURNS TABLE (plan_id text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.plan_id, t.status FROM tally.tenants AS t WHERE t.tenant_id = tenant_standing.tenant_id
$$;
