-- Benchmark data: 1,000 tenants on one plan with a limit no run reaches, each
-- with an existing counter for 'api_calls' in the current period.
CREATE EXTENSION IF NOT EXISTS tally;
\ir baseline.sql
INSERT INTO tally.metrics (metric, kind) VALUES ('api_calls', 'consumable') ON CONFLICT DO NOTHING;
INSERT INTO tally.plans (plan_id, is_default) VALUES ('bench', true) ON CONFLICT DO NOTHING;
INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES ('bench', 'api_calls', 1000000000000)
    ON CONFLICT DO NOTHING;
INSERT INTO tally.tenants (tenant_id) SELECT 't' || n FROM generate_series(1, 1000) AS n ON CONFLICT DO NOTHING;
SELECT count(*) FROM tally.tenants, tally.check_and_increment_usage(tenant_id, 'api_calls');
VACUUM ANALYZE;
