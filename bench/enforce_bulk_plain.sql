-- A 10,000-row INSERT spread over 1,000 tenants, without enforcement.
INSERT INTO bench_plain (tenant_id, name) SELECT 't' || (g % 1000 + 1), 'bot' FROM generate_series(1, 10000) AS g;
