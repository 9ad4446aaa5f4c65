-- Configuration and tenants: metrics, plans, their limits, tenants, and the
-- provider customers and subscriptions linked to tenants.
--
-- Callers may write these tables with plain SQL. Bad values are refused by
-- the `_check_*` triggers with SQLSTATE 22023 (22004 for a missing value) and
-- a hint, so a typo in a plan file never surfaces as a bare constraint name.
-- Their messages are entries of the error catalogue
-- (crates/rules/src/errors.rs), repeated here because these checks must
-- fire on plain-SQL writes; tests/tests/error_catalogue.rs pins each one to
-- its entry.

-- Refuse a tally schema that someone else made: whoever owns it could later
-- put their own objects where tally's are looked up. CREATE EXTENSION
-- makes the schema (owned by the role running it) when it does not exist.
DO $$
DECLARE
    owner name;
BEGIN
    SELECT r.rolname INTO owner
      FROM pg_catalog.pg_namespace AS n JOIN pg_catalog.pg_roles AS r ON r.oid = n.nspowner
     WHERE n.nspname = 'tally';
    IF owner IS DISTINCT FROM current_user
       OR EXISTS (SELECT FROM pg_catalog.pg_class WHERE relnamespace = 'tally'::regnamespace)
       OR EXISTS (SELECT FROM pg_catalog.pg_proc WHERE pronamespace = 'tally'::regnamespace)
       OR EXISTS (SELECT FROM pg_catalog.pg_type WHERE typnamespace = 'tally'::regnamespace) THEN
        RAISE EXCEPTION 'schema tally already exists' USING ERRCODE = 'insufficient_privilege',
            DETAIL = pg_catalog.format('schema tally belongs to role %s and may hold objects of its own', owner),
            HINT = 'drop or rename that schema after checking what is in it, then create the extension';
    END IF;
END
$$;

-- The roles an application grants to its own login roles (see README,
-- "Deploying"): tally_app calls the enforcement and read functions,
-- tally_daemon what tallyd serve and worker need, tally_admin configures.
-- tally_owner owns tally's objects and logs in never; the functions run with
-- its rights. Roles belong to the cluster: made once, shared by every
-- database with tally, and left in place by DROP EXTENSION.
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

CREATE TABLE tally.metrics (
    metric             text PRIMARY KEY,
    kind               text NOT NULL CHECK (kind IN ('consumable', 'allocation')),
    stripe_meter_event text CHECK (stripe_meter_event <> '')
);
COMMENT ON TABLE tally.metrics IS
    'What is counted. consumable: reset each billing period (messages, sms). allocation: a standing count (chatbots, seats).';

CREATE TABLE tally.plans (
    plan_id         text PRIMARY KEY,
    is_default      boolean NOT NULL DEFAULT false,
    stripe_price_id text UNIQUE,
    paddle_price_id text UNIQUE
);
-- At most one default plan: the plan new tenants start on and canceled tenants land on.
CREATE UNIQUE INDEX plans_one_default ON tally.plans (is_default) WHERE is_default;

CREATE TABLE tally.plan_limits (
    plan_id   text NOT NULL REFERENCES tally.plans ON DELETE CASCADE ON UPDATE CASCADE,
    metric    text NOT NULL REFERENCES tally.metrics ON DELETE CASCADE ON UPDATE CASCADE,
    max_units bigint CHECK (max_units >= 0),
    PRIMARY KEY (plan_id, metric)
);
COMMENT ON COLUMN tally.plan_limits.max_units IS
    'NULL means unlimited. A metric with no row is not included in the plan.';

-- The plan a tenant starts on when none is given; NULL when no plan is the
-- default, which the tenants check below reports.
CREATE FUNCTION tally._default_plan_id() RETURNS text
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$ SELECT plan_id FROM tally.plans WHERE is_default $$;

CREATE TABLE tally.tenants (
    tenant_id              text PRIMARY KEY,
    plan_id                text NOT NULL DEFAULT tally._default_plan_id()
                           REFERENCES tally.plans ON UPDATE CASCADE,
    status                 text NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'past_due', 'action_required', 'canceled')),
    period_start           timestamptz,
    period_end             timestamptz,
    -- Linked by tally.link_provider_customer or plain SQL; each id belongs
    -- to one tenant at most, which tally.provider_links below enforces.
    stripe_customer_id     text,
    stripe_subscription_id text,
    paddle_customer_id     text,
    paddle_subscription_id text,
    created_at             timestamptz NOT NULL DEFAULT now(),
    -- Providers deliver subscription events out of order: when the last
    -- applied one happened, per provider (see accept_subscription_event).
    stripe_subscription_event_at timestamptz,
    paddle_subscription_event_at timestamptz,
    CHECK (period_end IS NULL OR (period_start IS NOT NULL AND period_end > period_start))
);
COMMENT ON COLUMN tally.tenants.period_start IS
    'Start of the current billing period. NULL: the calendar month (UTC) is the period.';

CREATE FUNCTION tally._check_metric() RETURNS trigger
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
CREATE TRIGGER check_metric BEFORE INSERT OR UPDATE ON tally.metrics
    FOR EACH ROW EXECUTE FUNCTION tally._check_metric();

CREATE FUNCTION tally._check_plan() RETURNS trigger
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
CREATE TRIGGER check_plan BEFORE INSERT OR UPDATE ON tally.plans
    FOR EACH ROW EXECUTE FUNCTION tally._check_plan();

CREATE FUNCTION tally._check_plan_limit() RETURNS trigger
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
CREATE TRIGGER check_plan_limit BEFORE INSERT OR UPDATE ON tally.plan_limits
    FOR EACH ROW EXECUTE FUNCTION tally._check_plan_limit();

-- A tenant's id is its key in every tenant table (and, distributed, the
-- distribution key): it never changes.
CREATE FUNCTION tally._check_tenant() RETURNS trigger
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
CREATE TRIGGER check_tenant BEFORE INSERT OR UPDATE ON tally.tenants
    FOR EACH ROW EXECUTE FUNCTION tally._check_tenant();

-- Which tenant each provider customer and subscription belongs to: the one
-- place their global uniqueness lives, keyed by the provider's id (so
-- tenants stays keyed by tenant_id alone). Kept by the trigger below from
-- the tenants columns; webhooks look tenants up here.
CREATE TABLE tally.provider_links (
    provider  text NOT NULL CHECK (provider IN ('stripe', 'paddle')),
    object    text NOT NULL CHECK (object IN ('customer', 'subscription')),
    object_id text NOT NULL,
    tenant_id text NOT NULL,
    PRIMARY KEY (provider, object, object_id)
);
CREATE INDEX provider_links_tenant ON tally.provider_links (tenant_id);

CREATE FUNCTION tally._link_provider_ids() RETURNS trigger
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
CREATE TRIGGER link_provider_ids
    AFTER INSERT OR DELETE OR UPDATE OF stripe_customer_id, stripe_subscription_id,
                                        paddle_customer_id, paddle_subscription_id
    ON tally.tenants
    FOR EACH ROW EXECUTE FUNCTION tally._link_provider_ids();
