-- The same 10,000-row INSERT for one tenant into a table under
-- tally.enforce_count: one counter update.
\set n random(1, :tenants)
INSERT INTO bench_enforced (tenant_id, name) SELECT 't' || :n, 'bot' FROM generate_series(1, 10000);
