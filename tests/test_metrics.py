"""GET /metrics: Prometheus text, parsed back, after real actions.

In process on the fake engine: every metric's value after jobs, cache answers and each kind of
refused upload, one registry per app. Through a real server with the real tiny.en: a clip's
job, a 415, a `kill -9` of the inference process, and the API token.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import requests
from aiohttp.test_utils import TestClient
from conftest import FakeEngine, ServerProcess, eval_clip
from prometheus_client.parser import text_string_to_metric_families
from test_api import ClientFactory, form, wait_status
from test_job_control import _unique_wav

from service.api.keys import SERVICES
from service.app import create_app
from service.inference import audio
from service.settings import Settings

CLIP = eval_clip("LDC93S1.wav")
Client = TestClient[Any, Any]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample as {(name, labels): value}."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def total(samples: Samples, name: str, **labels: str) -> float:
    """Summed over the labels not given (e.g. a histogram's count over every model)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


async def scrape(client: Client, headers: dict[str, str] | None = None) -> Samples:
    resp = await client.get("/metrics", headers=headers)
    assert resp.status == 200, await resp.text()
    assert resp.headers["Content-Type"].startswith("text/plain")
    return parse(await resp.text())


async def scrape_until(client: Client, name: str, wanted: float, **labels: str) -> Samples:
    samples: Samples = {}
    for _ in range(200):
        samples = await scrape(client)
        if total(samples, name, **labels) == wanted:
            return samples
        await asyncio.sleep(0.05)
    raise AssertionError(f"{name}{labels} never reached {wanted}: {total(samples, name, **labels)}")


# -- in process ----------------------------------------------------------------------------------


async def test_a_completed_job_in_every_metric(settings: Settings, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    await wait_status_ready(client)
    before = await scrape(client)
    assert value(before, "whisper_jobs", status="completed") == 0
    assert value(before, "whisper_jobs_finished_total", outcome="completed") == 0
    assert total(before, "whisper_job_real_time_factor_count") == 0

    resp = await client.post("/transcribe", data=form(CLIP, job_id="one"))
    assert resp.status == 202
    await wait_status(client, "one", {"completed"})
    samples = await scrape_until(client, "whisper_job_real_time_factor_count", 1)
    duration = audio.probe(CLIP).duration_s
    assert duration is not None
    assert value(samples, "whisper_jobs", status="completed") == 1
    assert value(samples, "whisper_jobs", status="queued") == 0
    assert value(samples, "whisper_jobs_finished_total", outcome="completed") == 1
    assert value(samples, "whisper_jobs_finished_total", outcome="failed") == 0
    assert value(samples, "whisper_audio_seconds_transcribed_total", model="tiny.en") == pytest.approx(
        duration, abs=0.01
    )
    assert value(samples, "whisper_job_processing_seconds_count", model="tiny.en") == 1
    rtf_sum = value(samples, "whisper_job_real_time_factor_sum", model="tiny.en")
    processing_sum = value(samples, "whisper_job_processing_seconds_sum", model="tiny.en")
    assert rtf_sum == pytest.approx(processing_sum / duration)
    assert value(samples, "whisper_job_real_time_factor_bucket", model="tiny.en", le="+Inf") == 1
    assert value(samples, "whisper_queue_depth") == 0
    assert value(samples, "whisper_jobs_running") == 0
    assert value(samples, "whisper_models_loaded") == 1
    assert value(samples, "whisper_model_load_seconds", model="tiny.en") >= 0
    assert value(samples, "whisper_worker_restarts_total") == 0
    assert value(samples, "whisper_worker_ready") == 1
    assert value(samples, "whisper_uptime_seconds") > 0
    build = next(labels for (name, labels) in samples if name == "whisper_build_info")
    assert {("engine", "openai-whisper"), ("model", "tiny.en"), ("isolation", "thread")} <= build

    # The same audio under another id is answered from the cache: finished, but not transcribed.
    resp = await client.post("/transcribe", data=form(CLIP, job_id="two"))
    assert (await resp.json())["status"] == "completed"
    samples = await scrape_until(client, "whisper_transcript_cache_hits_total", 1)
    assert value(samples, "whisper_jobs_finished_total", outcome="completed") == 2
    assert value(samples, "whisper_jobs", status="completed") == 2
    assert total(samples, "whisper_job_real_time_factor_count") == 1


async def wait_status_ready(client: Client) -> None:
    for _ in range(200):
        if (await client.get("/health")).status == 200:
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never ready")


async def test_queue_depth_running_and_outcomes(
    tmp_path: Path, settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    for n, job_id in enumerate(("run", "q1", "q2")):
        data = form(_unique_wav(tmp_path, job_id, n + 1), job_id=job_id)
        assert (await client.post("/transcribe", data=data)).status == 202
        if job_id == "run":
            await wait_status(client, "run", {"processing"})
    samples = await scrape(client)
    assert value(samples, "whisper_queue_depth") == 2
    assert value(samples, "whisper_jobs", status="queued") == 2
    assert value(samples, "whisper_jobs", status="processing") == 1
    assert value(samples, "whisper_jobs_running") == 1

    assert (await client.delete("/jobs/q1")).status == 200
    engine.fail_with = RuntimeError("boom")
    engine.gate.set()
    await wait_status(client, "q2", {"failed"})
    samples = await scrape_until(client, "whisper_jobs_finished_total", 2, outcome="failed")
    assert value(samples, "whisper_jobs_finished_total", outcome="cancelled") == 1
    assert value(samples, "whisper_jobs", status="failed") == 2
    assert value(samples, "whisper_queue_depth") == 0
    assert total(samples, "whisper_job_real_time_factor_count") == 0  # nothing completed


async def test_every_kind_of_refused_upload_is_counted(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    settings = Settings(
        storage_dir=tmp_path / "storage", max_queue=1, max_upload_bytes=200_000, api_token="tok"
    )
    engine = FakeEngine()
    engine.gate.clear()
    app = create_app(settings, engine=engine)
    client = await aiohttp_client(app)
    auth = {"Authorization": "Bearer tok"}

    async def post(expected: int, **kwargs: Any) -> None:
        resp = await client.post("/transcribe", headers=kwargs.pop("headers", auth), **kwargs)
        assert resp.status == expected, await resp.text()

    await post(401, data=form(CLIP, job_id="x"), headers={})
    await post(415, data=form(data=b"not audio at all" * 100, job_id="x"))
    await post(400, data=form(CLIP, job_id="bad id!"))
    await post(400, data=form(job_id="nofile"))
    await post(413, data=form(data=b"\0" * 300_000, job_id="big"))
    await post(202, data=form(_unique_wav(tmp_path, "run", 1), job_id="run"))
    for _ in range(200):
        if (await (await client.get("/status/run", headers=auth)).json())["status"] == "processing":
            break
        await asyncio.sleep(0.05)
    await post(409, data=form(_unique_wav(tmp_path, "other", 3), job_id="run"))
    await post(202, data=form(_unique_wav(tmp_path, "q1", 2), job_id="q1"))
    await post(429, data=form(_unique_wav(tmp_path, "q2", 4), job_id="q2"))
    await app[SERVICES].worker.stop()
    await post(503, data=form(CLIP, job_id="late"))

    assert (await client.get("/metrics")).status == 401  # the token guards /metrics too
    samples = await scrape(client, headers=auth)
    counts = {
        reason: value(samples, "whisper_uploads_rejected_total", reason=reason)
        for reason in (
            "unauthorized",
            "unsupported_audio",
            "bad_request",
            "too_large",
            "conflict",
            "queue_full",
            "shutting_down",
            "other",
        )
    }
    assert counts == {
        "unauthorized": 1,
        "unsupported_audio": 1,
        "bad_request": 2,
        "too_large": 1,
        "conflict": 1,
        "queue_full": 1,
        "shutting_down": 1,
        "other": 0,
    }
    # Other endpoints' errors are not upload refusals.
    assert (await client.get("/status/nope", headers=auth)).status == 404
    assert (await client.get("/metrics")).status == 401
    samples = await scrape(client, headers=auth)
    assert total(samples, "whisper_uploads_rejected_total") == 8
    engine.gate.set()


async def test_each_app_has_its_own_registry(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    first = await aiohttp_client(create_app(Settings(storage_dir=tmp_path / "a"), engine=FakeEngine()))
    second = await aiohttp_client(create_app(Settings(storage_dir=tmp_path / "b"), engine=FakeEngine()))
    await first.post("/transcribe", data=form(data=b"junk" * 100, job_id="x"))
    assert value(await scrape(first), "whisper_uploads_rejected_total", reason="unsupported_audio") == 1
    assert value(await scrape(second), "whisper_uploads_rejected_total", reason="unsupported_audio") == 0
    default = prometheus_client.generate_latest(prometheus_client.REGISTRY).decode()
    assert "whisper_" not in default


# -- through a real server ----------------------------------------------------------------------


def server_scrape(server: ServerProcess, token: str) -> Samples:
    resp = requests.get(server.url + "/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert resp.status_code == 200, resp.text
    return parse(resp.text)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_real_server_metrics_after_a_job_a_refusal_and_a_crash(server_factory: Any) -> None:
    token = "metrics-token"
    server: ServerProcess = server_factory(
        extra_args=["--device", "cpu", "--beam-size", "1", "--api-token", token]
    ).start()
    auth = {"Authorization": f"Bearer {token}"}
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    wrong = requests.get(server.url + "/metrics", headers={"Authorization": "Bearer no"}, timeout=10)
    assert wrong.status_code == 401

    files = {"file": (CLIP.name, CLIP.read_bytes(), "application/octet-stream")}
    resp = requests.post(
        server.url + "/transcribe", files=files, data={"job_id": "clip"}, headers=auth, timeout=60
    )
    assert resp.status_code == 202, resp.text
    deadline = time.monotonic() + 180
    while requests.get(f"{server.url}/status/clip", headers=auth, timeout=10).json()["status"] != "completed":
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.2)
    samples: Samples = {}
    for _ in range(50):
        samples = server_scrape(server, token)
        if total(samples, "whisper_job_real_time_factor_count") == 1:
            break
        time.sleep(0.1)
    duration = audio.probe(CLIP).duration_s
    assert duration is not None
    assert value(samples, "whisper_jobs", status="completed") == 1
    assert value(samples, "whisper_jobs_finished_total", outcome="completed") == 1
    assert total(samples, "whisper_job_real_time_factor_count") == 1
    assert total(samples, "whisper_audio_seconds_transcribed_total") == pytest.approx(duration, abs=0.05)
    assert 0 < total(samples, "whisper_job_real_time_factor_sum") < 10
    assert value(samples, "whisper_models_loaded") == 1
    assert value(samples, "whisper_model_load_seconds", model="tiny.en") > 0
    assert value(samples, "whisper_worker_restarts_total") == 0

    junk = {"file": ("notes.wav", b"this is not audio" * 500, "application/octet-stream")}
    resp = requests.post(server.url + "/transcribe", files=junk, headers=auth, timeout=60)
    assert resp.status_code == 415
    resp = requests.post(server.url + "/transcribe", files=files, timeout=60)  # no token
    assert resp.status_code == 401
    samples = server_scrape(server, token)
    assert value(samples, "whisper_uploads_rejected_total", reason="unsupported_audio") == 1
    assert value(samples, "whisper_uploads_rejected_total", reason="unauthorized") == 1

    first_pid = requests.get(server.url + "/health", timeout=5).json()["worker_pid"]
    os.kill(first_pid, signal.SIGKILL)
    deadline = time.monotonic() + 120
    while True:
        health = requests.get(server.url + "/health", timeout=5)
        if health.status_code == 200 and health.json()["worker_restarts"] >= 1:
            break
        assert time.monotonic() < deadline, server.log()
        time.sleep(0.1)
    samples = server_scrape(server, token)
    assert value(samples, "whisper_worker_restarts_total") == 1
    assert value(samples, "whisper_worker_ready") == 1
    assert value(samples, "whisper_models_loaded") == 1  # the new process loaded the default again
    assert value(samples, "whisper_jobs_finished_total", outcome="completed") == 1
