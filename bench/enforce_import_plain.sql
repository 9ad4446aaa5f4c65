-- A 10,000-row INSERT for one tenant (an import), without enforcement.
\set n random(1, :tenants)
INSERT INTO bench_plain (tenant_id, name) SELECT 't' || :n, 'bot' FROM generate_series(1, 10000);
