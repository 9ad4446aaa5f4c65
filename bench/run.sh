#!/usr/bin/env bash
# tally's benchmarks, with pgbench, in one run on one cluster. Prints
# Markdown tables of medians over the rounds (progress goes to stderr).
#
# enforcement: check_and_increment_usage against its baselines
#   floor    a bare UPDATE of one counter row (floor.sql)
#   plpgsql  the same contract written the obvious way in PL/pgSQL (baseline.sql)
#   client   read, check and write from the client in one transaction (client.sql)
#   tally    tally.check_and_increment_usage (tally.sql)
#   alerted  the same on a metric with alert thresholds no call crosses
#            (tally_alerted.sql)
#   in two shapes (spread: 1,000 tenants picked at random; hot: one tenant),
#   with durable commits (the default) and with synchronous_commit=off (which
#   leaves the CPU cost of each call visible).
# lifecycle: event locks per second for distinct events; usage reports
#   claimed and completed per second by 4 workers; the cost of writing a
#   usage report on a billed increment (tally_billed.sql against tally.sql).
#
# enforce: tally.enforce_count on an application's table against the same
#   table without it (plain) and against the floor (the same INSERT and a bare
#   UPDATE of its counters in one statement): single-row INSERTs (8 clients,
#   1,000 tenants), a 10,000-row INSERT over 1,000 tenants and one for a single
#   tenant (an import; 1 client),
#   durable and async.
#   Not part of `all`.
#
# After every run the counters (or the queue) are checked against what
# pgbench counted.
#
# Usage: bench/run.sh [enforcement|lifecycle|enforce|all] [--duration SECONDS] [--rounds N]
source "$(dirname "$0")/../scripts/lib.sh"

part=all
duration=15
rounds=3
clients=8
while [ $# -gt 0 ]; do
    case $1 in
        enforcement|lifecycle|enforce|all) part=$1; shift ;;
        --duration) duration=$2; shift 2 ;;
        --rounds) rounds=$2; shift 2 ;;
        *) die "unknown argument $1 (enforcement|lifecycle|all, --duration, --rounds)" ;;
    esac
done

port=${TALLY_BENCH_PORT:-5496}
database=tally_bench
setup
install_extension release
cluster_start bench "$port"
pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
pg "$port" -d $database -f "$TALLY_ROOT/bench/setup.sql" >/dev/null

results=$(mktemp)
trap 'rm -f "$results"' EXIT

scalar() { pg "$port" -d $database -At -c "$1"; }

# pgbench_run MODE CLIENTS SCRIPT [pgbench options...]: prints pgbench's output.
pgbench_run() {
    local mode=$1 n=$2 script=$3 out; shift 3
    if ! out=$(PGOPTIONS="-c synchronous_commit=$mode" "$PG_BIN/pgbench" -h 127.0.0.1 -p "$port" -U postgres \
        -n -M prepared -c "$n" -j 2 -T "$duration" "$@" -f "$TALLY_ROOT/bench/$script.sql" $database 2>&1); then
        echo "$out" >&2
        die "pgbench $script failed"
    fi
    echo "$out"
}

field() { sed -n "s/^$1/\\1/p"; }

# counted RESULT-KEY MODE TENANTS METRIC SCRIPT: one run of a script that adds
# one unit per transaction to METRIC, checked; appends "key tps latency".
counted() {
    local key=$1 mode=$2 tenants=$3 metric=$4 script=$5
    local before after output processed failed tps latency
    before=$(scalar "SELECT sum(used) FROM tally.usage_counters WHERE metric = '$metric'")
    output=$(pgbench_run "$mode" "$clients" "$script" -D tenants="$tenants")
    after=$(scalar "SELECT sum(used) FROM tally.usage_counters WHERE metric = '$metric'")
    processed=$(field 'number of transactions actually processed: \([0-9]*\).*' <<<"$output")
    failed=$(field 'number of failed transactions: \([0-9]*\).*' <<<"$output")
    tps=$(field 'tps = \([0-9.]*\) .*' <<<"$output")
    latency=$(field 'latency average = \([0-9.]*\) ms' <<<"$output")
    if [ "${failed:-0}" != 0 ] || [ $((after - before)) != "$processed" ]; then
        die "$key: $processed transactions, $failed failed, counters grew by $((after - before))"
    fi
    printf '%-28s %8.0f tps %7.3f ms   (%s transactions, counters +%s)\n' \
        "$key" "$tps" "$latency" "$processed" $((after - before)) >&2
    echo "$key $tps $latency" >>"$results"
}

warm_up() {
    say "warming up"
    local saved=$duration
    duration=5
    pgbench_run on "$clients" floor -D tenants=1000 >/dev/null
    pgbench_run on "$clients" tally -D tenants=1000 >/dev/null
    duration=$saved
}

enforcement() {
    say "enforcement: $clients clients, ${duration}s per run, $rounds rounds"
    for _ in $(seq "$rounds"); do
        for mode in on off; do
            for shape in spread hot; do
                tenants=1000
                if [ $shape = hot ]; then tenants=1; fi
                for variant in floor plpgsql client tally; do
                    counted "$shape-$mode-$variant" $mode $tenants api_calls $variant
                done
                counted "$shape-$mode-alerted" $mode $tenants alerted_calls tally_alerted
            done
        done
    done
}

lifecycle() {
    say "lifecycle: ${duration}s per run, $rounds rounds"
    local batch=100 workers=4
    for _ in $(seq "$rounds"); do
        for mode in on off; do
            # Event locks, each a new event id.
            local before after output
            before=$(scalar "SELECT count(*) FROM tally.provider_events")
            output=$(pgbench_run $mode "$clients" event_lock)
            after=$(scalar "SELECT count(*) FROM tally.provider_events")
            local tps
            tps=$(field 'tps = \([0-9.]*\) .*' <<<"$output")
            [ $((after - before)) = "$(field 'number of transactions actually processed: \([0-9]*\).*' <<<"$output")" ] \
                || die "event locks: rows and transactions differ"
            printf '%-28s %8.0f locks/s\n' "events-$mode" "$tps" >&2
            echo "events-$mode $tps 0" >>"$results"

            # Claim and complete, 4 workers, batches of 100, on a full queue.
            scalar "INSERT INTO tally.usage_reports (tenant_id, metric, event_name, units)
                    SELECT 't' || (n % 1000 + 1), 'billed_calls', 'api_calls', 1
                      FROM generate_series(1, 400000) AS n" >/dev/null
            before=$(scalar "SELECT count(*) FROM tally.usage_reports WHERE status = 'completed'")
            output=$(pgbench_run $mode $workers claim_complete -D batch=$batch)
            after=$(scalar "SELECT count(*) FROM tally.usage_reports WHERE status = 'completed'")
            [ "$(scalar "SELECT count(*) FROM tally.usage_reports WHERE status = 'completed' AND attempts <> 1")" = 0 ] \
                || die "a report was claimed twice"
            local per_second
            per_second=$(( (after - before) / duration ))
            printf '%-28s %8d reports/s (%s completed)\n' "queue-$mode" "$per_second" $((after - before)) >&2
            echo "queue-$mode $per_second 0" >>"$results"
            # Start each run from an empty, vacuumed queue: the rows deleted
            # here would otherwise sit as dead entries at the front of the
            # queue's index until autovacuum reaches them.
            scalar "DELETE FROM tally.usage_reports" >/dev/null
            scalar "VACUUM tally.usage_reports" >/dev/null

            # The cost of writing the report: billed against unbilled, spread.
            counted "unbilled-$mode" $mode 1000 api_calls tally
            counted "billed-$mode" $mode 1000 billed_calls tally_billed
            scalar "DELETE FROM tally.usage_reports" >/dev/null
            scalar "VACUUM tally.usage_reports" >/dev/null
        done
    done
}

# enforce_run KEY MODE CLIENTS SCRIPT ROWS-PER-TRANSACTION: one run, then the
# enforced table's counters are checked against its rows and both tables
# emptied; appends "key rows/s latency".
enforce_run() {
    local key=$1 mode=$2 n=$3 script=$4 per=$5 output processed failed tps latency
    output=$(pgbench_run "$mode" "$n" "$script" -D tenants=1000)
    processed=$(field 'number of transactions actually processed: \([0-9]*\).*' <<<"$output")
    failed=$(field 'number of failed transactions: \([0-9]*\).*' <<<"$output")
    tps=$(field 'tps = \([0-9.]*\) .*' <<<"$output")
    latency=$(field 'latency average = \([0-9.]*\) ms' <<<"$output")
    [ "${failed:-0}" = 0 ] || die "$key: $failed failed"
    [ "$(scalar "SELECT (SELECT coalesce(sum(used), 0) FROM tally.usage_counters WHERE metric = 'bench_rows')
                      = (SELECT count(*) FROM bench_enforced)")" = t ] \
        || die "$key: the counters differ from the rows"
    printf '%-28s %8.0f tps %9.3f ms   (%s transactions of %s rows)\n' \
        "$key" "$tps" "$latency" "$processed" "$per" >&2
    echo "$key $tps $latency" >>"$results"
    scalar "TRUNCATE bench_plain, bench_enforced" >/dev/null
    scalar "VACUUM bench_plain, bench_enforced" >/dev/null
}

enforce() {
    pg "$port" -d $database -f "$TALLY_ROOT/bench/enforce_setup.sql" >/dev/null
    say "enforce: ${duration}s per run, $rounds rounds"
    for _ in $(seq "$rounds"); do
        for mode in on off; do
            enforce_run "single-$mode-plain" $mode "$clients" enforce_insert_plain 1
            enforce_run "single-$mode-floor" $mode "$clients" enforce_insert_floor 1
            enforce_run "single-$mode-enforced" $mode "$clients" enforce_insert 1
            enforce_run "bulk-$mode-plain" $mode 1 enforce_bulk_plain 10000
            enforce_run "bulk-$mode-floor" $mode 1 enforce_bulk_floor 10000
            enforce_run "bulk-$mode-enforced" $mode 1 enforce_bulk 10000
            enforce_run "import-$mode-plain" $mode 1 enforce_import_plain 10000
            enforce_run "import-$mode-floor" $mode 1 enforce_import_floor 10000
            enforce_run "import-$mode-enforced" $mode 1 enforce_import 10000
        done
    done
}

warm_up
case $part in
    enforcement) enforcement ;;
    lifecycle) lifecycle ;;
    enforce) enforce ;;
    all) enforcement; lifecycle ;;
esac

python3 - "$results" "$clients" "$duration" "$rounds" "$part" <<'EOF'
import statistics, sys
path, clients, duration, rounds, part = sys.argv[1:6]
rows = [line.split() for line in open(path)]
def median(key, column=1):
    values = [float(r[column]) for r in rows if r[0] == key]
    return statistics.median(values) if values else float("nan")
print(f"\nmedian of {rounds} rounds of {duration} s")
if part in ("enforcement", "all"):
    print(f"\n{clients} clients; tps (average latency in ms)\n")
    print("| shape | commit | floor | plpgsql | client | tally | tally, thresholds | tally / floor | tally / plpgsql | thresholds / tally |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for mode, label in (("on", "durable"), ("off", "async")):
        for shape in ("spread", "hot"):
            key = lambda v: f"{shape}-{mode}-{v}"
            tps = {v: median(key(v)) for v in ("floor", "plpgsql", "client", "tally", "alerted")}
            lat = {v: median(key(v), 2) for v in tps}
            cells = " | ".join(f"{tps[v]:.0f} ({lat[v]:.2f})" for v in tps)
            print(f"| {shape} | {label} | {cells} | {tps['tally'] / tps['floor']:.2f} | {tps['tally'] / tps['plpgsql']:.2f} | {tps['alerted'] / tps['tally']:.2f} |")
if part == "enforce":
    print("\n| commit | single-row INSERT tps: plain | floor | enforced | enforced / plain | enforced / floor |")
    print("|---|---|---|---|---|---|")
    for mode, label in (("on", "durable"), ("off", "async")):
        sp, sf, se = (median(f"single-{mode}-{v}") for v in ("plain", "floor", "enforced"))
        print(f"| {label} | {sp:.0f} | {sf:.0f} | {se:.0f} | {se / sp:.2f} | {se / sf:.2f} |")
    print("\n| commit | 10,000-row INSERT ms: plain | floor | enforced | floor overhead | enforced overhead |")
    print("|---|---|---|---|---|---|")
    for mode, label in (("on", "durable"), ("off", "async")):
        bp, bf, be = (median(f"bulk-{mode}-{v}", 2) for v in ("plain", "floor", "enforced"))
        print(f"| {label} | {bp:.1f} | {bf:.1f} | {be:.1f} | {(bf / bp - 1) * 100:+.0f}% | {(be / bp - 1) * 100:+.0f}% |")
    print("\n| commit | 10,000-row INSERT for one tenant ms: plain | floor | enforced | floor overhead | enforced overhead |")
    print("|---|---|---|---|---|---|")
    for mode, label in (("on", "durable"), ("off", "async")):
        ip, if_, ie = (median(f"import-{mode}-{v}", 2) for v in ("plain", "floor", "enforced"))
        print(f"| {label} | {ip:.1f} | {if_:.1f} | {ie:.1f} | {(if_ / ip - 1) * 100:+.0f}% | {(ie / ip - 1) * 100:+.0f}% |")
if part in ("lifecycle", "all"):
    print(f"\n| commit | event locks/s ({clients} clients) | reports claimed + completed/s (4 workers) | unbilled tps | billed tps | billed / unbilled |")
    print("|---|---|---|---|---|---|")
    for mode, label in (("on", "durable"), ("off", "async")):
        unbilled, billed = median(f"unbilled-{mode}"), median(f"billed-{mode}")
        print(f"| {label} | {median(f'events-{mode}'):.0f} | {median(f'queue-{mode}'):.0f} | {unbilled:.0f} | {billed:.0f} | {billed / unbilled:.2f} |")
EOF
