"""The HTTP process stays free of torch, so it listens quickly: only the inference process needs it.

Importing torch costs about 1.5 s (and a few hundred MB) at start-up. With `--isolation process`
(the default) models live in the child; the parent only checks model names, renders transcripts
and validates requests, all without torch.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import REPO, ServerProcess, write_wav

from service.engines.openai_whisper_catalog import _torch_build_is_cpu_only, torch_device

# Builds the app as `serve` does, then asks the HTTP process's engine what routes ask of it.
BUILD_APP = """
import sys
from service.settings import parse_settings
from service.app import create_app
from service.api.keys import SERVICES

app = create_app(parse_settings(["--storage-dir", sys.argv[1], "--engine", sys.argv[2]]))
catalog = app[SERVICES].catalog
catalog.check_model_name("tiny.en")
catalog.list_models()
print(catalog.device)
from service.diarization import DiarizationOptions  # what /transcribe validates speaker counts with

DiarizationOptions(num_speakers=2)
heavy = sorted(name for name in ("torch", "whisper") if name in sys.modules)
assert not heavy, f"the HTTP process imported {heavy}"
"""

# whisper's tables and writers, loaded without whisper/__init__.py, match whisper's own.
SAME_AS_WHISPER = """
import sys
from service.engines import whisper_tables as light

assert "whisper" not in sys.modules
import whisper
import whisper.tokenizer
import whisper.utils

assert light.LANGUAGES == whisper.tokenizer.LANGUAGES
assert light.TO_LANGUAGE_CODE == whisper.tokenizer.TO_LANGUAGE_CODE
assert light._models_from_source() == whisper._MODELS
assert light.available_models() == whisper.available_models()
for seconds in (0.0, 3.5, 61.25, 3725.125):
    for hours in (False, True):
        for marker in (".", ","):
            assert light.format_timestamp(seconds, hours, marker) == whisper.utils.format_timestamp(
                seconds, hours, marker
            )
assert [w.extension for w in (light.WriteTXT, light.WriteSRT, light.WriteVTT, light.WriteTSV)] == [
    w.extension
    for w in (whisper.utils.WriteTXT, whisper.utils.WriteSRT, whisper.utils.WriteVTT, whisper.utils.WriteTSV)
]
"""


def run_fresh(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`code` in a new interpreter (this one has imported torch long ago), from the repository."""
    return subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("engine", ["openai-whisper", "faster-whisper"])
def test_the_http_process_app_imports_no_torch(tmp_path: Path, engine: str) -> None:
    result = run_fresh(BUILD_APP, str(tmp_path / "storage"), engine)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() in ("cpu", "cuda")


def test_whisper_tables_and_writers_match_whisper() -> None:
    result = run_fresh(SAME_AS_WHISPER)
    assert result.returncode == 0, result.stderr


def test_auto_device_without_torch_is_torch_s_answer() -> None:
    import torch

    if _torch_build_is_cpu_only():
        assert not torch.cuda.is_available()
    assert torch_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert torch_device("cpu") == "cpu"


def maps_torch(pid: int) -> bool:
    """Whether the process has torch's shared library mapped (imported torch)."""
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def wait_for_health(server: ServerProcess, timeout: float = 60.0) -> requests.Response:
    """The first answer from /health, whatever its status (503 while the model loads)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        try:
            return requests.get(server.url + "/health", timeout=2)
        except requests.ConnectionError:
            time.sleep(0.05)
    raise AssertionError(f"/health never answered:\n{server.log()}")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="reads /proc/<pid>/maps (Linux)")
def test_the_served_http_process_never_loads_torch(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = server_factory().start(wait_ready=False)
    assert server.proc is not None
    wait_for_health(server)
    assert not maps_torch(server.proc.pid), "the HTTP process loaded torch before listening"

    health = server.wait_ready()
    # The inference process does load torch, so the check above looks for the right thing.
    assert health["worker_pid"] != server.proc.pid
    assert maps_torch(health["worker_pid"])
    assert health["device"] == torch_device("auto")
    # What the HTTP process does itself: list and check model names, validate speaker counts.
    assert requests.get(server.url + "/models", timeout=30).status_code == 200
    assert requests.post(server.url + "/models/no-such-model/load", timeout=30).status_code == 400
    clip = write_wav(tmp_path / "quiet.wav", np.zeros(1600, dtype=np.float32))
    with open(clip, "rb") as fp:
        fields = {"diarize": "true", "num_speakers": "99"}
        response = requests.post(server.url + "/transcribe", files={"file": fp}, data=fields, timeout=30)
    assert response.status_code == 400, response.text
    assert "num_speakers" in response.json()["error"]
    assert not maps_torch(server.proc.pid), "the HTTP process loaded torch while serving"
