#!/usr/bin/env bash
# Set this machine up (Postgres 15 and its headers, cargo-pgrx) and run every
# check and test of tally: formatting, clippy, the rules crate's tests (no
# Postgres), the extension's unit tests and #[pg_test]s, the guards of
# released SQL, and the integration tests against a local cluster. Ends with
# a summary of every suite; exits non-zero if anything failed.
#
# Usage: scripts/test.sh          (as root, or a user with sudo)
source "$(dirname "$0")/lib.sh"
if [ "$(id -u)" -ne 0 ]; then exec sudo --preserve-env=CARGO_TARGET_DIR "$0" "$@"; fi

port=${TALLY_TEST_PORT:-5498}
log_dir=$(mktemp -d)
summary=()
failed=0

# suite NAME COMMAND...: run one suite, keep its output, remember its result.
suite() {
    local name=$1; shift
    local log=$log_dir/$name.log status=0
    say "$name"
    "$@" 2>&1 | tee "$log" || status=$?
    local passed=0 failures=0 line
    while read -r line; do
        passed=$((passed + $(sed -n 's/.* \([0-9]*\) passed.*/\1/p' <<<"$line")))
        failures=$((failures + $(sed -n 's/.* \([0-9]*\) failed.*/\1/p' <<<"$line")))
    done < <(grep -a 'test result:' "$log" || true)
    if [ $status -ne 0 ]; then
        failed=1
        summary+=("FAILED  $name: exit status $status, $passed passed, $failures failed")
    else
        summary+=("ok      $name: $passed passed")
    fi
}

print_summary() {
    printf '\n\033[1m==> summary\033[0m\n' >&2
    printf '  %s\n' "${summary[@]}" >&2
    if [ $failed -eq 0 ]; then
        printf '\033[1mtally: all suites passed\033[0m\n' >&2
    else
        printf '\033[1mtally: SOME SUITES FAILED\033[0m\n' >&2
    fi
}
trap print_summary EXIT

setup
setup_python
cd "$TALLY_ROOT"

suite fmt cargo fmt --all --check
suite clippy cargo clippy --workspace --all-targets --locked -- -D warnings
suite rules cargo test --locked -p tally-rules

# The extension's unit tests and #[pg_test]s, in a throwaway cluster that
# cargo-pgrx starts as the postgres user.
pgrx_data=$TALLY_RUN_DIR/pgrx-test
mkdir -p "$pgrx_data" && chown postgres: "$pgrx_data" && chmod 1777 "$TALLY_RUN_DIR"
# Without RUST_BACKTRACE, which the throwaway cluster would inherit (see
# cluster_start in lib.sh).
suite extension env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE bash -c "cd extension && cargo pgrx test pg$PG_MAJOR --runas postgres --pgdata '$pgrx_data'"

suite driver cargo test --locked -p tallyd

# Released SQL never changes, and the current version's kept install script
# is what the code generates.
current=$(extension_version)
suite released bash -c "cd extension && cargo pgrx schema pg$PG_MAJOR --out '$log_dir/generated.sql' >/dev/null &&
    python3 ../scripts/check_released.py '$current' '$log_dir/generated.sql'"

# Integration tests against a cluster of our own with the extension
# installed, and the tallyd binary built for the tests that run it.
install_extension debug
cluster_start test "$port"
say "building tallyd"
cargo build --locked -p tallyd
export TALLY_TEST_DATABASE_URL TALLY_TEST_PYTHON=$TALLY_VENV/bin/python
TALLY_TEST_DATABASE_URL=$(cluster_url "$port")
suite integration cargo test --locked --no-fail-fast -p tally-tests -- --skip on_citus_
# Again on databases that installed each earlier released version and
# upgraded it.
for script in sql/released/tally--*.sql; do
    version=${script#sql/released/tally--}
    version=${version%.sql}
    if [ "$version" = "$current" ]; then continue; fi
    suite "integration-upgraded-from-$version" env TALLY_TEST_UPGRADE_FROM="$version" \
        cargo test --locked --no-fail-fast -p tally-tests -- --skip on_citus_
done

# Scale-out: a coordinator and two workers with Citus, when Citus is
# installed here; said loudly when it is not.
if citus_available; then
    citus_ports=("$((port + 93))" "$((port + 94))" "$((port + 95))")
    citus_start "${citus_ports[@]}"
    suite citus env TALLY_TEST_CITUS_PORTS="$(IFS=,; echo "${citus_ports[*]}")" \
        cargo test --locked --no-fail-fast -p tally-tests --test citus --test citus_queue
else
    say "citus: SKIPPED, Citus is not installed in this Postgres"
    summary+=("SKIPPED citus: Citus is not installed in this Postgres (tests/tests/citus.rs did not run)")
fi

# A new build installed under a live session: the server and the session
# survive, and the library file is replaced, not rewritten.
suite live-install bash scripts/check_live_install.sh "$port" debug

exit $failed
