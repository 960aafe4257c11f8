#!/usr/bin/env bash
# Create .venv and install the service with its test tools. Safe to run again (it is quick then).
# torch goes in first and pinned: a bare `torch` requirement can pull a multi-GB CUDA build.
# Everything else at the versions in constraints.txt (those the tests pass with).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}
VENV=${VENV:-.venv}
CONSTRAINTS=constraints.txt

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)
"${PIP[@]}" install --upgrade pip
if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
    "${PIP[@]}" install -c "$CONSTRAINTS" "torch==${TORCH_VERSION}"
fi
# The light client first (clients/python: the HTTP client, the MCP tools, the command line): the
# service depends on it, and it comes from this checkout, never from an index.
"${PIP[@]}" install -c "$CONSTRAINTS" -e ./clients/python
"${PIP[@]}" install -c "$CONSTRAINTS" -e ".[dev]"
# The client's wheel, which the service hands to agents' containers at GET /client/ (it looks
# under the venv at start-up). Built afresh each run from this checkout; stale build/ files out.
WHEELS="$VENV/share/whisper-transcription-client"
rm -rf "$WHEELS.new" clients/python/build
"${PIP[@]}" wheel --no-deps --wheel-dir "$WHEELS.new" ./clients/python
rm -rf "$WHEELS" clients/python/build
mv "$WHEELS.new" "$WHEELS"
echo "installed into $VENV (client wheel: $(ls "$WHEELS"))"
