-- (b) The same contract written the obvious way in PL/pgSQL (baseline.sql).
\set n random(1, :tenants)
SELECT * FROM bench.check_and_increment_usage('t' || :n, 'api_calls');
