#!/usr/bin/env bash
# Benchmark the usage-report worker against the local fake of Stripe:
#   throughput  a queue of 40,000 reports drained by one `tallyd worker`
#               limited to 1,000 sends/s, with no failures and with 20% of
#               sends failing (500s); requests/s and meter events/s as the
#               fake sees them, over the first 20 s
#   lag         a steady 200 billed increments/s (pgbench -R) while the
#               worker runs: time from the increment to the fake receiving
#               its meter event, p50/p99
#
# Usage: bench/worker.sh
source "$(dirname "$0")/../scripts/lib.sh"

port=${TALLY_BENCH_PORT:-5496}
stripe_port=${TALLY_BENCH_STRIPE_PORT:-12112}
database=tally_bench_worker
stripe=http://127.0.0.1:$stripe_port/
export STRIPE_SECRET_KEY=sk_test_bench STRIPE_API_BASE=$stripe

setup
install_extension release
say "building tallyd and the fake Stripe"
(cd "$TALLY_ROOT" && cargo build --release --locked -p tallyd -p tally-tests --bin tallyd --bin fake-stripe 2>&1 | tail -1)
tallyd=$CARGO_TARGET_DIR/release/tallyd
fake=$CARGO_TARGET_DIR/release/fake-stripe
cluster_start bench "$port"
pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
# Benchmarks measure tallyd, not the roles: they run it as the superuser.
export DATABASE_URL TALLY_ALLOW_SUPERUSER=1
DATABASE_URL=$(cluster_url "$port" $database)
"$tallyd" migrate >/dev/null
pg "$port" -d $database <<'EOF'
-- Retries after a second, so that retried sends happen within a run.
ALTER DATABASE tally_bench_worker SET tally.report_backoff_base = '1s';
INSERT INTO tally.metrics (metric, kind, stripe_meter_event) VALUES ('api_calls', 'consumable', 'api_calls');
INSERT INTO tally.plans (plan_id, is_default) VALUES ('bench', true);
INSERT INTO tally.plan_limits VALUES ('bench', 'api_calls', NULL);
INSERT INTO tally.tenants (tenant_id, stripe_customer_id) SELECT 't' || n, 'cus_' || n FROM generate_series(1, 1000) AS n;
EOF

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT

start_fake() { # SERVER-ERROR-SHARE
    "$fake" --listen "127.0.0.1:$stripe_port" --secret-key "$STRIPE_SECRET_KEY" --server-errors "$1" 2>/dev/null &
    fake_pid=$!
    pids+=("$fake_pid")
    for _ in $(seq 50); do curl -sf "${stripe}_fake/stats" >/dev/null && return; sleep 0.1; done
    die "the fake Stripe did not start"
}
stop() { kill -TERM "$@" 2>/dev/null || true; wait "$@" 2>/dev/null || true; }
start_worker() {
    "$tallyd" worker --worker-rate 1000 --worker-concurrency 64 --worker-batch 250 2>/dev/null &
    worker_pid=$!
    pids+=("$worker_pid")
}
stats() { curl -sf "${stripe}_fake/stats"; }

throughput() { # SERVER-ERROR-SHARE
    pg "$port" -d $database -c "DELETE FROM tally.usage_reports" -c "VACUUM tally.usage_reports" \
        -c "INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units)
            SELECT 't' || (n % 1000 + 1), 'api_calls', 'api_calls', 1 FROM generate_series(1, 40000) AS n" >/dev/null
    start_fake "$1"
    start_worker
    sleep 5
    local first last
    first=$(stats)
    sleep 20
    last=$(stats)
    stop "$worker_pid" "$fake_pid"
    python3 - "$1" "$first" "$last" <<'EOF'
import json, sys
share, first, last = float(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"| {share:.0%} | {(last['requests'] - first['requests']) / 20:.0f} | {(last['events'] - first['events']) / 20:.0f} |")
EOF
}

lag() {
    pg "$port" -d $database -c "DELETE FROM tally.usage_reports" -c "VACUUM tally.usage_reports" >/dev/null
    start_fake 0
    start_worker
    local script
    script=$(mktemp)
    printf '%s\n' '\set n random(1, 1000)' "SELECT * FROM tally.check_and_increment_usage('t' || :n, 'api_calls');" >"$script"
    "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres -n -M prepared -c 4 -j 2 -R 200 -T 30 -f "$script" $database \
        >/dev/null 2>&1 || die "pgbench failed"
    rm -f "$script"
    for _ in $(seq 100); do
        [ "$(pg "$port" -d $database -At -c "SELECT pending FROM tally.usage_report_stats()")" = 0 ] && break
        sleep 0.1
    done
    local created events
    created=$(pg "$port" -d $database -At -F ' ' -c \
        "SELECT identifier, (extract(epoch FROM created_at) * 1000)::bigint FROM tally.usage_reports")
    events=$(mktemp)
    curl -sf "${stripe}_fake/events" >"$events"
    stop "$worker_pid" "$fake_pid"
    python3 -c '
import json, sys
received = {e["identifier"]: e["received_ms"] for e in json.load(open(sys.argv[1]))}
lags = sorted(received[i] - int(ms) for i, ms in (line.split() for line in sys.stdin if line.strip()) if i in received)
def at(p):
    return lags[min(len(lags) - 1, int(len(lags) * p))] / 1000
print(f"{len(lags)} increments at 200/s: lag p50 {at(0.5):.3f} s, p90 {at(0.9):.3f} s, p99 {at(0.99):.3f} s, max {lags[-1] / 1000:.3f} s")
' "$events" <<<"$created"
    rm -f "$events"
}

say "throughput: 40,000 reports, worker limited to 1,000 sends/s"
results="| sends failing | requests/s | meter events/s |
|---|---|---|"
for share in 0 0.2; do
    results+=$'\n'"$(throughput $share)"
    echo "${results##*$'\n'}" >&2
done
say "end-to-end lag at 200 increments/s"
lag_line=$(lag)
printf '\n%s\n\n%s\n' "$results" "$lag_line"
