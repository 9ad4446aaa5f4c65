-- Privileges, applied last. tally's tables, types and functions belong to
-- tally_owner, which cannot log in; nothing is granted to PUBLIC. Callers
-- reach the data only through functions that run with tally_owner's rights
-- (SECURITY DEFINER, search_path pinned to pg_catalog, pg_temp), so a role
-- that may call check_and_increment_usage cannot write a counter, a limit
-- copy, an idempotency record or a report any other way, and nothing it
-- plants in a schema of its own runs inside tally. tally_daemon includes
-- tally_app, and tally_admin includes tally_daemon.
DO $$
DECLARE
    object record;
    grant_to record;
BEGIN
    FOR object IN
        SELECT c.oid::pg_catalog.regclass AS name, c.relkind
          FROM pg_catalog.pg_class AS c
         WHERE c.relnamespace = 'tally'::pg_catalog.regnamespace AND c.relkind IN ('r', 'c', 'v')
         ORDER BY c.relname
    LOOP
        EXECUTE pg_catalog.format('ALTER %s %s OWNER TO tally_owner',
                                  CASE object.relkind WHEN 'r' THEN 'TABLE' WHEN 'v' THEN 'VIEW' ELSE 'TYPE' END,
                                  object.name);
    END LOOP;
    FOR object IN
        SELECT p.oid::pg_catalog.regprocedure AS name
          FROM pg_catalog.pg_proc AS p
         WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
         ORDER BY p.proname
    LOOP
        EXECUTE pg_catalog.format('ALTER FUNCTION %s OWNER TO tally_owner', object.name);
        EXECUTE pg_catalog.format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', object.name);
    END LOOP;
    FOR grant_to IN
        SELECT * FROM (VALUES
            ('tally_app', ARRAY['check_and_increment_usage', 'decrement_usage', 'usage_summary',
                                'validate_plan_change',
                                'checkout_reference', 'release_usage', 'tenant_standing']),
            ('tally_daemon', ARRAY['change_plan', 'reset_usage', 'start_period', 'set_tenant_status',
                                   'link_provider_customer', 'attempt_event_lock',
                                   'accept_subscription_event', 'tenant_for_api_key',
                                   'claim_usage_reports', 'complete_usage_report', 'fail_usage_report',
                                   'usage_report_stats',
                                   'claim_alerts', 'complete_alert', 'fail_alert', 'alert_stats',
                                   'apply_payment', 'apply_subscription', 'apply_checkout']),
            ('tally_admin', ARRAY['sync_usage', 'cleanup_provider_events', 'cleanup_idempotency_keys',
                                  'cleanup_usage_reports', 'requeue_failed_usage_reports',
                                  'requeue_failed_alerts', '_default_plan_id',
                                  'enforce_count', 'unenforce_count', '_enforce_count_rows',
                                  '_enforce_register', '_enforce_sync', '_enforce_unregister', '_enforce_check_columns',
                                  '_enforce_trigger_name']))
            AS g (role, functions)
    LOOP
        FOR object IN
            SELECT p.oid::pg_catalog.regprocedure AS name
              FROM pg_catalog.pg_proc AS p
             WHERE p.pronamespace = 'tally'::pg_catalog.regnamespace
               AND p.proname = ANY (grant_to.functions)
             ORDER BY p.proname
        LOOP
            EXECUTE pg_catalog.format('GRANT EXECUTE ON FUNCTION %s TO %I', object.name, grant_to.role);
        END LOOP;
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA tally TO tally_owner, tally_app, tally_daemon, tally_admin;
DO $$
BEGIN
    IF NOT pg_catalog.pg_has_role('tally_daemon', 'tally_app', 'MEMBER') THEN
        GRANT tally_app TO tally_daemon;
    END IF;
    IF NOT pg_catalog.pg_has_role('tally_admin', 'tally_daemon', 'MEMBER') THEN
        GRANT tally_daemon TO tally_admin;
    END IF;
EXCEPTION WHEN unique_violation OR duplicate_object OR internal_error THEN
    NULL;  -- granted meanwhile by CREATE EXTENSION in another database
END
$$;

-- tally_daemon reads no table: the tenant API, billing effects and the
-- report queue go through functions.
-- Configuration is written with plain SQL; everything is readable by admins.
GRANT SELECT, INSERT, UPDATE, DELETE ON tally.metrics, tally.plans, tally.plan_limits, tally.tenants,
                                        tally.api_keys TO tally_admin;
GRANT SELECT, INSERT, UPDATE, DELETE ON tally.alert_thresholds TO tally_admin;
GRANT SELECT ON ALL TABLES IN SCHEMA tally TO tally_admin;
-- The key that signs checkout references is tally_owner's alone.
REVOKE ALL ON tally.reference_secret FROM tally_admin;
