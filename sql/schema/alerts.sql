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
    IF TG_OP <> 'INSERT' THEN
        PERFORM tally._invalidate_counters(OLD.metric, NULL);
    END IF;
    IF TG_OP <> 'DELETE' AND (TG_OP = 'INSERT' OR NEW.metric IS DISTINCT FROM OLD.metric) THEN
        PERFORM tally._invalidate_counters(NEW.metric, NULL);
    END IF;
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
    id              bigint GENERATED ALWAYS AS IDENTITY,
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
    UNIQUE NULLS NOT DISTINCT (tenant_id, metric, period_start, percent),
    -- Keyed by tenant, as every tenant's table, so it can be distributed by
    -- tenant (see distribute.sql); the queue functions find an alert by id.
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX alerts_id ON tally.alerts (id);
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
