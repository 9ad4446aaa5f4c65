-- enforce_count's benchmark: two identical tables of the application's, one
-- under tally.enforce_count for an allocation no run reaches.
INSERT INTO tally.metrics (metric, kind) VALUES ('bench_rows', 'allocation') ON CONFLICT DO NOTHING;
INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES
    ('bench', 'bench_rows', 1000000000000) ON CONFLICT DO NOTHING;
DROP TABLE IF EXISTS bench_plain, bench_enforced;
CREATE TABLE bench_plain (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text);
CREATE TABLE bench_enforced (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text);
SELECT tally.enforce_count('bench_enforced', 'tenant_id', 'bench_rows');
