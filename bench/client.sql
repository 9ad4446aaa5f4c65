-- (c) Read, check and write from the client in one transaction: four round
-- trips, correct only because of FOR UPDATE.
\set n random(1, :tenants)
BEGIN;
SELECT c.used, coalesce(l.max_units, 9223372036854775807) AS max_units
  FROM tally.usage_counters c
  JOIN tally.tenants t ON t.tenant_id = c.tenant_id
  JOIN tally.plan_limits l ON l.plan_id = t.plan_id AND l.metric = c.metric
 WHERE c.tenant_id = 't' || :n AND c.metric = 'api_calls'
   FOR UPDATE OF c \gset
\if :used < :max_units
UPDATE tally.usage_counters SET used = used + 1
 WHERE tenant_id = 't' || :n AND metric = 'api_calls';
\endif
COMMIT;
