#!/usr/bin/env bash
# Benchmark tallyd over HTTP, at fixed rates, against a local cluster:
#   check       POST /v1/usage/api_calls/check at 1,000 req/s, for one tenant
#               (every request queues on the same counter row) and spread
#               over 100 tenants with keys of their own
#   webhooks    a new signed Stripe invoice.paid event each time, at 500 req/s
#   duplicates  the same signed event again and again, at 500 req/s
# with bench/load (latency counted from each request's scheduled start),
# and the check again with oha (a load tool from crates.io) as a cross-check.
# Reports p50/p90/p99, errors, and tallyd's peak resident memory.
#
# Usage: bench/tallyd.sh [--seconds N]
source "$(dirname "$0")/../scripts/lib.sh"

seconds=30
while [ $# -gt 0 ]; do
    case $1 in
        --seconds) seconds=$2; shift 2 ;;
        *) die "unknown argument $1 (--seconds N)" ;;
    esac
done

port=${TALLY_BENCH_PORT:-5496}
api_port=${TALLY_BENCH_API_PORT:-8097}
database=tally_bench_api
api=http://127.0.0.1:$api_port
secret=whsec_bench_$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')

setup
install_extension release
say "building tallyd and the load generator"
(cd "$TALLY_ROOT" && cargo build --release --locked -p tallyd -p tally-load 2>&1 | tail -1)
if ! command -v oha >/dev/null; then
    say "installing oha (a load tool) from crates.io"
    cargo install oha --locked --version 1.16.0
fi
tallyd=$CARGO_TARGET_DIR/release/tallyd
load=$CARGO_TARGET_DIR/release/tally-load
cluster_start bench "$port"
pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
# Benchmarks measure tallyd, not the roles: they run it as the superuser.
export DATABASE_URL TALLY_ALLOW_SUPERUSER=1
DATABASE_URL=$(cluster_url "$port" $database)
"$tallyd" migrate
plans=$(mktemp --suffix=.toml)
log=$(mktemp)
trap 'rm -f "$plans" "$log"; [ -n "${pid:-}" ] && kill "$pid" 2>/dev/null || true' EXIT
cat >"$plans" <<'EOF'
[metrics.api_calls]
kind = "consumable"

[plans.bench]
default = true
limits = { api_calls = 1000000000000 }
EOF
"$tallyd" plans apply "$plans" >/dev/null
pg "$port" -d $database -c "INSERT INTO tally.tenants (tenant_id, stripe_customer_id)
                             SELECT 't' || n, 'cus_' || n FROM generate_series(1, 1000) AS n" >/dev/null
key=$("$tallyd" api-key create t1 | tail -n 1)
keys=$key
for n in $(seq 2 100); do keys+=",$("$tallyd" api-key create "t$n" | tail -n 1)"; done

STRIPE_WEBHOOK_SECRET=$secret "$tallyd" serve --listen "127.0.0.1:$api_port" 2>"$log" &
pid=$!
for _ in $(seq 100); do curl -sf "$api/readyz" >/dev/null 2>&1 && break; sleep 0.1; done
curl -sf "$api/readyz" >/dev/null || { cat "$log"; die "tallyd did not become ready"; }

run() { # SCENARIO RATE KEYS
    "$load" --scenario "$1" --url "$api" --rate "$2" --seconds "$seconds" --key "$3" --secret "$secret"
}

say "warming up"
"$load" --scenario check --url "$api" --rate 200 --seconds 5 --key "$key" >/dev/null
results=()
for scenario in "check 1000 $key" "check 1000 $keys" "webhooks 500 $key" "duplicates 500 $key"; do
    set -- $scenario
    say "$1 at $2/s for ${seconds}s"
    results+=("$(run "$1" "$2" "$3")")
    echo "${results[-1]}" >&2
done
say "oha: check at 1000/s for ${seconds}s"
oha_json=$(oha --no-tui --output-format json --latency-correction -z "${seconds}s" -q 1000 -c 64 -m POST \
    -H "Authorization: Bearer $key" -H 'content-type: application/json' -d '{"units": 1}' \
    "$api/v1/usage/api_calls/check")
peak_kib=$(sed -n 's/^VmHWM:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$pid/status")
kill -TERM "$pid"
wait "$pid" || true
pid=

python3 - "$peak_kib" "$oha_json" "${results[@]}" <<'EOF'
import json, sys
peak_kib, oha = int(sys.argv[1]), json.loads(sys.argv[2])
rows = [json.loads(line) for line in sys.argv[3:]]
print("\n| scenario | target rate | achieved | errors | p50 ms | p90 ms | p99 ms | max ms |")
print("|---|---|---|---|---|---|---|---|")
names = ("check, one tenant", "check, 100 tenants", "webhooks, new events", "webhooks, one event again")
for r, target, name in zip(rows, (1000, 1000, 500, 500), names):
    print(f"| {name} | {target}/s | {r['rate']:.0f}/s | {r['errors']} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | {r['p99_ms']:.2f} | {r['max_ms']:.1f} |")
lat = oha["latencyPercentiles"]
summary = oha["summary"]
ok = oha.get("statusCodeDistribution", {}).get("200", 0)
print(f"| check, one tenant (oha) | 1000/s | {summary['requestsPerSec']:.0f}/s | {sum(oha.get('statusCodeDistribution', {}).values()) - ok} | "
      f"{lat['p50'] * 1000:.2f} | {lat['p90'] * 1000:.2f} | {lat['p99'] * 1000:.2f} | {summary['slowest'] * 1000:.1f} |")
print(f"\ntallyd peak resident memory (VmHWM): {peak_kib / 1024:.1f} MiB")
EOF
