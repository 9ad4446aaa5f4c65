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

-- Whether a table of tally's is distributed by Citus (false without Citus).
CREATE FUNCTION tally._distributed(relation regclass) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    found boolean;
BEGIN
    IF to_regclass('pg_catalog.pg_dist_partition') IS NULL THEN
        RETURN false;
    END IF;
    EXECUTE 'SELECT EXISTS (SELECT FROM pg_catalog.pg_dist_partition WHERE logicalrelid = $1)'
       INTO found USING relation;
    RETURN found;
END
$$;

-- The shards of a distributed table that this node holds (Citus).
CREATE FUNCTION tally._local_shards(relation regclass) RETURNS SETOF regclass
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT pg_catalog.format(''%I.%I'', n.nspname, c.relname || ''_'' || s.shardid)::pg_catalog.regclass
           FROM pg_catalog.pg_dist_shard AS s
           JOIN pg_catalog.pg_dist_placement AS p ON p.shardid = s.shardid
           JOIN pg_catalog.pg_class AS c ON c.oid = s.logicalrelid
           JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
          WHERE s.logicalrelid = $1
            AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
          ORDER BY s.shardid'
    USING relation;
END
$$;

-- The shards of a distributed table that this node holds, each with the
-- shard of `colocated` that holds the same tenants (Citus).
CREATE FUNCTION tally._local_shard_pairs(relation regclass, colocated regclass)
RETURNS TABLE (shard regclass, colocated_shard regclass)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY EXECUTE
        'SELECT pg_catalog.format(''%I.%I'', n.nspname, c.relname || ''_'' || s.shardid)::pg_catalog.regclass,
                pg_catalog.format(''%I.%I'', n.nspname, o.relname || ''_'' || os.shardid)::pg_catalog.regclass
           FROM pg_catalog.pg_dist_shard AS s
           JOIN pg_catalog.pg_dist_placement AS p ON p.shardid = s.shardid
           JOIN pg_catalog.pg_class AS c ON c.oid = s.logicalrelid
           JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
           JOIN pg_catalog.pg_dist_shard AS os ON os.logicalrelid = $2 AND os.shardminvalue = s.shardminvalue
           JOIN pg_catalog.pg_class AS o ON o.oid = os.logicalrelid
          WHERE s.logicalrelid = $1
            AND p.groupid = (SELECT groupid FROM pg_catalog.pg_dist_local_group)
          ORDER BY s.shardid'
    USING relation, colocated;
END
$$;

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

-- Clear the copies of `metric`'s counters (with `plan_id`, only those of
-- that plan's tenants), under the guard. On Citus, where the configuration
-- tables are reference tables, the change's triggers fire on every node's
-- copy of them: each clears the counters its node holds (its local shards
-- of usage_counters), all of the metric's there, and takes its node's own
-- guard, which is a plain table on each node.
CREATE FUNCTION tally._invalidate_counters(metric text, plan_id text) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    shard regclass;
BEGIN
    PERFORM FROM tally.limits_guard FOR UPDATE;
    IF NOT tally._distributed('tally.usage_counters') THEN
        UPDATE tally.usage_counters AS c SET limits_valid = false
         WHERE c.limits_valid AND c.metric = _invalidate_counters.metric
           AND (_invalidate_counters.plan_id IS NULL OR EXISTS (
                SELECT FROM tally.tenants AS t
                 WHERE t.tenant_id = c.tenant_id AND t.plan_id = _invalidate_counters.plan_id));
        RETURN;
    END IF;
    FOR shard IN SELECT * FROM tally._local_shards('tally.usage_counters') LOOP
        EXECUTE format('UPDATE %s SET limits_valid = false WHERE limits_valid AND metric = $1', shard)
          USING metric;
    END LOOP;
END
$$;

CREATE FUNCTION tally._invalidate_plan_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tally._invalidate_counters(OLD.metric, OLD.plan_id);
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
    PERFORM tally._invalidate_counters(OLD.metric, NULL);
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
