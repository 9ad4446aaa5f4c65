#!/usr/bin/env bash
# Scale-out: tally.check_and_increment_usage over 1,000 tenants through a
# Citus coordinator with two workers (tally distributed, the call delegated
# to the tenant's worker) against the same call on one node, in one run on
# this machine. All four Postgres instances share its cores: this measures
# what the coordinator's routing costs a call, not what more machines add.
# After every run the counters are checked against the calls pgbench made.
#
# Needs Citus installed in this Postgres (see the README's "Scaling out on
# Citus").
#
# Usage: bench/citus.sh [--duration SECONDS] [--rounds N]
source "$(dirname "$0")/../scripts/lib.sh"

duration=10
rounds=3
clients=8
while [ $# -gt 0 ]; do
    case $1 in
        --duration) duration=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) die "unknown argument $1 (--duration, --rounds)" ;;
    esac
done
citus_available || die "Citus is not installed in this Postgres"

single=${TALLY_BENCH_PORT:-5496}
nodes=(5591 5592 5593)
database=tally_bench_citus
setup
install_extension release
cluster_start bench "$single"
citus_start "${nodes[@]}"

say "a distributed tally on ${nodes[0]} (workers ${nodes[1]}, ${nodes[2]}) and one on $single"
for port in "${nodes[@]}"; do
    pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"
    pg "$port" -c "CREATE DATABASE $database"
    pg "$port" -d $database -c "CREATE EXTENSION citus"
done
pg "${nodes[0]}" -d $database -c "SELECT citus_set_coordinator_host('127.0.0.1', ${nodes[0]})" >/dev/null
for port in "${nodes[@]:1}"; do
    pg "${nodes[0]}" -d $database -c "SELECT citus_add_node('127.0.0.1', $port)" >/dev/null
done
pg "$single" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
for port in "$single" "${nodes[0]}"; do
    pg "$port" -d $database -c "CREATE EXTENSION tally"
    pg "$port" -d $database -f "$TALLY_ROOT/bench/citus_setup.sql" >/dev/null
done
# Every tenant's counter exists before the runs (first use is not measured),
# made before distributing: Citus runs no delegated call inside a query over
# a distributed table.
for port in "$single" "${nodes[0]}"; do
    pg "$port" -d $database -c "SELECT count(*) FROM tally.tenants AS t, tally.check_and_increment_usage(t.tenant_id, 'api_calls')" >/dev/null
done
pg "${nodes[0]}" -d $database -c "SELECT tally.distribute()" >/dev/null

results=$(mktemp)
trap 'rm -f "$results"' EXIT
field() { sed -n "s/^$1/\\1/p"; }
used() { "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$1" -U postgres -d $database -c "SELECT sum(used) FROM tally.usage_counters"; }

# run KEY PORT MODE: one pgbench run of bench/tally.sql, checked.
run() {
    local key=$1 port=$2 mode=$3 before after output processed failed tps latency
    before=$(used "$port")
    output=$(PGOPTIONS="-c synchronous_commit=$mode" "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres \
        -n -M prepared -c "$clients" -j 2 -T "$duration" -D tenants=1000 -f "$TALLY_ROOT/bench/tally.sql" \
        $database 2>&1) || { echo "$output" >&2; die "$key: pgbench failed"; }
    after=$(used "$port")
    processed=$(field 'number of transactions actually processed: \([0-9]*\).*' <<<"$output")
    failed=$(field 'number of failed transactions: \([0-9]*\).*' <<<"$output")
    tps=$(field 'tps = \([0-9.]*\) .*' <<<"$output")
    latency=$(field 'latency average = \([0-9.]*\) ms' <<<"$output")
    if [ "${failed:-0}" != 0 ] || [ $((after - before)) != "$processed" ]; then
        die "$key: $processed transactions, $failed failed, counters grew by $((after - before))"
    fi
    printf '%-20s %8.0f tps %7.3f ms   (%s calls, counters +%s)\n' \
        "$key" "$tps" "$latency" "$processed" $((after - before)) >&2
    echo "$key $tps $latency" >>"$results"
}

say "check_and_increment_usage: ${duration}s per run, $rounds rounds, $clients clients"
for _ in $(seq "$rounds"); do
    for mode in on off; do
        run "single-$mode" "$single" $mode
        run "citus-$mode" "${nodes[0]}" $mode
    done
done

python3 - "$results" "$duration" "$rounds" "$clients" <<'PY'
import statistics, sys
path, duration, rounds, clients = sys.argv[1:5]
rows = [line.split() for line in open(path)]
def median(key, column=1):
    return statistics.median(float(r[column]) for r in rows if r[0] == key)
print(f"\nmedian of {rounds} rounds of {duration} s, {clients} clients\n")
print("| commit | one node tps (ms) | coordinator + 2 workers tps (ms) | distributed / one node |")
print("|---|---|---|---|")
for mode, label in (("on", "durable"), ("off", "async")):
    s, c = median(f"single-{mode}"), median(f"citus-{mode}")
    print(f"| {label} | {s:.0f} ({median(f'single-{mode}', 2):.2f}) | {c:.0f} ({median(f'citus-{mode}', 2):.2f}) | {c / s:.2f} |")
PY
