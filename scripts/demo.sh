#!/usr/bin/env bash
# Set this machine up, build and install tally, start a local Postgres
# cluster and run the demo against a fresh database in it. Safe to run again:
# each run starts the demo database afresh.
#
# Usage: scripts/demo.sh          (as root, or a user with sudo)
source "$(dirname "$0")/lib.sh"
if [ "$(id -u)" -ne 0 ]; then exec sudo --preserve-env=CARGO_TARGET_DIR "$0" "$@"; fi

port=${TALLY_DEMO_PORT:-5499}
database=tally_demo

setup
install_extension release
say "building tallyd and a local fake of Stripe"
(cd "$TALLY_ROOT" && cargo build --release --locked -p tallyd -p tally-tests --bin tallyd --bin fake-stripe 2>&1 | tail -1)
tallyd=$CARGO_TARGET_DIR/release/tallyd
cluster_start demo "$port"

say "a fresh database: $database"
pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
# As a deployment would: a superuser migrates; an operator role granted
# tally_admin does the rest; tallyd serve and worker connect as a role
# granted tally_daemon (see README, "Deploying").
TALLY_ADMIN_DATABASE_URL=$(cluster_url "$port" $database) "$tallyd" migrate
pg "$port" -d $database -c "
    DO \$\$ BEGIN
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tally_demo_admin') THEN
            CREATE ROLE tally_demo_admin LOGIN; END IF;
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tally_demo_daemon') THEN
            CREATE ROLE tally_demo_daemon LOGIN; END IF;
    END \$\$;
    GRANT tally_admin TO tally_demo_admin;
    GRANT tally_daemon TO tally_demo_daemon;
    CREATE SCHEMA app AUTHORIZATION tally_demo_admin;" 2>/dev/null
export DATABASE_URL
DATABASE_URL=postgresql://tally_demo_admin@127.0.0.1:$port/$database
daemon_url=postgresql://tally_demo_daemon@127.0.0.1:$port/$database

"$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 "$DATABASE_URL" -f "$TALLY_ROOT/scripts/demo.sql"

# The daemon: a plans file, a tenant with an API key, the tenant API over
# HTTP, and signed Stripe webhooks.
api_port=${TALLY_DEMO_API_PORT:-8089}
api=http://127.0.0.1:$api_port
export STRIPE_WEBHOOK_SECRET
STRIPE_WEBHOOK_SECRET=whsec_demo_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
show() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
api_call() { # METHOD PATH [BODY]
    local body=()
    if [ -n "${3:-}" ]; then body=(-d "$3"); fi
    show "curl -X $1 $api$2 ${3:+-d '$3'}"
    curl -sS -X "$1" -H "Authorization: Bearer $key" -H 'content-type: application/json' "${body[@]}" "$api$2"
    echo
}
webhook() { # EVENT-JSON
    local signature
    signature=$(printf '%s' "$1" | python3 "$TALLY_ROOT/scripts/sign-stripe-webhook.py")
    show "POST /webhooks/stripe $(python3 -c 'import json,sys; e=json.loads(sys.argv[1]); print(e["type"], e["id"])' "$1")"
    curl -sS -X POST -H "Stripe-Signature: $signature" -H 'content-type: application/json' -d "$1" "$api/webhooks/stripe"
    echo
}

say "tallyd: apply a plans file, create a tenant and an API key"
show "tallyd plans apply scripts/demo-plans.toml"
"$tallyd" plans apply "$TALLY_ROOT/scripts/demo-plans.toml"
show "tallyd tenants create globex"
"$tallyd" tenants create globex
show "tallyd api-key create globex --label demo"
key=$("$tallyd" api-key create globex --label demo | tail -n 1)
echo "tly_…  (shown once)"

say "tallyd serve on $api (the usage-report worker runs later, on its own)"
DATABASE_URL=$daemon_url "$tallyd" serve --no-worker --listen "127.0.0.1:$api_port" 2>"$TALLY_RUN_DIR/demo/tallyd.log" &
tallyd_pid=$!
trap 'kill $tallyd_pid ${fake_pid:-} ${worker_pid:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do
    curl -sf "$api/readyz" >/dev/null 2>&1 && break
    sleep 0.1
done
show "curl $api/readyz"
curl -sS "$api/readyz"; echo

api_call POST /v1/usage/messages/check '{"units": 60}'
api_call POST /v1/usage/messages/check '{"units": 50}'
api_call POST /v1/usage/messages/check '{"units": 25}'
api_call POST /v1/usage/chatbots/check
api_call POST /v1/usage/chatbots/check
api_call GET /v1/usage

say "signed Stripe webhooks: checkout links the customer, a paid renewal starts a new period and resets usage"
webhook '{"id": "evt_demo_checkout", "type": "checkout.session.completed", "created": '"$(date +%s)"', "data": {"object": {"client_reference_id": "globex", "customer": "cus_demo"}}}'
now=$(date +%s)
paid='{"id": "evt_demo_paid", "type": "invoice.paid", "created": '"$now"', "data": {"object": {"customer": "cus_demo",
       "billing_reason": "subscription_cycle", "lines": {"data": [{"period": {"start": '"$now"', "end": '"$((now + 2592000))"'}}]}}}}'
webhook "$paid"
webhook "$paid"
show "tallyd usage globex"
"$tallyd" usage globex

say "usage reports: messages are billed, so each allowed check left one in the queue;
    and the checks that crossed 80% and 100% of messages each left an alert"
# The demo retries failed sends after 200 ms instead of the default 10 s.
pg "$port" -c "ALTER DATABASE $database SET tally.report_backoff_base = '200ms'"
stripe_port=${TALLY_DEMO_STRIPE_PORT:-12111}
export STRIPE_SECRET_KEY=sk_test_demo STRIPE_API_BASE=http://127.0.0.1:$stripe_port/
"$CARGO_TARGET_DIR/release/fake-stripe" --listen "127.0.0.1:$stripe_port" --secret-key "$STRIPE_SECRET_KEY" \
    --server-errors 0.3 2>"$TALLY_RUN_DIR/demo/fake-stripe.log" &
fake_pid=$!
receiver_port=${TALLY_DEMO_RECEIVER_PORT:-12112}
export TALLY_ALERT_SECRET
TALLY_ALERT_SECRET=whsec_$(head -c 32 /dev/urandom | base64)
show "a local alert receiver on 127.0.0.1:$receiver_port (scripts/alert-receiver.py checks each signature itself)"
python3 "$TALLY_ROOT/scripts/alert-receiver.py" "$receiver_port" &
receiver_pid=$!
trap 'kill $tallyd_pid ${fake_pid:-} ${worker_pid:-} ${receiver_pid:-} 2>/dev/null || true' EXIT
for _ in $(seq 100); do   # until it listens
    curl -s -o /dev/null "http://127.0.0.1:$receiver_port/" && break
    sleep 0.1
done
show "tallyd reports"
"$tallyd" reports
show "tallyd alerts"
"$tallyd" alerts
show "tallyd worker --alert-url http://127.0.0.1:$receiver_port/   (the fake Stripe fails 30% of calls with a 500)"
DATABASE_URL=$daemon_url "$tallyd" worker --alert-url "http://127.0.0.1:$receiver_port/" \
    2>"$TALLY_RUN_DIR/demo/worker.log" &
worker_pid=$!
for _ in $(seq 600); do
    pending=$(pg "$port" -d $database -At -c "SELECT (SELECT pending FROM tally.usage_report_stats())
                                                   + (SELECT pending FROM tally.alert_stats())")
    [ "$pending" = 0 ] && break
    sleep 0.1
done
kill -TERM $worker_pid; wait $worker_pid || true
show "tallyd reports"
"$tallyd" reports
show "tallyd alerts"
"$tallyd" alerts
show "what the fake Stripe counted: GET ${STRIPE_API_BASE}_fake/events"
curl -sS "${STRIPE_API_BASE}_fake/events" | python3 -c '
import json, sys
for e in json.load(sys.stdin):
    print("  meter event %s: %s for %s" % (e["identifier"], e["value"], e["customer"]))'
retried=$(grep -c "will be retried" "$TALLY_RUN_DIR/demo/worker.log" || true)
echo "  sends retried after a 500: $retried (the worker's log: $TALLY_RUN_DIR/demo/worker.log)"

kill -TERM $tallyd_pid $fake_pid $receiver_pid
wait $tallyd_pid $fake_pid $receiver_pid 2>/dev/null || true
trap - EXIT

cat <<MSG

The demo cluster keeps running (tallyd's log: $TALLY_RUN_DIR/demo/tallyd.log). Try it yourself:
  psql $DATABASE_URL
  DATABASE_URL=$daemon_url $tallyd serve --listen 127.0.0.1:$api_port
Stop it with:
  runuser -u postgres -- $PG_BIN/pg_ctl -D $TALLY_RUN_DIR/demo/data stop
MSG
