#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 without Docker, for the APDB tests and CI.
#
#   compose/postgres-local.sh start    initdb a fresh cluster in a temp dir, start it, create
#                                      the database, return when it accepts connections
#   compose/postgres-local.sh stop     stop the server this script started and delete its dir
#   compose/postgres-local.sh status   say whether it runs (exit 0) or not (exit 3)
#   compose/postgres-local.sh url      print the URL to give --apdb / DIFFSTREAM_TEST_APDB
#   compose/postgres-local.sh pause    stop the server, keeping its data (outage tests)
#   compose/postgres-local.sh resume   start a paused server again, same port and data
#
# initdb refuses to run as root (CI runs as root): the server runs as an unprivileged system
# user (PG_LOCAL_USER, default postgres, created if missing) through runuser.  The binaries are
# Debian's PostgreSQL (postgresql-15; installed with apt-get when missing and we are root).
#
# Environment (all optional):
#   PGPORT            port (default 5432; the tests use the one they are given)
#   PG_LOCAL_DIR      state file dir (default <repo>/.postgres-local/PORT): url, data dir path
#   PG_LOCAL_USER     system user that runs the server (default postgres)
#   PG_BIN            folder of initdb/pg_ctl (default: newest /usr/lib/postgresql/*/bin)
#   PG_DATABASE       database to create (default apdb)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
PORT="${PGPORT:-5432}"
[[ "$PORT" =~ ^[0-9]+$ ]] || {
    echo "postgres-local: error: PGPORT must be a port number, got '$PORT'" >&2
    exit 1
}
# One state dir per port: servers on two ports never mistake each other for themselves.
STATE="${PG_LOCAL_DIR:-$REPO/.postgres-local/$PORT}"
RUN_AS="${PG_LOCAL_USER:-postgres}"
DB="${PG_DATABASE:-apdb}"
[[ "$(id -u)" == 0 ]] || RUN_AS="$(id -un)" # an unprivileged user runs its own server

find_bin() {
    if [[ -n "${PG_BIN:-}" ]]; then echo "$PG_BIN"; return; fi
    local found
    found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    if [[ -z "$found" && "$(id -u)" == 0 ]]; then
        echo "postgres-local: installing Debian's postgresql-15" >&2
        apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            postgresql-15 >&2
        found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1 || true)"
    fi
    [[ -n "$found" ]] || { echo "postgres-local: error: no PostgreSQL binaries" >&2; exit 1; }
    echo "$found"
}

as_user() {
    if [[ "$(id -u)" == 0 ]]; then
        runuser -u "$RUN_AS" -- "$@"
    else
        "$@"  # an unprivileged user runs its own server
    fi
}

running() {
    [[ -f "$STATE/datadir" ]] || return 1
    local bin
    bin="$(find_bin)"
    as_user "$bin/pg_ctl" -D "$(cat "$STATE/datadir")" status >/dev/null 2>&1
}

url() { echo "postgresql://$RUN_AS@127.0.0.1:$PORT/$DB"; }

server_up() {
    local bin="$1" data="$2"
    # Sockets in the data dir (no write access to /var/run/postgresql needed); tuned for
    # throwaway tests: no fsync.
    as_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w -t 60 \
        -o "-p $PORT -k $data -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off -c synchronous_commit=off -c max_connections=200" \
        start >/dev/null || {
        cat "$data/server.log" >&2
        exit 1
    }
}

# pause / resume: stop the server keeping its data, start it again on the same port (the
# APDB outage test: an unreachable database must be waited for, not dead-lettered).
pause() {
    [[ -f "$STATE/datadir" ]] || { echo "postgres-local: not started here" >&2; exit 1; }
    as_user "$(find_bin)/pg_ctl" -D "$(cat "$STATE/datadir")" -m fast -w stop >/dev/null
    echo "postgres-local: paused (data kept)"
}

resume() {
    [[ -f "$STATE/datadir" ]] || { echo "postgres-local: not started here" >&2; exit 1; }
    if running; then echo "postgres-local: already running"; return 0; fi
    server_up "$(find_bin)" "$(cat "$STATE/datadir")"
    echo "postgres-local: resumed at $(cat "$STATE/url")"
}

start() {
    if running; then
        echo "postgres-local: already running ($(cat "$STATE/url"))"
        return 0
    fi
    local bin data
    bin="$(find_bin)"
    if [[ "$(id -u)" == 0 ]] && ! id "$RUN_AS" >/dev/null 2>&1; then
        useradd --system --no-create-home --shell /usr/sbin/nologin "$RUN_AS"
    fi
    mkdir -p "$STATE"
    data="$(mktemp -d /tmp/diffstream-pg.XXXXXX)"
    [[ "$(id -u)" == 0 ]] && chown "$RUN_AS" "$data"
    chmod 700 "$data"
    echo "$data" >"$STATE/datadir"
    as_user "$bin/initdb" -D "$data" -U "$RUN_AS" --auth=trust -E UTF8 --no-sync >"$STATE/initdb.log" 2>&1 || {
        cat "$STATE/initdb.log" >&2
        exit 1
    }
    server_up "$bin" "$data"
    as_user "$bin/createdb" -h 127.0.0.1 -p "$PORT" -U "$RUN_AS" "$DB"
    url >"$STATE/url"
    echo "postgres-local: running at $(cat "$STATE/url") (data $data)"
}

stop() {
    if ! [[ -f "$STATE/datadir" ]]; then
        echo "postgres-local: not started here"
        return 0
    fi
    local bin data
    bin="$(find_bin)"
    data="$(cat "$STATE/datadir")"
    as_user "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$data" "$STATE/datadir" "$STATE/url"
    echo "postgres-local: stopped"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
pause) pause ;;
resume) resume ;;
status)
    if running; then echo "postgres-local: running at $(cat "$STATE/url")"; else
        echo "postgres-local: not running"
        exit 3
    fi
    ;;
url) url ;;
*)
    echo "usage: $0 start|stop|pause|resume|status|url" >&2
    exit 2
    ;;
esac
