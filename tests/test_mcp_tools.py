"""The MCP server as an agent meets it: `python -m mcp_tools` launched as a subprocess and driven
with the MCP SDK's own stdio client, against a real transcription service on loopback.
"""

from __future__ import annotations

import asyncio
import hashlib
import http.server
import json
import os
import re
import shutil
import sqlite3
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pytest
import requests
import srt
from conftest import (
    REPO,
    ServerProcess,
    eval_clip,
    free_port,
    reference_text,
    wait_for_status,
    word_error_rate,
    write_wav,
)
from mcp import ClientSession, StdioServerParameters, stdio_client

from mcp_tools.client import derive_job_id

CLIP = "LDC93S1.wav"  # 3 s: "She had your dark suit in greasy wash water all year."
CLIP_URGENT = "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7 s of read speech
MAX_WER = 0.35
POLL_TIMEOUT_S = 120.0


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with pytest.MonkeyPatch.context() as patch:
        if "OMP_NUM_THREADS" not in os.environ:
            patch.setenv("OMP_NUM_THREADS", "1")
        # The callback receivers listen on loopback.
        args = ["--beam-size", "1", "--webhook-allow-private"]
        server = ServerProcess(tmp_path_factory.mktemp("tools") / "storage", extra_args=args)
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
        instructions = session.instructions or ""
        assert "transcribe_wav" in instructions and "cancel_transcription" in instructions
    assert set(listed) == {
        "transcribe_wav",
        "check_transcription_status",
        "cancel_transcription",
        "list_transcriptions",
    }

    queue = listed["transcribe_wav"]
    assert queue.description and "check_transcription_status" in queue.description
    assert "10-30 s" in queue.description and "return at once" in queue.description
    for promise in ('priority="urgent"', "diarize=True", "SPEAKER_1", "estimated_wait_s", "format"):
        assert promise in queue.description, promise
    assert queue.input_schema["required"] == ["filename"]
    props = queue.input_schema["properties"]
    assert set(props) == {
        "filename",
        "output_dir",
        "model",
        "transcription_service_url",
        "priority",
        "language",
        "task",
        "diarize",
        "num_speakers",
        "min_speakers",
        "max_speakers",
        "word_timestamps",
        "callback_url",
        "format",
    }
    assert props["output_dir"]["default"] == "/workspace/transcriptions"
    assert props["format"]["default"] == "txt" and props["diarize"]["default"] is False
    assert all(prop.get("description") for prop in props.values())

    check = listed["check_transcription_status"]
    assert check.description
    for promise in ("completed", "failed", "<job_id>.txt", "FAILED - <error>", "10-30 s", "progress"):
        assert promise in check.description
    for promise in ("queue_position", "estimated_wait_s", "cancelled"):
        assert promise in check.description
    assert check.input_schema["required"] == ["job_id"]
    assert set(check.input_schema["properties"]) == {
        "job_id",
        "output_dir",
        "transcription_service_url",
        "wait_seconds",
        "format",
        "partial",
    }
    assert (
        "transcript_so_far" in check.description
        and check.input_schema["properties"]["partial"]["default"] is False
    )

    cancel = listed["cancel_transcription"]
    assert cancel.description and "no longer wanted" in cancel.description
    assert cancel.input_schema["required"] == ["job_id"]
    assert cancel.annotations is not None and cancel.annotations.destructive_hint is True
    listing = listed["list_transcriptions"]
    assert listing.description and "estimated_wait_s" in listing.description
    assert set(listing.input_schema["properties"]) == {"status", "limit", "transcription_service_url"}
    assert listing.annotations is not None and listing.annotations.read_only_hint is True


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

        # The service is down for every tool, and each says how to start it.
        for tool, args in (
            ("cancel_transcription", {"job_id": "x-1", "output_dir": str(out)}),
            ("list_transcriptions", {}),
        ):
            stopped = await call(session, tool, **args)
            assert f"not reachable at {nothing}" in stopped["error"], (tool, stopped)
            assert "start_transcription_service.sh" in stopped["error"], (tool, stopped)

        # Options are checked before anything is sent (nothing listens at `nothing` anyway).
        for options, says in (
            ({"format": "docx"}, "format must be one of txt, srt, vtt, json"),
            ({"priority": "asap"}, "priority: use urgent, high, normal, low"),
            ({"priority": "500"}, "between -100 and 100"),
            ({"task": "summarize"}, "task must be 'transcribe' or 'translate'"),
            ({"num_speakers": 2}, "set diarize=true"),
        ):
            refused = await call(
                session, "transcribe_wav", filename=str(clip), output_dir=str(out), **options
            )
            assert says in refused["error"], (options, refused)
        bad_format = await call(session, "check_transcription_status", job_id="x-1", format="pdf")
        assert "format must be one of" in bad_format["error"]
        bad_limit = await call(session, "list_transcriptions", limit=0)
        assert "limit must be from 1 to 100" in bad_limit["error"]
        bad_cancel = await call(session, "cancel_transcription", job_id="no/such")
        assert "is not a job id" in bad_cancel["error"]
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


# -- the service's options, through the tools ----------------------------------------------------


@dataclass
class Callbacks:
    """A loopback receiver for callback_url: keeps every JSON body POSTed to it."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)


@pytest.fixture(scope="module")
def longer_wav(long_wav: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 4.5 minutes: still decoding, window after window, through a 30 s waiting check on
    any machine, so the progress it reports must rise while the check waits."""
    from service.inference import audio

    pcm = audio.decode(long_wav)
    return write_wav(tmp_path_factory.mktemp("audio") / "longer.wav", np.concatenate([pcm, pcm, pcm]))


@pytest.fixture
def callbacks() -> Iterator[Callbacks]:
    received: list[dict[str, Any]] = []
    arrived = threading.Event()

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            received.append(json.loads(self.rfile.read(length)))
            arrived.set()
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Callbacks(f"http://127.0.0.1:{server.server_address[1]}/hook", received, arrived)
    finally:
        server.shutdown()
        server.server_close()


def without_speakers(text: str) -> str:
    return re.sub(r"^SPEAKER_\d+: ", "", text, flags=re.MULTILINE)


@pytest.mark.slow
async def test_diarized_job_saved_as_srt_with_a_callback(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO, callbacks: Callbacks
) -> None:
    """Three voices: the transcript comes back labelled by speaker, the saved file is the SRT the
    agent asked for (remembered between the calls), and the callback hears the end."""
    clip = "picovoice_diarization_test.wav"
    out = tmp_path / "out"
    async with mcp_tools(service.url, mcp_log) as session:
        queued = await call(
            session,
            "transcribe_wav",
            filename=str(eval_clip(clip)),
            output_dir=str(out),
            diarize=True,
            min_speakers=2,
            max_speakers=4,
            format="srt",
            callback_url=callbacks.url,
        )
        job_id = queued["job_id"]
        assert job_id.startswith("picovoice_diarization_test-diarize-min2-max4-"), job_id
        assert queued["transcript_file"] == str(out / f"{job_id}.srt") and queued["format"] == "srt"
        assert "format: srt" in text_of(queued["status_file"]).splitlines()
        done = (await poll_until_finished(session, job_id, out))[-1]
    assert done["status"] == "completed", done
    assert done["transcript_file"] == str(out / f"{job_id}.srt")
    lines = done["transcript"].splitlines()
    assert lines[0].startswith("SPEAKER_1: ")
    speakers = {line.split(":")[0] for line in lines}
    assert len(speakers) >= 2 and all(s.startswith("SPEAKER_") for s in speakers), lines
    wer = word_error_rate(reference_text(clip), without_speakers(done["transcript"]))
    assert wer < MAX_WER, (wer, done["transcript"])
    cues = list(srt.parse(text_of(done["transcript_file"])))
    assert cues and cues[0].content.startswith("[SPEAKER_1]"), cues[:2]
    assert not (out / f"{job_id}.txt").exists() and not (out / f"{job_id}.transcribing.txt").exists()
    assert await asyncio.to_thread(callbacks.arrived.wait, 30), "no callback arrived"
    assert [(b.get("event"), b.get("job_id")) for b in callbacks.bodies] == [("job.completed", job_id)]


def queue_order(service: ServerProcess) -> tuple[list[str], list[str]]:
    body = requests.get(f"{service.url}/queue", timeout=10).json()
    return [job["job_id"] for job in body["running"]], [job["job_id"] for job in body["queued"]]


def status_of(service: ServerProcess, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{service.url}/status/{job_id}", timeout=10).json()
    return body


@pytest.mark.slow
async def test_urgent_overtakes_progress_arrives_and_cancel_works(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO, longer_wav: Path
) -> None:
    """A long recording holds the worker; a normal and then an urgent clip queue behind it. The
    urgent one is first in line, a waiting check reports progress as the long one decodes, a
    cancel stops the long one and another drops a queued job, and the urgent clip runs first."""
    out = tmp_path / "out"
    routine_clip, urgent_clip, dropped_clip = (
        eval_clip(name) for name in ("LDC93S1.wav", CLIP_URGENT, "uberi_english.wav")
    )
    async with mcp_tools(service.url, mcp_log) as session:
        long_job = (await call(session, "transcribe_wav", filename=str(longer_wav), output_dir=str(out)))[
            "job_id"
        ]
        await asyncio.to_thread(wait_for_status, service.url, long_job, {"processing"})

        routine = await call(
            session,
            "transcribe_wav",
            filename=str(routine_clip),
            output_dir=str(out),
            language="en",
            word_timestamps=True,
            format="json",
        )
        urgent = await call(
            session, "transcribe_wav", filename=str(urgent_clip), output_dir=str(out), priority="urgent"
        )
        dropped = await call(session, "transcribe_wav", filename=str(dropped_clip), output_dir=str(out))
        assert routine["job_id"].startswith("LDC93S1-en-words-") and routine["status"] == "queued"
        assert urgent["status"] == "queued" and urgent["priority"] == "urgent"
        assert urgent["queue_position"] == 1 and "position 1" in urgent["message"], urgent
        assert isinstance(urgent["estimated_wait_s"], float) and urgent["estimated_wait_s"] >= 0
        running, queued = queue_order(service)
        assert running == [long_job] and queued == [urgent["job_id"], routine["job_id"], dropped["job_id"]]

        # Where each stands, with the wait: the normal one is second, behind the urgent one.
        routine_check = await call(
            session, "check_transcription_status", job_id=routine["job_id"], output_dir=str(out)
        )
        assert routine_check["status"] == "queued" and routine_check["queue_position"] == 2
        assert (
            routine_check["estimated_wait_s"] >= 0
            and "Expected to start in about" in routine_check["message"]
        )
        listing = await call(session, "list_transcriptions", status="queued,processing")
        listed = {job["job_id"]: job for job in listing["jobs"]}
        assert set(listed) == {long_job, routine["job_id"], urgent["job_id"], dropped["job_id"]}
        assert (
            listed[urgent["job_id"]]["queue_position"] == 1
            and listed[urgent["job_id"]]["priority"] == "urgent"
        )
        assert "estimated_remaining_s" in listed[long_job] and listing["running"] == [long_job]
        assert listing["queue_length"] == 3 and listing["estimated_wait_s"] >= 0

        # A waiting check sends progress notifications while the long recording decodes.
        notes: list[tuple[float, float | None, str | None]] = []

        async def progress(progress: float, total: float | None, message: str | None) -> None:
            notes.append((progress, total, message))

        started = time.monotonic()
        result = await session.call_tool(
            "check_transcription_status",
            {"job_id": long_job, "output_dir": str(out), "wait_seconds": 30},
            progress_callback=progress,
        )
        waiting = result.structured_content
        assert waiting is not None and waiting["success"], waiting
        if waiting["status"] == "processing":
            assert time.monotonic() - started >= 29  # it waited, rather than answering at once
        print("progress notifications:", notes, "then", waiting["status"])
        assert len(notes) >= 2, notes
        values = [value for value, _, _ in notes]
        assert values == sorted(set(values)) and values[-1] > 0, notes  # rising, as MCP asks
        assert all(total == 1.0 and message and long_job in message for _, total, message in notes), notes

        # Cancel the queued one and the running one; the urgent clip then runs before the routine one.
        gone = await call(session, "cancel_transcription", job_id=dropped["job_id"], output_dir=str(out))
        assert gone["previous_status"] == "queued" and "transcribe_wav" in gone["message"]
        assert text_of(out / f"{dropped['job_id']}.transcribing.txt").startswith("CANCELLED - ")
        if waiting["status"] == "processing":
            stopped = await call(session, "cancel_transcription", job_id=long_job, output_dir=str(out))
            assert stopped["previous_status"] == "processing", stopped
        again = await call(session, "cancel_transcription", job_id=dropped["job_id"])
        assert not again["success"] and "already ended" in again["error"]
        dropped_check = await call(
            session, "check_transcription_status", job_id=dropped["job_id"], output_dir=str(out)
        )
        assert dropped_check["status"] == "cancelled" and not dropped_check["success"]

        first = (await poll_until_finished(session, urgent["job_id"], out))[-1]
        second = (await poll_until_finished(session, routine["job_id"], out))[-1]
    assert first["status"] == second["status"] == "completed", (first, second)
    assert word_error_rate(reference_text(CLIP_URGENT), first["transcript"]) < MAX_WER
    ran = {job: status_of(service, job) for job in (urgent["job_id"], routine["job_id"])}
    assert ran[urgent["job_id"]]["started_at"] <= ran[routine["job_id"]]["started_at"], ran
    # The routine job's options reached the service, and its JSON carries word times.
    assert ran[routine["job_id"]]["options"] == {"word_timestamps": True}
    saved = json.loads(text_of(out / f"{routine['job_id']}.json"))
    assert saved["segments"] and all(segment["words"] for segment in saved["segments"])
    assert word_error_rate(reference_text("LDC93S1.wav"), second["transcript"]) < MAX_WER


@pytest.mark.slow
async def test_an_incompatible_client_is_told_to_upgrade(
    service: ServerProcess, tmp_path: Path, mcp_log: TextIO
) -> None:
    """The same tools, reporting an old version: the service refuses them with 426, and the tools
    say to upgrade the client and where from. /health stays open to them."""
    params = StdioServerParameters(
        command=sys.executable,
        args=[
            "-c",
            "import mcp_tools.client as c; c.__version__ = '0.0.1'\n"
            "from mcp_tools.server import main; main()",
        ],
        cwd=REPO,
        env={"TRANSCRIPTION_SERVICE_URL": service.url},
    )
    async with stdio_client(params, errlog=mcp_log) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        refused = await call(
            session, "transcribe_wav", filename=str(eval_clip(CLIP)), output_dir=str(tmp_path / "out")
        )
        listing = await call(session, "list_transcriptions")
    for result in (refused, listing):
        error = result["error"]
        assert error.startswith("Upgrade the client"), error
        assert "whisper-transcription-client 0.0.1 is older than" in error, error
        assert f"pip install --upgrade --force-reinstall {service.url}/client/" in error, error
    assert derive_job_id(eval_clip(CLIP)) not in jobs_like(service, "LDC93S1-")  # nothing was queued
