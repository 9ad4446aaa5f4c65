\echo Use "ALTER EXTENSION tally UPDATE TO '0.8.0'" to load this file. \quit

-- tally 0.7.0 -> 0.8.0: the money path under hostile and untidy input.

-- 1. Billing effects: provider events applied by the extension.

-- (end of billing effects)


-- 2. The usage-report queue: lease tokens, send counters, bounds.

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

-- (end of the tenant API)
