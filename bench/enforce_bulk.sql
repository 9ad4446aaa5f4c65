-- The same 10,000-row INSERT into a table under tally.enforce_count: one
-- counter update for each of its 1,000 tenants.
INSERT INTO bench_enforced (tenant_id, name) SELECT 't' || (g % 1000 + 1), 'bot' FROM generate_series(1, 10000) AS g;
