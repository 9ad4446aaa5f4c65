-- (a) The floor: one counter row bumped by a bare UPDATE, no rules at all.
\set n random(1, :tenants)
UPDATE tally.usage_counters SET used = used + 1
 WHERE tenant_id = 't' || :n AND metric = 'api_calls'
RETURNING used;
