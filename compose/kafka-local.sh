#!/usr/bin/env bash
# One real Apache Kafka broker on 127.0.0.1 without Docker, for the integration tests and CI.
#
#   compose/kafka-local.sh start    fetch the jars (once), format the KRaft log dir if it is new,
#                                   start one combined broker+controller, return when a client can
#                                   list topics; topics and committed offsets of an earlier run stay
#   compose/kafka-local.sh stop [--wipe]
#                                   stop the broker this script started (its recorded pid only);
#                                   --wipe also deletes the data dir (topics, offsets), so the next
#                                   start formats a fresh one
#   compose/kafka-local.sh restart  stop, then start on the same data (an operator's restart)
#   compose/kafka-local.sh status   say whether it runs (exit 0) or not (exit 3)
#   compose/kafka-local.sh wait     wait until the running broker answers a client
#
# Environment (all optional):
#   KAFKA_VERSION          Apache Kafka release from Maven Central (default 4.1.1)
#   KAFKA_PORT             client (PLAINTEXT) port (default 9092)
#   KAFKA_CONTROLLER_PORT  KRaft controller port (default KAFKA_PORT + 1)
#   KAFKA_LOCAL_DIR        state dir: config, data, broker.log, pid file (default <repo>/.kafka-local)
#   KAFKA_START_TIMEOUT    seconds to wait for readiness (default 90)
#   KAFKA_STOP_TIMEOUT     seconds between SIGTERM and SIGKILL (default 20)
#   KAFKA_HEAP_OPTS        broker heap (default -Xms256m -Xmx512m)
#   DIFFSTREAM_CACHE       cache root; jars go to $DIFFSTREAM_CACHE/kafka/<version>/libs
#                          (default ~/.cache/diffstream)
#   PYTHON                 python with confluent_kafka, for the readiness probe
#                          (default <repo>/.venv/bin/python if present, else python3)
#   JAVA_HOME              the JDK to run (default: java on PATH; Kafka 4.x needs Java 17+)
set -euo pipefail
export LC_NUMERIC=C # EPOCHREALTIME and awk must agree on the decimal point

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"

KAFKA_VERSION="${KAFKA_VERSION:-4.1.1}"
PORT="${KAFKA_PORT:-9092}"
[[ "$PORT" =~ ^[0-9]+$ ]] || {
    echo "kafka-local: error: KAFKA_PORT must be a port number, got '$PORT'" >&2
    exit 1
}
CPORT="${KAFKA_CONTROLLER_PORT:-$((PORT + 1))}"
HOST=127.0.0.1
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-20}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}"
CACHE_ROOT="${DIFFSTREAM_CACHE:-$HOME/.cache/diffstream}"
VERSION_DIR="$CACHE_ROOT/kafka/$KAFKA_VERSION"
LIBS="$VERSION_DIR/libs"
POM="$HERE/kafka-pom.xml"
LOG4J_CONF="$HERE/log4j2.properties"
if [[ -n "${PYTHON:-}" ]]; then
    PY="$PYTHON"
elif [[ -x "$REPO/.venv/bin/python" ]]; then
    PY="$REPO/.venv/bin/python"
else
    PY=python3
fi
JAVA="${JAVA_HOME:+$JAVA_HOME/bin/}java"

STATE_IN="${KAFKA_LOCAL_DIR:-$REPO/.kafka-local}"
mkdir -p "$STATE_IN"
STATE="$(cd "$STATE_IN" && pwd)" # absolute: it is matched against the broker's command line
CONF="$STATE/server.properties"
DATA="$STATE/data"
LOG="$STATE/broker.log"
PIDFILE="$STATE/broker.pid"

SERVICE=kafka-local
# shellcheck source=compose/local-service.sh
source "$HERE/local-service.sh"

[[ "$CPORT" =~ ^[0-9]+$ ]] || die "KAFKA_CONTROLLER_PORT must be a port number, got '$CPORT'"
[[ "$START_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_START_TIMEOUT must be whole seconds, got '$START_TIMEOUT'"
[[ "$STOP_TIMEOUT" =~ ^[0-9]+$ ]] || die "KAFKA_STOP_TIMEOUT must be whole seconds, got '$STOP_TIMEOUT'"
((PORT != CPORT)) || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ, both are $PORT"

# --- the broker process --------------------------------------------------------------------------

# Ours is the JVM running kafka.Kafka on *this* state dir's config (compose/local-service.sh).
owns_cmdline() { [[ "$1" == *kafka.Kafka* && "$1" == *"$CONF"* ]]; }

# The address a running broker actually serves, read from its own config (it may have been
# started with another KAFKA_PORT than the one in this shell).
running_bootstrap() {
    sed -n 's#^advertised.listeners=PLAINTEXT://##p' "$CONF" 2>/dev/null | head -n 1
}

# Ready means a client gets metadata with at least one broker in it, not merely an open port: the
# port opens before the KRaft controller has elected itself and the broker has registered.
# Exit codes of the probe: 0 ready, 1 timed out, 2 the broker process went away, 3 no client.
probe_ready() {
    local bootstrap="$1" pid="$2" timeout="$3"
    "$PY" - "$bootstrap" "$pid" "$timeout" <<'PY'
import os
import sys
import time

try:
    from confluent_kafka.admin import AdminClient
except ImportError as exc:
    print(f"cannot import confluent_kafka with {sys.executable}: {exc}; set PYTHON")
    sys.exit(3)

bootstrap, pid, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])


def alive():
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc (macOS): fall back to signal 0
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True


admin = AdminClient(
    {
        "bootstrap.servers": bootstrap,
        # Refused connections while the broker boots are expected: keep stderr clean, and cap the
        # reconnect back-off (10 s by default) so readiness is seen within a fraction of a second.
        "log_level": 0,
        "error_cb": lambda err: None,
        "reconnect.backoff.max.ms": 500,
    }
)
deadline = time.monotonic() + timeout
last = "no answer yet"
while True:
    if not alive():
        print(f"broker process {pid} exited")
        sys.exit(2)
    try:
        md = admin.list_topics(timeout=max(0.5, min(2.0, deadline - time.monotonic())))
        if md.brokers:
            sys.exit(0)
        last = "metadata without brokers"
    except Exception as exc:  # noqa: BLE001 - any failure just means "not yet"
        last = str(exc)
    if time.monotonic() >= deadline:
        print(f"no broker answered at {bootstrap} within {timeout:g} s (last: {last})")
        sys.exit(1)
    time.sleep(0.25)
PY
}

# --- jars ----------------------------------------------------------------------------------------

check_python() {
    "$PY" -c 'import confluent_kafka' >/dev/null 2>&1 ||
        die "the readiness probe needs a python with confluent_kafka; '$PY' has none (set PYTHON=.venv/bin/python)"
}

check_java() {
    command -v "$JAVA" >/dev/null 2>&1 || die "no java found ('$JAVA'); install a JDK 17+ or set JAVA_HOME"
    local ver major
    ver="$("$JAVA" -version 2>&1 | sed -n 's/.* version "\([^"]*\)".*/\1/p' | head -n 1)"
    major="${ver%%.*}"
    [[ "$major" == 1 ]] && major="$(cut -d. -f2 <<<"$ver")"
    if [[ "$KAFKA_VERSION" == 4.* && "$major" =~ ^[0-9]+$ ]] && ((major < 17)); then
        die "Kafka $KAFKA_VERSION needs Java 17 or newer, '$JAVA' is $ver"
    fi
}

# The marker records what was fetched (version + pom checksum): a changed pom refetches, a half
# copy (no marker) refetches, a complete one never touches the network again.
jars_marker() { printf 'kafka_2.13 %s pom-sha256 %s\n' "$KAFKA_VERSION" "$(sha256sum "$POM" | cut -d' ' -f1)"; }

jars_complete() {
    [[ -f "$LIBS/.complete" && -f "$LIBS/kafka_2.13-$KAFKA_VERSION.jar" ]] &&
        [[ "$(<"$LIBS/.complete")" == "$(jars_marker)" ]]
}

fetch_jars() {
    jars_complete && return 0
    command -v mvn >/dev/null 2>&1 || die "jars for Kafka $KAFKA_VERSION are not cached in $LIBS and mvn is not installed"
    mkdir -p "$VERSION_DIR"
    # Two starts at once (two checkouts, two CI jobs) must not interleave their copies.
    exec 9>"$VERSION_DIR/.lock"
    flock -w 900 9 || die "timed out waiting for another fetch into $VERSION_DIR"
    if jars_complete; then
        exec 9>&-
        return 0
    fi
    local t0="$EPOCHREALTIME" tmp
    log "fetching Apache Kafka $KAFKA_VERSION jars with Maven into $LIBS (once)"
    tmp="$(mktemp -d "$VERSION_DIR/fetch.XXXXXX")"
    # mvn runs on a copy of the pom in a scratch dir, so nothing is written into the repository.
    cp "$POM" "$tmp/pom.xml"
    if ! mvn -q -B -ntp -Dstyle.color=never -f "$tmp/pom.xml" \
        -Dkafka.version="$KAFKA_VERSION" \
        dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$tmp/libs" \
        >"$tmp/mvn.log" 2>&1; then
        tail -n 40 "$tmp/mvn.log" >&2
        rm -rf "$tmp"
        die "mvn could not fetch org.apache.kafka:kafka_2.13:$KAFKA_VERSION (output above)"
    fi
    [[ -f "$tmp/libs/kafka_2.13-$KAFKA_VERSION.jar" ]] || {
        rm -rf "$tmp"
        die "mvn finished but kafka_2.13-$KAFKA_VERSION.jar is not among the copied jars"
    }
    jars_marker >"$tmp/libs/.complete"
    rm -rf "$LIBS"
    mv "$tmp/libs" "$LIBS"
    rm -rf "$tmp"
    exec 9>&-
    log "fetched $(find "$LIBS" -name '*.jar' | wc -l) jars in $(elapsed "$t0" "$EPOCHREALTIME") s"
}

# --- config and format ---------------------------------------------------------------------------

write_config() {
    cat >"$CONF" <<EOF
# Written by compose/kafka-local.sh on each start; edits are lost.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@$HOST:$CPORT
listeners=PLAINTEXT://$HOST:$PORT,CONTROLLER://$HOST:$CPORT
advertised.listeners=PLAINTEXT://$HOST:$PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
controller.listener.names=CONTROLLER
log.dirs=$DATA
num.partitions=1
# One broker: the internal topics' defaults (replication 3) would leave consumer groups and
# init_transactions waiting for replicas that never come.
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# 50 partitions each (the default) are created lazily on the first group join / first
# init_transactions and make that first call take seconds on 2 cores; a handful is plenty here.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
# Tests join groups one after another; the 3 s default delay would be paid on every first join.
group.initial.rebalance.delay.ms=0
# The 128 MiB default dedupe buffer is allocated at start-up and can fail a 512 MiB heap.
log.cleaner.dedupe.buffer.size=2097152
# Sized for a 2-core machine.
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
EOF
}

new_cluster_id() {
    # Kafka's Uuid text form: 16 random bytes, base64url without padding (22 chars). One that
    # starts with '-' would read as an option on the StorageTool command line, so draw again.
    local id
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n')"
        [[ "$id" != -* ]] && break
    done
    echo "$id"
}

# --- commands ------------------------------------------------------------------------------------

report_ready() {
    local pid="$1" started="${2:-}"
    local msg
    msg="Kafka $KAFKA_VERSION ready at $(running_bootstrap) (pid $pid"
    [[ -n "$started" ]] && msg+=", start-up $started s"
    echo "kafka-local: $msg)"
}

wait_for() {
    local pid="$1" rc=0 out
    out="$(probe_ready "$(running_bootstrap)" "$pid" "$START_TIMEOUT")" || rc=$?
    if ((rc != 0)); then
        log "$out"
        return "$rc"
    fi
}

cmd_start() {
    local pid
    if pid="$(running_pid)"; then
        if [[ "$(running_bootstrap)" != "$HOST:$PORT" ]]; then
            log "note: the broker in $STATE already runs on $(running_bootstrap), not $HOST:$PORT"
        fi
        wait_for "$pid" || {
            show_log_tail
            die "broker (pid $pid) is running but did not become ready"
        }
        report_ready "$pid"
        return 0
    fi
    rm -f "$PIDFILE"
    command -v setsid >/dev/null 2>&1 || die "setsid (util-linux) is needed to start the broker in its own session"
    check_python
    check_java
    fetch_jars
    [[ -f "$LOG4J_CONF" ]] || die "missing $LOG4J_CONF"
    port_in_use "$PORT" && die "port $HOST:$PORT is already in use by another process; pick another with KAFKA_PORT"
    port_in_use "$CPORT" && die "port $HOST:$CPORT is already in use by another process; pick another with KAFKA_CONTROLLER_PORT"

    local t0="$EPOCHREALTIME"
    write_config
    # Format only a new log dir (issue 16): a stop/start or a restart keeps every topic and
    # committed offset, like a real broker.  `stop --wipe` is the way to a clean slate.
    if [[ -f "$DATA/meta.properties" ]]; then
        log "reusing the data in $DATA (topics and offsets kept; 'stop --wipe' to start afresh)"
        : >>"$LOG"
    else
        rm -rf "$DATA"
        mkdir -p "$DATA"
        : >"$LOG"
        local cid
        cid="$(new_cluster_id)"
        # Its own log: the tool dumps the whole config at INFO, which would bury the broker's lines.
        if ! "$JAVA" -Xmx512m -Dlog4j2.configurationFile="$LOG4J_CONF" -cp "$LIBS/*" \
            kafka.tools.StorageTool format -t "$cid" -c "$CONF" >"$STATE/format.log" 2>&1; then
            show_log_tail "$STATE/format.log"
            rm -rf "$DATA" # half-formatted: the next start formats again
            die "formatting $DATA failed"
        fi
    fi

    # setsid: the broker gets its own session, so a Ctrl-C or a hang-up aimed at whoever ran
    # `start` (make, pytest) does not reach it; only `stop` ends it. The inner shell writes its own
    # pid and then execs java, so the recorded pid is exactly the JVM's. It runs in the state dir so
    # that it pins no caller's directory and a JVM crash report (hs_err_pid*.log) lands there.
    # shellcheck disable=SC2086,SC2016 # HEAP_OPTS is a list of JVM flags; $$ is the inner shell's
    setsid bash -c 'cd "$1" && echo $$ >"$0" && exec "${@:2}"' "$PIDFILE" "$STATE" \
        "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError \
        -Djava.awt.headless=true -Dlog4j2.configurationFile="$LOG4J_CONF" \
        -cp "$LIBS/*" kafka.Kafka "$CONF" </dev/null >>"$LOG" 2>&1 &

    local i
    for ((i = 0; i < 100; i++)); do
        pid="$(running_pid)" && break
        sleep 0.05
    done
    [[ -n "${pid:-}" ]] || {
        rm -f "$PIDFILE"
        show_log_tail
        die "the broker did not start (no live process recorded in $PIDFILE)"
    }
    # From here on a failed start must not leave a half-started broker behind.
    trap 'log "interrupted: stopping pid $pid"; kill -KILL "$pid" 2>/dev/null; rm -f "$PIDFILE"; exit 130' INT TERM

    local rc=0
    wait_for "$pid" || rc=$?
    if ((rc != 0)); then
        show_log_tail
        if ((rc == 2)); then
            rm -f "$PIDFILE"
            die "the broker exited during start-up (log: $LOG)"
        fi
        stop_pid "$pid" >/dev/null 2>&1 || true
        die "the broker did not become ready within ${START_TIMEOUT} s; stopped it (log: $LOG)"
    fi
    trap - INT TERM
    report_ready "$pid" "$(elapsed "$t0" "$EPOCHREALTIME")"
}

cmd_status() {
    local pid
    if pid="$(running_pid)"; then
        echo "kafka-local: running, pid $pid, $(running_bootstrap), state dir $STATE"
    else
        echo "kafka-local: not running (state dir $STATE)"
        return 3
    fi
}

cmd_wait() {
    local pid
    pid="$(running_pid)" || die "no broker is running from $STATE; use 'start'"
    wait_for "$pid" || {
        show_log_tail
        die "broker (pid $pid) did not become ready"
    }
    report_ready "$pid"
}

cmd_stop_wipe() {
    cmd_stop
    rm -rf "$DATA"
    log "deleted $DATA"
}

case "${1:-}:${2:-}" in
start:) cmd_start ;;
stop:) cmd_stop ;;
stop:--wipe) cmd_stop_wipe ;;
restart:)
    cmd_stop
    cmd_start
    ;;
status:) cmd_status ;;
wait:) cmd_wait ;;
*)
    echo "usage: $0 start|stop [--wipe]|restart|status|wait" >&2
    exit 2
    ;;
esac
