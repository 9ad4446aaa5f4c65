\echo Use "ALTER EXTENSION tally UPDATE TO '0.2.0'" to load this file. \quit

-- tally 0.1.0 -> 0.2.0: the billing life cycle.
--
-- * provider_events, attempt_event_lock and cleanup_provider_events: webhook
--   idempotency (lock first, act in the same transaction);
-- * usage_reports: an allowed increment of a billed metric (one with a
--   stripe_meter_event) writes a report in its own transaction; the driver
--   drains them with claim_usage_reports / complete_usage_report /
--   fail_usage_report; usage_report_stats and cleanup_usage_reports;
-- * reset_usage, start_period, sync_usage, set_tenant_status and
--   link_provider_customer; cleanup_idempotency_keys;
-- * a tenant with pending reports can no longer be deleted;
-- * counters also copy their metric's stripe_meter_event, so a change of it
--   clears their copies like a change of kind does.

ALTER TABLE tally.usage_counters ADD COLUMN meter_event text;
-- Copies written by 0.1.0 lack the meter event: the next increment of each
-- counter refreshes its copy.
UPDATE tally.usage_counters SET limits_valid = false WHERE limits_valid;

DROP TRIGGER invalidate_counters ON tally.metrics;
CREATE TRIGGER invalidate_counters AFTER UPDATE OF kind, stripe_meter_event ON tally.metrics
    FOR EACH ROW WHEN (OLD.kind IS DISTINCT FROM NEW.kind
                       OR OLD.stripe_meter_event IS DISTINCT FROM NEW.stripe_meter_event)
    EXECUTE FUNCTION tally._invalidate_metric();

CREATE TABLE tally.provider_events (
    provider    text NOT NULL,
    event_id    text NOT NULL,
    event_type  text,
    payload     jsonb,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, event_id)
);
CREATE INDEX provider_events_received_at ON tally.provider_events (received_at);

-- The outbox: one row per allowed increment of a billed metric, written in
-- the increment's transaction. No foreign key to tenants, so an increment
-- does not lock the tenant row; the tenants trigger below does the cascade.
CREATE TABLE tally.usage_reports (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id       text NOT NULL,
    metric          text NOT NULL,
    event_name      text NOT NULL,
    units           bigint NOT NULL CHECK (units > 0),
    -- Sent to the provider so that a retried send is counted once there.
    identifier      text NOT NULL DEFAULT gen_random_uuid()::text,
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'completed', 'failed')),
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    lease_until     timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    completed_at    timestamptz,
    failed_at       timestamptz
);
CREATE INDEX usage_reports_due ON tally.usage_reports (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX usage_reports_failed ON tally.usage_reports (failed_at) WHERE status = 'failed';

-- Unbilled usage is never dropped: a tenant with pending reports cannot be
-- deleted. The counters are locked first, so an increment in flight (and
-- the report it writes) finishes before the check.
CREATE FUNCTION tally._guard_tenant_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pending bigint;
BEGIN
    PERFORM FROM tally.usage_counters WHERE tenant_id = OLD.tenant_id FOR UPDATE;
    SELECT count(*) INTO pending FROM tally.usage_reports
     WHERE tenant_id = OLD.tenant_id AND status = 'pending';
    IF pending > 0 THEN
        RAISE EXCEPTION 'tenant has unsent usage' USING ERRCODE = 'object_not_in_prerequisite_state',
            DETAIL = format('tenant %L has %s pending usage reports', OLD.tenant_id, pending),
            HINT = 'let the worker send them (tallyd worker) or let them fail, then delete the tenant';
    END IF;
    DELETE FROM tally.usage_reports WHERE tenant_id = OLD.tenant_id;
    RETURN OLD;
END
$$;
CREATE TRIGGER guard_delete BEFORE DELETE ON tally.tenants
    FOR EACH ROW EXECUTE FUNCTION tally._guard_tenant_delete();

CREATE FUNCTION tally._rename_tenant_reports() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    UPDATE tally.usage_reports SET tenant_id = NEW.tenant_id WHERE tenant_id = OLD.tenant_id;
    RETURN NULL;
END
$$;
CREATE TRIGGER rename_reports AFTER UPDATE OF tenant_id ON tally.tenants
    FOR EACH ROW WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id)
    EXECUTE FUNCTION tally._rename_tenant_reports();

-- Queue depth for operators and metrics.
CREATE FUNCTION tally.usage_report_stats(
    OUT pending bigint, OUT leased bigint, OUT due bigint, OUT failed bigint,
    OUT oldest_pending_at timestamptz, OUT oldest_pending_age interval)
LANGUAGE sql STABLE AS $$
    SELECT count(*),
           count(*) FILTER (WHERE lease_until > now()),
           count(*) FILTER (WHERE next_attempt_at <= now() AND (lease_until IS NULL OR lease_until <= now())),
           (SELECT count(*) FROM tally.usage_reports WHERE status = 'failed'),
           min(created_at),
           now() - min(created_at)
      FROM tally.usage_reports
     WHERE status = 'pending'
$$;
COMMENT ON FUNCTION tally.usage_report_stats() IS
    'pending: not yet sent (leased: being sent now; due: claimable now); failed: given up, kept for inspection.';

-- Webhook idempotency: lock first, then act, in one transaction. True for
-- the first caller only; a concurrent duplicate waits on the primary key
-- until the first transaction ends, then gets false (or true, if the first
-- rolled back and took its lock with it).
CREATE FUNCTION tally.attempt_event_lock(
    provider text, event_id text, event_type text DEFAULT NULL, payload jsonb DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    IF provider IS NULL OR event_id IS NULL THEN
        RAISE EXCEPTION '% must not be null', CASE WHEN provider IS NULL THEN 'provider' ELSE 'event_id' END
            USING ERRCODE = 'null_value_not_allowed', HINT = 'pass the provider (stripe, paddle) and its event id';
    ELSIF provider = '' OR event_id = '' THEN
        RAISE EXCEPTION '% must not be empty', CASE WHEN provider = '' THEN 'provider' ELSE 'event_id' END
            USING ERRCODE = 'invalid_parameter_value', HINT = 'pass the provider (stripe, paddle) and its event id';
    END IF;
    INSERT INTO tally.provider_events AS e (provider, event_id, event_type, payload)
    VALUES (attempt_event_lock.provider, attempt_event_lock.event_id,
            attempt_event_lock.event_type, attempt_event_lock.payload)
    ON CONFLICT ON CONSTRAINT provider_events_pkey DO NOTHING;
    RETURN FOUND;
END
$$;

CREATE FUNCTION tally._check_retention(older_than interval, at_least interval) RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    IF older_than IS NULL OR older_than < at_least THEN
        RAISE EXCEPTION 'older_than must be at least %', at_least USING ERRCODE = 'invalid_parameter_value',
            DETAIL = format('older_than = %s', coalesce(older_than::text, 'NULL')),
            HINT = format('pass an interval such as ''30 days'', of at least %s', at_least);
    END IF;
END
$$;

-- Forget provider events received before now() - older_than; returns how many.
CREATE FUNCTION tally.cleanup_provider_events(older_than interval DEFAULT '30 days') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM tally._check_retention(older_than, interval '0');
    DELETE FROM tally.provider_events WHERE received_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- Forget idempotency keys claimed before now() - older_than (at least 24
-- hours: a repeat within a day always gets the first result).
CREATE FUNCTION tally.cleanup_idempotency_keys(older_than interval DEFAULT '24 hours') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM tally._check_retention(older_than, interval '24 hours');
    DELETE FROM tally.idempotency_keys WHERE created_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- Delete completed usage reports older than older_than. Failed reports are
-- never deleted: they are the record of usage that was not billed.
CREATE FUNCTION tally.cleanup_usage_reports(older_than interval DEFAULT '30 days') RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    deleted bigint;
BEGIN
    PERFORM tally._check_retention(older_than, interval '0');
    DELETE FROM tally.usage_reports WHERE status = 'completed' AND completed_at < now() - older_than;
    GET DIAGNOSTICS deleted = ROW_COUNT;
    RETURN deleted;
END
$$;

-- The functions written in Rust, as pgrx declares them for 0.2.0.

CREATE FUNCTION tally."claim_usage_reports"(
	"batch" INT DEFAULT 100,
	"lease" interval DEFAULT NULL
) RETURNS TABLE (
	"id" bigint, 
	"tenant_id" TEXT, 
	"metric" TEXT, 
	"event_name" TEXT, 
	"units" bigint, 
	"identifier" TEXT, 
	"stripe_customer_id" TEXT, 
	"created_at" timestamp with time zone, 
	"attempts" INT, 
	"lease_until" timestamp with time zone 
)
LANGUAGE c
AS 'MODULE_PATHNAME', 'claim_usage_reports_wrapper';

CREATE FUNCTION tally."complete_usage_report"(
	"id" bigint
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'complete_usage_report_wrapper';

CREATE FUNCTION tally."fail_usage_report"(
	"id" bigint,
	"error" TEXT,
	"permanent" bool DEFAULT false
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'fail_usage_report_wrapper';

CREATE FUNCTION tally."link_provider_customer"(
	"tenant_id" TEXT,
	"provider" TEXT,
	"customer_id" TEXT,
	"subscription_id" TEXT DEFAULT NULL
) RETURNS void
LANGUAGE c
AS 'MODULE_PATHNAME', 'link_provider_customer_wrapper';

CREATE FUNCTION tally."reset_usage"(
	"tenant_id" TEXT,
	"metric" TEXT DEFAULT NULL
) RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'reset_usage_wrapper';

CREATE FUNCTION tally."set_tenant_status"(
	"tenant_id" TEXT,
	"status" TEXT
) RETURNS bool
LANGUAGE c
AS 'MODULE_PATHNAME', 'set_tenant_status_wrapper';

CREATE FUNCTION tally."start_period"(
	"tenant_id" TEXT,
	"period_start" timestamp with time zone,
	"period_end" timestamp with time zone DEFAULT NULL
) RETURNS bool
LANGUAGE c
AS 'MODULE_PATHNAME', 'start_period_wrapper';

CREATE FUNCTION tally."sync_usage"(
	"tenant_id" TEXT,
	"metric" TEXT,
	"actual" bigint
) RETURNS bigint
LANGUAGE c
AS 'MODULE_PATHNAME', 'sync_usage_wrapper';
