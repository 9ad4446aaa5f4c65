-- Benchmark data: 1,000 tenants on one plan with limits no run reaches, each
-- with existing counters for 'api_calls' (not billed) and 'billed_calls'
-- (billed: each allowed increment writes a usage report).
CREATE EXTENSION IF NOT EXISTS tally;
\ir baseline.sql
INSERT INTO tally.metrics (metric, kind, stripe_meter_event) VALUES
    ('api_calls', 'consumable', NULL), ('billed_calls', 'consumable', 'api_calls'),
    ('alerted_calls', 'consumable', NULL) ON CONFLICT DO NOTHING;
INSERT INTO tally.plans (plan_id, is_default) VALUES ('bench', true) ON CONFLICT DO NOTHING;
INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES
    ('bench', 'api_calls', 1000000000000), ('bench', 'billed_calls', 1000000000000),
    ('bench', 'alerted_calls', 1000000000000) ON CONFLICT DO NOTHING;
-- 'alerted_calls' has alert thresholds (80% and 100%) no run reaches: the
-- cost of thresholds to increments that cross none.
INSERT INTO tally.alert_thresholds (metric, percent) VALUES
    ('alerted_calls', 80), ('alerted_calls', 100) ON CONFLICT DO NOTHING;
INSERT INTO tally.tenants (tenant_id, stripe_customer_id)
SELECT 't' || n, 'cus_' || n FROM generate_series(1, 1000) AS n ON CONFLICT DO NOTHING;
SELECT count(*) FROM tally.tenants, tally.check_and_increment_usage(tenant_id, 'api_calls');
SELECT count(*) FROM tally.tenants, tally.check_and_increment_usage(tenant_id, 'billed_calls');
SELECT count(*) FROM tally.tenants, tally.check_and_increment_usage(tenant_id, 'alerted_calls');
VACUUM ANALYZE;
