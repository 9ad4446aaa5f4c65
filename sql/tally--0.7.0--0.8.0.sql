\echo Use "ALTER EXTENSION tally UPDATE TO '0.8.0'" to load this file. \quit

-- tally 0.7.0 -> 0.8.0: the money path under hostile and untidy input.

-- 1. Billing effects: provider events applied by the extension.

-- What became of each event, for operators.
ALTER TABLE tally.provider_events ADD COLUMN outcome text, ADD COLUMN note text;

-- Links a webhook asked for and tally refused.
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
ALTER TABLE tally.link_conflicts OWNER TO tally_owner;
GRANT SELECT ON tally.link_conflicts, tally.link_conflicts_id_seq TO tally_admin;

-- The key that signs checkout references: tally_owner's alone.
CREATE TABLE tally.reference_secret (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    secret   bytea NOT NULL CHECK (octet_length(secret) >= 32)
);
INSERT INTO tally.reference_secret (secret)
VALUES (pg_catalog.decode(pg_catalog.replace(
            pg_catalog.gen_random_uuid()::text || pg_catalog.gen_random_uuid()::text, '-', ''), 'hex'));
SELECT pg_catalog.pg_extension_config_dump('tally.reference_secret', '');
ALTER TABLE tally.reference_secret OWNER TO tally_owner;
-- As a fresh install leaves it: granted with every table, then taken back.
GRANT SELECT ON tally.reference_secret TO tally_admin;
REVOKE ALL ON tally.reference_secret FROM tally_admin;

CREATE FUNCTION tally."apply_payment"(
	"provider" TEXT,
	"event_id" TEXT,
	"customer_id" TEXT,
	"status" TEXT,
	"reason" TEXT DEFAULT NULL,
	"subscription_id" TEXT DEFAULT NULL,
	"period_start" timestamp with time zone DEFAULT NULL,
	"period_end" timestamp with time zone DEFAULT NULL,
	"reference" TEXT DEFAULT NULL,
	"trust_unsigned" bool DEFAULT true
) RETURNS TEXT
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'apply_payment_wrapper';

CREATE FUNCTION tally."apply_subscription"(
	"provider" TEXT,
	"event_id" TEXT,
	"customer_id" TEXT,
	"subscription_id" TEXT,
	"status" TEXT,
	"occurred_at" timestamp with time zone,
	"price_ids" TEXT[] DEFAULT NULL,
	"period_start" timestamp with time zone DEFAULT NULL,
	"period_end" timestamp with time zone DEFAULT NULL,
	"reference" TEXT DEFAULT NULL,
	"trust_unsigned" bool DEFAULT true
) RETURNS TEXT
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'apply_subscription_wrapper';

CREATE FUNCTION tally."apply_checkout"(
	"provider" TEXT,
	"event_id" TEXT,
	"customer_id" TEXT,
	"reference" TEXT,
	"subscription_id" TEXT DEFAULT NULL,
	"trust_unsigned" bool DEFAULT true
) RETURNS TEXT
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'apply_checkout_wrapper';

CREATE FUNCTION tally."checkout_reference"(
	"tenant_id" TEXT
) RETURNS TEXT
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c
AS 'MODULE_PATHNAME', 'checkout_reference_wrapper';

DO $$
DECLARE
    grant_to record;
    object record;
BEGIN
    FOR grant_to IN
        SELECT * FROM (VALUES
            ('tally_app', ARRAY['checkout_reference']),
            ('tally_daemon', ARRAY['apply_payment', 'apply_subscription', 'apply_checkout']))
            AS g (role, functions)
    LOOP
        FOR object IN
            SELECT p.oid::pg_catalog.regprocedure AS name
              FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
               AND p.proname = ANY (grant_to.functions)
        LOOP
            EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO tally_owner', object.name);
            EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', object.name);
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', object.name, grant_to.role);
        END LOOP;
    END LOOP;
END
$$;

-- tallyd no longer reads plans or provider links: the apply_* functions do.
REVOKE SELECT ON tally.plans, tally.provider_links FROM tally_daemon;

-- (end of billing effects)


-- 2. The usage-report queue: lease tokens, send counters, bounds.

-- (end of the usage-report queue)


-- 3. The tenant API: idempotency and decrements.

-- (end of the tenant API)
