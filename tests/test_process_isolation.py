"""The default runner, inference in a supervised child process, in the fast suite: the real
tiny.en in a real child, driven through the in-process app (the slow tests do the same through
a real server process)."""

from __future__ import annotations

import asyncio
import io
import os
import signal
from pathlib import Path
from typing import Any

from aiohttp import FormData
from conftest import eval_clip, reference_text, word_error_rate

from service.app import create_app
from service.settings import Settings

CLIP = "61-70968-0000.flac"
LONG = "1272-128104-0004-8k.wav"  # 29 s: long enough to be killed mid-decode


def upload(path: Path, job_id: str) -> FormData:
    body = FormData()
    body.add_field("job_id", job_id)
    body.add_field("file", io.BytesIO(path.read_bytes()), filename=path.name)
    return body


async def wait_for(client: Any, job_id: str, wanted: set[str], timeout: float = 120.0) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(int(timeout / 0.05)):
        body = await (await client.get(f"/status/{job_id}")).json()
        if body["status"] in wanted:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {wanted}: {body}")


async def test_the_child_process_transcribes_and_a_killed_child_costs_one_attempt(
    aiohttp_client: Any, tmp_path: Path
) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", isolation="process", transcript_cache=False)
    client = await aiohttp_client(create_app(settings))
    for _ in range(2400):  # the child imports torch and loads tiny.en
        health = await (await client.get("/health")).json()
        if health["model_loaded"]:
            break
        await asyncio.sleep(0.05)
    assert health["isolation"] == "process" and health["worker_pid"] not in (None, os.getpid())
    first_child = health["worker_pid"]

    assert (await client.post("/transcribe", data=upload(eval_clip(CLIP), "clean"))).status == 202
    done = await wait_for(client, "clean", {"completed", "failed"})
    assert done["status"] == "completed" and done["attempts"] == 1, done
    text = await (await client.get("/download/clean?format=txt")).text()
    assert word_error_rate(reference_text(CLIP), text) < 0.2

    # The child dies mid-job: the server stays up, restarts it, and the job runs again.
    assert (await client.post("/transcribe", data=upload(eval_clip(LONG), "crashed"))).status == 202
    await wait_for(client, "crashed", {"processing"})
    os.kill(first_child, signal.SIGKILL)
    again = await wait_for(client, "crashed", {"completed", "failed"}, timeout=180)
    assert again["status"] == "completed" and again["attempts"] == 2, again
    health = await (await client.get("/health")).json()
    assert health["worker_restarts"] == 1 and health["worker_pid"] != first_child
    text = await (await client.get("/download/crashed?format=txt")).text()
    assert word_error_rate(reference_text(LONG), text) < 0.2
