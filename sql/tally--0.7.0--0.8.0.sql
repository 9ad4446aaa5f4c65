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
--
-- * Each claim hands out a lease token; complete_usage_report and
--   fail_usage_report take it, so a worker whose lease lapsed cannot settle
--   a report another worker has claimed since. The old functions, which
--   took no token, are dropped (their C symbols now refuse: see
--   extension/src/upgrade.rs).
-- * sends counts claims and is never reset: the worker's idempotency keys
--   are <identifier>:s<sends>, never a key of 0.7.0 (<identifier>:<attempt>).
-- * first_claimed_at: requeue_failed_usage_reports refuses a report first
--   claimed 24 hours or more ago (Stripe dedupes an identifier within 24
--   hours only) unless allow_resend_after_24h. Reports that may have been
--   claimed under 0.7.0 count from their creation, which is earlier than
--   any claim.
-- * Leases are at most an hour; a retry_after counts up to an hour.

ALTER TABLE tally.usage_reports
    ADD COLUMN sends integer NOT NULL DEFAULT 0,
    ADD COLUMN lease_token uuid,
    ADD COLUMN first_claimed_at timestamptz;
UPDATE tally.usage_reports
   SET sends = attempts,
       first_claimed_at = created_at
 WHERE attempts > 0 OR status <> 'pending' OR last_error IS NOT NULL;

DROP FUNCTION tally.claim_usage_reports(integer, interval);
DROP FUNCTION tally.complete_usage_report(bigint);
DROP FUNCTION tally.fail_usage_report(bigint, text, boolean, interval);
DROP FUNCTION tally.requeue_failed_usage_reports(bigint[]);
CREATE FUNCTION tally."claim_usage_reports"(
	"batch" INT DEFAULT 100, /* Option < i32 > */
	"lease" interval DEFAULT NULL /* Option < Interval > */
) RETURNS TABLE (
	"id" bigint,  /* i64 */
	"tenant_id" TEXT,  /* String */
	"metric" TEXT,  /* String */
	"event_name" TEXT,  /* String */
	"units" bigint,  /* i64 */
	"identifier" TEXT,  /* String */
	"stripe_customer_id" TEXT,  /* Option < String > */
	"created_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"attempts" INT,  /* i32 */
	"lease_until" timestamp with time zone,  /* TimestampWithTimeZone */
	"lease_token" uuid,  /* Uuid */
	"sends" INT  /* i32 */
)
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'claim_leased_reports_wrapper';
CREATE FUNCTION tally."complete_usage_report"(
	"id" bigint, /* Option < i64 > */
	"lease_token" uuid /* Option < Uuid > */
) RETURNS void
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'complete_leased_report_wrapper';
CREATE FUNCTION tally."fail_usage_report"(
	"id" bigint, /* Option < i64 > */
	"lease_token" uuid, /* Option < Uuid > */
	"error" TEXT, /* Option < & str > */
	"permanent" bool DEFAULT false, /* Option < bool > */
	"retry_after" interval DEFAULT NULL /* Option < Interval > */
) RETURNS void
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'fail_leased_report_wrapper';
CREATE FUNCTION tally."requeue_failed_usage_reports"(
	"ids" bigint[] DEFAULT NULL, /* :: std :: option :: Option < Vec < Option < i64 > > > */
	"allow_resend_after_24h" bool DEFAULT false /* Option < bool > */
) RETURNS bigint /* i64 */
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'requeue_failed_reports_wrapper';

ALTER FUNCTION tally.claim_usage_reports(integer, interval) OWNER TO tally_owner;
ALTER FUNCTION tally.complete_usage_report(bigint, uuid) OWNER TO tally_owner;
ALTER FUNCTION tally.fail_usage_report(bigint, uuid, text, boolean, interval) OWNER TO tally_owner;
ALTER FUNCTION tally.requeue_failed_usage_reports(bigint[], boolean) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.claim_usage_reports(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally.complete_usage_report(bigint, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally.fail_usage_report(bigint, uuid, text, boolean, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally.requeue_failed_usage_reports(bigint[], boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.claim_usage_reports(integer, interval) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.complete_usage_report(bigint, uuid) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.fail_usage_report(bigint, uuid, text, boolean, interval) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.requeue_failed_usage_reports(bigint[], boolean) TO tally_admin;

-- (end of the usage-report queue)


-- 3. The tenant API: idempotency and decrements.

-- A key names one call: which function claimed it is kept with it.
ALTER TABLE tally.idempotency_keys
    ADD COLUMN operation text NOT NULL DEFAULT 'check' CHECK (operation IN ('check', 'release'));

-- The API's decrement: allocations only, never past what is held, once per key.
CREATE FUNCTION tally."release_usage"(
	"tenant_id" TEXT, /* Option < & str > */
	"metric" TEXT, /* Option < & str > */
	"units" bigint, /* Option < i64 > */
	"idempotency_key" TEXT /* Option < & str > */
) RETURNS bigint /* i64 */
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'release_usage_wrapper';
ALTER FUNCTION tally.release_usage(text, text, bigint, text) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.release_usage(text, text, bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.release_usage(text, text, bigint, text) TO tally_app;

-- A tenant's plan and status, as the tenant API shows them (so tallyd needs
-- no SELECT on tally.tenants for it).
CREATE FUNCTION tally.tenant_standing(tenant_id text) RETURNS TABLE (plan_id text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT t.plan_id, t.status FROM tally.tenants AS t WHERE t.tenant_id = tenant_standing.tenant_id
$$;
ALTER FUNCTION tally.tenant_standing(text) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.tenant_standing(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.tenant_standing(text) TO tally_app;

-- tally_daemon reads no table any more: tenant_standing serves the tenant
-- API and the apply_* functions the webhooks.
REVOKE SELECT ON tally.tenants FROM tally_daemon;

-- (end of the tenant API)
