#!/usr/bin/env bash
# A new build of tally installed under a live session: the session that has
# the library loaded keeps working, the server does not restart, and the
# library file is a new one (renamed into place, not rewritten in place).
# Run by scripts/test.sh against its test cluster; prints a test result line.
#
# Usage: scripts/check_live_install.sh PORT PROFILE
source "$(dirname "$0")/lib.sh"
port=$1 profile=$2
database=tally_live_install
libdir=$("$PG_CONFIG" --pkglibdir)
pidfile=$TALLY_RUN_DIR/test/data/postmaster.pid

pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
pg "$port" -d $database -c "CREATE EXTENSION tally" \
    -c "INSERT INTO tally.metrics VALUES ('calls', 'consumable')" \
    -c "INSERT INTO tally.plans (plan_id, is_default) VALUES ('free', true)" \
    -c "INSERT INTO tally.plan_limits VALUES ('free', 'calls', NULL)" \
    -c "INSERT INTO tally.tenants (tenant_id) VALUES ('acme')"

output=$(mktemp)
fifo=$(mktemp -u)
mkfifo "$fifo"
trap 'rm -f "$output" "$fifo"' EXIT
"$PG_BIN/psql" -X -q -At -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres -d $database <"$fifo" >"$output" 2>&1 &
session=$!
exec 3>"$fifo"
call="SELECT used FROM tally.check_and_increment_usage('acme', 'calls');"
echo "SELECT pg_backend_pid(); $call" >&3

postmaster_before=$(head -1 "$pidfile")
inode_before=$(stat -c %i "$libdir/tally.so")
sleep 1
install_extension "$profile"
inode_after=$(stat -c %i "$libdir/tally.so")

echo "SELECT pg_backend_pid(); $call" >&3
exec 3>&-
status=0
wait $session || status=$?
postmaster_after=$(head -1 "$pidfile")

failures=()
[ $status -eq 0 ] || failures+=("the live session failed (exit $status): $(tr '\n' ' ' <"$output")")
[ "$postmaster_before" = "$postmaster_after" ] || failures+=("the server restarted")
[ "$inode_before" != "$inode_after" ] || failures+=("tally.so was rewritten in place (same inode)")
mapfile -t lines <"$output"
if [ "${lines[*]}" != "${lines[0]} 1 ${lines[0]} 2" ]; then
    failures+=("the session did not go on in the same backend: ${lines[*]}")
fi
pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)"

if [ ${#failures[@]} -gt 0 ]; then
    printf 'FAIL %s\n' "${failures[@]}" >&2
    echo "test result: FAILED. 0 passed; 1 failed"
    exit 1
fi
echo "a session kept its backend and its count across a new install; the library is a new file"
echo "test result: ok. 1 passed; 0 failed"
