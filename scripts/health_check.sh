#!/usr/bin/env bash
# Is the transcription service up with its model loaded? For monitor loops, cron and Docker.
#
#   scripts/health_check.sh [URL]        URL: the service's base URL (or its /health URL)
# Environment:
#   TRANSCRIPTION_SERVICE_URL  the service's base URL when no argument is given; without it
#                              http://localhost:$SERVICE_PORT (the service's own port setting,
#                              so the same line works inside the container), else :8765
#   HEALTH_CHECK_TIMEOUT       seconds to wait for an answer (default 5)
#   HEALTH_CHECK_CLIENT        auto (curl when installed, else Python), curl or python
#
# Prints one line. Exit status:
#   0  healthy: status ok and the model loaded
#   1  up but not ready: the model is still loading, a self-check fails, or a fatal error
#   2  no usable answer: nothing listening, a timeout, an HTTP error or a body that is not health JSON
#   64 bad usage
set -uo pipefail

usage() {
    sed -n '2,17s/^# \{0,1\}//p' "$0"
}

URL=""
for arg in "$@"; do
    case "$arg" in
        -h | --help)
            usage
            exit 0
            ;;
        -*)
            echo "health_check: unknown option $arg" >&2
            exit 64
            ;;
        *)
            if [ -n "$URL" ]; then
                echo "health_check: give one URL at most" >&2
                exit 64
            fi
            URL=$arg
            ;;
    esac
done
URL=${URL:-${TRANSCRIPTION_SERVICE_URL:-http://localhost:${SERVICE_PORT:-8765}}}
URL=${URL%/}
case "$URL" in
    */health) ;;
    *) URL="$URL/health" ;;
esac
TIMEOUT=${HEALTH_CHECK_TIMEOUT:-5}
CLIENT=${HEALTH_CHECK_CLIENT:-auto}

python_bin() {
    local candidate
    for candidate in python3 python; do
        if command -v "$candidate" >/dev/null 2>&1; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

# Print the response body; on failure print the reason and return non-zero.
fetch_with_curl() {
    local out status
    out=$(curl --silent --show-error --max-time "$TIMEOUT" --write-out '\n%{http_code}' "$URL" 2>&1)
    status=$?
    if [ "$status" -ne 0 ]; then
        printf '%s' "${out##*curl: }" | head -n 1 | sed 's/^([0-9]*) //'
        return 1
    fi
    local code=${out##*$'\n'}
    local body=${out%$'\n'*}
    # 503 carries the same JSON while the model loads or the worker restarts: read it.
    if [ "$code" != 200 ] && [ "$code" != 503 ]; then
        echo "HTTP $code"
        return 1
    fi
    printf '%s' "$body"
}

fetch_with_python() {
    local python
    if ! python=$(python_bin); then
        echo "neither curl nor python is installed"
        return 1
    fi
    "$python" - "$URL" "$TIMEOUT" <<'PY'
import sys
import urllib.error
import urllib.request

url, timeout = sys.argv[1], float(sys.argv[2])
try:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        sys.stdout.write(response.read().decode("utf-8", "replace"))
except urllib.error.HTTPError as exc:
    if exc.code == 503:  # the same JSON, while the model loads or the worker restarts
        sys.stdout.write(exc.read().decode("utf-8", "replace"))
        sys.exit(0)
    print(f"HTTP {exc.code}")
    sys.exit(1)
except (urllib.error.URLError, OSError) as exc:
    reason = getattr(exc, "reason", exc)
    print(str(reason) or type(reason).__name__)
    sys.exit(1)
PY
}

case "$CLIENT" in
    auto)
        if command -v curl >/dev/null 2>&1; then CLIENT=curl; else CLIENT=python; fi
        ;;
    curl | python) ;;
    *)
        echo "health_check: HEALTH_CHECK_CLIENT must be auto, curl or python, not '$CLIENT'" >&2
        exit 64
        ;;
esac

if [ "$CLIENT" = curl ]; then
    body=$(fetch_with_curl)
else
    body=$(fetch_with_python)
fi
# shellcheck disable=SC2181 # the assignments above keep the fetch's status
if [ $? -ne 0 ]; then
    echo "unhealthy: no health answer from $URL (${body:-no reason given})"
    exit 2
fi

# The body is small JSON from the service whose top-level names occur once in it (the nested
# `checks` use others): pick the fields out without a JSON tool.
field() {
    local pattern="\"$1\"[[:space:]]*:[[:space:]]*(\"([^\"]*)\"|[A-Za-z0-9.+-]+)"
    if [[ $body =~ $pattern ]]; then
        if [ -n "${BASH_REMATCH[2]}" ]; then echo "${BASH_REMATCH[2]}"; else echo "${BASH_REMATCH[1]}"; fi
    fi
}
status=$(field status)
loaded=$(field model_loaded)
model=$(field model)
worker=$(field worker)
queue=$(field queue_size)
error=$(field error)

if [ -z "$status" ] || [ -z "$loaded" ]; then
    echo "unhealthy: $URL did not answer with the service's health JSON: $(printf '%s' "$body" | head -c 200 | tr '\n' ' ')"
    exit 2
fi
# Still loading (503, status unavailable) says so; a fatal error, or a failed self-check
# (status unavailable with the model loaded), gives the service's reason.
if [ "$status" != error ] && [ "$loaded" != true ]; then
    echo "unhealthy: model ${model:-?} not loaded yet (worker ${worker:-?})"
    exit 1
fi
if [ "$status" != ok ]; then
    echo "unhealthy: status $status${error:+: $error} (model ${model:-?}, worker ${worker:-?})"
    exit 1
fi
echo "healthy: model ${model:-?} loaded, worker ${worker:-?}, ${queue:-0} job(s) queued ($URL)"
exit 0
