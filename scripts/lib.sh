# Shared by scripts/demo.sh, scripts/test.sh and bench/run.sh: setting up this
# machine (idempotent, fast when already done) and running a local Postgres
# cluster for tally. Source it; do not run it.

set -euo pipefail

TALLY_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PG_MAJOR=15
PG_BIN=/usr/lib/postgresql/$PG_MAJOR/bin
PG_CONFIG=$PG_BIN/pg_config
PGRX_VERSION=0.18.1
# Build output lives outside the clone so a fresh clone reuses it.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/tally/target}
export PATH=${CARGO_HOME:-$HOME/.cargo}/bin:$HOME/.cargo/bin:$PATH
# Clusters live where the postgres user can reach them (not under /root).
TALLY_RUN_DIR=${TALLY_RUN_DIR:-/var/tmp/tally}

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# The user that runs Postgres: postgres when we are root (Postgres refuses
# to run as root), else ourselves.
pg_user() {
    if [ "$(id -u)" -eq 0 ]; then echo postgres; else id -un; fi
}

as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

setup_packages() {
    local wanted=(postgresql-$PG_MAJOR postgresql-server-dev-$PG_MAJOR postgresql-contrib libclang-dev
                  build-essential sudo curl ca-certificates python3 python3-venv)
    local missing=()
    for package in "${wanted[@]}"; do
        dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'ok installed' || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        say "installing ${missing[*]}"
        as_root apt-get update -qq
        as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

setup_pgrx() {
    command -v cargo >/dev/null || die "cargo is not installed (install Rust with rustup first)"
    if ! cargo pgrx --version 2>/dev/null | grep -q "$PGRX_VERSION"; then
        say "installing cargo-pgrx $PGRX_VERSION (about 12 minutes on 2 cores, once)"
        cargo install cargo-pgrx --version "$PGRX_VERSION" --locked
    fi
    local config=${PGRX_HOME:-$HOME/.pgrx}/config.toml
    if ! grep -qs "pg$PG_MAJOR = \"$PG_CONFIG\"" "$config"; then
        say "pointing pgrx at Debian's Postgres $PG_MAJOR"
        cargo pgrx init --pg$PG_MAJOR "$PG_CONFIG" >/dev/null
    fi
}

# A Python with the official stripe package, for the test that checks
# tallyd against signatures made by Stripe's own library, and the Standard
# Webhooks package, which verifies the alerts tallyd signs.
TALLY_VENV=${TALLY_VENV:-$HOME/.cache/tally/venv}
STRIPE_PYTHON_VERSION=16.1.0
STANDARDWEBHOOKS_PYTHON_VERSION=1.1.0
setup_python() {
    if ! "$TALLY_VENV/bin/python" -c "import stripe, sys; sys.exit(stripe.VERSION != '$STRIPE_PYTHON_VERSION')" 2>/dev/null; then
        say "installing the stripe Python package $STRIPE_PYTHON_VERSION (for a signature test)"
        python3 -m venv "$TALLY_VENV"
        "$TALLY_VENV/bin/pip" install --quiet --disable-pip-version-check "stripe==$STRIPE_PYTHON_VERSION"
    fi
    if ! "$TALLY_VENV/bin/python" -c "import importlib.metadata as m, sys; sys.exit(m.version('standardwebhooks') != '$STANDARDWEBHOOKS_PYTHON_VERSION')" 2>/dev/null; then
        say "installing the standardwebhooks Python package $STANDARDWEBHOOKS_PYTHON_VERSION (for a signature test)"
        "$TALLY_VENV/bin/pip" install --quiet --disable-pip-version-check "standardwebhooks==$STANDARDWEBHOOKS_PYTHON_VERSION"
    fi
}

setup() {
    setup_packages
    setup_pgrx
}

# Build the extension and install it into Debian's Postgres. The library is
# written under a new name and renamed over the old one: a running backend
# keeps the file it mapped (the old inode lives until it exits), where
# writing into that file in place, as `cargo pgrx install` does, changes
# code under running backends and crashes the server.
install_extension() {
    local profile=${1:-release}
    say "building and installing the tally extension ($profile)"
    local package=$CARGO_TARGET_DIR/tally-package/$profile
    local flags=(--pg-config "$PG_CONFIG" --out-dir "$package")
    if [ "$profile" != release ]; then flags+=(--debug); fi
    (cd "$TALLY_ROOT/extension" && cargo pgrx package "${flags[@]}" >/dev/null)
    local libdir extdir
    libdir=$("$PG_CONFIG" --pkglibdir)
    extdir=$("$PG_CONFIG" --sharedir)/extension
    as_root install -m 644 "$package$extdir"/tally* "$extdir"/
    as_root install -m 755 "$package$libdir/tally.so" "$libdir/.tally.so.new"
    as_root mv -f "$libdir/.tally.so.new" "$libdir/tally.so"
    install_released_scripts
}

# The extension's version, as the code declares it: the workspace's one
# version, asked of cargo rather than parsed by hand.
extension_version() {
    (cd "$TALLY_ROOT" && cargo metadata --no-deps --format-version 1) |
        python3 -c 'import json, sys; print(next(p["version"] for p in json.load(sys.stdin)["packages"] if p["name"] == "tally"))'
}

# Earlier versions' install scripts, so `CREATE EXTENSION tally VERSION '…'`
# and the upgrade test can start from a released version. The current
# version's script is the one cargo pgrx generated from the code.
install_released_scripts() {
    local extdir current script
    extdir=$("$PG_CONFIG" --sharedir)/extension
    current=$(extension_version)
    for script in "$TALLY_ROOT"/sql/released/tally--*.sql; do
        if [ "$(basename "$script")" != "tally--$current.sql" ]; then as_root cp "$script" "$extdir"/; fi
    done
}

# cluster_start NAME PORT: start (creating if needed) a local cluster listening
# on 127.0.0.1:PORT with its socket in its own directory. Trust auth: it is a
# throwaway cluster for the demo and the tests, reachable only locally.
# cluster_start NAME PORT [SERVER OPTIONS]: a cluster of our own, started
# (created first when missing).
cluster_start() {
    local name=$1 port=$2 options=${3:-}
    local dir=$TALLY_RUN_DIR/$name
    as_root mkdir -p "$TALLY_RUN_DIR"
    as_root chmod 1777 "$TALLY_RUN_DIR"
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        say "creating cluster $name in $dir"
        as_root rm -rf "$dir"
        as_pg_user mkdir -p "$dir/data" "$dir/socket"
        as_pg_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync -E UTF8 --locale=C.UTF-8 >/dev/null
    fi
    if as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
        return 0
    fi
    say "starting cluster $name on 127.0.0.1:$port"
    # Without RUST_BACKTRACE: a backend that inherits it sends Rust
    # backtraces to clients in an internal error's DETAIL.
    as_pg_user env -u RUST_BACKTRACE -u RUST_LIB_BACKTRACE "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir/socket -c max_connections=300 -c shared_buffers=256MB $options" \
        >/dev/null || { tail -20 "$dir/postgres.log" >&2; die "cluster $name did not start"; }
}

# Whether Citus is installed in this Postgres. It is not in the package
# registries: an operator builds it (see the README's "Scaling out on
# Citus"); the tests that need it are skipped without it.
citus_available() {
    [ -f "$("$PG_CONFIG" --pkglibdir)/citus.so" ]
}

# citus_start PORT...: one cluster with Citus loaded on each port, the
# first to be the coordinator (the tests add the others as its workers).
citus_start() {
    local port
    for port in "$@"; do
        cluster_start "citus-$port" "$port" "-c shared_preload_libraries=citus -c max_prepared_transactions=100"
    done
}

cluster_stop() {
    local name=$1
    local dir=$TALLY_RUN_DIR/$name
    [ -f "$dir/data/PG_VERSION" ] || return 0
    as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

cluster_url() {
    local port=$1 database=${2:-postgres}
    echo "postgresql://postgres@127.0.0.1:$port/$database"
}

# psql against a local cluster, stopping at the first error.
pg() {
    local port=$1; shift
    "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$port" -U postgres "$@"
}
