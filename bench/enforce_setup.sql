-- enforce_count's benchmark: two identical tables of the application's, one
-- under tally.enforce_count for an allocation no run reaches.
INSERT INTO tally.metrics (metric, kind) VALUES ('bench_rows', 'allocation'), ('bench_floor', 'allocation')
    ON CONFLICT DO NOTHING;
INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES
    ('bench', 'bench_rows', 1000000000000), ('bench', 'bench_floor', 1000000000000) ON CONFLICT DO NOTHING;
-- The floor's counters (the floor scripts update them bare).
INSERT INTO tally.tenants (tenant_id) SELECT 't' || g FROM generate_series(1, 1000) AS g ON CONFLICT DO NOTHING;
INSERT INTO tally.usage_counters (tenant_id, metric, used)
SELECT 't' || g, 'bench_floor', 0 FROM generate_series(1, 1000) AS g ON CONFLICT DO NOTHING;
DROP TABLE IF EXISTS bench_plain, bench_enforced;
CREATE TABLE bench_plain (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text);
CREATE TABLE bench_enforced (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text);
SELECT tally.enforce_count('bench_enforced', 'tenant_id', 'bench_rows');
