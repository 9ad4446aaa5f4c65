-- The floor of enforcement: the same single-row INSERT and a bare UPDATE of
-- one counter, in one statement.
\set n random(1, :tenants)
WITH i AS (INSERT INTO bench_plain (tenant_id, name) VALUES ('t' || :n, 'bot'))
UPDATE tally.usage_counters SET used = used + 1 WHERE tenant_id = 't' || :n AND metric = 'bench_floor';
