#!/usr/bin/env bash
# The container image's Python install steps, one per Docker layer. The Dockerfile RUNs this
# script, and tests/test_packaging.py runs the very same steps into a scratch venv.
#
#   docker-install.sh torch   create $VENV and install torch==$TORCH_VERSION (first, pinned)
#   docker-install.sh deps    install pyproject.toml's [project] dependencies at the versions in
#                             constraints.txt (needs only those two files), all but the light
#                             client, which comes from the source tree next
#   docker-install.sh client  build the light client's wheel (clients/python) into
#                             $VENV/share/whisper-transcription-client, where the service finds it
#                             to hand out at GET /client/, and install that very wheel
#   docker-install.sh app     install the service itself from the source tree, without deps
#   docker-install.sh all     the four in order (the default)
#
# Environment:
#   VENV             where the virtual environment goes (default /opt/venv)
#   PYTHON           interpreter that creates it (default python3)
#   SRC              the source tree with pyproject.toml and constraints.txt (default: this
#                    script's repository)
#   TORCH_VERSION    the torch release to pin (default 2.13.0)
#   TORCH_INDEX_URL  wheel index for torch: https://download.pytorch.org/whl/cpu for the CPU
#                    image; empty means pip's configured index (PyPI's Linux torch is the CUDA build)
# pip's own settings (PIP_NO_CACHE_DIR, PIP_INDEX_URL, ...) apply: the Dockerfile turns the cache off.
set -euo pipefail

VENV=${VENV:-/opt/venv}
PYTHON=${PYTHON:-python3}
SRC=${SRC:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
TORCH_INDEX_URL=${TORCH_INDEX_URL-https://download.pytorch.org/whl/cpu}
CLIENT_DIST=whisper-transcription-client
# Every package's tested version (torch aside, which TORCH_VERSION pins): see constraints.txt.
CONSTRAINTS=$SRC/constraints.txt

pip_install() {
    "$VENV/bin/python" -m pip install --disable-pip-version-check --quiet "$@"
}

step_torch() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -m venv "$VENV"
    fi
    pip_install --upgrade pip
    local index=()
    if [ -n "$TORCH_INDEX_URL" ]; then
        index=(--index-url "$TORCH_INDEX_URL")
    fi
    # Not constrained here: the CPU wheel index has torch's own dependencies, but not every
    # version. The deps step moves them to the pinned versions.
    pip_install "${index[@]}" "torch==${TORCH_VERSION}"
    echo "docker-install: torch $("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
}

step_deps() {
    local requirements
    requirements=$(mktemp)
    # The dependency list comes from pyproject.toml and the versions from constraints.txt, so
    # this layer is rebuilt only when those change, not on every source edit. torch stays at
    # the version installed above.
    # The light client is left out: it is built from the source tree (step_client), and a bare
    # name must never be looked up on an index, where someone else's package could answer.
    "$VENV/bin/python" - "$SRC/pyproject.toml" "$CLIENT_DIST" >"$requirements" <<'PY'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as fp:
    project = tomllib.load(fp)["project"]


def name(requirement: str) -> str:
    return re.split(r"[^A-Za-z0-9._-]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


print("\n".join(r for r in project["dependencies"] if name(r) != sys.argv[2]))
PY
    local torch_pin
    torch_pin=$(mktemp)
    echo "torch==${TORCH_VERSION}" >"$torch_pin"
    pip_install -r "$requirements" -c "$CONSTRAINTS" -c "$torch_pin"
    echo "docker-install: $(wc -l <"$requirements" | tr -d ' ') dependencies from pyproject.toml installed"
    rm -f "$requirements" "$torch_pin"
    # openai-whisper asks for triton on Linux x86-64, but triton only compiles GPU kernels
    # (whisper falls back without it): about 1 GB that a CPU build of torch never uses.
    if "$VENV/bin/python" -c 'import sys, torch; sys.exit(torch.version.cuda is not None)' &&
        "$VENV/bin/python" -m pip show --quiet triton >/dev/null 2>&1; then
        "$VENV/bin/python" -m pip uninstall --yes --quiet triton
        echo "docker-install: torch is the CPU build, so triton (GPU kernels only) was removed"
    fi
}

step_client() {
    local wheels="$VENV/share/$CLIENT_DIST" build
    build=$(mktemp -d)
    # A copy, so the build's scratch files (build/, *.egg-info) never land in the source tree.
    cp -r "$SRC/clients/python/." "$build/"
    rm -rf "$build/build" "$wheels"
    "$VENV/bin/python" -m pip wheel --disable-pip-version-check --quiet --no-deps --wheel-dir "$wheels" "$build"
    rm -rf "$build"
    pip_install -c "$CONSTRAINTS" "$wheels"/*.whl
    echo "docker-install: client $(ls "$wheels") built and installed"
}

step_app() {
    # A regular (not editable) install: the image needs no source tree at run time.
    pip_install --no-deps "$SRC"
    # Every requirement met, save triton where step_deps removed it on purpose.
    local problems
    problems=$("$VENV/bin/python" -m pip check --disable-pip-version-check 2>&1 |
        grep -v -e '^No broken requirements found' -e 'requires triton, which is not installed' || true)
    if [ -n "$problems" ]; then
        echo "docker-install: broken requirements:" >&2
        echo "$problems" >&2
        exit 1
    fi
    echo "docker-install: service installed into $VENV"
}

if [ $# -eq 0 ]; then
    set -- all
fi
for step in "$@"; do
    case "$step" in
        torch) step_torch ;;
        deps) step_deps ;;
        client) step_client ;;
        app) step_app ;;
        all) step_torch && step_deps && step_client && step_app ;;
        *)
            echo "docker-install: unknown step '$step' (use torch, deps, client, app or all)" >&2
            exit 64
            ;;
    esac
done
