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
say "building tallyd"
(cd "$TALLY_ROOT" && cargo build --release --locked -p tallyd 2>&1 | tail -1)
tallyd=$CARGO_TARGET_DIR/release/tallyd
cluster_start demo "$port"

say "a fresh database: $database"
pg "$port" -c "DROP DATABASE IF EXISTS $database WITH (FORCE)" -c "CREATE DATABASE $database"
export DATABASE_URL
DATABASE_URL=$(cluster_url "$port" $database)
"$tallyd" migrate

pg "$port" -d $database -f "$TALLY_ROOT/scripts/demo.sql"

cat <<MSG

The demo cluster keeps running. Try it yourself:
  psql $DATABASE_URL
Stop it with:
  runuser -u postgres -- $PG_BIN/pg_ctl -D $TALLY_RUN_DIR/demo/data stop
MSG
