-- The floor of enforcement: the same 10,000-row INSERT and one bare UPDATE of
-- its 1,000 tenants' counters, in one statement.
WITH i AS (INSERT INTO bench_plain (tenant_id, name)
           SELECT 't' || (g % 1000 + 1), 'bot' FROM generate_series(1, 10000) AS g RETURNING tenant_id)
UPDATE tally.usage_counters AS c SET used = c.used + d.n
  FROM (SELECT tenant_id, count(*) AS n FROM i GROUP BY tenant_id) AS d
 WHERE c.tenant_id = d.tenant_id AND c.metric = 'bench_floor';
