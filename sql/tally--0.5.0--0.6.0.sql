\echo Use "ALTER EXTENSION tally UPDATE TO '0.6.0'" to load this file. \quit

-- tally 0.5.0 -> 0.6.0: a security model.
--
-- * Roles tally_app, tally_daemon, tally_admin (NOLOGIN groups an
--   application grants to its login roles) and tally_owner, which owns every
--   object of tally; nothing is granted to PUBLIC.
-- * Every function runs with tally_owner's rights (SECURITY DEFINER) and a
--   search_path pinned to pg_catalog, pg_temp, so no object a caller plants
--   runs inside it.
-- * The locks that keep counters' copies of their limits true are row locks
--   on tally's own tables (tally.limits_guard, the tenant's row) instead of
--   advisory locks any role could take and that filled the shared lock table
--   when one transaction touched many tenants.
-- * Ids are at most 255 bytes and periods lie in [1970, 9999) in the
--   configuration tables' checks too.

DO $$
DECLARE
    role name;
BEGIN
    FOREACH role IN ARRAY ARRAY['tally_owner', 'tally_app', 'tally_daemon', 'tally_admin'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = role) THEN
            BEGIN
                EXECUTE pg_catalog.format('CREATE ROLE %I NOLOGIN', role);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- made meanwhile by CREATE EXTENSION in another database
            END;
        END IF;
    END LOOP;
END
$$;

CREATE TABLE tally.limits_guard (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO tally.limits_guard DEFAULT VALUES;

CREATE OR REPLACE FUNCTION tally._default_plan_id() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT plan_id FROM tally.plans WHERE is_default $$;

CREATE OR REPLACE FUNCTION tally._check_metric() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.metric IS NULL THEN
        RAISE EXCEPTION 'metric must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'name the metric, for example ''messages''';
    ELSIF NEW.metric = '' THEN
        RAISE EXCEPTION 'metric must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'name the metric, for example ''messages''';
    ELSIF octet_length(NEW.metric) > 255 THEN
        RAISE EXCEPTION 'metric is too long' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('%s bytes, at most 255', octet_length(NEW.metric)),
            HINT = 'use an id of at most 255 bytes';
    ELSIF NEW.kind IS NULL OR NEW.kind NOT IN ('consumable', 'allocation') THEN
        RAISE EXCEPTION 'unknown metric kind' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('metric %L has kind %L', NEW.metric, NEW.kind),
            HINT = 'kind is ''consumable'' (reset each billing period) or ''allocation'' (a standing count such as seats)';
    ELSIF NEW.stripe_meter_event = '' THEN
        RAISE EXCEPTION 'stripe_meter_event must not be empty' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('metric %L', NEW.metric),
            HINT = 'give the Stripe meter''s event name, or NULL if the metric is not billed';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION tally._check_plan() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.plan_id IS NULL THEN
        RAISE EXCEPTION 'plan_id must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'name the plan, for example ''starter''';
    ELSIF NEW.plan_id = '' THEN
        RAISE EXCEPTION 'plan_id must not be empty' USING ERRCODE = 'invalid_parameter_value',
            HINT = 'name the plan, for example ''starter''';
    ELSIF octet_length(NEW.plan_id) > 255 THEN
        RAISE EXCEPTION 'plan_id is too long' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('%s bytes, at most 255', octet_length(NEW.plan_id)),
            HINT = 'use an id of at most 255 bytes';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION tally._check_plan_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.max_units < 0 THEN
        RAISE EXCEPTION 'max_units must not be negative' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('plan %L, metric %L, max_units %s', NEW.plan_id, NEW.metric, NEW.max_units),
            HINT = 'use 0 to allow nothing, NULL for unlimited, or delete the row to leave the metric out of the plan';
    END IF;
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION tally._check_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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
    ELSIF octet_length(NEW.tenant_id) > 255 THEN
        RAISE EXCEPTION 'tenant_id is too long' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('%s bytes, at most 255', octet_length(NEW.tenant_id)),
            HINT = 'use an id of at most 255 bytes';
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
    ELSIF NEW.period_start < '1970-01-01 00:00:00+00' OR NEW.period_start >= '9999-01-01 00:00:00+00'
          OR NEW.period_end >= '9999-01-01 00:00:00+00' THEN
        RAISE EXCEPTION 'billing period out of range' USING ERRCODE = 'datetime_field_overflow',
            DETAIL = format('tenant %L, period %s to %s', NEW.tenant_id, NEW.period_start, NEW.period_end),
            HINT = 'a billing period starts in 1970 or later and ends before 9999';
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

CREATE OR REPLACE FUNCTION tally._link_provider_ids() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

CREATE OR REPLACE FUNCTION tally._invalidate_plan_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM FROM tally.limits_guard FOR UPDATE;
    UPDATE tally.usage_counters AS c SET limits_valid = false
      FROM tally.tenants AS t
     WHERE c.limits_valid AND c.metric = OLD.metric
       AND t.tenant_id = c.tenant_id AND t.plan_id = OLD.plan_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tally._invalidate_metric() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM FROM tally.limits_guard FOR UPDATE;
    UPDATE tally.usage_counters SET limits_valid = false
     WHERE limits_valid AND metric = OLD.metric;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tally._invalidate_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE tally.usage_counters SET limits_valid = false
     WHERE limits_valid AND tenant_id = NEW.tenant_id;
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tally._guard_tenant_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    pending bigint;
BEGIN
    PERFORM FROM tally.usage_counters WHERE tenant_id = OLD.tenant_id FOR UPDATE;
    SELECT count(*) INTO pending FROM tally.usage_reports
     WHERE tenant_id = OLD.tenant_id AND status = 'pending';
    IF pending > 0 THEN
        RAISE EXCEPTION 'tenant has unsent usage' USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('tenant %L has %s pending usage reports', OLD.tenant_id, pending),
            HINT = 'let the worker send them (tallyd worker) or let them fail, then delete the tenant';
    END IF;
    DELETE FROM tally.usage_reports WHERE tenant_id = OLD.tenant_id;
    RETURN OLD;
END
$$;

CREATE OR REPLACE FUNCTION tally.usage_report_stats(
    OUT pending bigint, OUT leased bigint, OUT due bigint, OUT failed bigint,
    OUT oldest_pending_at timestamptz, OUT oldest_pending_age interval)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*),
           count(*) FILTER (WHERE lease_until > now()),
           count(*) FILTER (WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until <= now())),
           (SELECT count(*) FROM tally.usage_reports WHERE status = 'failed'),
           min(created_at),
           now() - min(created_at)
      FROM tally.usage_reports
     WHERE status = 'pending'
$$;

CREATE OR REPLACE FUNCTION tally._index_api_key() RETURNS trigger
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

CREATE OR REPLACE FUNCTION tally.tenant_for_api_key(key_hash text) RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT h.tenant_id FROM tally.api_key_hashes AS h WHERE h.key_hash = tenant_for_api_key.key_hash
$$;

DROP FUNCTION tally._share_limits(text);
DROP FUNCTION tally._lock_tenant_limits(text);
DROP FUNCTION tally._lock_all_limits();

-- The library's functions: tally_owner's rights, a pinned search_path.
DO $$
DECLARE
    function regprocedure;
BEGIN
    FOR function IN
        SELECT p.oid::pg_catalog.regprocedure
          FROM pg_catalog.pg_proc AS p JOIN pg_catalog.pg_language AS l ON l.oid = p.prolang
         WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace AND l.lanname = 'c'
    LOOP
        EXECUTE pg_catalog.format(
            'ALTER FUNCTION %s SECURITY DEFINER SET search_path TO pg_catalog, pg_temp', function);
    END LOOP;
END
$$;

-- Privileges, applied last. tally's tables, types and functions belong to
-- tally_owner, which cannot log in; nothing is granted to PUBLIC. Callers
-- reach the data only through functions that run with tally_owner's rights
-- (SECURITY DEFINER, search_path pinned to pg_catalog, pg_temp), so a role
-- that may call check_and_increment_usage cannot write a counter, a limit
-- copy, an idempotency record or a report any other way, and nothing it
-- plants in a schema of its own runs inside tally. tally_daemon includes
-- tally_app, and tally_admin includes tally_daemon.
DO $$
DECLARE
    object record;
    grant_to record;
BEGIN
    FOR object IN
        SELECT c.oid::pg_catalog.regclass AS name, c.relkind
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'tally'::pg_catalog.regnamespace AND c.relkind IN ('r', 'c')
         ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('ALTER %s %s OWNER TO tally_owner',
                                  CASE object.relkind WHEN 'r' THEN 'TABLE' ELSE 'TYPE' END, object.name);
    END LOOP;
    FOR object IN
        SELECT p.oid::pg_catalog.regprocedure AS name
          FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
         ORDER BY p.proname
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO tally_owner', object.name);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', object.name);
    END LOOP;
    FOR grant_to IN
        SELECT * FROM (VALUES
            ('tally_app', ARRAY['check_and_increment_usage', 'decrement_usage', 'usage_summary',
                                'validate_plan_change']),
            ('tally_daemon', ARRAY['change_plan', 'reset_usage', 'start_period', 'set_tenant_status',
                                   'link_provider_customer', 'attempt_event_lock',
                                   'accept_subscription_event', 'tenant_for_api_key',
                                   'claim_usage_reports', 'complete_usage_report', 'fail_usage_report',
                                   'usage_report_stats']),
            ('tally_admin', ARRAY['sync_usage', 'cleanup_provider_events', 'cleanup_idempotency_keys',
                                  'cleanup_usage_reports', 'requeue_failed_usage_reports',
                                  '_default_plan_id']))
            AS g (role, functions)
    LOOP
        FOR object IN
            SELECT p.oid::pg_catalog.regprocedure AS name
              FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
               AND p.proname = ANY (grant_to.functions)
             ORDER BY p.proname
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', object.name, grant_to.role);
        END LOOP;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA tally TO tally_owner, tally_app, tally_daemon, tally_admin;
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role('tally_daemon', 'tally_app', 'MEMBER') THEN
        GRANT tally_app TO tally_daemon;
    END IF;
    IF NOT pg_catalog.pg_has_role('tally_admin', 'tally_daemon', 'MEMBER') THEN
        GRANT tally_daemon TO tally_admin;
    END IF;
EXCEPTION WHEN unique_violation OR duplicate_object OR internal_error THEN
    NULL;  -- granted meanwhile by CREATE EXTENSION in another database
END
$$;

-- tallyd serve reads plans, tenants and provider links directly.
GRANT SELECT ON tally.plans, tally.tenants, tally.provider_links TO tally_daemon;
-- Configuration is written with plain SQL; everything is readable by admins.
GRANT SELECT, INSERT, UPDATE, DELETE ON tally.metrics, tally.plans, tally.plan_limits, tally.tenants,
                                        tally.api_keys TO tally_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO tally_admin;
