-- The same INSERT into a table under tally.enforce_count.
\set n random(1, :tenants)
INSERT INTO bench_enforced (tenant_id, name) VALUES ('t' || :n, 'bot');
