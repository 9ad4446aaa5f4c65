-- (d') tally on a billed metric: the increment also writes a usage report.
\set n random(1, :tenants)
SELECT * FROM tally.check_and_increment_usage('t' || :n, 'billed_calls');
