#!/usr/bin/env bash
# Start the Whisper transcription service and wait until its model is loaded.
# scripts/start_transcription_service.ps1 is its PowerShell twin: same options, same messages.
#
# In Docker (the default): a container named codex-transcription-service, restarted unless
# stopped, port 8765 published, jobs in the volume codex-transcription-storage and models in
# codex-transcription-models (the same ones docker-compose.yml uses). The image is built first
# when it is missing. A running container is only reported; a stopped one is started again.
#
#   scripts/start_transcription_service.sh [--port N] [--model NAME] [--gpu] [--build]
#   scripts/start_transcription_service.sh --stop
#
# Without Docker: `python -m service` from the repository's .venv (bash scripts/install.sh),
# in the background under scripts/supervise.sh, which restarts it after a crash (at most 3
# times in 5 minutes, then it is left down and the log says why), with service.pid,
# supervisor.pid and service.log in the storage directory. With --systemd, as a systemd unit
# instead (`python -m service install-service`, then systemctl enable --now): started at boot,
# restarted after a crash or when its watchdog goes quiet. As root a system unit, else a user
# unit (systemctl --user).
#
#   scripts/start_transcription_service.sh --no-docker [--port N] [--model NAME] [--gpu]
#   scripts/start_transcription_service.sh --no-docker --stop
#   scripts/start_transcription_service.sh --systemd [--port N] [--model NAME] [--gpu] [--stop]
#
# Options:
#   --port N           port on this machine (default 8765)
#   --model NAME       model to serve (default: the image's, large-v3; without Docker the
#                      service's, tiny.en); with Docker, also the model baked into a new image
#   --gpu              run on an NVIDIA GPU (Docker: the :cuda image and --gpus all)
#   --timeout S        seconds to wait for the model to load (default 600)
#   --storage-dir DIR  jobs and transcripts. Docker: a volume name or an absolute host path
#                      (default codex-transcription-storage); without Docker: a directory
#                      (default ./service-storage in the repository)
#   --model-dir DIR    model cache, the same way (default codex-transcription-models; without
#                      Docker the service's default, <storage-dir>/models)
#   --name NAME        container name (default codex-transcription-service)
#   --image IMAGE      image (default whisper-transcription-service:latest, or :cuda with --gpu)
#   --build            build the image even when it exists (an existing container keeps its
#                      image until it is removed: --stop, then docker rm NAME)
#   --no-docker        run the service from .venv instead of a container
#   --systemd          run it from .venv as a systemd unit (implies --no-docker)
#   --stop             stop the service (the container, the background process, or the unit)
#   -h, --help         this text
# Environment: DOCKER (the docker command), TRANSCRIPTION_PYTHON (the Python for --no-docker),
# SUPERVISE_* (the supervisor's limits: scripts/supervise.sh --help), SYSTEMCTL and JOURNALCTL
# (the commands for --systemd), SYSTEMD_UNIT_DIR (where --systemd writes the unit).
# Exit status: 0 ready (or stopped), 1 failed (the reason and the last log lines are printed),
# 64 bad usage.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCRIPT="scripts/$(basename "${BASH_SOURCE[0]}")"
HEALTH_CHECK="$REPO/scripts/health_check.sh"

# The CUDA image: keep these two in step with docker-compose.gpu.yml.
CUDA_BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
CUDA_TORCH_INDEX_URL="" # pip's default index: PyPI's Linux torch wheels are the CUDA build

CONTAINER_PORT=8765
LOG_LINES=40
STOP_TIMEOUT=60

PORT=8765
MODEL=""
GPU=0
TIMEOUT=600
STORAGE=""
MODEL_CACHE=""
NAME=codex-transcription-service
IMAGE=""
BUILD=0
NO_DOCKER=0
SYSTEMD=0
STOP=0
DOCKER=${DOCKER:-docker}
SYSTEMCTL=${SYSTEMCTL:-systemctl}
JOURNALCTL=${JOURNALCTL:-journalctl}
# The unit --systemd installs (python -m service install-service's default name).
UNIT=whisper-transcription.service

say() { echo "$*"; }
fail() {
    echo "error: $*" >&2
    exit 1
}
usage_error() {
    echo "error: $*" >&2
    echo "usage: $SCRIPT [--no-docker | --systemd] [--port N] [--model NAME] [--gpu] [--timeout S] [--stop] (see --help)" >&2
    exit 64
}

need_value() {
    if [ "$2" -lt 2 ]; then usage_error "$1 needs a value"; fi
}

while [ $# -gt 0 ]; do
    case "$1" in
        --port)
            need_value "$1" $#
            PORT=$2
            shift 2
            ;;
        --model)
            need_value "$1" $#
            MODEL=$2
            shift 2
            ;;
        --timeout)
            need_value "$1" $#
            TIMEOUT=$2
            shift 2
            ;;
        --storage-dir)
            need_value "$1" $#
            STORAGE=$2
            shift 2
            ;;
        --model-dir)
            need_value "$1" $#
            MODEL_CACHE=$2
            shift 2
            ;;
        --name)
            need_value "$1" $#
            NAME=$2
            shift 2
            ;;
        --image)
            need_value "$1" $#
            IMAGE=$2
            shift 2
            ;;
        --gpu)
            GPU=1
            shift
            ;;
        --build)
            BUILD=1
            shift
            ;;
        --no-docker)
            NO_DOCKER=1
            shift
            ;;
        --systemd)
            NO_DOCKER=1
            SYSTEMD=1
            shift
            ;;
        --stop)
            STOP=1
            shift
            ;;
        -h | --help)
            sed -n '2,51s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
            exit 0
            ;;
        *) usage_error "unknown argument '$1'" ;;
    esac
done
[[ $PORT =~ ^[0-9]+$ ]] && [ "$PORT" -ge 1 ] && [ "$PORT" -le 65535 ] || usage_error "--port must be a port number, not '$PORT'"
[[ $TIMEOUT =~ ^[0-9]+$ ]] || usage_error "--timeout must be a whole number of seconds, not '$TIMEOUT'"

# -- waiting for /health -------------------------------------------------------------------

# wait_ready URL ALIVE_FN LOGS_FN: poll the health check until the model is loaded. ALIVE_FN
# says whether the service can still come up; LOGS_FN prints its last log lines.
wait_ready() {
    local url=$1 alive=$2 logs=$3
    local deadline=$((SECONDS + TIMEOUT)) next_note=$((SECONDS + 30)) line=""
    say "waiting up to ${TIMEOUT}s for the model to load at $url ..."
    while true; do
        if line=$(HEALTH_CHECK_TIMEOUT=3 "$HEALTH_CHECK" "$url"); then
            say "$line"
            say "Transcription service ready at $url"
            return 0
        fi
        if ! "$alive"; then
            echo "error: the service stopped during start-up (last check: $line)" >&2
            "$logs" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            echo "error: the service was not ready within ${TIMEOUT}s (last check: $line)" >&2
            "$logs" >&2
            echo "It is still running: check again with scripts/health_check.sh $url, or stop it with $STOP_COMMAND" >&2
            return 1
        fi
        if [ "$SECONDS" -ge "$next_note" ]; then
            say "still waiting: $line"
            next_note=$((SECONDS + 30))
        fi
        sleep 1
    done
}

# -- without Docker ------------------------------------------------------------------------

pid_alive() {
    local state
    state=$(ps -o stat= -p "$1" 2>/dev/null) || return 1
    [ -n "$state" ] && [[ $state != Z* ]]
}

# The pid in pid file $1 when that process is alive and its command line has $2; else nothing.
pid_from() {
    local pid
    [ -f "$1" ] || return 0
    pid=$(tr -dc '0-9' <"$1")
    if [ -n "$pid" ] && pid_alive "$pid" && ps -o args= -p "$pid" | grep -q -- "$2"; then
        echo "$pid"
    fi
}
# The service's pid (the supervisor writes it at each start), and the supervisor's.
running_pid() { pid_from "$PID_FILE" "-m service"; }
supervisor_pid() { pid_from "$SUPERVISOR_PID_FILE" "supervise.sh"; }

# The port a running service was started with (its --port argument).
pid_port() {
    ps -o args= -p "$1" | sed -n 's/.*--port[ =]\([0-9][0-9]*\).*/\1/p'
}

# Up, or about to be restarted by its supervisor.
local_alive() { pid_alive "$SERVICE_PID" || [ -n "$(supervisor_pid)" ]; }
local_logs() {
    echo "last $LOG_LINES lines of $LOG_FILE:"
    tail -n "$LOG_LINES" "$LOG_FILE" 2>/dev/null || true
}

# Whether any of the given pids (empty ones skipped) is alive.
any_alive() {
    local pid
    for pid in "$@"; do
        if [ -n "$pid" ] && pid_alive "$pid"; then return 0; fi
    done
    return 1
}

stop_local() {
    local pid supervisor
    pid=$(running_pid)
    supervisor=$(supervisor_pid)
    if [ -z "$pid" ] && [ -z "$supervisor" ]; then
        rm -f "$PID_FILE" "$SUPERVISOR_PID_FILE"
        say "transcription service is not running (storage $STORAGE)"
        return 0
    fi
    say "stopping transcription service (pid ${pid:-$supervisor}) ..."
    # The supervisor passes SIGTERM on to the service and does not restart it.
    kill -TERM "${supervisor:-$pid}"
    local deadline=$((SECONDS + STOP_TIMEOUT))
    while any_alive "$pid" "$supervisor" && [ "$SECONDS" -lt "$deadline" ]; do
        sleep 0.2
    done
    if any_alive "$pid" "$supervisor"; then
        say "still running after ${STOP_TIMEOUT}s; killing it (its jobs are recovered at the next start)"
        if [ -n "$supervisor" ]; then kill -KILL "$supervisor" 2>/dev/null || true; fi
        if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    rm -f "$PID_FILE" "$SUPERVISOR_PID_FILE"
    say "stopped transcription service (pid ${pid:-$supervisor})"
}

start_local() {
    local python=${TRANSCRIPTION_PYTHON:-$REPO/.venv/bin/python}
    [ -x "$python" ] || fail "no Python environment at $python: run 'bash scripts/install.sh' first"
    local pid
    pid=$(running_pid)
    if [ -n "$pid" ]; then
        local port
        port=$(pid_port "$pid")
        say "transcription service is already running (pid $pid)"
        SERVICE_PID=$pid
        wait_ready "http://localhost:${port:-$PORT}" local_alive local_logs
        return
    fi
    if [ -n "$(supervisor_pid)" ]; then
        fail "the supervisor (pid $(supervisor_pid)) is restarting the service after a crash: see $LOG_FILE, or stop it with $STOP_COMMAND"
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
        fail "port $PORT is already in use on this machine: stop what listens there, or choose another with --port"
    fi
    local args=(-m service --port "$PORT" --storage-dir "$STORAGE")
    if [ -n "$MODEL" ]; then args+=(--model "$MODEL"); fi
    if [ "$GPU" = 1 ]; then args+=(--device cuda); fi
    if [ -n "$MODEL_CACHE" ]; then
        mkdir -p "$MODEL_CACHE"
        export SERVICE_MODEL_DIR
        SERVICE_MODEL_DIR=$(cd "$MODEL_CACHE" && pwd)
    fi
    say "starting transcription service on port $PORT (storage $STORAGE, log $LOG_FILE)"
    say "restarted after a crash (at most ${SUPERVISE_BURST:-3} times in ${SUPERVISE_INTERVAL:-300}s) by scripts/supervise.sh (pid file $SUPERVISOR_PID_FILE)"
    # Its own session (setsid), so it outlives this script and a Ctrl-C here; `python -m service`
    # runs from the repository so the checkout's code is what runs. The supervisor writes the
    # service's pid to $PID_FILE at each start.
    local detach=()
    if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
    rm -f "$PID_FILE"
    (cd "$REPO" && exec "${detach[@]}" nohup "$REPO/scripts/supervise.sh" --pid-file "$PID_FILE" -- \
        "$python" "${args[@]}" </dev/null >>"$LOG_FILE" 2>&1) &
    echo "$!" >"$SUPERVISOR_PID_FILE"
    SERVICE_PID=$!
    if ! wait_ready "http://localhost:$PORT" local_alive local_logs; then
        if ! local_alive; then rm -f "$PID_FILE" "$SUPERVISOR_PID_FILE"; fi
        return 1
    fi
}

# -- under systemd ---------------------------------------------------------------------------

SCOPE=()
systemd_alive() {
    local state
    state=$("$SYSTEMCTL" "${SCOPE[@]}" is-active "$UNIT" 2>/dev/null) || true
    [ "$state" = active ] || [ "$state" = activating ] || [ "$state" = reloading ]
}
systemd_logs() {
    echo "last $LOG_LINES lines of the unit's journal ($JOURNALCTL ${SCOPE[*]} -u $UNIT):"
    "$JOURNALCTL" "${SCOPE[@]}" -u "$UNIT" -n "$LOG_LINES" --no-pager 2>&1 || true
}

run_systemd() {
    if [ "$(id -u)" != 0 ]; then SCOPE=(--user); fi
    command -v "$SYSTEMCTL" >/dev/null 2>&1 ||
        fail "systemctl is not installed: --systemd needs a Linux system run by systemd (use --no-docker without --systemd to run it under the script's own supervisor)"
    if [ "$STOP" = 1 ]; then
        say "stopping systemd unit $UNIT ..."
        "$SYSTEMCTL" "${SCOPE[@]}" stop "$UNIT" || fail "$SYSTEMCTL ${SCOPE[*]} stop $UNIT failed (see above)"
        say "stopped systemd unit $UNIT (it starts again at boot: $SYSTEMCTL ${SCOPE[*]} disable $UNIT to prevent that)"
        return 0
    fi
    local python=${TRANSCRIPTION_PYTHON:-$REPO/.venv/bin/python}
    [ -x "$python" ] || fail "no Python environment at $python: run 'bash scripts/install.sh' first"
    if systemd_alive; then
        say "transcription service is already running (systemd unit $UNIT)"
    else
        local args=(-m service install-service "${SCOPE[@]}" --port "$PORT" --storage-dir "$STORAGE")
        if [ -n "$MODEL" ]; then args+=(--model "$MODEL"); fi
        if [ "$GPU" = 1 ]; then args+=(--device cuda); fi
        if [ -n "$MODEL_CACHE" ]; then
            mkdir -p "$MODEL_CACHE"
            args+=(--model-dir "$(cd "$MODEL_CACHE" && pwd)")
        fi
        if [ -n "${SYSTEMD_UNIT_DIR:-}" ]; then args+=(--unit-dir "$SYSTEMD_UNIT_DIR"); fi
        (cd "$REPO" && "$python" "${args[@]}") || fail "could not write the systemd unit (see above)"
        "$SYSTEMCTL" "${SCOPE[@]}" daemon-reload || fail "$SYSTEMCTL ${SCOPE[*]} daemon-reload failed (see above)"
        say "starting systemd unit $UNIT on port $PORT (storage $STORAGE)"
        "$SYSTEMCTL" "${SCOPE[@]}" enable --now "$UNIT" || fail "$SYSTEMCTL ${SCOPE[*]} enable --now $UNIT failed (see above)"
    fi
    wait_ready "http://localhost:$PORT" systemd_alive systemd_logs
}

if [ "$NO_DOCKER" = 1 ]; then
    STORAGE=${STORAGE:-$REPO/service-storage}
    mkdir -p "$STORAGE"
    STORAGE=$(cd "$STORAGE" && pwd)
    PID_FILE="$STORAGE/service.pid"
    SUPERVISOR_PID_FILE="$STORAGE/supervisor.pid"
    LOG_FILE="$STORAGE/service.log"
    SERVICE_PID=""
    if [ "$SYSTEMD" = 1 ]; then
        STOP_COMMAND="$SCRIPT --systemd --stop"
        run_systemd
        exit
    fi
    STOP_COMMAND="$SCRIPT --no-docker --stop${STORAGE:+ --storage-dir $STORAGE}"
    if [ "$STOP" = 1 ]; then stop_local; else start_local; fi
    exit
fi

# -- Docker --------------------------------------------------------------------------------

if ! command -v "$DOCKER" >/dev/null 2>&1; then
    fail "docker is not installed (or not on PATH). Install Docker, or run the service without it: $SCRIPT --no-docker"
fi
if ! docker_error=$("$DOCKER" info --format '{{.ServerVersion}}' 2>&1 >/dev/null); then
    docker_error=$(echo "$docker_error" | grep -v '^$' | tail -n 1)
    case "$docker_error" in *[.?!]) ;; *) docker_error="$docker_error." ;; esac
    fail "cannot reach the Docker daemon: $docker_error Start Docker (or check that you may use it), or run the service without it: $SCRIPT --no-docker"
fi

if [ -z "$IMAGE" ]; then
    if [ "$GPU" = 1 ]; then IMAGE=whisper-transcription-service:cuda; else IMAGE=whisper-transcription-service:latest; fi
fi
STORAGE=${STORAGE:-codex-transcription-storage}
MODEL_CACHE=${MODEL_CACHE:-codex-transcription-models}
STOP_COMMAND="$SCRIPT --stop$([ "$NAME" = codex-transcription-service ] || echo " --name $NAME")"

container_state() { "$DOCKER" container inspect --format '{{.State.Status}}' "$NAME" 2>/dev/null || true; }
container_alive() { [ "$(container_state)" = running ]; }
container_logs() {
    echo "last $LOG_LINES log lines of container $NAME:"
    "$DOCKER" logs --tail "$LOG_LINES" "$NAME" 2>&1 || true
}
# The host port the container publishes 8765 on, e.g. "0.0.0.0:8765" -> 8765.
container_port() {
    local mapping
    mapping=$("$DOCKER" port "$NAME" "$CONTAINER_PORT/tcp" 2>/dev/null | head -n 1) || true
    echo "${mapping##*:}"
}

if [ "$STOP" = 1 ]; then
    state=$(container_state)
    if [ "$state" != running ] && [ "$state" != restarting ] && [ "$state" != paused ]; then
        say "container $NAME is not running${state:+ ($state)}"
        exit 0
    fi
    say "stopping container $NAME ..."
    "$DOCKER" stop --time "$STOP_TIMEOUT" "$NAME" >/dev/null
    say "stopped container $NAME"
    exit 0
fi

build_image() {
    local args=(build --tag "$IMAGE" --build-arg "MODEL=${MODEL:-large-v3}")
    if [ "$GPU" = 1 ]; then
        args+=(--build-arg "BASE_IMAGE=$CUDA_BASE_IMAGE" --build-arg "TORCH_INDEX_URL=$CUDA_TORCH_INDEX_URL")
    fi
    say "building image $IMAGE (model ${MODEL:-large-v3}; this downloads the model once) ..."
    "$DOCKER" "${args[@]}" "$REPO" || fail "docker build of $IMAGE failed (see above)"
}

if [ "$BUILD" = 1 ]; then
    build_image
fi
state=$(container_state)
case "$state" in
    running)
        say "container $NAME is already running (to change its port, model or GPU: $SCRIPT --stop, docker rm $NAME, then start again)"
        ;;
    exited | created)
        say "starting stopped container $NAME"
        "$DOCKER" start "$NAME" >/dev/null || fail "docker start $NAME failed (see above)"
        ;;
    paused)
        say "unpausing container $NAME"
        "$DOCKER" unpause "$NAME" >/dev/null || fail "docker unpause $NAME failed (see above)"
        ;;
    "")
        if ! "$DOCKER" image inspect "$IMAGE" >/dev/null 2>&1; then
            build_image
        fi
        run_args=(run --detach --init --name "$NAME" --restart unless-stopped --stop-timeout "$STOP_TIMEOUT"
            --publish "$PORT:$CONTAINER_PORT"
            --volume "$STORAGE:/service-storage" --volume "$MODEL_CACHE:/models")
        if [ -n "$MODEL" ]; then run_args+=(--env "SERVICE_MODEL=$MODEL"); fi
        if [ "$GPU" = 1 ]; then run_args+=(--gpus all --env SERVICE_DEVICE=cuda); fi
        say "starting container $NAME from $IMAGE on port $PORT"
        "$DOCKER" "${run_args[@]}" "$IMAGE" >/dev/null || fail "docker run of $IMAGE failed (see above)"
        ;;
    *)
        # restarting (it keeps crashing), removing, dead: nothing to wait for.
        container_logs >&2
        fail "container $NAME is $state; see its logs above (remove it with: docker rm -f $NAME)"
        ;;
esac
if [ "$BUILD" = 1 ] && [ -n "$state" ]; then
    say "note: the new image is used once the container is removed: $SCRIPT --stop, docker rm $NAME, then start again"
fi
port=$(container_port)
wait_ready "http://localhost:${port:-$PORT}" container_alive container_logs
