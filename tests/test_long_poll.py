"""`GET /status/{id}?wait=N`: the answer comes when the job finishes, not at the next poll."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from conftest import FakeEngine, ServerProcess, eval_clip, reference_text, word_error_rate
from test_api import ClientFactory, form

from service.api.keys import SERVICES
from service.app import create_app
from service.settings import Settings


@pytest.fixture
async def held(settings: Settings, aiohttp_client: ClientFactory) -> tuple[TestClient[Any, Any], FakeEngine]:
    """A client whose engine holds every decode until the test opens the gate."""
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    return client, engine


async def _submit(client: TestClient[Any, Any], job_id: str) -> None:
    resp = await client.post("/transcribe", data=form(eval_clip("LDC93S1.wav"), job_id=job_id))
    assert resp.status == 202


async def test_wait_answers_when_the_job_completes(held: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = held
    await _submit(client, "lp-1")
    started = time.monotonic()
    request = asyncio.ensure_future(client.get("/status/lp-1?wait=30"))
    await asyncio.sleep(0.5)
    assert not request.done()  # held while the decode is gated
    engine.gate.set()
    resp = await asyncio.wait_for(request, 10)
    body = await resp.json()
    assert resp.status == 200
    assert body["status"] == "completed"
    assert body["transcript"].endswith("samples")
    assert time.monotonic() - started < 10
    assert client.app is not None and client.app[SERVICES].watch.waiting == 0  # nothing left subscribed


async def test_wait_expires_with_the_current_state(held: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = held
    await _submit(client, "lp-2")
    started = time.monotonic()
    resp = await client.get("/status/lp-2?wait=0.4")
    elapsed = time.monotonic() - started
    body = await resp.json()
    assert body["status"] in ("queued", "processing")
    assert 0.35 <= elapsed < 5
    engine.gate.set()


async def test_wait_on_a_finished_job_answers_at_once(
    held: tuple[TestClient[Any, Any], FakeEngine],
) -> None:
    client, engine = held
    engine.gate.set()
    await _submit(client, "lp-3")
    resp = await client.get("/status/lp-3?wait=30")
    assert (await resp.json())["status"] == "completed"
    started = time.monotonic()
    resp = await client.get("/status/lp-3?wait=30")
    assert (await resp.json())["status"] == "completed"
    assert time.monotonic() - started < 1


@pytest.mark.parametrize("value", ["soon", "-1", "nan", "-inf"])
async def test_bad_wait_values_are_refused(held: tuple[TestClient[Any, Any], FakeEngine], value: str) -> None:
    client, engine = held
    engine.gate.set()
    await _submit(client, "lp-4")
    resp = await client.get(f"/status/lp-4?wait={value}")
    assert resp.status == 400
    assert "wait must be" in (await resp.json())["error"]


async def test_wait_on_an_unknown_job_is_404(held: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = held
    resp = await client.get("/status/nope?wait=5")
    assert resp.status == 404


async def test_shutdown_releases_waiting_requests(held: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = held
    await _submit(client, "lp-5")
    request = asyncio.ensure_future(client.get("/status/lp-5?wait=30"))
    await asyncio.sleep(0.3)
    assert client.app is not None
    await client.app[SERVICES].worker.stop()
    resp = await asyncio.wait_for(request, 5)
    assert (await resp.json())["status"] in ("queued", "processing")


@pytest.mark.slow
def test_wait_through_a_real_server(server_factory: Any) -> None:
    """One request after the upload brings the finished transcript: no polling loop at all."""
    server: ServerProcess = server_factory().start()
    clip = eval_clip("sense_and_sensibility_01_austen_64kb-0890.wav")
    with open(clip, "rb") as fp:
        resp = requests.post(f"{server.url}/transcribe", files={"file": fp}, data={"job_id": "lp-real"})
    assert resp.status_code == 202
    started = time.monotonic()
    body = requests.get(f"{server.url}/status/lp-real?wait=60", timeout=90).json()
    assert body["status"] == "completed", body
    assert time.monotonic() - started < 55  # answered on completion, not at the wait's end
    assert word_error_rate(reference_text(clip.name), body["transcript"]) <= 0.15
