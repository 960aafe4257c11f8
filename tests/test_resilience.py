"""The daemon under stress, with real processes and real signals: the inference process killed
mid-job and restarted, a poison job, timeouts, a graceful stop with a grace period, and the
model manager (hand loads and unloads, idle unloads, the memory budget, fallback, eviction
with memory really given back).
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests
from conftest import FakeEngine, ServerProcess, eval_clip, reference_text, wait_for_status, word_error_rate
from test_api import ClientFactory, form
from test_server_process import (
    FINISHED,
    LONG_JOB_ARGS,
    LONG_WAV_CLIPS,
    assert_transcript_matches,
    job_row,
    submit,
    wait_exit,
    wait_for_progress,
)

from service.api.keys import SERVICES
from service.app import create_app
from service.engines.bundled import bundled_ct2_dir
from service.engines.ct2_import import cached_import
from service.engines.openai_whisper import OpenAIWhisperEngine
from service.inference.models import ModelManager
from service.settings import Settings

SHORT = "sense_and_sensibility_01_austen_64kb-0890.wav"
LONG = "1272-128104-0004-8k.wav"


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        if "OMP_NUM_THREADS" not in os.environ:
            patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tiny.en as an openai-whisper .pt file: a second, offline-loadable model for the manager."""
    ct2_dir = bundled_ct2_dir("tiny.en")
    assert ct2_dir is not None
    return cached_import(ct2_dir, tmp_path_factory.mktemp("ckpt"), "tiny.en")


def health(server: ServerProcess) -> requests.Response:
    return requests.get(server.url + "/health", timeout=5)


def worker_pid(server: ServerProcess) -> int:
    pid = health(server).json()["worker_pid"]
    assert isinstance(pid, int) and pid != server.proc.pid  # type: ignore[union-attr]
    return pid


def wait_healthy(server: ServerProcess, timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        resp = health(server)
        if resp.status_code == 200:
            body: dict[str, Any] = resp.json()
            return body
        time.sleep(0.1)
    raise AssertionError(f"never healthy again:\n{server.log()}")


# -- crash isolation -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_killed_worker_is_restarted_and_its_job_completes(server_factory: Any) -> None:
    server: ServerProcess = server_factory(extra_args=LONG_JOB_ARGS).start()
    assert health(server).json()["worker_restarts"] == 0
    first_pid = worker_pid(server)
    assert submit(server, eval_clip(LONG), job_id="crashy").status_code == 202
    wait_for_progress(server, "crashy")

    os.kill(first_pid, signal.SIGKILL)
    seen_503 = False
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # the API answers all through the restart
        resp = health(server)
        body = resp.json()
        if resp.status_code == 503:
            seen_503 = True
            assert body["worker"] in ("restarting", "loading_model"), body
        elif body["worker_restarts"] >= 1:
            break
        time.sleep(0.05)
    assert seen_503, "health never said 503 while the worker was down"
    assert body["worker_restarts"] == 1 and body["worker_pid"] != first_pid, body
    assert server.proc is not None and server.proc.poll() is None  # the HTTP process never died

    done = wait_for_status(server.url, "crashy", FINISHED, timeout=300)
    assert done["status"] == "completed", done
    assert done["attempts"] == 2, done  # the crashed run counts
    assert word_error_rate(reference_text(LONG), done["transcript"]) < 0.3
    assert "was killed by SIGKILL; restarting it" in server.log()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_poison_job_fails_after_the_attempt_limit_and_others_complete(server_factory: Any) -> None:
    """A job that kills the worker every time it runs ends failed; the queue goes on."""
    server: ServerProcess = server_factory(extra_args=[*LONG_JOB_ARGS, "--max-attempts", "2"]).start()
    assert submit(server, eval_clip(LONG), job_id="poison").status_code == 202
    assert submit(server, eval_clip(SHORT), job_id="innocent").status_code == 202
    kills = 0
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        status = requests.get(server.url + "/status/poison", timeout=5).json()
        if status["status"] in FINISHED:
            break
        if status["status"] == "processing" and health(server).status_code == 200:
            os.kill(worker_pid(server), signal.SIGKILL)  # crash on this input, every time
            kills += 1
            while health(server).status_code == 200 and health(server).json()["worker_restarts"] < kills:
                time.sleep(0.05)
        time.sleep(0.05)
    assert status["status"] == "failed", status
    assert "crashed on this job 2 times" in status["error"], status
    assert "crashed decoding the recording's first chunk" in status["error"], status
    assert kills == 2
    innocent = wait_for_status(server.url, "innocent", FINISHED, timeout=300)
    assert innocent["status"] == "completed" and innocent["attempts"] == 1, innocent
    assert health(server).json()["worker_restarts"] == 2


@pytest.mark.slow
def test_job_over_its_timeout_is_stopped_and_failed(server_factory: Any) -> None:
    server: ServerProcess = server_factory(extra_args=[*LONG_JOB_ARGS, "--job-timeout", "1"]).start()
    assert submit(server, eval_clip(LONG), job_id="slowpoke").status_code == 202
    done = wait_for_status(server.url, "slowpoke", FINISHED, timeout=120)
    assert done["status"] == "failed", done
    assert "ran longer than its 1 s limit" in done["error"], done
    assert wait_healthy(server)["worker"] == "ready"


# -- graceful stop ---------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_lets_a_job_finish_within_the_grace_period(server_factory: Any, tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    server: ServerProcess = server_factory(storage, [*LONG_JOB_ARGS, "--shutdown-grace", "60"]).start()
    assert submit(server, eval_clip(SHORT), job_id="almost").status_code == 202
    wait_for_status(server.url, "almost", {"processing", *FINISHED})
    assert server.proc is not None
    server.proc.send_signal(signal.SIGTERM)
    rc, _ = wait_exit(server, 90, "SIGTERM with grace")
    assert rc == 0, server.log()
    assert job_row(storage, "almost")[0] == "completed"  # finished, not requeued
    assert (storage / "transcripts" / "almost.json").is_file()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_sigterm_past_the_grace_period_requeues_and_the_next_start_completes(
    server_factory: Any, tmp_path: Path, long_wav: Path
) -> None:
    storage = tmp_path / "storage"
    first: ServerProcess = server_factory(storage, [*LONG_JOB_ARGS, "--shutdown-grace", "0.5"]).start()
    assert submit(first, long_wav, job_id="long-grace").status_code == 202
    wait_for_progress(first, "long-grace")
    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    rc, elapsed = wait_exit(first, 60, "SIGTERM past grace")
    assert rc == 0 and elapsed < 10, (rc, elapsed, first.log())  # inside docker stop's 10 s
    assert job_row(first.storage_dir, "long-grace")[:2] == ("queued", 0)
    assert not list((storage / "tmp").iterdir())
    second: ServerProcess = server_factory(storage, LONG_JOB_ARGS).start()
    done = wait_for_status(second.url, "long-grace", FINISHED, timeout=300)
    assert done["status"] == "completed", done
    assert_transcript_matches(done["transcript"], LONG_WAV_CLIPS, "long-grace")


# -- the model manager, through a real server ------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_models_endpoints_hand_loads_idle_unload_and_memory(server_factory: Any, checkpoint: Path) -> None:
    """Default model: a checkpoint path (the operator's choice); tiny.en is the extra by name."""
    default = checkpoint.parent / "operator-default.pt"
    shutil.copy(checkpoint, default)
    server: ServerProcess = server_factory(
        extra_args=[*LONG_JOB_ARGS, "--model", str(default), "--model-idle-seconds", "3"]
    ).start()
    listing = requests.get(server.url + "/models", timeout=10).json()
    by_name = {m["name"]: m for m in listing["models"]}
    assert by_name["tiny.en"]["offline"] and not by_name["tiny.en"]["loaded"]
    assert by_name[str(default)]["loaded"] and by_name[str(default)]["default"]
    assert not by_name["large-v3"]["offline"]

    child = psutil.Process(worker_pid(server))
    before = child.memory_info().rss
    resp = requests.post(server.url + "/models/tiny.en/load", timeout=120)
    assert resp.status_code == 200 and resp.json()["loaded"], resp.text
    loaded_rss = child.memory_info().rss
    assert loaded_rss - before > 50 * 2**20  # tiny.en in fp32 is about 150 MB
    info = {m["name"]: m for m in requests.get(server.url + "/models", timeout=10).json()["models"]}
    assert info["tiny.en"]["loaded"] and info["tiny.en"]["approx_memory_mb"] > 50

    # A job on it, then it goes idle and is unloaded by itself: memory really goes back.
    with open(eval_clip(SHORT), "rb") as fp:
        resp = requests.post(
            server.url + "/transcribe", files={"file": fp}, data={"job_id": "m1", "model": "tiny.en"}
        )
    assert resp.status_code == 202
    assert wait_for_status(server.url, "m1", FINISHED)["status"] == "completed"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        info = {m["name"]: m for m in requests.get(server.url + "/models", timeout=10).json()["models"]}
        if not info["tiny.en"]["loaded"]:
            break
        time.sleep(0.5)
    assert not info["tiny.en"]["loaded"], info["tiny.en"]
    assert info[str(default)]["loaded"]  # the default never leaves
    after = child.memory_info().rss
    # Much of it goes back (the allocator keeps some freed pages after a job has run on it).
    assert loaded_rss - after > 25 * 2**20, (before, loaded_rss, after)
    assert "model tiny.en unloaded (idle)" in server.log()

    # By hand: load again, unload, and the refusals.
    assert requests.post(server.url + "/models/tiny.en/load", timeout=120).status_code == 200
    assert requests.delete(server.url + "/models/tiny.en", timeout=10).json() == {
        "name": "tiny.en",
        "loaded": False,
    }
    assert requests.delete(server.url + "/models/tiny.en", timeout=10).status_code == 404
    resp = requests.post(server.url + "/models/no-such-model/load", timeout=10)
    assert resp.status_code == 400 and "Unknown model" in resp.json()["error"]
    resp = requests.post(server.url + "/models/small/load", timeout=120)  # needs a download: offline
    assert resp.status_code == 400 and "could not be downloaded" in resp.json()["error"]


@pytest.mark.slow
def test_memory_budget_refuses_a_model_that_does_not_fit(server_factory: Any, checkpoint: Path) -> None:
    server: ServerProcess = server_factory(
        extra_args=[*LONG_JOB_ARGS, "--model", str(checkpoint), "--model-memory-mb", "120"]
    ).start()
    with open(eval_clip(SHORT), "rb") as fp:
        requests.post(
            server.url + "/transcribe", files={"file": fp}, data={"job_id": "big", "model": "tiny.en"}
        )
    done = wait_for_status(server.url, "big", FINISHED)
    assert done["status"] == "failed" and "does not fit the model memory budget" in done["error"], done
    assert wait_healthy(server)["worker_restarts"] == 0  # refused, not OOM-killed


@pytest.mark.slow
def test_fallback_to_the_default_model_says_so(server_factory: Any) -> None:
    server: ServerProcess = server_factory(extra_args=[*LONG_JOB_ARGS, "--model-fallback"]).start()
    with open(eval_clip(SHORT), "rb") as fp:
        requests.post(server.url + "/transcribe", files={"file": fp}, data={"job_id": "fb", "model": "small"})
    done = wait_for_status(server.url, "fb", FINISHED)
    assert done["status"] == "completed", done
    assert "transcribed with the default model tiny.en instead" in done["note"]
    assert word_error_rate(reference_text(SHORT), done["transcript"]) < 0.2


# -- the model manager in process: LRU eviction gives memory back ------------------------------


def test_lru_eviction_between_two_models_gives_memory_back(checkpoint: Path, tmp_path: Path) -> None:
    second = tmp_path / "second.pt"
    shutil.copy(checkpoint, second)
    engine = OpenAIWhisperEngine(tmp_path / "models", device="cpu")
    manager = ModelManager(engine, default="tiny.en", max_models=2, idle_seconds=-1)
    manager.load("tiny.en")
    me = psutil.Process()
    base = me.memory_info().rss
    manager.load(str(checkpoint))
    with_first = me.memory_info().rss
    assert with_first - base > 50 * 2**20
    manager.load(str(second))  # the limit is two: the least recently used non-default goes
    names = {m["name"] for m in manager.loaded()}
    assert names == {"tiny.en", str(second)}
    manager.load(str(checkpoint))  # and back: they evict each other
    assert {m["name"] for m in manager.loaded()} == {"tiny.en", str(checkpoint)}
    manager.unload(str(checkpoint))
    assert me.memory_info().rss - base < 40 * 2**20  # the memory went back


# -- shutting down: uploads refused, nothing stored ----------------------------------------------


async def test_uploads_during_shutdown_get_503_and_store_nothing(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    resp = await client.post("/transcribe", data=form(eval_clip(SHORT), job_id="running"))
    assert resp.status == 202
    assert client.app is not None
    await client.app[SERVICES].worker.stop()
    resp = await client.post("/transcribe", data=form(eval_clip(SHORT), job_id="late"))
    assert resp.status == 503 and resp.headers["Retry-After"] == "5"
    assert "shutting down" in (await resp.json())["error"]
    assert (await client.get("/health")).status == 503
    assert sorted(p.name for p in (settings.storage_dir / "pending").iterdir()) == ["running.wav"]
    assert not list((settings.storage_dir / "tmp").iterdir())
