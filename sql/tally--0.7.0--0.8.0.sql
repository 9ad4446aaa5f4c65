\echo Use "ALTER EXTENSION tally UPDATE TO '0.8.0'" to load this file. \quit

-- tally 0.7.0 -> 0.8.0: the money path under hostile and untidy input.

-- 1. Billing effects: provider events applied by the extension.

-- (end of billing effects)


-- 2. The usage-report queue: lease tokens, send counters, bounds.

-- (end of the usage-report queue)


-- 3. The tenant API: idempotency and decrements.

-- (end of the tenant API)
