-- Webhook idempotency: lock a new event id each time.
\set n random(1, 1000000000000000)
SELECT tally.attempt_event_lock('stripe', 'evt_' || :n, 'invoice.paid');
