#!/usr/bin/env bash
# A PostgreSQL for the tracking-server tests (tests/integration/test_server.py), idempotent:
#   - installs Debian's `postgresql` (apt-get, as root) only when no PostgreSQL server binaries exist;
#   - creates a cluster of its own in $QUANTML_PG_DIR (default /tmp/quantml-postgres) on
#     127.0.0.1:$QUANTML_PG_PORT (default 54329), owned by the `postgres` user when run as root
#     (PostgreSQL refuses to run as root), by the calling user otherwise;
#   - starts it only when it is not running, and creates the role and database `quantml`.
# Prints ONE line on stdout, the DSN the tests read (everything else goes to stderr):
#   export QUANTML_TEST_POSTGRES="$(.ci/postgres.sh)"      # .ci/run does this
#   .ci/postgres.sh stop                                   # stop the cluster (its data stays)
set -euo pipefail

PG_DIR=${QUANTML_PG_DIR:-/tmp/quantml-postgres}
PG_PORT=${QUANTML_PG_PORT:-54329}
ROLE=quantml
PASSWORD=quantml
DB=quantml
DATA="$PG_DIR/data"

say() { echo "postgres.sh: $*" >&2; }

bin_dir() {  # the newest installed PostgreSQL's bin directory (Debian: /usr/lib/postgresql/<ver>/bin)
    local d
    for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
        if [ -x "$d/postgres" ] && [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then echo "$d"; return 0; fi
    done
    if command -v pg_ctl >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
        dirname "$(readlink -f "$(command -v pg_ctl)")"
        return 0
    fi
    return 1
}

BIN=$(bin_dir || true)
if [ "${1:-}" = "stop" ]; then
    [ -n "$BIN" ] && [ -f "$DATA/PG_VERSION" ] || { say "no cluster in $DATA"; exit 0; }
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true
    else "$BIN/pg_ctl" -D "$DATA" -m fast stop >&2 || true; fi
    exit 0
fi

if [ -z "$BIN" ]; then
    if [ "$(id -u)" != 0 ]; then
        say "error: PostgreSQL is not installed; install it (as root: apt-get install -y postgresql) and rerun"
        exit 1
    fi
    say "installing PostgreSQL (apt-get install postgresql)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends postgresql >&2
    BIN=$(bin_dir) || { say "error: apt-get installed postgresql but no pg_ctl/postgres/initdb was found"; exit 1; }
fi

# who runs the server: `postgres` when we are root, else ourselves
if [ "$(id -u)" = 0 ]; then
    id postgres >/dev/null 2>&1 || useradd --system --no-create-home --shell /bin/sh postgres
    as_owner() { runuser -u postgres -- "$@"; }
    OWNER=postgres
else
    as_owner() { "$@"; }
    OWNER=$(id -un)
fi

mkdir -p "$PG_DIR"
chown "$OWNER" "$PG_DIR"
chmod 755 "$PG_DIR"
cd "$PG_DIR"  # the postgres user may not enter the caller's directory (a root-owned checkout)
if [ ! -f "$DATA/PG_VERSION" ]; then
    say "initdb $DATA ($("$BIN/postgres" --version), owner $OWNER)"
    rm -rf "$DATA"
    as_owner "$BIN/initdb" -D "$DATA" -U postgres -E UTF8 --locale=C \
        --auth-local=trust --auth-host=scram-sha-256 >"$PG_DIR/initdb.log" 2>&1 \
        || { cat "$PG_DIR/initdb.log" >&2; say "error: initdb failed (log above)"; exit 1; }
fi

if as_owner "$BIN/pg_ctl" -D "$DATA" status >/dev/null 2>&1; then
    say "already running ($DATA)"
else
    # test data only: no fsync, so the suite does not wait on the disk
    if ! as_owner "$BIN/pg_ctl" -D "$DATA" -l "$PG_DIR/server.log" -w -t 60 start \
        -o "-p $PG_PORT -k $PG_DIR -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" \
        >&2; then
        tail -n 20 "$PG_DIR/server.log" >&2 || true
        say "error: PostgreSQL did not start on 127.0.0.1:$PG_PORT (log above; port taken? set QUANTML_PG_PORT=...)"
        exit 1
    fi
fi

psql_admin() { "$BIN/psql" -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"; }
[ -x "$BIN/psql" ] || psql_admin() { psql -h "$PG_DIR" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -tAq "$@"; }
if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname = '$ROLE'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $ROLE LOGIN CREATEDB PASSWORD '$PASSWORD'" >&2
fi
if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB OWNER $ROLE" >&2
fi
say "ready: 127.0.0.1:$PG_PORT (role and database $DB)"
echo "postgresql+psycopg://$ROLE:$PASSWORD@127.0.0.1:$PG_PORT/$DB"
