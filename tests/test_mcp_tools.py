"""The MCP server as an agent meets it: `python -m mcp_tools` launched as a subprocess and driven
with the MCP SDK's own stdio client, against a real transcription service on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from pathlib import Path
from typing import Any, TextIO

import pytest
from conftest import REPO, ServerProcess, eval_clip, free_port, reference_text, word_error_rate
from mcp import ClientSession, StdioServerParameters, stdio_client

CLIP = "LDC93S1.wav"  # 3 s: "She had your dark suit in greasy wash water all year."
MAX_WER = 0.35
POLL_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as patch:
        if "OMP_NUM_THREADS" not in os.environ:
            patch.setenv("OMP_NUM_THREADS", "1")
        server = ServerProcess(tmp_path_factory.mktemp("tools") / "storage", extra_args=["--beam-size", "1"])
        try:
            server.start()
            yield server
        finally:
            server.kill()


@pytest.fixture
def mcp_log(tmp_path: Path) -> Iterator[TextIO]:
    """The MCP server's stderr (its logs), kept with the test's files."""
    with open(tmp_path / "mcp-server.log", "w", encoding="utf-8") as log:
        yield log


@asynccontextmanager
async def mcp_tools(service_url: str, errlog: TextIO) -> AsyncIterator[ClientSession]:
    """An initialized MCP session with `python -m mcp_tools`, the service URL set as a user would."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "mcp_tools"],
        cwd=REPO,
        env={"TRANSCRIPTION_SERVICE_URL": service_url},
    )
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session


def text_of(path: Path | str) -> str:
    return Path(path).read_text(encoding="utf-8")


async def call(session: ClientSession, tool: str, **arguments: Any) -> dict[str, Any]:
    """Call a tool; its JSON text and structured content agree, and is_error mirrors `success`."""
    result = await session.call_tool(tool, arguments)
    data: dict[str, Any] = result.structured_content
    assert json.loads(result.content[0].text) == data  # type: ignore[union-attr]
    assert result.is_error is (not data["success"]), data
    return data


async def poll_until_finished(session: ClientSession, job_id: str, out: Path) -> list[dict[str, Any]]:
    """What an agent does: check, and check again, until the job is completed or failed.

    `wait_seconds` makes each check a long-poll; a service without long-polling answers at once,
    so a short sleep keeps this from spinning.
    """
    seen = []
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while time.monotonic() < deadline:
        started = time.monotonic()
        args = {"job_id": job_id, "output_dir": str(out), "wait_seconds": 5}
        seen.append(await call(session, "check_transcription_status", **args))
        if seen[-1]["status"] in ("completed", "failed", "cancelled"):
            return seen
        assert seen[-1]["success"] and 0 <= seen[-1]["progress"] <= 1, seen[-1]
        assert seen[-1]["status"] in ("queued", "processing") and job_id in seen[-1]["status_file"]
        if time.monotonic() - started < 1:
            await asyncio.sleep(0.5)
    raise AssertionError(f"{job_id} not finished after {POLL_TIMEOUT_S} s: {seen[-1]}")


def jobs_like(service: ServerProcess, prefix: str) -> list[str]:
    with closing(sqlite3.connect(f"file:{service.storage_dir / 'jobs.db'}?mode=ro", uri=True)) as db:
        return [row[0] for row in db.execute("SELECT job_id FROM jobs WHERE job_id LIKE ?", (prefix + "%",))]


async def test_tools_are_listed_with_guidance_for_agents(mcp_log: TextIO) -> None:
    async with mcp_tools(f"http://127.0.0.1:{free_port()}", mcp_log) as session:
        listed = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert "transcribe_wav" in (session.instructions or "")
    assert set(listed) == {"transcribe_wav", "check_transcription_status"}

    queue = listed["transcribe_wav"]
    assert queue.description and "check_transcription_status" in queue.description
    assert "10-30 s" in queue.description and "return at once" in queue.description
    assert queue.input_schema["required"] == ["filename"]
    props = queue.input_schema["properties"]
    assert set(props) == {"filename", "output_dir", "model", "transcription_service_url"}
    assert props["output_dir"]["default"] == "/workspace/transcriptions"
    assert all(prop.get("description") for prop in props.values())

    check = listed["check_transcription_status"]
    assert check.description
    for promise in ("completed", "failed", "<job_id>.txt", "FAILED - <error>", "10-30 s"):
        assert promise in check.description
    assert check.input_schema["required"] == ["job_id"]


async def test_errors_come_back_as_messages_not_traces(tmp_path: Path, mcp_log: TextIO) -> None:
    nothing = f"http://127.0.0.1:{free_port()}"
    out = tmp_path / "out"
    clip = eval_clip(CLIP)
    async with mcp_tools(nothing, mcp_log) as session:
        down = await call(session, "transcribe_wav", filename=str(clip), output_dir=str(out))
        assert f"not reachable at {nothing}" in down["error"]
        assert "start_transcription_service.sh" in down["error"] and f"{nothing}/health" in down["error"]

        status_down = await call(session, "check_transcription_status", job_id="x-1", output_dir=str(out))
        assert "not reachable" in status_down["error"]

        missing = await call(
            session, "transcribe_wav", filename=str(tmp_path / "gone.wav"), output_dir=str(out)
        )
        assert "Audio file not found" in missing["error"] and "gone.wav" in missing["error"]

        escape = await call(
            session, "check_transcription_status", job_id="../../etc/passwd", output_dir=str(out)
        )
        assert "is not a job id" in escape["error"]
    assert not out.exists() or list(out.iterdir()) == []


@pytest.mark.slow
async def test_transcribe_and_collect_end_to_end(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO
) -> None:
    audio = tmp_path / "in" / "team standup.wav"
    audio.parent.mkdir()
    shutil.copy(eval_clip(CLIP), audio)
    job_id = f"team-standup-{hashlib.sha256(audio.read_bytes()).hexdigest()[:10]}"
    out = tmp_path / "transcriptions"  # does not exist yet: the tool creates it
    status_file = out / f"{job_id}.transcribing.txt"

    async with mcp_tools(service.url, mcp_log) as session:
        queued = await call(session, "transcribe_wav", filename=str(audio), output_dir=str(out))
        assert queued["status"] == "queued" and queued["job_id"] == job_id
        assert queued["service_url"] == service.url and job_id in queued["message"]
        headline = text_of(status_file).splitlines()[0]
        assert headline.startswith(f"QUEUED - job {job_id}, file {audio}") and service.url in headline

        retry = await call(session, "transcribe_wav", filename=str(audio), output_dir=str(out))
        assert retry["job_id"] == job_id and retry["status"] in ("queued", "processing", "completed")

        checks = await poll_until_finished(session, job_id, out)
        done = checks[-1]
        assert done["success"] and done["status"] == "completed", done
        assert done["transcript_file"] == str(out / f"{job_id}.txt")
        assert text_of(done["transcript_file"]) == done["transcript"]
        wer = word_error_rate(reference_text(CLIP), done["transcript"])
        assert wer < MAX_WER, f"WER {wer:.2f}: {done['transcript']!r}"
        assert not status_file.exists()
        assert sorted(p.name for p in out.iterdir()) == [f"{job_id}.txt"]  # no temp files left

        again = await call(session, "transcribe_wav", filename=str(audio), output_dir=str(out))
        assert again["status"] == "completed" and "check_transcription_status" in again["message"]
        assert not status_file.exists()
        recheck = await call(session, "check_transcription_status", job_id=job_id, output_dir=str(out))
        assert recheck["transcript"] == done["transcript"]
    assert jobs_like(service, "team-standup-") == [job_id]  # three submissions, one job


@pytest.mark.slow
async def test_undecodable_audio_and_unknown_jobs(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO
) -> None:
    fake = tmp_path / "notes.wav"
    fake.write_text("meeting notes, not audio\n" * 40)
    out = tmp_path / "out"
    async with mcp_tools(service.url, mcp_log) as session:
        rejected = await call(session, "transcribe_wav", filename=str(fake), output_dir=str(out))
        assert "rejected notes.wav" in rejected["error"]
        assert "not audio that can be decoded" in rejected["error"]  # the service's own 415 text
        unknown = await call(
            session, "check_transcription_status", job_id="never-sent-0123456789", output_dir=str(out)
        )
        assert "has no job 'never-sent-0123456789'" in unknown["error"]
    assert list(out.iterdir()) == []
    assert jobs_like(service, "notes-") == []


@pytest.mark.slow
async def test_failed_job_is_reported_and_marked(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO
) -> None:
    """`small` is a real model name that this offline machine cannot download, so its job fails."""
    audio = tmp_path / "memo.wav"
    shutil.copy(eval_clip(CLIP), audio)
    out = tmp_path / "out"
    async with mcp_tools(service.url, mcp_log) as session:
        queued = await call(
            session, "transcribe_wav", filename=str(audio), output_dir=str(out), model="small"
        )
        job_id = queued["job_id"]
        assert queued["status"] == "queued" and job_id.startswith("memo-small-")

        failed = (await poll_until_finished(session, job_id, out))[-1]
        assert failed["status"] == "failed" and "could not be downloaded" in failed["error"]
        status_file = out / f"{job_id}.transcribing.txt"
        assert failed["status_file"] == str(status_file)
        assert (
            status_file.read_text().startswith("FAILED - ")
            and "could not be downloaded" in status_file.read_text()
        )
        assert not (out / f"{job_id}.txt").exists()

        resent = await call(
            session, "transcribe_wav", filename=str(audio), output_dir=str(out), model="small"
        )
        assert resent["success"] and resent["status"] == "queued" and resent["job_id"] == job_id  # a retry
        again = (await poll_until_finished(session, job_id, out))[-1]
        assert again["status"] == "failed" and "could not be downloaded" in again["error"]


@pytest.mark.slow
async def test_cancelled_job_is_reported_and_can_be_sent_again(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO
) -> None:
    import requests

    audio = tmp_path / "call.wav"
    shutil.copy(eval_clip("1272-128104-0004-8k.wav"), audio)
    out = tmp_path / "out"
    async with mcp_tools(service.url, mcp_log) as session:
        queued = await call(session, "transcribe_wav", filename=str(audio), output_dir=str(out))
        job_id = queued["job_id"]
        cancel = await asyncio.to_thread(requests.delete, f"{service.url}/jobs/{job_id}", timeout=10)
        assert cancel.status_code == 200
        cancelled = await call(session, "check_transcription_status", job_id=job_id, output_dir=str(out))
        assert cancelled["status"] == "cancelled" and not cancelled["success"]
        assert "transcribe_wav" in cancelled["error"]
        assert text_of(out / f"{job_id}.transcribing.txt").startswith("CANCELLED - ")

        again = await call(session, "transcribe_wav", filename=str(audio), output_dir=str(out))
        assert again["success"] and again["status"] == "queued" and again["job_id"] == job_id
        done = (await poll_until_finished(session, job_id, out))[-1]
        assert done["status"] == "completed"
        transcript = text_of(out / f"{job_id}.txt")
        assert word_error_rate(reference_text("1272-128104-0004-8k.wav"), transcript) < 0.35
