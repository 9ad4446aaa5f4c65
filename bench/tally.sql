-- (d) tally.
\set n random(1, :tenants)
SELECT * FROM tally.check_and_increment_usage('t' || :n, 'api_calls');
