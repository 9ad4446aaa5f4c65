-- (e) tally, on a metric with alert thresholds that no call crosses.
\set n random(1, :tenants)
SELECT * FROM tally.check_and_increment_usage('t' || :n, 'alerted_calls');
