\echo Use "ALTER EXTENSION tally UPDATE TO '0.5.0'" to load this file. \quit

-- tally 0.4.0 -> 0.5.0: every rule in one place, and shapes that distribute.
--
-- * Functions that validate, raise or decide are now C functions of the
--   library (their errors come from one catalogue): attempt_event_lock,
--   accept_subscription_event, cleanup_provider_events,
--   cleanup_idempotency_keys, cleanup_usage_reports and
--   requeue_failed_usage_reports. _check_retention goes.
-- * _default_plan_id is one statement; the tenants check reports a missing
--   default plan, and refuses a change of tenant_id: tenant ids are
--   immutable, so no foreign key cascades an update of one and the reports'
--   rename trigger goes.
-- * Global uniqueness lives in tables keyed by the unique value:
--   provider_links (provider customer and subscription ids, kept from the
--   tenants columns by a trigger) and api_key_hashes (keys in force).
--   The keys of tenant tables contain tenant_id: usage_reports is keyed by
--   (tenant_id, id) and api_keys by (tenant_id, key_id).

-- Rules moved into the library.
DROP FUNCTION tally.attempt_event_lock(text, text, text, jsonb);
DROP FUNCTION tally.accept_subscription_event(text, text, timestamptz);
DROP FUNCTION tally.cleanup_provider_events(interval);
DROP FUNCTION tally.cleanup_idempotency_keys(interval);
DROP FUNCTION tally.cleanup_usage_reports(interval);
DROP FUNCTION tally._check_retention(interval, interval);
DROP FUNCTION tally.requeue_failed_usage_reports(bigint[]);
CREATE FUNCTION tally."attempt_event_lock"(
	"provider" TEXT, /* Option < & str > */
	"event_id" TEXT, /* Option < & str > */
	"event_type" TEXT DEFAULT NULL, /* Option < & str > */
	"payload" jsonb DEFAULT NULL /* Option < JsonB > */
) RETURNS bool /* bool */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'attempt_event_lock_wrapper';
CREATE FUNCTION tally."accept_subscription_event"(
	"tenant_id" TEXT, /* Option < & str > */
	"provider" TEXT, /* Option < & str > */
	"occurred_at" timestamp with time zone /* Option < TimestampWithTimeZone > */
) RETURNS bool /* bool */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'accept_subscription_event_wrapper';
CREATE FUNCTION tally."cleanup_provider_events"(
	"older_than" interval DEFAULT '30 days' /* Option < Interval > */
) RETURNS bigint /* i64 */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cleanup_provider_events_wrapper';
CREATE FUNCTION tally."cleanup_idempotency_keys"(
	"older_than" interval DEFAULT '24 hours' /* Option < Interval > */
) RETURNS bigint /* i64 */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cleanup_idempotency_keys_wrapper';
CREATE FUNCTION tally."cleanup_usage_reports"(
	"older_than" interval DEFAULT '30 days' /* Option < Interval > */
) RETURNS bigint /* i64 */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'cleanup_usage_reports_wrapper';
CREATE FUNCTION tally."requeue_failed_usage_reports"(
	"ids" bigint[] DEFAULT NULL /* :: std :: option :: Option < Vec < Option < i64 > > > */
) RETURNS bigint /* i64 */
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'requeue_failed_usage_reports_wrapper';

-- Tenants: the default plan, immutable ids, provider ids unique elsewhere.
CREATE OR REPLACE FUNCTION tally._default_plan_id() RETURNS text
LANGUAGE sql STABLE AS $$ SELECT plan_id FROM tally.plans WHERE is_default $$;

CREATE OR REPLACE FUNCTION tally._check_tenant() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
        RAISE EXCEPTION 'tenant_id cannot change' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('tenant %L', OLD.tenant_id),
            HINT = 'a tenant''s id is its key everywhere: create a tenant with the new id instead';
    ELSIF NEW.tenant_id IS NULL THEN
        RAISE EXCEPTION 'tenant_id must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'use your application''s id for the customer account';
    ELSIF NEW.tenant_id = '' THEN
        RAISE EXCEPTION 'tenant_id must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'use your application''s id for the customer account';
    ELSIF NEW.plan_id IS NULL AND NOT EXISTS (SELECT FROM tally.plans WHERE is_default) THEN
        RAISE EXCEPTION 'no default plan' USING ERRCODE = 'no_data_found',
            HINT = 'mark one plan with is_default = true in tally.plans, or give the tenant a plan_id';
    ELSIF NEW.status IS NULL OR NEW.status NOT IN ('active', 'past_due', 'action_required', 'canceled') THEN
        RAISE EXCEPTION 'unknown tenant status' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('tenant %L has status %L', NEW.tenant_id, NEW.status),
            HINT = 'status is one of active, past_due, action_required, canceled';
    ELSIF NOT isfinite(NEW.period_start) OR NOT isfinite(NEW.period_end) THEN
        RAISE EXCEPTION 'billing period must be finite' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('tenant %L, period %s to %s', NEW.tenant_id, NEW.period_start, NEW.period_end),
            HINT = 'give real timestamps, or NULL for calendar-month periods';
    ELSIF NEW.period_end IS NOT NULL AND NEW.period_start IS NULL THEN
        RAISE EXCEPTION 'period_end needs a period_start' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('tenant %L, period_end %s', NEW.tenant_id, NEW.period_end),
            HINT = 'set both, or only period_start (the period then lasts one month)';
    ELSIF NEW.period_end <= NEW.period_start THEN
        RAISE EXCEPTION 'period_end must be after period_start' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('tenant %L, period %s to %s', NEW.tenant_id, NEW.period_start, NEW.period_end),
            HINT = 'a billing period is [period_start, period_end): the end comes after the start';
    END IF;
    RETURN NEW;
END
$$;

ALTER TABLE tally.tenants
    DROP CONSTRAINT tenants_stripe_customer_id_key,
    DROP CONSTRAINT tenants_stripe_subscription_id_key,
    DROP CONSTRAINT tenants_paddle_customer_id_key,
    DROP CONSTRAINT tenants_paddle_subscription_id_key;

CREATE TABLE tally.provider_links (
    provider  text NOT NULL CHECK (provider IN ('stripe', 'paddle')),
    object    text NOT NULL CHECK (object IN ('customer', 'subscription')),
    object_id text NOT NULL,
    tenant_id text NOT NULL,
    PRIMARY KEY (provider, object, object_id)
);
CREATE INDEX provider_links_tenant ON tally.provider_links (tenant_id);

INSERT INTO tally.provider_links (provider, object, object_id, tenant_id)
SELECT v.provider, v.object, v.object_id, t.tenant_id
  FROM tally.tenants AS t
 CROSS JOIN LATERAL (VALUES ('stripe', 'customer', t.stripe_customer_id),
                            ('stripe', 'subscription', t.stripe_subscription_id),
                            ('paddle', 'customer', t.paddle_customer_id),
                            ('paddle', 'subscription', t.paddle_subscription_id))
       AS v (provider, object, object_id)
 WHERE v.object_id IS NOT NULL;

CREATE FUNCTION tally._link_provider_ids() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    link record;
    owner text;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        DELETE FROM tally.provider_links AS l WHERE l.tenant_id = OLD.tenant_id;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN NULL;
    END IF;
    FOR link IN
        SELECT v.provider, v.object, v.object_id
          FROM (VALUES ('stripe', 'customer', NEW.stripe_customer_id),
                       ('stripe', 'subscription', NEW.stripe_subscription_id),
                       ('paddle', 'customer', NEW.paddle_customer_id),
                       ('paddle', 'subscription', NEW.paddle_subscription_id))
               AS v (provider, object, object_id)
         WHERE v.object_id IS NOT NULL
    LOOP
        INSERT INTO tally.provider_links AS l (provider, object, object_id, tenant_id)
        VALUES (link.provider, link.object, link.object_id, NEW.tenant_id)
            ON CONFLICT (provider, object, object_id) DO NOTHING;
        IF NOT FOUND THEN
            SELECT l.tenant_id INTO owner FROM tally.provider_links AS l
             WHERE l.provider = link.provider AND l.object = link.object AND l.object_id = link.object_id;
            RAISE EXCEPTION '% already linked to another tenant', link.object USING ERRCODE = 'unique_violation',
                DETAIL = format('%s %s %L belongs to tenant %L', link.provider, link.object, link.object_id, owner),
                HINT = format('one provider %s bills one tenant: unlink it from the other tenant first', link.object);
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
CREATE TRIGGER link_provider_ids
    AFTER INSERT OR DELETE OR UPDATE OF stripe_customer_id, stripe_subscription_id,
                                        paddle_customer_id, paddle_subscription_id
    ON tally.tenants
    FOR EACH ROW EXECUTE FUNCTION tally._link_provider_ids();

-- Foreign keys on tenant_id no longer cascade updates.
ALTER TABLE tally.usage_counters
    DROP CONSTRAINT usage_counters_tenant_id_fkey,
    ADD CONSTRAINT usage_counters_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tally.tenants ON DELETE CASCADE;
ALTER TABLE tally.idempotency_keys
    DROP CONSTRAINT idempotency_keys_tenant_id_fkey,
    ADD CONSTRAINT idempotency_keys_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tally.tenants ON DELETE CASCADE;
DROP TRIGGER rename_reports ON tally.tenants;
DROP FUNCTION tally._rename_tenant_reports();

-- Usage reports keyed by tenant.
ALTER TABLE tally.usage_reports
    DROP CONSTRAINT usage_reports_pkey,
    ADD PRIMARY KEY (tenant_id, id);
CREATE INDEX usage_reports_id ON tally.usage_reports (id);

-- API keys keyed by tenant; the keys in force by hash.
ALTER TABLE tally.api_keys
    DROP CONSTRAINT api_keys_pkey,
    DROP CONSTRAINT api_keys_key_hash_key,
    DROP CONSTRAINT api_keys_tenant_id_fkey,
    ADD CONSTRAINT api_keys_tenant_id_fkey
        FOREIGN KEY (tenant_id) REFERENCES tally.tenants ON DELETE CASCADE,
    ADD PRIMARY KEY (tenant_id, key_id);
DROP INDEX tally.api_keys_tenant;
CREATE INDEX api_keys_key_id ON tally.api_keys (key_id);

CREATE TABLE tally.api_key_hashes (
    key_hash  text PRIMARY KEY,
    tenant_id text NOT NULL,
    key_id    text NOT NULL
);

INSERT INTO tally.api_key_hashes (key_hash, tenant_id, key_id)
SELECT key_hash, tenant_id, key_id FROM tally.api_keys WHERE revoked_at IS NULL;

CREATE FUNCTION tally._index_api_key() RETURNS trigger
LANGUAGE plpgsql AS $$
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

CREATE OR REPLACE FUNCTION tally.tenant_for_api_key(key_hash text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT h.tenant_id FROM tally.api_key_hashes AS h WHERE h.key_hash = tenant_for_api_key.key_hash
$$;
