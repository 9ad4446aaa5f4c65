-- Counters and idempotency: one counter per (tenant, metric), kept with a
-- copy of its configuration, and the results of idempotent calls. Only
-- tally's functions should write these.

CREATE TABLE tally.usage_counters (
    tenant_id       text NOT NULL REFERENCES tally.tenants ON DELETE CASCADE,
    metric          text NOT NULL REFERENCES tally.metrics ON UPDATE CASCADE,
    used            bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    -- Consumables: the billing period this count belongs to; an older period
    -- than the tenant's current one means the count is stale (reads as 0).
    -- Allocations: NULL.
    period_start    timestamptz,
    -- A copy of the configuration, so that an increment is decided from this
    -- row alone, under its lock: the plan's limit (NULL: unlimited) and
    -- whether the period follows the calendar month. Valid only while
    -- limits_valid; every change to plans, limits, metrics or the tenant's
    -- plan and period clears it (see the triggers below).
    max_units       bigint,
    calendar_period boolean NOT NULL DEFAULT false,
    limits_valid    boolean NOT NULL DEFAULT false,
    PRIMARY KEY (tenant_id, metric),
    -- Also part of the copy: the metric's stripe_meter_event (an allowed
    -- increment of a billed metric writes a usage report).
    meter_event     text,
    -- Also part of the copy: the units of the lowest alert threshold above
    -- the count (NULL: none), so an increment that crosses no threshold is
    -- decided without another statement (see alerts.sql).
    next_alert_at   bigint
) WITH (fillfactor = 70);

-- Keeping the copies valid. A transaction that changes plans, limits or
-- metrics locks the one row of tally.limits_guard and clears limits_valid
-- on the counters it affects; a change of a tenant's plan or period holds
-- the tenant's row, which its UPDATE locks. An increment that refreshes a
-- copy first locks both rows shared (FOR SHARE), then reads the
-- configuration. So a refresh either sees the change, or finishes before
-- the change clears what it wrote. These are row locks on tally's own
-- tables: only tally's functions can take them, and they do not fill the
-- shared lock table however many tenants a transaction touches.
CREATE TABLE tally.limits_guard (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO tally.limits_guard DEFAULT VALUES;

CREATE FUNCTION tally._invalidate_plan_limit() RETURNS trigger
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
-- A new plan_limits row needs nothing: counters of metrics outside the plan
-- are never valid.
CREATE TRIGGER invalidate_counters AFTER UPDATE OR DELETE ON tally.plan_limits
    FOR EACH ROW EXECUTE FUNCTION tally._invalidate_plan_limit();

CREATE FUNCTION tally._invalidate_metric() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM FROM tally.limits_guard FOR UPDATE;
    UPDATE tally.usage_counters SET limits_valid = false
     WHERE limits_valid AND metric = OLD.metric;
    RETURN NULL;
END
$$;
CREATE TRIGGER invalidate_counters AFTER UPDATE OF kind, stripe_meter_event ON tally.metrics
    FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind
                       OR OLD.stripe_meter_event IS DISTINCT FROM NEW.stripe_meter_event)
    EXECUTE FUNCTION tally._invalidate_metric();

CREATE FUNCTION tally._invalidate_tenant() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE tally.usage_counters SET limits_valid = false
     WHERE limits_valid AND tenant_id = NEW.tenant_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER invalidate_counters AFTER UPDATE OF plan_id, period_start, period_end ON tally.tenants
    FOR EACH ROW WHEN (OLD.plan_id IS DISTINCT FROM NEW.plan_id
                       OR OLD.period_start IS DISTINCT FROM NEW.period_start
                       OR OLD.period_end IS DISTINCT FROM NEW.period_end)
    EXECUTE FUNCTION tally._invalidate_tenant();

CREATE TABLE tally.idempotency_keys (
    tenant_id       text NOT NULL REFERENCES tally.tenants ON DELETE CASCADE,
    idempotency_key text NOT NULL,
    metric          text NOT NULL,
    units           bigint NOT NULL,
    -- The first call's result, returned to every repeat.
    allowed         boolean,
    used            bigint,
    max_units       bigint,
    remaining       bigint,
    reason          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Which function claimed the key: check_and_increment_usage or
    -- release_usage. A key names one call: another operation, metric or
    -- units under the same key is refused.
    operation       text NOT NULL DEFAULT 'check' CHECK (operation IN ('check', 'release')),
    PRIMARY KEY (tenant_id, idempotency_key)
);
CREATE INDEX idempotency_keys_created_at ON tally.idempotency_keys (created_at);

CREATE TYPE tally.usage_check AS (
    allowed   boolean,
    used      bigint,
    max_units bigint,
    remaining bigint,
    reason    text
);

CREATE TYPE tally.plan_check AS (
    valid      boolean,
    reason     text,
    message    text,
    violations jsonb
);
