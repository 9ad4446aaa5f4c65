#!/usr/bin/env bash
# Benchmark check_and_increment_usage against its baselines with pgbench, in
# one run on one cluster:
#   floor    a bare UPDATE of one counter row (floor.sql)
#   plpgsql  the same contract written the obvious way in PL/pgSQL (baseline.sql)
#   client   read, check and write from the client in one transaction (client.sql)
#   tally    tally.check_and_increment_usage (tally.sql)
# in two shapes (spread: 1,000 tenants picked at random; hot: one tenant), 8
# clients, with durable commits (the default) and with synchronous_commit=off
# (which leaves the CPU cost of each call visible). After every run it checks
# that the counters grew by exactly the number of transactions pgbench
# counted. Prints a Markdown table of the medians over the rounds.
#
# Usage: bench/run.sh [--duration SECONDS] [--rounds N] [--clients N]
source "$(dirname "$0")/../scripts/lib.sh"

duration=15
rounds=3
clients=8
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        --clients) clients=$2; shift 2 ;;
        *) die "unknown argument $1 (use --duration, --rounds, --clients)" ;;
    esac
done

port=${TALLY_BENCH_PORT:-5496}
database=tally_bench
setup
install_extension release
cluster_start bench "$port"
pg "$port" -c "DROP DATABASE IF EXISTS $database" -c "CREATE DATABASE $database"
pg "$port" -d $database -f "$TALLY_ROOT/bench/setup.sql" >/dev/null

total_used() {
    pg "$port" -d $database -At -c "SELECT sum(used) FROM tally.usage_counters WHERE metric = 'api_calls'"
}

results=$(mktemp)
trap 'rm -f "$results"' EXIT

# run SHAPE TENANTS MODE VARIANT: one pgbench run, checked; appends "shape mode variant tps latency".
run() {
    local shape=$1 tenants=$2 mode=$3 variant=$4
    local before after output processed failed tps latency
    before=$(total_used)
    output=$(PGOPTIONS="-c synchronous_commit=$mode" "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres \
        -n -M prepared -c "$clients" -j 2 -T "$duration" -D tenants="$tenants" \
        -f "$TALLY_ROOT/bench/$variant.sql" $database 2>&1) || { echo "$output" >&2; die "pgbench failed"; }
    after=$(total_used)
    processed=$(sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p' <<<"$output")
    failed=$(sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p' <<<"$output")
    tps=$(sed -n 's/^tps = \([0-9.]*\) .*/\1/p' <<<"$output")
    latency=$(sed -n 's/^latency average = \([0-9.]*\) ms/\1/p' <<<"$output")
    if [ "${failed:-0}" != 0 ] || [ $((after - before)) != "$processed" ]; then
        die "$variant ($shape, synchronous_commit=$mode): $processed transactions, $failed failed, counters grew by $((after - before))"
    fi
    printf '%-6s %-3s %-8s %8.0f %7.3f   (%s transactions, counters +%s)\n' \
        "$shape" "$mode" "$variant" "$tps" "$latency" "$processed" $((after - before)) >&2
    echo "$shape $mode $variant $tps $latency" >>"$results"
}

say "pgbench: $clients clients, ${duration}s per run, $rounds rounds"
for round in $(seq "$rounds"); do
    for mode in on off; do
        for shape in spread hot; do
            tenants=1000
            if [ $shape = hot ]; then tenants=1; fi
            for variant in floor plpgsql client tally; do
                run $shape $tenants $mode $variant
            done
        done
    done
done

python3 - "$results" "$clients" "$duration" "$rounds" <<'EOF'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
clients, duration, rounds = sys.argv[2:5]
def median(shape, mode, variant, column):
    return statistics.median(float(r[column]) for r in rows if r[:3] == [shape, mode, variant])
print(f"\n{clients} clients, {duration} s per run, median of {rounds} rounds; tps (average latency in ms)\n")
print("| shape | commit | floor | plpgsql | client | tally | tally / floor | tally / plpgsql |")
print("|---|---|---|---|---|---|---|---|")
for mode, label in (("on", "durable"), ("off", "async")):
    for shape in ("spread", "hot"):
        tps = {v: median(shape, mode, v, 3) for v in ("floor", "plpgsql", "client", "tally")}
        lat = {v: median(shape, mode, v, 4) for v in tps}
        cells = " | ".join(f"{tps[v]:.0f} ({lat[v]:.2f})" for v in tps)
        print(f"| {shape} | {label} | {cells} | {tps['tally'] / tps['floor']:.2f} | {tps['tally'] / tps['plpgsql']:.2f} |")
EOF
