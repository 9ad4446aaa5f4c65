\echo Use "ALTER EXTENSION tally UPDATE TO '0.12.0'" to load this file. \quit

-- tally 0.11.0 -> 0.12.0: enforce_count reads only tenant columns of
-- built-in types (or domains over them). A type of the table owner's own
-- could bring a cast of theirs, which reading the column as text (the sync,
-- the TRUNCATE trigger) would run with tally_owner's rights.

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

ALTER FUNCTION tally._enforce_check_columns(regclass, name, name) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally._enforce_check_columns(regclass, name, name) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally._enforce_check_columns(regclass, name, name) TO tally_admin;

CREATE OR REPLACE FUNCTION tally._enforce_sync(relid oid, metric text) RETURNS bigint
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

CREATE OR REPLACE FUNCTION tally.enforce_count(table_name regclass, tenant_column name, metric text,
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
