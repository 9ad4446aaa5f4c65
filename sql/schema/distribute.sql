-- Scale-out on Citus: tally.distribute() turns an installed tally into a
-- distributed one, by tenant. The configuration and the tables keyed by a
-- global value (provider ids, API key hashes, provider events) become
-- reference tables, copied to every node; every table keyed by tenant_id is
-- distributed by it, colocated with tally.tenants, so one tenant's rows are
-- on one node; the per-tenant functions are delegated to the node that holds
-- the tenant. tally.limits_guard stays a plain table on each node: each
-- node's guard orders the changes of the counters that node holds.
--
-- Run once, on the coordinator, as a superuser, after the workers are added
-- (citus_add_node) and before the tables fill up (distributing copies the
-- rows); run it again after adding a node, which gives the new node its
-- range of ids (it returns false then). It runs with the caller's rights:
-- granted to no one.

-- Every node draws the ids of the rows it inserts into usage_reports,
-- alerts and link_conflicts from sequences of its own (each ran the
-- extension's script). On a distributed tally each node's sequences keep to
-- a range of their own, 2^48 ids from its Citus group id times 2^48, so no
-- two nodes hand out the same id. Run on every node by tally.distribute();
-- ids already drawn stay as they are.
CREATE FUNCTION tally._node_id_ranges() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    node_group bigint;
    first_id bigint;
    propagation constant text := pg_catalog.current_setting('citus.enable_ddl_propagation');
    sequence_name text;
BEGIN
    EXECUTE 'SELECT groupid FROM pg_catalog.pg_dist_local_group' INTO node_group;
    first_id := (node_group << 48) + 1;
    -- Each node's sequences are its own: the change is not sent on.
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', 'off', true);
    FOREACH sequence_name IN ARRAY ARRAY['usage_reports_id_seq', 'alerts_id_seq', 'link_conflicts_id_seq'] LOOP
        EXECUTE pg_catalog.format('ALTER SEQUENCE tally.%I MINVALUE %s MAXVALUE %s START WITH %s %s',
                                  sequence_name, first_id, first_id + (1::bigint << 48) - 2, first_id,
                                  CASE WHEN coalesce((SELECT s.last_value >= first_id FROM pg_catalog.pg_sequences AS s
                                                       WHERE s.schemaname = 'tally' AND s.sequencename = sequence_name),
                                                     false)
                                       THEN '' ELSE 'RESTART' END);
    END LOOP;
    PERFORM pg_catalog.set_config('citus.enable_ddl_propagation', propagation, true);
END
$$;

-- tally._node_id_ranges() here and on every worker.
CREATE FUNCTION tally._spread_node_id_ranges() RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    worker record;
BEGIN
    PERFORM tally._node_id_ranges();
    SELECT w.nodename || ':' || w.nodeport AS node, w.result INTO worker
      FROM pg_catalog.run_command_on_workers('SELECT tally._node_id_ranges()') AS w
     WHERE NOT w.success
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'a worker could not set its range of ids' USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = pg_catalog.format('%s: %s', worker.node, worker.result),
            HINT = 'update tally on every node (ALTER EXTENSION tally UPDATE), then run tally.distribute() again';
    END IF;
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
        PERFORM tally._spread_node_id_ranges();
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
    PERFORM tally._spread_node_id_ranges();
    RETURN true;
END
$$;
