#!/usr/bin/env bash
# Run a command, and start it again when it crashes: the restart policy of systemd's
# Restart=on-failure for machines (or containers) without a service manager.
# scripts/start_transcription_service.sh --no-docker runs the service under it.
#
#   scripts/supervise.sh [--pid-file FILE] -- COMMAND [ARG...]
#
# After a crash (any exit but 0 and 2, or death by a signal) the command is started again
# after a pause that doubles from SUPERVISE_BACKOFF up to SUPERVISE_MAX_BACKOFF seconds (back
# to the start once a run lasted SUPERVISE_INTERVAL). At most SUPERVISE_BURST restarts within
# SUPERVISE_INTERVAL seconds: the next crash leaves it down, with a message saying so. Exit 0
# (a clean stop) and exit 2 (a usage or configuration error, which a restart cannot fix) end
# the supervision too. SIGTERM, SIGINT and SIGHUP are passed on to the command, whose end is
# then awaited: the supervisor stops with it.
#
# Options:
#   --pid-file FILE   keep the running command's pid in FILE (removed when supervision ends)
#   -h, --help        this text
# Environment (defaults as systemd's unit): SUPERVISE_BURST (3), SUPERVISE_INTERVAL (300),
# SUPERVISE_BACKOFF (1), SUPERVISE_MAX_BACKOFF (30).
# Exit status: the command's, once it stopped for good; 1 when it was left down after crashing;
# 64 bad usage. Messages start with "supervisor:" and go to stderr.
set -uo pipefail

BURST=${SUPERVISE_BURST:-3}
INTERVAL=${SUPERVISE_INTERVAL:-300}
BACKOFF=${SUPERVISE_BACKOFF:-1}
MAX_BACKOFF=${SUPERVISE_MAX_BACKOFF:-30}
PID_FILE=""

say() { echo "supervisor: $*" >&2; }
usage_error() {
    echo "supervisor: $*" >&2
    echo "usage: scripts/supervise.sh [--pid-file FILE] -- COMMAND [ARG...] (see --help)" >&2
    exit 64
}

while [ $# -gt 0 ]; do
    case "$1" in
        --pid-file)
            [ $# -ge 2 ] || usage_error "--pid-file needs a value"
            PID_FILE=$2
            shift 2
            ;;
        --)
            shift
            break
            ;;
        -h | --help)
            sed -n '2,23s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done
[ $# -gt 0 ] || usage_error "no command to run"
for value in "$BURST" "$INTERVAL"; do
    [[ $value =~ ^[0-9]+$ ]] || usage_error "SUPERVISE_BURST and SUPERVISE_INTERVAL must be whole numbers"
done
for value in "$BACKOFF" "$MAX_BACKOFF"; do
    [[ $value =~ ^[0-9]+([.][0-9]+)?$ ]] || usage_error "SUPERVISE_BACKOFF and SUPERVISE_MAX_BACKOFF must be numbers of seconds"
done

child=""
pause=""
stopping=""
restarts=() # when each restart within the last INTERVAL seconds happened ($SECONDS)

# A stop for the supervisor is a stop for the command: pass the signal on, then wait for it.
forward() {
    stopping=$1
    if [ -n "$child" ]; then kill "-$1" "$child" 2>/dev/null || true; fi
    if [ -n "$pause" ]; then kill "$pause" 2>/dev/null || true; fi
}
trap 'forward TERM' TERM
trap 'forward INT' INT
trap 'forward HUP' HUP

finish() {
    if [ -n "$PID_FILE" ]; then rm -f "$PID_FILE"; fi
    exit "$1"
}

# $1 seconds times 2, capped at MAX_BACKOFF (bash has no floating point: awk does it).
doubled() { awk -v d="$1" -v m="$MAX_BACKOFF" 'BEGIN { d *= 2; if (d > m) d = m; print d }'; }

# Why the command ended, in words, from its wait status.
describe() {
    if [ "$1" -gt 128 ] && name=$(kill -l "$(($1 - 128))" 2>/dev/null); then
        echo "was killed by SIG$name"
    else
        echo "exited with status $1"
    fi
}

delay=$BACKOFF
while true; do
    started=$SECONDS
    "$@" &
    child=$!
    if [ -n "$PID_FILE" ]; then echo "$child" >"$PID_FILE"; fi
    status=0
    wait "$child" || status=$?
    # A trapped signal ends `wait` early: wait on until the command has really ended.
    while kill -0 "$child" 2>/dev/null; do
        status=0
        wait "$child" || status=$?
    done
    child=""
    lived=$((SECONDS - started))
    if [ -n "$stopping" ]; then
        say "stopped (SIG$stopping passed on; the command $(describe "$status"))"
        finish "$status"
    fi
    if [ "$status" -eq 0 ]; then
        say "the command exited cleanly; not restarting it"
        finish 0
    fi
    if [ "$status" -eq 2 ]; then
        say "the command exited with status 2 (a usage or configuration error): not restarting it"
        finish 2
    fi
    recent=()
    for at in "${restarts[@]}"; do
        if [ $((SECONDS - at)) -lt "$INTERVAL" ]; then recent+=("$at"); fi
    done
    restarts=("${recent[@]}")
    if [ "${#restarts[@]}" -ge "$BURST" ]; then
        say "gave up: the command $(describe "$status"), its ${#restarts[@]} restarts within ${INTERVAL}s are the limit; left down. Fix the cause (its log is above), then start it again."
        finish 1
    fi
    if [ "$lived" -ge "$INTERVAL" ]; then delay=$BACKOFF; fi
    say "the command $(describe "$status") after ${lived}s; restarting it in ${delay}s (restart $((${#restarts[@]} + 1)) of at most $BURST within ${INTERVAL}s)"
    sleep "$delay" &
    pause=$!
    wait "$pause" 2>/dev/null
    pause=""
    if [ -n "$stopping" ]; then
        say "stopped (SIG$stopping) while waiting to restart"
        finish 0
    fi
    delay=$(doubled "$delay")
    restarts+=("$SECONDS")
done
