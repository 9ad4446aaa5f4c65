-- Enforcement on the application's own tables: tally.enforce_count makes a
-- limit a property of a table. Statement-level triggers on the table sum a
-- statement's rows per tenant (from its transition tables) and apply the
-- changes in sorted tenant order: at most one
-- counter update per tenant per statement (one statement for all of them when
-- they need nothing but a count), all or nothing, and concurrent bulk
-- statements lock counters in the same order, so they cannot deadlock.
--
-- Enabling is a schema change of the application's table, made by its owner:
-- enforce_count and unenforce_count run with the caller's rights (they
-- create triggers, lock the table and grant tally_owner SELECT on it, which
-- only the table's owner may) and reach tally's own tables through the
-- SECURITY DEFINER functions below. The triggers' function runs as
-- tally_owner, so the application's role needs nothing beyond its own table
-- privileges and tally_app.

-- What is enforced where. One table per metric: the counter is the rows of
-- that table, which enabling makes true.
CREATE TABLE tally.count_enforcements (
    relid         oid NOT NULL,
    metric        text NOT NULL UNIQUE REFERENCES tally.metrics ON UPDATE CASCADE,
    tenant_column name NOT NULL,
    units_column  name,
    enabled_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relid, metric)
);

CREATE VIEW tally.enforced_counts AS
SELECT e.relid::pg_catalog.regclass AS table_name, e.metric, m.kind, e.tenant_column,
       e.units_column, e.enabled_at
  FROM tally.count_enforcements AS e
  JOIN tally.metrics AS m ON m.metric = e.metric
 WHERE EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = e.relid);

-- The triggers' function (extension/src/enforce.rs). Trigger arguments:
-- metric, tenant column, units column ('' for one unit a row). Consumables
-- have the INSERT trigger only. It reads the statement's rows from its
-- transition tables (for TRUNCATE, before it, from the table), sums them per
-- tenant and applies the changes in tenant order; a refusal is SQLSTATE
-- TL001. It pins its search path inside, as check_and_increment_usage does,
-- rather than with a SET clause.
CREATE FUNCTION tally._enforce_count_rows() RETURNS trigger
LANGUAGE c SECURITY DEFINER AS 'MODULE_PATHNAME', 'tally_enforce_count_rows';

-- The columns an enforcement reads, checked wherever tally_owner reads them
-- (enabling, the sync): the tenant column exists and is of a built-in type
-- (or a domain over one), the units column (if any) is an integer. A type of
-- the table owner's own could bring a cast of theirs, which a query reading
-- the column as text would run with tally_owner's rights.
CREATE FUNCTION tally._enforce_check_columns(table_name regclass, tenant_column name, units_column name)
RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    column_type regtype;
    built_in boolean;
BEGIN
    SELECT a.atttypid::regtype, coalesce(nullif(t.typbasetype, 0), t.oid) < 16384
      INTO column_type, built_in
      FROM pg_catalog.pg_attribute AS a
      JOIN pg_catalog.pg_type AS t ON t.oid = a.atttypid
     WHERE a.attrelid = table_name AND a.attname = tenant_column AND a.attnum > 0 AND NOT a.attisdropped;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'column not found' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = pg_catalog.format('%s has no column %I', table_name, tenant_column),
            HINT = 'name the column holding the tenant_id';
    ELSIF NOT built_in THEN
        RAISE EXCEPTION 'tenant_column must be of a built-in type' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = pg_catalog.format('%s column %I: %s', table_name, tenant_column, column_type),
            HINT = 'use a column of a type Postgres defines (text, an integer, uuid, ...) or of a domain over one';
    END IF;
    IF units_column IS NOT NULL THEN
        column_type := NULL;
        SELECT a.atttypid::regtype INTO column_type FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = table_name AND a.attname = units_column AND a.attnum > 0 AND NOT a.attisdropped;
        IF column_type IS NULL OR column_type NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
            RAISE EXCEPTION 'units_column must be an integer column' USING ERRCODE = 'invalid_parameter_value',
                DETAIL = pg_catalog.format('%s column %I: %s', table_name, units_column,
                                           coalesce(column_type::text, 'not found')),
                HINT = 'name a smallint, integer or bigint column, or none for one unit a row';
        END IF;
    END IF;
END
$$;

-- Record an enforcement (the caller is enabling it); returns the metric's kind.
CREATE FUNCTION tally._enforce_register(relid oid, metric text, tenant_column name, units_column name)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
    elsewhere oid;
BEGIN
    SELECT m.kind INTO kind FROM tally.metrics AS m WHERE m.metric = _enforce_register.metric;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'metric not found' USING ERRCODE = 'no_data_found',
            DETAIL = pg_catalog.format('no metric is named %L', metric),
            HINT = 'declare the metric in tally.metrics first';
    END IF;
    -- Tables dropped since: their triggers went with them.
    DELETE FROM tally.count_enforcements AS e
     WHERE NOT EXISTS (SELECT FROM pg_catalog.pg_class AS c WHERE c.oid = e.relid);
    SELECT e.relid INTO elsewhere FROM tally.count_enforcements AS e
     WHERE e.metric = _enforce_register.metric AND e.relid <> _enforce_register.relid;
    IF FOUND THEN
        RAISE EXCEPTION 'metric already enforced on another table' USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = pg_catalog.format('metric %L is enforced on %s', metric, elsewhere::pg_catalog.regclass),
            HINT = 'call tally.unenforce_count on that table first, or use another metric';
    END IF;
    INSERT INTO tally.count_enforcements AS e (relid, metric, tenant_column, units_column)
    VALUES (relid, metric, tenant_column, units_column)
        ON CONFLICT ON CONSTRAINT count_enforcements_pkey
        DO UPDATE SET tenant_column = excluded.tenant_column, units_column = excluded.units_column;
    RETURN kind;
END
$$;

-- Set each tenant's counter of an enforced allocation to the units its rows
-- hold (tenants with a counter and no rows: 0). Reads the table as
-- tally_owner, so a caller can only make a counter say what the table says.
-- The rows are read through a cursor, a batch at a time.
CREATE FUNCTION tally._enforce_sync(relid oid, metric text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    enforced tally.count_enforcements;
    kind text;
    tenants bigint := 0;
    rows_of refcursor;
    batch record;
BEGIN
    SELECT e.* INTO enforced FROM tally.count_enforcements AS e
     WHERE e.relid = _enforce_sync.relid AND e.metric = _enforce_sync.metric;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'table is not under enforce_count' USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = pg_catalog.format('%s, metric %L', relid::pg_catalog.regclass, metric),
            HINT = 'call tally.enforce_count first';
    END IF;
    SELECT m.kind INTO kind FROM tally.metrics AS m WHERE m.metric = enforced.metric;
    IF kind <> 'allocation' THEN
        RETURN 0;  -- consumables count inserts, not rows
    END IF;
    PERFORM tally._enforce_check_columns(relid, enforced.tenant_column, enforced.units_column);
    OPEN rows_of FOR EXECUTE pg_catalog.format(
        'SELECT coalesce(r.t, c.tenant_id) AS t, coalesce(r.u, 0) AS u
           FROM (SELECT %1$I::text AS t, sum(%2$s)::bigint AS u FROM %3$s
                  WHERE %1$I IS NOT NULL GROUP BY 1) AS r
           FULL JOIN (SELECT tenant_id FROM tally.usage_counters WHERE metric = %4$L AND used <> 0) AS c
             ON c.tenant_id = r.t
          ORDER BY coalesce(r.t, c.tenant_id) COLLATE "C"',
        enforced.tenant_column,
        CASE WHEN enforced.units_column IS NULL THEN '1'
             ELSE pg_catalog.format('coalesce(%I, 0)', enforced.units_column) END,
        relid::pg_catalog.regclass, metric);
    LOOP
        FETCH rows_of INTO batch;
        EXIT WHEN NOT FOUND;
        PERFORM tally._enforce_apply(batch.t, metric, batch.u, true);
        tenants := tenants + 1;
    END LOOP;
    CLOSE rows_of;
    RETURN tenants;
END
$$;

CREATE FUNCTION tally._enforce_unregister(relid oid, metric text) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH gone AS (
        DELETE FROM tally.count_enforcements AS e
         WHERE e.relid = _enforce_unregister.relid AND e.metric = _enforce_unregister.metric
        RETURNING 1
    )
    SELECT EXISTS (SELECT FROM gone)
$$;

-- The name of an enforcement's trigger for one operation.
CREATE FUNCTION tally._enforce_trigger_name(metric text, operation text) RETURNS name
LANGUAGE sql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT ('tally_count_' || left(md5(metric), 16) || '_' || operation)::name
$$;

-- Enforce `metric` on `table_name`: each row takes one unit (or the value of
-- `units_column`) for the tenant in `tenant_column`. Run by the table's owner
-- (granted tally_admin). Idempotent: calling it again recreates the triggers
-- and syncs the counters again. Returns the number of tenants synced.
CREATE FUNCTION tally.enforce_count(table_name regclass, tenant_column name, metric text,
                                    units_column name DEFAULT NULL)
RETURNS bigint
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    kind text;
    schema_id oid;
    operation text;
BEGIN
    IF table_name IS NULL THEN
        RAISE EXCEPTION 'table_name must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'pass a value for table_name';
    ELSIF tenant_column IS NULL THEN
        RAISE EXCEPTION 'tenant_column must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'pass a value for tenant_column';
    ELSIF metric IS NULL THEN
        RAISE EXCEPTION 'metric must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'pass a value for metric';
    END IF;
    PERFORM tally._enforce_check_columns(table_name, tenant_column, units_column);
    -- No writes to the table while the triggers change and counters sync.
    EXECUTE pg_catalog.format('LOCK TABLE %s IN SHARE ROW EXCLUSIVE MODE', table_name);
    kind := tally._enforce_register(table_name, metric, tenant_column, units_column);
    -- The TRUNCATE trigger and the sync read the table as tally_owner.
    SELECT c.relnamespace INTO schema_id FROM pg_catalog.pg_class AS c WHERE c.oid = table_name;
    IF NOT pg_catalog.has_schema_privilege('tally_owner', schema_id, 'USAGE') THEN
        EXECUTE pg_catalog.format('GRANT USAGE ON SCHEMA %s TO tally_owner', schema_id::pg_catalog.regnamespace);
    END IF;
    EXECUTE pg_catalog.format('GRANT SELECT ON TABLE %s TO tally_owner', table_name);
    -- (Dropped only where they exist: DROP TRIGGER IF EXISTS would send a
    -- notice for each one missing.)
    FOREACH operation IN ARRAY ARRAY['insert', 'delete', 'update', 'truncate'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                    WHERE t.tgrelid = table_name
                      AND t.tgname = tally._enforce_trigger_name(metric, operation)) THEN
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s',
                                      tally._enforce_trigger_name(metric, operation), table_name);
        END IF;
    END LOOP;
    EXECUTE pg_catalog.format(
        'CREATE TRIGGER %I AFTER INSERT ON %s REFERENCING NEW TABLE AS tally_new
         FOR EACH STATEMENT EXECUTE FUNCTION tally._enforce_count_rows(%L, %L, %L)',
        tally._enforce_trigger_name(metric, 'insert'), table_name, metric, tenant_column,
        coalesce(units_column, ''));
    IF kind = 'allocation' THEN
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I AFTER DELETE ON %s REFERENCING OLD TABLE AS tally_old
             FOR EACH STATEMENT EXECUTE FUNCTION tally._enforce_count_rows(%L, %L, %L)',
            tally._enforce_trigger_name(metric, 'delete'), table_name, metric, tenant_column,
            coalesce(units_column, ''));
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I AFTER UPDATE ON %s REFERENCING OLD TABLE AS tally_old NEW TABLE AS tally_new
             FOR EACH STATEMENT EXECUTE FUNCTION tally._enforce_count_rows(%L, %L, %L)',
            tally._enforce_trigger_name(metric, 'update'), table_name, metric, tenant_column,
            coalesce(units_column, ''));
        EXECUTE pg_catalog.format(
            'CREATE TRIGGER %I BEFORE TRUNCATE ON %s
             FOR EACH STATEMENT EXECUTE FUNCTION tally._enforce_count_rows(%L, %L, %L)',
            tally._enforce_trigger_name(metric, 'truncate'), table_name, metric, tenant_column,
            coalesce(units_column, ''));
    END IF;
    RETURN tally._enforce_sync(table_name, metric);
END
$$;

-- Stop enforcing `metric` on `table_name`: drop the triggers and the record.
-- The counters keep their counts. Returns whether it was enforced.
CREATE FUNCTION tally.unenforce_count(table_name regclass, metric text) RETURNS boolean
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    operation text;
BEGIN
    IF table_name IS NULL THEN
        RAISE EXCEPTION 'table_name must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'pass a value for table_name';
    ELSIF metric IS NULL THEN
        RAISE EXCEPTION 'metric must not be null' USING ERRCODE = 'null_value_not_allowed',
            HINT = 'pass a value for metric';
    END IF;
    -- (Dropped only where they exist: DROP TRIGGER IF EXISTS would send a
    -- notice for each one missing.)
    FOREACH operation IN ARRAY ARRAY['insert', 'delete', 'update', 'truncate'] LOOP
        IF EXISTS (SELECT FROM pg_catalog.pg_trigger AS t
                    WHERE t.tgrelid = table_name
                      AND t.tgname = tally._enforce_trigger_name(metric, operation)) THEN
            EXECUTE pg_catalog.format('DROP TRIGGER %I ON %s',
                                      tally._enforce_trigger_name(metric, operation), table_name);
        END IF;
    END LOOP;
    IF NOT tally._enforce_unregister(table_name, metric) THEN
        RETURN false;
    END IF;
    IF NOT EXISTS (SELECT FROM tally.enforced_counts AS e WHERE e.table_name = unenforce_count.table_name) THEN
        EXECUTE pg_catalog.format('REVOKE SELECT ON TABLE %s FROM tally_owner', table_name);
    END IF;
    RETURN true;
END
$$;
