-- A single-row INSERT into a table without enforcement.
\set n random(1, :tenants)
INSERT INTO bench_plain (tenant_id, name) VALUES ('t' || :n, 'bot');
