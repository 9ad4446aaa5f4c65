-- Scale-out benchmark data, the same on one node and on a Citus cluster:
-- 1,000 tenants on one plan with a limit no run reaches, each with a counter
-- of 'api_calls' already (first use is not what is measured).
INSERT INTO tally.metrics (metric, kind) VALUES ('api_calls', 'consumable');
INSERT INTO tally.plans (plan_id, is_default) VALUES ('bench', true);
INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES ('bench', 'api_calls', 1000000000000);
INSERT INTO tally.tenants (tenant_id) SELECT 't' || n FROM generate_series(1, 1000) AS n;
