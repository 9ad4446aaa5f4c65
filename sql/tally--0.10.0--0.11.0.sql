\echo Use "ALTER EXTENSION tally UPDATE TO '0.11.0'" to load this file. \quit

-- tally 0.10.0 -> 0.11.0: the first step of scale-out on Citus.
-- tally.distribute(); configuration changes clear the counters' copies on
-- the node that holds them; alerts keyed by (tenant_id, id).

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

CREATE OR REPLACE FUNCTION tally._invalidate_plan_limit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tally._invalidate_counters(OLD.metric, OLD.plan_id);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tally._invalidate_metric() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM tally._invalidate_counters(OLD.metric, NULL);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION tally._invalidate_alert_threshold() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF TG_OP <> 'INSERT' THEN
        PERFORM tally._invalidate_counters(OLD.metric, NULL);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.metric IS DISTINCT FROM OLD.metric) THEN
        PERFORM tally._invalidate_counters(NEW.metric, NULL);
    END IF;
    RETURN NULL;
END
$$;

CREATE FUNCTION tally.distribute() RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    reference_tables constant text[] := ARRAY[
        'metrics', 'plans', 'plan_limits', 'alert_thresholds', 'count_enforcements',
        'reference_secret', 'provider_links', 'api_key_hashes', 'provider_events', 'link_conflicts'];
    tenant_tables constant text[] := ARRAY[
        'usage_counters', 'idempotency_keys', 'usage_reports', 'alerts', 'api_keys'];
    delegated constant text[] := ARRAY[
        'check_and_increment_usage(text,text,bigint,text)', 'decrement_usage(text,text,bigint)',
        'release_usage(text,text,bigint,text)', 'usage_summary(text)', 'tenant_standing(text)'];
    foreign_key record;
    worker record;
    name text;
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_extension WHERE extname = 'citus') THEN
        RAISE EXCEPTION 'Citus is not installed in this database' USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'CREATE EXTENSION citus and add the worker nodes first';
    END IF;
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user) THEN
        RAISE EXCEPTION 'tally.distribute needs a superuser' USING ERRCODE = 'insufficient_privilege',
            HINT = 'run it as the superuser that created the extension';
    END IF;
    IF NOT pg_catalog.citus_is_coordinator() THEN
        RAISE EXCEPTION 'tally.distribute runs on the coordinator' USING ERRCODE = 'object_not_in_prerequisite_state',
            HINT = 'connect to the coordinator node';
    END IF;
    IF tally._distributed('tally.tenants') THEN
        RETURN false;
    END IF;
    -- The tables have triggers (validation, and keeping the counters' copies
    -- of the configuration valid).
    PERFORM pg_catalog.set_config('citus.enable_unsafe_triggers', 'on', true);
    -- One transaction creates distributed tables and then changes reference
    -- tables (their foreign keys): Citus needs its work on shards done over
    -- one connection per node for that.
    PERFORM pg_catalog.set_config('citus.multi_shard_modify_mode', 'sequential', true);
    -- A function that runs as tally_owner reaches the other nodes as
    -- tally_owner.
    ALTER ROLE tally_owner LOGIN;
    -- A foreign key between two tables that are not yet both distributed or
    -- reference tables blocks create_reference_table: drop them here and on
    -- the workers' copies of the tables (each node ran the extension's
    -- script), and add them back once every table is distributed.
    CREATE TEMPORARY TABLE tally_foreign_keys ON COMMIT DROP AS
    SELECT c.conrelid::pg_catalog.regclass AS relation, c.conname AS name,
           pg_catalog.pg_get_constraintdef(c.oid) AS definition
      FROM pg_catalog.pg_constraint AS c
     WHERE c.connamespace = 'tally'::pg_catalog.regnamespace AND c.contype = 'f';
    FOR foreign_key IN SELECT * FROM tally_foreign_keys ORDER BY relation::text, name LOOP
        -- (Each worker runs this in a transaction of its own, which sees
        -- only the committed extension.)
        SELECT w.nodename || ':' || w.nodeport AS node, w.result INTO worker
          FROM pg_catalog.run_command_on_workers(pg_catalog.format(
                   'ALTER TABLE %s DROP CONSTRAINT IF EXISTS %I', foreign_key.relation, foreign_key.name)) AS w
         WHERE NOT w.success
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION 'a worker could not drop a foreign key of tally' USING ERRCODE = 'object_not_in_prerequisite_state',
                DETAIL = pg_catalog.format('%s: %s', worker.node, worker.result),
                HINT = 'run tally.distribute() in a transaction of its own, once CREATE EXTENSION tally has committed and every worker is reachable';
        END IF;
        EXECUTE pg_catalog.format('ALTER TABLE %s DROP CONSTRAINT %I', foreign_key.relation, foreign_key.name);
    END LOOP;
    -- alerts is keyed by (tenant_id, id) in this version; older databases
    -- were updated the same way on every node by ALTER EXTENSION.
    -- (Citus copies each table's rows to its shards and says so; the
    -- copies left behind in the coordinator's tables are truncated.)
    PERFORM pg_catalog.set_config('client_min_messages', 'warning', true);
    FOREACH name IN ARRAY reference_tables LOOP
        PERFORM pg_catalog.create_reference_table(pg_catalog.format('tally.%I', name));
    END LOOP;
    PERFORM pg_catalog.create_distributed_table('tally.tenants', 'tenant_id');
    FOREACH name IN ARRAY tenant_tables LOOP
        PERFORM pg_catalog.create_distributed_table(pg_catalog.format('tally.%I', name), 'tenant_id',
                                                    colocate_with => 'tally.tenants');
    END LOOP;
    FOREACH name IN ARRAY reference_tables || 'tenants'::text || tenant_tables LOOP
        PERFORM pg_catalog.truncate_local_data_after_distributing_table(pg_catalog.format('tally.%I', name));
    END LOOP;
    FOR foreign_key IN SELECT * FROM tally_foreign_keys ORDER BY relation::text, name LOOP
        EXECUTE pg_catalog.format('ALTER TABLE %s ADD CONSTRAINT %I %s',
                                  foreign_key.relation, foreign_key.name, foreign_key.definition);
    END LOOP;
    FOREACH name IN ARRAY delegated LOOP
        PERFORM pg_catalog.create_distributed_function(
            pg_catalog.format('tally.%s', name)::pg_catalog.regprocedure, 'tenant_id',
            colocate_with => 'tally.tenants', force_delegation => true);
    END LOOP;
    RETURN true;
END
$$;

DO $$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT p.oid::pg_catalog.regprocedure AS name FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
           AND p.proname IN ('_distributed', '_local_shards', '_invalidate_counters', 'distribute')
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO tally_owner', object.name);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', object.name);
    END LOOP;
END
$$;

-- Keyed by tenant, as every tenant's table.
ALTER TABLE tally.alerts DROP CONSTRAINT alerts_pkey, ADD PRIMARY KEY (tenant_id, id);
CREATE INDEX alerts_id ON tally.alerts (id);
