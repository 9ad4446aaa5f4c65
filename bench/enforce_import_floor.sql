-- The floor of enforcement for an import: the same 10,000-row INSERT for one
-- tenant and a bare UPDATE of its counter, in one statement.
\set n random(1, :tenants)
WITH i AS (INSERT INTO bench_plain (tenant_id, name)
           SELECT 't' || :n, 'bot' FROM generate_series(1, 10000) RETURNING 1)
UPDATE tally.usage_counters SET used = used + (SELECT count(*) FROM i)
 WHERE tenant_id = 't' || :n AND metric = 'bench_floor';
