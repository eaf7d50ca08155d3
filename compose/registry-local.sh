#!/usr/bin/env bash
# A real Confluent-API-compatible schema registry on 127.0.0.1 without Docker: Apicurio Registry
# (Apache-2.0) from Maven Central, in-memory storage, its Confluent-compatible API at
# /apis/ccompat/v7. For the integration tests and local runs, beside compose/kafka-local.sh.
#
#   compose/registry-local.sh start   fetch the distribution (once), start it, return when the
#                                     ccompat API answers; prints the URL to give diffstream
#   compose/registry-local.sh stop    stop the registry this script started (its recorded pid only)
#   compose/registry-local.sh status  say whether it runs (exit 0) or not (exit 3)
#   compose/registry-local.sh url     print the --schema-registry-url of this state dir's registry
#
# Environment (all optional):
#   REGISTRY_VERSION        Apicurio Registry release (default 3.0.9: the last 3.x line that runs
#                           on Java 17; 3.3.x needs Java 21)
#   REGISTRY_PORT           HTTP port (default 8081)
#   REGISTRY_LOCAL_DIR      state dir: registry.log, pid file (default <repo>/.registry-local)
#   REGISTRY_START_TIMEOUT  seconds to wait for readiness (default 90)
#   REGISTRY_STOP_TIMEOUT   seconds between SIGTERM and SIGKILL (default 20)
#   REGISTRY_HEAP_OPTS      JVM heap (default -Xms64m -Xmx384m)
#   DIFFSTREAM_CACHE        cache root; the unpacked app goes to $DIFFSTREAM_CACHE/apicurio/<version>
#                           (default ~/.cache/diffstream)
#   PYTHON                  python 3 for the readiness probe (stdlib only; default python3)
#   JAVA_HOME               the JDK to run (default: java on PATH)
set -euo pipefail
export LC_NUMERIC=C

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

VERSION="${REGISTRY_VERSION:-3.0.9}"
PORT="${REGISTRY_PORT:-8081}"
HOST=127.0.0.1
START_TIMEOUT="${REGISTRY_START_TIMEOUT:-90}"
STOP_TIMEOUT="${REGISTRY_STOP_TIMEOUT:-20}"
HEAP_OPTS="${REGISTRY_HEAP_OPTS:--Xms64m -Xmx384m}"
CACHE_ROOT="${DIFFSTREAM_CACHE:-$HOME/.cache/diffstream}"
APP_DIR="$CACHE_ROOT/apicurio/$VERSION"
ARTIFACT="io.apicurio:apicurio-registry-app:$VERSION:tar.gz:all"
PY="${PYTHON:-python3}"
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"
API_PATH=/apis/ccompat/v7

STATE_IN="${REGISTRY_LOCAL_DIR:-$REPO/.registry-local}"
mkdir -p "$STATE_IN"
STATE="$(cd "$STATE_IN" && pwd)"
LOG="$STATE/registry.log"
PIDFILE="$STATE/registry.pid"
PORTFILE="$STATE/registry.port"

SERVICE=registry-local
# shellcheck source=compose/local-service.sh
source "$HERE/local-service.sh"

[[ "$PORT" =~ ^[0-9]+$ ]] || die "REGISTRY_PORT must be a port number, got '$PORT'"
[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "REGISTRY_START_TIMEOUT must be whole seconds, got '$START_TIMEOUT'"
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "REGISTRY_STOP_TIMEOUT must be whole seconds, got '$STOP_TIMEOUT'"

# --- the process ---------------------------------------------------------------------------------

# Ours is the JVM running an Apicurio runner with this state dir's marker property
# (compose/local-service.sh).
owns_cmdline() { [[ "$1" == *"-Ddiffstream.registry.state=$STATE "* ]]; }

running_url() {
    local port
    port="$(cat "$PORTFILE" 2>/dev/null || echo "$PORT")"
    echo "http://$HOST:$port$API_PATH"
}

# Ready means the ccompat API answers GET /subjects with a JSON list (the port opens before the
# storage is initialised). Exit codes: 0 ready, 1 timed out, 2 the process went away.
probe_ready() {
    "$PY" - "$1" "$2" "$3" <<'PY'
import json
import os
import sys
import time
import urllib.request

url, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


deadline = time.monotonic() + timeout
last = "no answer yet"
while True:
    if not alive():
        print(f"registry process {pid} exited")
        sys.exit(2)
    try:
        with urllib.request.urlopen(url + "/subjects", timeout=2) as resp:  # noqa: S310
            if isinstance(json.load(resp), list):
                sys.exit(0)
            last = "GET /subjects did not return a list"
    except Exception as exc:  # noqa: BLE001 - any failure just means "not yet"
        last = str(exc)
    if time.monotonic() >= deadline:
        print(f"no registry answered at {url} within {timeout:g} s (last: {last})")
        sys.exit(1)
    time.sleep(0.5)
PY
}

# --- the distribution ----------------------------------------------------------------------------

runner_jar() {
    # 3.0.x ships an uber-jar (<artifact>-runner.jar); later releases a quarkus-app layout.
    local jar
    for jar in "$APP_DIR/apicurio-registry-app-$VERSION-runner.jar" "$APP_DIR/quarkus-run.jar"; do
        [[ -f "$jar" ]] && {
            echo "$jar"
            return 0
        }
    done
    return 1
}

app_complete() { [[ -f "$APP_DIR/.complete" ]] && runner_jar >/dev/null; }

fetch_app() {
    app_complete && return 0
    command -v mvn >/dev/null 2>&1 || die "Apicurio Registry $VERSION is not cached in $APP_DIR and mvn is not installed"
    mkdir -p "$APP_DIR"
    exec 9>"$APP_DIR.lock"
    flock -w 900 9 || die "timed out waiting for another fetch into $APP_DIR"
    if app_complete; then
        exec 9>&-
        return 0
    fi
    local t0="$EPOCHREALTIME" tmp
    log "fetching $ARTIFACT with Maven into $APP_DIR (once, ~110 MB)"
    tmp="$(mktemp -d "$CACHE_ROOT/apicurio/fetch.XXXXXX")"
    if ! (cd "$tmp" && mvn -q -B -ntp -Dstyle.color=never dependency:copy \
        -Dartifact="$ARTIFACT" -DoutputDirectory="$tmp/dist" >"$tmp/mvn.log" 2>&1); then
        tail -n 40 "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not fetch $ARTIFACT (output above)"
    fi
    mkdir -p "$tmp/app"
    tar xzf "$tmp"/dist/*.tar.gz -C "$tmp/app" || {
        rm -rf "$tmp"
        die "could not unpack the $ARTIFACT tarball"
    }
    rm -rf "$APP_DIR"
    mv "$tmp/app" "$APP_DIR"
    rm -rf "$tmp"
    runner_jar >/dev/null || die "unpacked $ARTIFACT but found no runner jar in $APP_DIR"
    echo "$ARTIFACT" >"$APP_DIR/.complete"
    exec 9>&-
    log "fetched in $(elapsed "$t0" "$EPOCHREALTIME") s"
}

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "no java found ('$JAVA'); install a JDK 17+ or set JAVA_HOME"
}

# --- commands ------------------------------------------------------------------------------------

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        probe_ready "$(running_url)" "$pid" "$START_TIMEOUT" >&2 || die "registry (pid $pid) runs but does not answer"
        echo "registry-local: Apicurio Registry $VERSION ready at $(running_url) (pid $pid)"
        return 0
    fi
    rm -f "$PIDFILE"
    command -v setsid >/dev/null 2>&1 || die "setsid (util-linux) is needed to start the registry in its own session"
    check_java
    fetch_app
    port_in_use "$PORT" && die "port $HOST:$PORT is already in use by another process; pick another with REGISTRY_PORT"

    local t0="$EPOCHREALTIME" jar
    jar="$(runner_jar)"
    echo "$PORT" >"$PORTFILE"
    : >"$LOG"
    # In-memory H2 storage (the default): every start is a clean registry, like the test broker.
    # requireEmptyRegistry=false lets the admin import API (/apis/registry/v3/admin/import) add
    # a schema under a chosen id to a registry that already holds others: that is how diffstream
    # puts Rubin's alert schema under Rubin's id (1101 for 11.1; stream/transport/registry.py),
    # which the Confluent-compatible API cannot do (it ignores a requested id).
    # The marker property names this state dir on the command line, so running_pid can tell our
    # JVM from any other. setsid and exec as in kafka-local.sh: the recorded pid is the JVM's.
    # shellcheck disable=SC2086,SC2016 # HEAP_OPTS is a list of JVM flags; $$ is the inner shell's
    setsid bash -c 'cd "$1" && echo $$ >"$0" && exec "${@:2}"' "$PIDFILE" "$STATE" \
        "$JAVA" $HEAP_OPTS -XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
        "-Ddiffstream.registry.state=$STATE" \
        -Dquarkus.http.host="$HOST" -Dquarkus.http.port="$PORT" \
        -Dquarkus.log.console.color=false \
        -Dapicurio.import.requireEmptyRegistry=false \
        -jar "$jar" </dev/null >>"$LOG" 2>&1 &

    local i
    for ((i = 0; i < 100; i++)); do
        pid="$(running_pid)" && break
        sleep 0.05
    done
    [[ -n "${pid:-}" ]] || {
        rm -f "$PIDFILE"
        show_log_tail
        die "the registry did not start (no live process recorded in $PIDFILE)"
    }
    trap 'log "interrupted: stopping pid $pid"; kill -KILL "$pid" 2>/dev/null; rm -f "$PIDFILE"; exit 130' INT TERM
    local rc=0 out
    out="$(probe_ready "$(running_url)" "$pid" "$START_TIMEOUT")" || rc=$?
    if ((rc != 0)); then
        log "$out"
        show_log_tail
        if ((rc == 2)); then
            rm -f "$PIDFILE"
            die "the registry exited during start-up (log: $LOG)"
        fi
        stop_pid "$pid" >/dev/null 2>&1 || true
        die "the registry did not become ready within ${START_TIMEOUT} s; stopped it (log: $LOG)"
    fi
    trap - INT TERM
    echo "registry-local: Apicurio Registry $VERSION ready at $(running_url) (pid $pid, start-up $(elapsed "$t0" "$EPOCHREALTIME") s)"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "registry-local: running, pid $pid, $(running_url), state dir $STATE"
    else
        echo "registry-local: not running (state dir $STATE)"
        return 3
    fi
}

case "${1:-}" in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
url) running_url ;;
*)
    echo "usage: $0 start|stop|status|url" >&2
    exit 2
    ;;
esac
