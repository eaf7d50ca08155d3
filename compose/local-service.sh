#!/usr/bin/env bash
# Shared by kafka-local.sh and registry-local.sh (sourced, not run): logging, the pid-file
# process check, and stopping exactly the process a script started.
#
# The sourcing script sets SERVICE (log prefix), STATE, LOG, PIDFILE, STOP_TIMEOUT and HOST,
# and defines owns_cmdline CMDLINE: true when a command line is its service's on this STATE.

log() { printf '%s: %s\n' "$SERVICE" "$*" >&2; }
die() {
    log "error: $*"
    exit 1
}
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

pid_cmdline() {
    if [[ -r "/proc/$1/cmdline" ]]; then
        tr '\0' ' ' <"/proc/$1/cmdline"
    else
        ps -ww -o args= -p "$1" 2>/dev/null || true
    fi
}

# The pid file alone is not proof: after a reboot or a long pause the number may belong to
# another process, and a zombie has an empty command line; owns_cmdline decides.
running_pid() {
    local pid
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(<"$PIDFILE")"
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    owns_cmdline "$(pid_cmdline "$pid")" || return 1
    echo "$pid"
}

show_log_tail() {
    local file="${1:-$LOG}"
    if [[ -s "$file" ]]; then
        log "last 40 lines of $file:"
        tail -n 40 "$file" >&2
    else
        log "$file is empty or missing"
    fi
}

port_in_use() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# SIGTERM to the recorded pid, wait up to STOP_TIMEOUT, then SIGKILL; never by name.
stop_pid() {
    local pid="$1" t0="$EPOCHREALTIME" i
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        running_pid >/dev/null || break
        sleep 0.1
    done
    if running_pid >/dev/null; then
        log "pid $pid still running after ${STOP_TIMEOUT} s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do
            running_pid >/dev/null || break
            sleep 0.1
        done
    fi
    rm -f "$PIDFILE"
    log "stopped pid $pid in $(elapsed "$t0" "$EPOCHREALTIME") s"
}

cmd_stop() {
    local pid
    if pid="$(running_pid)"; then
        stop_pid "$pid"
    else
        rm -f "$PIDFILE"
        log "not running (state dir $STATE)"
    fi
}
