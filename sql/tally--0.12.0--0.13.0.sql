\echo Use "ALTER EXTENSION tally UPDATE TO '0.13.0'" to load this file. \quit

-- tally 0.12.0 -> 0.13.0: the usage-report and alert queues on a
-- distributed tally. Each node draws report, alert and conflict ids from a
-- range of its own (run tally.distribute() again after this update on a
-- distributed tally: it sets the ranges); each node claims from the shards
-- it holds; reports and alerts are settled by tenant and id; the queue
-- statistics and requeueing use no statement a distributed tally refuses.
-- The settling functions that take an id alone stay.

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

CREATE OR REPLACE FUNCTION tally.usage_report_stats(
    OUT pending bigint, OUT leased bigint, OUT due bigint, OUT failed bigint,
    OUT oldest_pending_at timestamptz, OUT oldest_pending_age interval)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    SELECT count(*),
           count(*) FILTER (WHERE r.lease_until > now()),
           count(*) FILTER (WHERE r.next_attempt_at <= now() AND (r.lease_until IS NULL OR r.lease_until <= now())),
           min(r.created_at)
      INTO pending, leased, due, oldest_pending_at
      FROM tally.usage_reports AS r
     WHERE r.status = 'pending';
    oldest_pending_age := now() - oldest_pending_at;
    SELECT count(*) INTO failed FROM tally.usage_reports AS r WHERE r.status = 'failed';
END
$$;

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

CREATE OR REPLACE FUNCTION tally.distribute() RETURNS boolean
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

CREATE FUNCTION tally.complete_usage_report(tenant_id text, id bigint, lease_token uuid) RETURNS void
SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'complete_tenant_report_wrapper';
CREATE FUNCTION tally.fail_usage_report(tenant_id text, id bigint, lease_token uuid, error text,
    permanent boolean DEFAULT false, retry_after interval DEFAULT NULL) RETURNS void
SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'fail_tenant_report_wrapper';
CREATE FUNCTION tally.complete_alert(tenant_id text, id bigint, lease_token uuid) RETURNS void
SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'complete_tenant_alert_wrapper';
CREATE FUNCTION tally.fail_alert(tenant_id text, id bigint, lease_token uuid, error text,
    permanent boolean DEFAULT false, retry_after interval DEFAULT NULL) RETURNS void
SECURITY DEFINER SET search_path TO pg_catalog, pg_temp
LANGUAGE c AS 'MODULE_PATHNAME', 'fail_tenant_alert_wrapper';

ALTER FUNCTION tally._local_shard_pairs(regclass, regclass) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally._local_shard_pairs(regclass, regclass) FROM PUBLIC;
ALTER FUNCTION tally._node_id_ranges() OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally._node_id_ranges() FROM PUBLIC;
ALTER FUNCTION tally._spread_node_id_ranges() OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally._spread_node_id_ranges() FROM PUBLIC;
ALTER FUNCTION tally.complete_usage_report(text, bigint, uuid) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.complete_usage_report(text, bigint, uuid) FROM PUBLIC;
ALTER FUNCTION tally.fail_usage_report(text, bigint, uuid, text, boolean, interval) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.fail_usage_report(text, bigint, uuid, text, boolean, interval) FROM PUBLIC;
ALTER FUNCTION tally.complete_alert(text, bigint, uuid) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.complete_alert(text, bigint, uuid) FROM PUBLIC;
ALTER FUNCTION tally.fail_alert(text, bigint, uuid, text, boolean, interval) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.fail_alert(text, bigint, uuid, text, boolean, interval) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.complete_usage_report(text, bigint, uuid) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.fail_usage_report(text, bigint, uuid, text, boolean, interval) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.complete_alert(text, bigint, uuid) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.fail_alert(text, bigint, uuid, text, boolean, interval) TO tally_daemon;
