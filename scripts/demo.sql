-- The tally demo: run by scripts/demo.sh against a fresh database.
\pset footer off
\echo
\echo '== 1. Configure: metrics, plans and their limits (plain SQL)'
INSERT INTO tally.metrics (metric, kind) VALUES
    ('messages', 'consumable'),   -- reset every billing period
    ('chatbots', 'allocation');   -- a standing count
INSERT INTO tally.plans (plan_id, is_default) VALUES ('free', true), ('starter', false), ('growth', false);
INSERT INTO tally.plan_limits (plan_id, metric, max_units) VALUES
    ('free', 'messages', 100),     ('free', 'chatbots', 1),
    ('starter', 'messages', 2000), ('starter', 'chatbots', 3),
    ('growth', 'messages', NULL),  ('growth', 'chatbots', 10);   -- NULL: unlimited
TABLE tally.plan_limits;
-- Alert tenants at 80% and 100% of their messages, on every plan.
INSERT INTO tally.alert_thresholds (metric, plan_id, percent) VALUES ('messages', NULL, 80), ('messages', NULL, 100);

\echo '== 2. A tenant (lands on the default plan)'
INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
SELECT tenant_id, plan_id, status FROM tally.tenants;

\echo '== 3. Increments: allowed up to the limit, then refused (not an error)'
SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 95);
SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 10);   -- all or nothing
SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 5);
SELECT * FROM tally.check_and_increment_usage('acme', 'messages');
-- The increments that crossed 80% and 100% each wrote one alert, in their own
-- transaction; tallyd delivers them as signed webhooks (below).
SELECT tenant_id, metric, percent, used, max_units FROM tally.alerts ORDER BY id;

\echo '== 4. A retried request with the same idempotency key counts once'
SELECT * FROM tally.check_and_increment_usage('acme', 'chatbots', 1, 'create-bot-7');
SELECT * FROM tally.check_and_increment_usage('acme', 'chatbots', 1, 'create-bot-7');

\echo '== 5. Where acme stands'
SELECT metric, kind, used, max_units, remaining, period_start::date, period_end::date
  FROM tally.usage_summary('acme');

\echo '== 6. Upgrade to growth; then a downgrade to starter that would strand chatbots is refused'
SELECT valid, message FROM tally.change_plan('acme', 'growth');
SELECT * FROM tally.check_and_increment_usage('acme', 'chatbots', 4);
SELECT valid, reason, message, violations FROM tally.validate_plan_change('acme', 'starter');

\echo '== 7. Two chatbots deleted: the downgrade goes through'
SELECT tally.decrement_usage('acme', 'chatbots', 2) AS chatbots_now;
SELECT valid, message FROM tally.change_plan('acme', 'starter');
SELECT metric, used, max_units, remaining FROM tally.usage_summary('acme');

\echo '== 8. enforce_count: the limit as a property of the application''s own table'
CREATE TABLE app.chatbots (id bigserial PRIMARY KEY, tenant_id text NOT NULL, name text NOT NULL);
INSERT INTO tally.tenants (tenant_id, plan_id) VALUES ('initech', 'starter');   -- 3 chatbots
SELECT tally.enforce_count('app.chatbots', 'tenant_id', 'chatbots') AS tenants_synced;
INSERT INTO app.chatbots (tenant_id, name) VALUES ('initech', 'sales'), ('initech', 'support');
INSERT INTO app.chatbots (tenant_id, name) VALUES ('initech', 'billing');
\echo 'The fourth chatbot, as the application would see it:'
\set ON_ERROR_STOP off
INSERT INTO app.chatbots (tenant_id, name) VALUES ('initech', 'fourth');
\echo 'SQLSTATE' :LAST_ERROR_SQLSTATE '(nothing was written)'
\set ON_ERROR_STOP on
DELETE FROM app.chatbots WHERE name = 'sales';   -- gives its unit back
INSERT INTO app.chatbots (tenant_id, name) VALUES ('initech', 'fourth');
SELECT (SELECT count(*) FROM app.chatbots WHERE tenant_id = 'initech') AS rows,
       (SELECT used FROM tally.usage_summary('initech') WHERE metric = 'chatbots') AS counted;
TABLE tally.enforced_counts;
