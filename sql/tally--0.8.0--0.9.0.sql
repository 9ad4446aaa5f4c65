\echo Use "ALTER EXTENSION tally UPDATE TO '0.9.0'" to load this file. \quit

-- tally 0.8.0 -> 0.9.0: enforcement on the application's own tables, and
-- threshold alerts that fire exactly once.

-- 1. enforce_count: a limit as a property of a table.

CREATE FUNCTION tally."_enforce_apply"(
	"tenant_id" TEXT,
	"metric" TEXT,
	"units" bigint,
	"sync" bool DEFAULT false
) RETURNS tally.usage_check
SECURITY DEFINER
LANGUAGE c
AS 'MODULE_PATHNAME', '_enforce_apply_wrapper';
CREATE FUNCTION tally."_enforce_apply_all"(
	"metric" TEXT,
	"tenants" TEXT[],
	"deltas" bigint[]
) RETURNS TABLE (
	"tenant_id" TEXT,
	"used" bigint,
	"max_units" bigint,
	"needs" bigint
)
SECURITY DEFINER
LANGUAGE c
AS 'MODULE_PATHNAME', '_enforce_apply_all_wrapper';

-- Enforcement on the application's own tables: tally.enforce_count makes a
-- limit a property of a table. Statement-level triggers on the table sum a
-- statement's rows per tenant (from its transition tables) and hand the
-- changes, in sorted tenant order, to tally._enforce_apply_all: at most one
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

-- The triggers' function. TG_ARGV: metric, tenant column, units column ('' for
-- one unit a row). Consumables have the INSERT trigger only.
--
-- It sums the statement's rows per tenant into two arrays sorted by tenant
-- and hands them to tally._enforce_apply_all in one call. A statement of a
-- few rows (the usual single-row INSERT) is read with static queries, which
-- PL/pgSQL plans once per trigger and keeps; they reach the columns by name
-- through the row's JSON form. A larger statement is read with a query
-- written for the table's columns and planned for that statement: planning
-- costs less than converting each of its rows.
CREATE FUNCTION tally._enforce_count_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    metric text := TG_ARGV[0];
    tenant_column text := TG_ARGV[1];
    units_column text := TG_ARGV[2];
    tenant text := format('(%I::text COLLATE "C")', TG_ARGV[1]);
    units text := CASE WHEN TG_ARGV[2] = '' THEN '1::bigint'
                       ELSE format('coalesce(%I, 0)::bigint', TG_ARGV[2]) END;
    few constant integer := 16;
    rows_of text;
    tenants text[];
    deltas bigint[];
    lowest bigint;
    refused record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF (SELECT count(*) FROM (SELECT FROM tally_new LIMIT few) AS r) < few THEN
            SELECT array_agg(g.t ORDER BY g.t), array_agg(g.units ORDER BY g.t), min(g.lowest)
              INTO tenants, deltas, lowest
              FROM (SELECT r.t, sum(r.u)::bigint AS units, min(r.u) AS lowest
                      FROM (SELECT (j ->> tenant_column) COLLATE "C" AS t,
                                   CASE WHEN units_column = '' THEN 1
                                        ELSE coalesce((j ->> units_column)::bigint, 0) END AS u
                              FROM (SELECT to_jsonb(n) AS j FROM tally_new AS n) AS rows) AS r
                     WHERE r.t IS NOT NULL GROUP BY r.t) AS g;
        ELSE
            rows_of := format('SELECT %1$s AS t, %2$s AS u, %2$s AS n FROM tally_new', tenant, units);
        END IF;
    ELSIF TG_OP = 'DELETE' THEN
        IF (SELECT count(*) FROM (SELECT FROM tally_old LIMIT few) AS r) < few THEN
            SELECT array_agg(g.t ORDER BY g.t), array_agg(g.units ORDER BY g.t), 0
              INTO tenants, deltas, lowest
              FROM (SELECT r.t, -sum(r.u)::bigint AS units
                      FROM (SELECT (j ->> tenant_column) COLLATE "C" AS t,
                                   CASE WHEN units_column = '' THEN 1
                                        ELSE coalesce((j ->> units_column)::bigint, 0) END AS u
                              FROM (SELECT to_jsonb(o) AS j FROM tally_old AS o) AS rows) AS r
                     WHERE r.t IS NOT NULL GROUP BY r.t) AS g;
        ELSE
            rows_of := format('SELECT %s AS t, -%s AS u, 0 AS n FROM tally_old', tenant, units);
        END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        IF (SELECT count(*) FROM (SELECT FROM tally_new LIMIT few) AS r) < few THEN
            SELECT array_agg(g.t ORDER BY g.t), array_agg(g.units ORDER BY g.t), min(g.lowest)
              INTO tenants, deltas, lowest
              FROM (SELECT r.t, sum(r.sign * r.u)::bigint AS units,
                           min(CASE WHEN r.sign > 0 THEN r.u ELSE 0 END) AS lowest
                      FROM (SELECT (j ->> tenant_column) COLLATE "C" AS t, sign,
                                   CASE WHEN units_column = '' THEN 1
                                        ELSE coalesce((j ->> units_column)::bigint, 0) END AS u
                              FROM (SELECT to_jsonb(n) AS j, 1 AS sign FROM tally_new AS n
                                    UNION ALL
                                    SELECT to_jsonb(o), -1 FROM tally_old AS o) AS rows) AS r
                     WHERE r.t IS NOT NULL GROUP BY r.t) AS g;
        ELSE
            rows_of := format(
                'SELECT %1$s AS t, %2$s AS u, %2$s AS n FROM tally_new
                 UNION ALL SELECT %1$s, -%2$s, 0 FROM tally_old',
                tenant, units);
        END IF;
    ELSE  -- TRUNCATE, before: the rows are still there, and the table is locked.
        rows_of := format('SELECT %s AS t, -%s AS u, 0 AS n FROM %s', tenant, units,
                          TG_RELID::regclass);
    END IF;
    IF rows_of IS NOT NULL THEN
        -- Rows without a tenant count for no one.
        EXECUTE 'SELECT array_agg(t ORDER BY t), array_agg(units ORDER BY t), min(lowest)
                   FROM (SELECT t, sum(u)::bigint AS units, min(n) AS lowest
                           FROM (' || rows_of || ') AS r
                          WHERE t IS NOT NULL GROUP BY t) AS g'
           INTO tenants, deltas, lowest;
    END IF;
    IF lowest < 0 THEN
        RAISE EXCEPTION '% must not be negative', units_column USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('%s = %s', units_column, lowest),
            HINT = format('pass the %s count, 0 or more', units_column);
    END IF;
    IF tenants IS NULL THEN
        RETURN NULL;
    END IF;
    SELECT * INTO refused FROM tally._enforce_apply_all(metric, tenants, deltas);
    IF FOUND THEN
        RAISE EXCEPTION 'usage limit exceeded' USING ERRCODE = 'TL001',
            DETAIL = format('tenant %L, metric %L: used %s, limit %s, this statement needs %s',
                            refused.tenant_id, metric, refused.used,
                            coalesce(refused.max_units::text, 'not in plan'), refused.needs),
            HINT = 'remove rows of this tenant, or move the tenant to a plan with a higher limit';
    END IF;
    RETURN NULL;
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
    column_type regtype;
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
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute AS a
                    WHERE a.attrelid = table_name AND a.attname = tenant_column
                      AND a.attnum > 0 AND NOT a.attisdropped) THEN
        RAISE EXCEPTION 'column not found' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = pg_catalog.format('%s has no column %I', table_name, tenant_column),
            HINT = 'name the column holding the tenant_id';
    END IF;
    IF units_column IS NOT NULL THEN
        SELECT a.atttypid::regtype INTO column_type FROM pg_catalog.pg_attribute AS a
         WHERE a.attrelid = table_name AND a.attname = units_column AND a.attnum > 0 AND NOT a.attisdropped;
        IF column_type IS NULL OR column_type NOT IN ('smallint'::regtype, 'integer'::regtype, 'bigint'::regtype) THEN
            RAISE EXCEPTION 'units_column must be an integer column' USING ERRCODE = 'invalid_parameter_value',
                DETAIL = pg_catalog.format('%s column %I: %s', table_name, units_column,
                                           coalesce(column_type::text, 'not found')),
                HINT = 'name a smallint, integer or bigint column, or none for one unit a row';
        END IF;
    END IF;
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

ALTER TABLE tally.count_enforcements OWNER TO tally_owner;
ALTER VIEW tally.enforced_counts OWNER TO tally_owner;
GRANT SELECT ON tally.count_enforcements, tally.enforced_counts TO tally_admin;
DO $$
DECLARE
    object record;
BEGIN
    FOR object IN
        SELECT p.oid::pg_catalog.regprocedure AS name, p.proname
          FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
           AND p.proname IN ('_enforce_apply', '_enforce_apply_all', '_enforce_count_rows', '_enforce_register', '_enforce_sync',
                             '_enforce_unregister', '_enforce_trigger_name', 'enforce_count',
                             'unenforce_count')
         ORDER BY p.proname
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO tally_owner', object.name);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', object.name);
        IF object.proname NOT IN ('_enforce_apply', '_enforce_apply_all') THEN
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO tally_admin', object.name);
        END IF;
    END LOOP;
END
$$;

-- (end of enforce_count)


-- 2. Threshold alerts.

ALTER TABLE tally.usage_counters ADD COLUMN next_alert_at bigint;

-- Threshold alerts: thresholds as percentages of a metric's limit, and the
-- alerts an increment writes when it crosses one, in its own transaction.

-- Written by tally_admin with plain SQL. plan_id NULL: every plan. A plan's
-- own thresholds add to those of every plan.
CREATE TABLE tally.alert_thresholds (
    metric  text NOT NULL REFERENCES tally.metrics ON UPDATE CASCADE ON DELETE CASCADE,
    plan_id text REFERENCES tally.plans ON UPDATE CASCADE ON DELETE CASCADE,
    percent integer NOT NULL CHECK (percent BETWEEN 1 AND 100),
    UNIQUE NULLS NOT DISTINCT (metric, plan_id, percent)
);

-- Thresholds are whole percentages from 1 to 100 (the error catalogue's
-- alert_threshold_out_of_range, word for word).
CREATE FUNCTION tally._check_alert_threshold() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NEW.percent IS NULL OR NEW.percent NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION 'alert threshold out of range' USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('metric %L, plan %L, percent %s', NEW.metric, NEW.plan_id,
                            coalesce(NEW.percent::text, 'NULL')),
            HINT = 'a threshold is a percentage of the metric''s limit, from 1 to 100 (plan_id NULL: every plan)';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER check_alert_threshold BEFORE INSERT OR UPDATE ON tally.alert_thresholds
    FOR EACH ROW EXECUTE FUNCTION tally._check_alert_threshold();

-- A counter keeps the units of its next threshold (next_alert_at) in its
-- copy of the configuration: a change of thresholds clears the copies of
-- the metric's counters, as a change of limits does (see counters.sql).
CREATE FUNCTION tally._invalidate_alert_threshold() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM FROM tally.limits_guard FOR UPDATE;
    UPDATE tally.usage_counters SET limits_valid = false
     WHERE limits_valid AND (metric = NEW.metric OR metric = OLD.metric);
    RETURN NULL;
END
$$;
CREATE TRIGGER invalidate_counters AFTER INSERT OR UPDATE OR DELETE ON tally.alert_thresholds
    FOR EACH ROW EXECUTE FUNCTION tally._invalidate_alert_threshold();

-- One row per tenant, metric, period and threshold, by the unique
-- constraint: an increment that crosses a threshold inserts its alert with
-- ON CONFLICT DO NOTHING and notifies tally_alerts. Allocations have no
-- period (NULL): each of their thresholds alerts once. The queue columns
-- follow usage_reports. No foreign key to tenants, so a crossing does not
-- lock the tenant row (a tenant being deleted holds it, then waits for the
-- counters); the forget_alerts trigger below does the cascade.
CREATE TABLE tally.alerts (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text NOT NULL,
    metric          text NOT NULL,
    percent         integer NOT NULL,
    -- The threshold in units, the count that reached it and the limit.
    threshold       bigint NOT NULL,
    used            bigint NOT NULL,
    max_units       bigint NOT NULL,
    period_start    timestamptz,
    period_end      timestamptz,
    -- The webhook-id of every delivery of this alert.
    identifier      text NOT NULL DEFAULT gen_random_uuid()::text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    lease_token     uuid,
    last_error      text,
    completed_at    timestamptz,
    failed_at       timestamptz,
    UNIQUE NULLS NOT DISTINCT (tenant_id, metric, period_start, percent)
);
CREATE INDEX alerts_due ON tally.alerts (next_attempt_at, id) WHERE status = 'pending';

-- A deleted tenant's alerts go with it. (Its counters were locked by
-- guard_delete first, so no crossing of its is in flight.)
CREATE FUNCTION tally._forget_tenant_alerts() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM tally.alerts WHERE tenant_id = OLD.tenant_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER forget_alerts AFTER DELETE ON tally.tenants
    FOR EACH ROW EXECUTE FUNCTION tally._forget_tenant_alerts();

-- Queue depth for operators and metrics, as usage_report_stats.
CREATE FUNCTION tally.alert_stats(
    OUT pending bigint, OUT leased bigint, OUT due bigint, OUT failed bigint, OUT completed bigint,
    OUT oldest_pending_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT count(*) FILTER (WHERE status = 'pending'),
           count(*) FILTER (WHERE status = 'pending' AND lease_until > now()),
           count(*) FILTER (WHERE status = 'pending' AND next_attempt_at <= now()
                              AND (lease_until IS NULL OR lease_until <= now())),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'completed'),
           min(created_at) FILTER (WHERE status = 'pending')
      FROM tally.alerts
$$;

ALTER TABLE tally.alert_thresholds OWNER TO tally_owner;
ALTER TABLE tally.alerts OWNER TO tally_owner;
ALTER FUNCTION tally._invalidate_alert_threshold() OWNER TO tally_owner;
ALTER FUNCTION tally._check_alert_threshold() OWNER TO tally_owner;
ALTER FUNCTION tally._forget_tenant_alerts() OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally._forget_tenant_alerts() FROM PUBLIC;
REVOKE ALL ON FUNCTION tally._check_alert_threshold() FROM PUBLIC;
REVOKE ALL ON FUNCTION tally._invalidate_alert_threshold() FROM PUBLIC;
ALTER FUNCTION tally.alert_stats() OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.alert_stats() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.alert_stats() TO tally_daemon;
GRANT SELECT, INSERT, UPDATE, DELETE ON tally.alert_thresholds TO tally_admin;
GRANT SELECT ON tally.alerts, tally.alerts_id_seq TO tally_admin;

CREATE FUNCTION tally."claim_alerts"(
	"batch" INT DEFAULT 100, /* Option < i32 > */
	"lease" interval DEFAULT NULL /* Option < Interval > */
) RETURNS TABLE (
	"id" bigint,  /* i64 */
	"identifier" TEXT,  /* String */
	"tenant_id" TEXT,  /* String */
	"metric" TEXT,  /* String */
	"percent" INT,  /* i32 */
	"threshold" bigint,  /* i64 */
	"used" bigint,  /* i64 */
	"max_units" bigint,  /* i64 */
	"period_start" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"period_end" timestamp with time zone,  /* Option < TimestampWithTimeZone > */
	"created_at" timestamp with time zone,  /* TimestampWithTimeZone */
	"attempts" INT,  /* i32 */
	"lease_token" uuid  /* Uuid */
)
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'claim_alerts_wrapper';
CREATE FUNCTION tally."complete_alert"(
	"id" bigint, /* Option < i64 > */
	"lease_token" uuid /* Option < Uuid > */
) RETURNS void
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'complete_alert_wrapper';
CREATE FUNCTION tally."fail_alert"(
	"id" bigint, /* Option < i64 > */
	"lease_token" uuid, /* Option < Uuid > */
	"error" TEXT, /* Option < & str > */
	"permanent" bool DEFAULT false, /* Option < bool > */
	"retry_after" interval DEFAULT NULL /* Option < Interval > */
) RETURNS void
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'fail_alert_wrapper';
CREATE FUNCTION tally."requeue_failed_alerts"(
	"ids" bigint[] DEFAULT NULL /* :: std :: option :: Option < Vec < Option < i64 > > > */
) RETURNS bigint /* i64 */
SECURITY DEFINER
SET search_path TO pg_catalog, pg_temp
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'requeue_failed_alerts_wrapper';
ALTER FUNCTION tally.claim_alerts(integer, interval) OWNER TO tally_owner;
ALTER FUNCTION tally.complete_alert(bigint, uuid) OWNER TO tally_owner;
ALTER FUNCTION tally.fail_alert(bigint, uuid, text, boolean, interval) OWNER TO tally_owner;
ALTER FUNCTION tally.requeue_failed_alerts(bigint[]) OWNER TO tally_owner;
REVOKE ALL ON FUNCTION tally.claim_alerts(integer, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally.complete_alert(bigint, uuid) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally.fail_alert(bigint, uuid, text, boolean, interval) FROM PUBLIC;
REVOKE ALL ON FUNCTION tally.requeue_failed_alerts(bigint[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION tally.claim_alerts(integer, interval) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.complete_alert(bigint, uuid) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.fail_alert(bigint, uuid, text, boolean, interval) TO tally_daemon;
GRANT EXECUTE ON FUNCTION tally.requeue_failed_alerts(bigint[]) TO tally_admin;

-- (end of threshold alerts)
