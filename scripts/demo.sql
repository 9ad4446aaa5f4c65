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

\echo '== 2. A tenant (lands on the default plan)'
INSERT INTO tally.tenants (tenant_id) VALUES ('acme');
SELECT tenant_id, plan_id, status FROM tally.tenants;

\echo '== 3. Increments: allowed up to the limit, then refused (not an error)'
SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 95);
SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 10);   -- all or nothing
SELECT * FROM tally.check_and_increment_usage('acme', 'messages', 5);
SELECT * FROM tally.check_and_increment_usage('acme', 'messages');

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
