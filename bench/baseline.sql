-- The benchmark's baseline: tally's contract for check_and_increment_usage
-- written the obvious way in PL/pgSQL (read the tenant, the metric and the
-- limit, lock the counter, check, write). Kept here for comparison only; it
-- is not part of the extension. Idempotency keys are left out (the benchmark
-- does not use them).

CREATE SCHEMA IF NOT EXISTS bench;

CREATE OR REPLACE FUNCTION bench.check_and_increment_usage(
    p_tenant_id text, p_metric text, p_units bigint DEFAULT 1,
    OUT allowed boolean, OUT used bigint, OUT max_units bigint, OUT remaining bigint, OUT reason text)
LANGUAGE plpgsql AS $$
DECLARE
    v_plan_id      text;
    v_tenant_start timestamptz;
    v_kind         text;
    v_period       timestamptz;
    v_counter_period timestamptz;
BEGIN
    IF p_units IS NULL OR p_units <= 0 THEN
        RAISE EXCEPTION 'units must be positive' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT t.plan_id, t.period_start INTO v_plan_id, v_tenant_start
      FROM tally.tenants t WHERE t.tenant_id = p_tenant_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'tenant not found' USING ERRCODE = 'no_data_found';
    END IF;
    SELECT m.kind INTO v_kind FROM tally.metrics m WHERE m.metric = p_metric;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'metric not found' USING ERRCODE = 'no_data_found';
    END IF;
    SELECT l.max_units INTO max_units
      FROM tally.plan_limits l WHERE l.plan_id = v_plan_id AND l.metric = p_metric;
    IF NOT FOUND THEN
        allowed := false; used := 0; max_units := 0; remaining := 0; reason := 'not_in_plan';
        RETURN;
    END IF;
    IF v_kind = 'consumable' THEN
        v_period := coalesce(v_tenant_start,
                             date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC');
    END IF;

    INSERT INTO tally.usage_counters AS c (tenant_id, metric, used, period_start)
    VALUES (p_tenant_id, p_metric, 0, v_period)
    ON CONFLICT (tenant_id, metric) DO NOTHING;
    SELECT c.used, c.period_start INTO used, v_counter_period
      FROM tally.usage_counters c
     WHERE c.tenant_id = p_tenant_id AND c.metric = p_metric
       FOR UPDATE;
    IF v_kind = 'consumable' AND v_counter_period < v_period THEN
        used := 0;
    END IF;

    IF max_units IS NOT NULL AND used + p_units > max_units THEN
        allowed := false; reason := 'limit_exceeded';
    ELSE
        allowed := true; used := used + p_units;
    END IF;
    UPDATE tally.usage_counters c
       SET used = check_and_increment_usage.used, period_start = v_period
     WHERE c.tenant_id = p_tenant_id AND c.metric = p_metric;
    remaining := greatest(max_units - used, 0);
END
$$;
