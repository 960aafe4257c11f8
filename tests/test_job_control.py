"""Job control: cancel, list, queue view, priority with ageing, transcript cache, retention,
auth and backpressure. Queue logic in process on a gated fake engine; each feature again
through a real server with the real model."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from conftest import ENGLISH_CLIPS, FakeEngine, ServerProcess, eval_clip, reference_text, word_error_rate
from test_api import ClientFactory, form, leftover_files, wait_status

from service.app import create_app
from service.jobs.job import URGENT, effective_priority, parse_priority
from service.settings import Settings
from service.store.sqlite import SqliteJobStore

CLIP = eval_clip("LDC93S1.wav")
Client = TestClient[Any, Any]


async def _held(settings: Settings, aiohttp_client: ClientFactory) -> tuple[Client, FakeEngine]:
    engine = FakeEngine()
    engine.gate.clear()
    return await aiohttp_client(create_app(settings, engine=engine)), engine


async def _submit(client: Client, job_id: str, clip: Path = CLIP, **fields: str) -> dict[str, Any]:
    resp = await client.post("/transcribe", data=form(clip, job_id=job_id, **fields))
    assert resp.status == 202, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def _unique_wav(tmp_path: Path, name: str, seed: int) -> Path:
    """Distinct audio per job, so the transcript cache does not join them."""
    data = bytearray(CLIP.read_bytes())
    data[-2:] = seed.to_bytes(2, "little")
    path = tmp_path / f"{name}.wav"
    path.write_bytes(bytes(data))
    return path


# -- cancel --------------------------------------------------------------------------------------


async def test_cancel_queued_and_running_jobs(
    settings: Settings, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client, engine = await _held(settings, aiohttp_client)
    await _submit(client, "running", _unique_wav(tmp_path, "a", 1))
    await wait_status(client, "running", {"processing"})
    await _submit(client, "waiting", _unique_wav(tmp_path, "b", 2))
    await _submit(client, "after", _unique_wav(tmp_path, "c", 3))
    pending = settings.storage_dir / "pending"
    assert (pending / "waiting.wav").is_file()

    resp = await client.delete("/jobs/waiting")
    assert resp.status == 200
    body = await resp.json()
    assert body["status"] == "cancelled" and body["previous_status"] == "queued"
    assert not (pending / "waiting.wav").exists()
    status = await (await client.get("/status/waiting")).json()
    assert status["status"] == "cancelled" and "Cancelled" in status["message"]
    download = await client.get("/download/waiting")
    assert download.status == 404 and "cancelled" in (await download.json())["error"]

    # The running job stops at its next progress report, and the worker goes on.
    resp = await client.delete("/jobs/running")
    assert resp.status == 200 and (await resp.json())["previous_status"] == "processing"
    assert (await (await client.get("/status/running")).json())["status"] == "cancelled"
    nxt = await wait_status(client, "after", {"processing", "completed"}, timeout=10)
    assert nxt["status"] == "processing"
    assert not (pending / "running.wav").exists()
    engine.gate.set()
    done = await wait_status(client, "after", {"completed", "failed"})
    assert done["status"] == "completed"
    assert engine.decoded == [done["transcript"]]  # the cancelled decode produced nothing
    assert not (settings.storage_dir / "transcripts" / "running.json").exists()
    assert (await (await client.get("/status/running")).json())["status"] == "cancelled"

    for job_id, code in (("after", 409), ("waiting", 409), ("nope", 404), ("bad id!", 404)):
        resp = await client.delete(f"/jobs/{job_id}")
        assert resp.status == code, job_id
        assert "error" in await resp.json()

    # A cancelled job's audio sent again runs afresh.
    again = await _submit(client, "waiting", _unique_wav(tmp_path, "b", 2))
    assert again["status"] == "queued"
    assert (await wait_status(client, "waiting", {"completed", "failed"}))["status"] == "completed"


# -- priority --------------------------------------------------------------------------------


def test_priority_values() -> None:
    assert parse_priority(None) == 0 and parse_priority("") == 0
    assert parse_priority("urgent") == URGENT and parse_priority("LOW") < 0 < parse_priority("7")
    for bad in ("soon", "1.5", "1000"):
        with pytest.raises(Exception, match="priority must be"):
            parse_priority(bad)
    # Ageing lifts a waiting job one level per period, never to urgent, never down.
    assert effective_priority(-10, 0, 60) == -10
    assert effective_priority(-10, 600, 60) == 0
    assert effective_priority(-10, 10**6, 60) == URGENT - 1
    assert effective_priority(50, 10**6, 60) == 50


async def test_urgent_overtakes_backlog_fifo_within_level(
    settings: Settings, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client, engine = await _held(settings, aiohttp_client)
    await _submit(client, "busy", _unique_wav(tmp_path, "busy", 10))
    await wait_status(client, "busy", {"processing"})
    order = [("routine-1", "normal"), ("routine-2", ""), ("later", "low"), ("routine-3", "normal")]
    order += [("mayday", "urgent"), ("five", "5")]
    for seed, (job_id, priority) in enumerate(order, start=11):
        await _submit(client, job_id, _unique_wav(tmp_path, job_id, seed), priority=priority)

    queue = await (await client.get("/queue")).json()
    expected = ["mayday", "five", "routine-1", "routine-2", "routine-3", "later"]
    assert [job["job_id"] for job in queue["queued"]] == expected
    assert [job["position"] for job in queue["queued"]] == [1, 2, 3, 4, 5, 6]
    assert queue["running"][0]["job_id"] == "busy"
    assert queue["queued"][0]["priority_name"] == "urgent"
    starts = [job["estimated_start_s"] for job in queue["queued"]]
    assert starts == sorted(starts) and starts[-1] > 0
    assert (await (await client.get("/status/mayday")).json())["queue_position"] == 1
    assert (await (await client.get("/status/later")).json())["queue_position"] == 6

    resp = await client.post("/transcribe", data=form(CLIP, job_id="bad", priority="asap"))
    assert resp.status == 400 and "priority must be" in (await resp.json())["error"]

    engine.gate.set()
    for job_id in expected:
        await wait_status(client, job_id, {"completed"})
    jobs = (await (await client.get("/jobs?limit=100")).json())["jobs"]
    by_id = {job["job_id"]: job for job in jobs}
    started = sorted(expected, key=lambda j: by_id[j]["started_at"])
    assert started == expected


async def test_ageing_lets_an_old_low_job_overtake_fresh_normal_ones(tmp_path: Path) -> None:
    journal = SqliteJobStore(tmp_path / "jobs.db", priority_aging_s=1.0)
    await journal.open()
    try:
        from test_journal import new_job

        await journal.insert(new_job("old-low", priority=-10))
        await journal.insert(new_job("fresh", priority=0))
        await journal.insert(new_job("urgent", priority=URGENT))
        # The low job has waited 30 periods: lifted to just below urgent.
        await journal.run(
            lambda conn: conn.execute("UPDATE jobs SET created_at = created_at - 30 WHERE job_id = 'old-low'")
        )
        order = [job.job_id for job in await journal.queued_in_order()]
        assert order == ["urgent", "old-low", "fresh"]
        claimed = [await journal.claim_next() for _ in range(3)]
        assert [job.job_id for job in claimed if job] == order
    finally:
        await journal.close()


# -- list ------------------------------------------------------------------------------------


async def test_list_jobs_newest_first_with_paging_and_filters(
    settings: Settings, aiohttp_client: ClientFactory, tmp_path: Path
) -> None:
    client, engine = await _held(settings, aiohttp_client)
    ids = [f"job-{i}" for i in range(7)]
    for seed, job_id in enumerate(ids):
        await _submit(client, job_id, _unique_wav(tmp_path, job_id, 100 + seed))
    await wait_status(client, "job-0", {"processing"})
    await client.delete("/jobs/job-3")

    seen: list[str] = []
    cursor = None
    while True:
        url = "/jobs?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = await (await client.get(url)).json()
        seen += [job["job_id"] for job in page["jobs"]]
        assert page["count"] == len(page["jobs"]) <= 3
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids[::-1]

    queued = await (await client.get("/jobs?status=queued")).json()
    assert [j["job_id"] for j in queued["jobs"]] == ["job-6", "job-5", "job-4", "job-2", "job-1"]
    both = await (await client.get("/jobs?status=processing,cancelled")).json()
    assert {j["job_id"]: j["status"] for j in both["jobs"]} == {"job-3": "cancelled", "job-0": "processing"}
    for bad in ("status=done", "limit=0", "limit=x", "cursor=-1"):
        resp = await client.get(f"/jobs?{bad}")
        assert resp.status == 400, bad
        assert "error" in await resp.json()
    engine.gate.set()


# -- transcript cache ---------------------------------------------------------------------------


async def test_cache_answers_identical_audio_at_once(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine()
    client = await aiohttp_client(create_app(settings, engine=engine))
    await _submit(client, "first")
    first = await wait_status(client, "first", {"completed"})
    resp = await client.post("/transcribe", data=form(CLIP, job_id="second"))
    assert resp.status == 202 and (await resp.json())["status"] == "completed"
    second = await (await client.get("/status/second")).json()
    assert second["transcript"] == first["transcript"]
    assert "reused from job first" in second["note"]
    assert len(engine.decoded) == 1
    assert (
        await (await client.get("/download/second?format=srt")).text()
        == await (await client.get("/download/first?format=srt")).text()
    )
    assert not (settings.storage_dir / "pending" / "second.wav").exists()  # nothing to decode: not kept
    # Other options are other work.
    await _submit(client, "third", word_timestamps="true")
    await wait_status(client, "third", {"completed"})
    assert len(engine.decoded) == 2


async def test_cache_off(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    engine = FakeEngine()
    settings = Settings(storage_dir=tmp_path / "storage", transcript_cache=False)
    client = await aiohttp_client(create_app(settings, engine=engine))
    for job_id in ("a", "b"):
        await _submit(client, job_id)
        await wait_status(client, job_id, {"completed"})
    assert len(engine.decoded) == 2


# -- retention -------------------------------------------------------------------------------


async def test_retention_removes_finished_jobs_only(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", retention_seconds=1.0)
    client, engine = await _held(settings, aiohttp_client)
    engine.gate.set()
    await _submit(client, "old", _unique_wav(tmp_path, "old", 1))
    await wait_status(client, "old", {"completed"})
    engine.gate.clear()
    await _submit(client, "running", _unique_wav(tmp_path, "running", 2))
    await wait_status(client, "running", {"processing"})
    await _submit(client, "queued", _unique_wav(tmp_path, "queued", 3))
    storage = settings.storage_dir
    assert (storage / "transcripts" / "old.json").is_file()
    for _ in range(100):
        if (await client.get("/status/old")).status == 404:
            break
        await asyncio.sleep(0.1)
    assert (await client.get("/status/old")).status == 404
    assert not (storage / "transcripts" / "old.json").exists()
    assert not (storage / "pending" / "old.wav").exists()
    await asyncio.sleep(2.5)  # more sweeps: running and queued jobs are never touched
    assert (await (await client.get("/status/running")).json())["status"] == "processing"
    assert (await (await client.get("/status/queued")).json())["status"] == "queued"
    assert (storage / "pending" / "queued.wav").is_file()
    engine.gate.set()
    await wait_status(client, "queued", {"completed"})


async def test_delete_audio_on_complete(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", delete_audio_on_complete=True)
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    await _submit(client, "a")
    await wait_status(client, "a", {"completed"})
    assert not (settings.storage_dir / "pending" / "a.wav").exists()
    assert (await client.get("/download/a")).status == 200


# -- auth and backpressure ----------------------------------------------------------------------


async def test_api_token(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", api_token="s3cret-token")
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    assert (await client.get("/health")).status == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        for method, path in (
            ("GET", "/status/x"),
            ("GET", "/jobs"),
            ("GET", "/queue"),
            ("DELETE", "/jobs/x"),
        ):
            resp = await client.request(method, path, headers=headers)
            assert resp.status == 401, (method, path, headers)
            assert "Bearer" in (await resp.json())["error"]
            assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        resp = await client.post("/transcribe", data=form(CLIP, job_id="x"), headers=headers)
        assert resp.status == 401
    assert leftover_files(settings) == []
    good = {"Authorization": "Bearer s3cret-token"}
    resp = await client.post("/transcribe", data=form(CLIP, job_id="x"), headers=good)
    assert resp.status == 202
    assert (await client.get("/status/x", headers=good)).status == 200


async def test_full_queue_is_429_with_retry_after_and_stores_nothing(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", max_queue=2)
    client, engine = await _held(settings, aiohttp_client)
    await _submit(client, "run", _unique_wav(tmp_path, "run", 1))
    await wait_status(client, "run", {"processing"})
    await _submit(client, "q1", _unique_wav(tmp_path, "q1", 2))
    await _submit(client, "q2", _unique_wav(tmp_path, "q2", 3))
    resp = await client.post("/transcribe", data=form(_unique_wav(tmp_path, "q3", 4), job_id="q3"))
    assert resp.status == 429
    assert "queue is full" in (await resp.json())["error"]
    assert 1 <= int(resp.headers["Retry-After"]) <= 600
    assert (await client.get("/status/q3")).status == 404
    assert sorted(p.name for p in (settings.storage_dir / "pending").iterdir()) == [
        "q1.wav",
        "q2.wav",
        "run.wav",
    ]
    assert list((settings.storage_dir / "tmp").iterdir()) == []
    engine.gate.set()
    await wait_status(client, "q2", {"completed"})
    await _submit(client, "q3", _unique_wav(tmp_path, "q3", 4))  # room again


# -- through a real server --------------------------------------------------------------------


def _post(
    server: ServerProcess, clip: Path, headers: dict[str, str] | None = None, **data: str
) -> requests.Response:
    files = {"file": (clip.name, clip.read_bytes(), "application/octet-stream")}
    return requests.post(f"{server.url}/transcribe", files=files, data=data, headers=headers, timeout=60)


def _status(server: ServerProcess, job_id: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{server.url}/status/{job_id}", timeout=10, **kw).json()
    return body


def _wait(
    server: ServerProcess, job_id: str, wanted: set[str], timeout: float = 180, **kw: Any
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = _status(server, job_id, **kw)
        if body["status"] in wanted:
            return body
        time.sleep(0.1)
    raise AssertionError(f"{job_id} never reached {wanted}: {body}\n{server.log()}")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_cancel_priority_cache_list_on_a_real_server(
    server_factory: Callable[..., ServerProcess], long_wav: Path
) -> None:
    server = server_factory(extra_args=["--device", "cpu", "--beam-size", "1"]).start()
    assert _post(server, long_wav, job_id="long").status_code == 202
    _wait(server, "long", {"processing"})
    routine, urgent = eval_clip(ENGLISH_CLIPS[2]), eval_clip(ENGLISH_CLIPS[7])
    assert _post(server, routine, job_id="routine", priority="low").status_code == 202
    assert _post(server, urgent, job_id="radio", priority="urgent").status_code == 202
    queue = requests.get(f"{server.url}/queue", timeout=10).json()
    assert [j["job_id"] for j in queue["queued"]] == ["radio", "routine"]
    assert queue["running"][0]["job_id"] == "long"

    # Cancel the running decode: it stops within a few seconds and the model stays loaded.
    while _status(server, "long")["progress"] == 0:
        time.sleep(0.1)
    cancelled_at = time.monotonic()
    resp = requests.delete(f"{server.url}/jobs/long", timeout=10)
    assert resp.status_code == 200 and resp.json()["previous_status"] == "processing"
    radio = _wait(server, "radio", {"processing", "completed"}, timeout=60)
    stop_s = time.monotonic() - cancelled_at
    assert stop_s < 10, f"the cancelled decode took {stop_s:.1f} s to stop"
    radio = _wait(server, "radio", {"completed", "failed"})
    routine_done = _wait(server, "routine", {"completed", "failed"})
    assert radio["status"] == routine_done["status"] == "completed"
    assert radio["started_at"] < routine_done["started_at"]  # urgent overtook the earlier upload
    assert word_error_rate(reference_text(urgent.name), radio["transcript"]) < 0.3
    long = _status(server, "long")
    assert long["status"] == "cancelled"
    assert not (server.storage_dir / "pending" / "long.wav").exists()
    assert requests.delete(f"{server.url}/jobs/long", timeout=10).status_code == 409
    health = requests.get(f"{server.url}/health", timeout=10).json()
    assert health["worker_restarts"] == 0 and health["model_loaded"]

    # The same audio again under another id: answered from the cache, at once.
    again = _post(server, urgent, job_id="radio-again", priority="urgent")
    assert again.status_code == 202 and again.json()["status"] == "completed"
    assert _status(server, "radio-again")["transcript"] == radio["transcript"]

    listed = requests.get(f"{server.url}/jobs", timeout=10).json()["jobs"]
    assert [j["job_id"] for j in listed] == ["radio-again", "radio", "routine", "long"]
    assert [j["status"] for j in listed] == ["completed", "completed", "completed", "cancelled"]
    queue = requests.get(f"{server.url}/queue", timeout=10).json()
    assert queue["queued"] == [] and queue["real_time_factor"] > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_token_backpressure_retention_on_a_real_server(
    server_factory: Callable[..., ServerProcess], long_wav: Path
) -> None:
    token = {"Authorization": "Bearer tok-123"}
    server = server_factory(
        extra_args=[
            *("--host", "0.0.0.0", "--api-token", "tok-123", "--max-queue", "1"),
            *("--retention-days", str(3 / 86400), "--no-transcript-cache"),
        ]
    )
    server.start()  # /health needs no token
    assert "no API token" not in server.log()
    assert requests.get(f"{server.url}/jobs", timeout=10).status_code == 401
    assert _post(server, CLIP, job_id="nope").status_code == 401
    assert _post(server, long_wav, headers=token, job_id="one").status_code == 202
    _wait(server, "one", {"processing"}, headers=token)
    assert _post(server, CLIP, headers=token, job_id="two").status_code == 202
    third = _post(server, CLIP, headers=token, job_id="three")
    assert third.status_code == 429, third.text
    assert int(third.headers["Retry-After"]) >= 1 and "queue is full" in third.json()["error"]
    assert not list((server.storage_dir / "pending").glob("three*"))
    assert requests.delete(f"{server.url}/jobs/one", headers=token, timeout=10).status_code == 200
    done = _wait(server, "two", {"completed"}, headers=token)
    assert word_error_rate(reference_text(CLIP.name), done["transcript"]) < 0.35
    # Retention: three seconds after it ended, the job and its files are gone.
    deadline = time.monotonic() + 30
    while requests.get(f"{server.url}/status/two", headers=token, timeout=10).status_code != 404:
        assert time.monotonic() < deadline, "retention never removed the job"
        time.sleep(0.2)
    assert not list((server.storage_dir / "transcripts").glob("two*"))
    assert not list((server.storage_dir / "pending").glob("two*"))


@pytest.mark.slow
def test_open_bind_without_token_warns(server_factory: Callable[..., ServerProcess]) -> None:
    server = server_factory(extra_args=["--host", "0.0.0.0"]).start()
    assert "no API token" in server.log()
