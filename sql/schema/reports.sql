-- Usage reports: the outbox the driver drains to the billing provider.
-- tally.check_and_increment_usage writes a report for each allowed increment
-- of a billed metric; claim_usage_reports, complete_usage_report,
-- fail_usage_report and requeue_failed_usage_reports move it along.

-- One row per allowed increment of a billed metric, written in the
-- increment's transaction. No foreign key to tenants, so an increment does
-- not lock the tenant row; the guard_delete trigger below does the cascade.
CREATE TABLE tally.usage_reports (
    id              bigint GENERATED ALWAYS AS IDENTITY,
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
    failed_at       timestamptz,
    -- Claims of the report ever made, never reset (requeueing resets
    -- attempts): the worker's idempotency key of a send is
    -- `<identifier>:s<sends>`, so a retry never replays an earlier answer.
    sends           integer NOT NULL DEFAULT 0,
    -- The token of the latest claim: completing or failing the report takes
    -- it, so a worker whose lease lapsed cannot settle a report another
    -- worker has claimed since.
    lease_token     uuid,
    -- The first claim: from then on a send may have reached the provider.
    first_claimed_at timestamptz,
    PRIMARY KEY (tenant_id, id)
);
-- The worker settles a report by id alone.
CREATE INDEX usage_reports_id ON tally.usage_reports (id);
CREATE INDEX usage_reports_due ON tally.usage_reports (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX usage_reports_failed ON tally.usage_reports (failed_at) WHERE status = 'failed';

-- Unbilled usage is never dropped: a tenant with pending reports cannot be
-- deleted. The counters are locked first, so an increment in flight (and
-- the report it writes) finishes before the check.
CREATE FUNCTION tally._guard_tenant_delete() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
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

-- Queue depth for operators and metrics. (Two statements: a distributed
-- tally refuses a subquery in the target list.)
CREATE FUNCTION tally.usage_report_stats(
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
COMMENT ON FUNCTION tally.usage_report_stats() IS
    'pending: not yet sent (leased: being sent now; due: claimable now); failed: given up, kept for inspection.';
