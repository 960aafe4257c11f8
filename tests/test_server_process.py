"""Real `python -m service` processes driven over HTTP: crashes, graceful stops, progress,
health under load, concurrent uploads, start-up errors and job-id handling. No mocks.

Servers run with one torch thread (OMP_NUM_THREADS=1, unless the environment sets it): on a
busy 2-core machine two spinning OpenMP threads per process made decoding about 6x slower.
The long-job servers also decode greedily on the CPU (`--beam-size 1 --device cpu`): on these
clips tiny.en gives the same words as with beam 5 at a fraction of the CPU, and nothing tested
here depends on the beam.
The shared server (concurrency, retries) keeps the default beam of 5.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from conftest import (
    ENGLISH_CLIPS,
    ServerProcess,
    eval_clip,
    reference_text,
    wait_for_status,
    word_error_rate,
)

pytestmark = pytest.mark.slow

MAX_WER = 0.35
# Long-job servers: greedy decoding, and on the CPU even where a GPU is present, so that each
# 30 s window takes long enough to catch the job mid-decode.
LONG_JOB_ARGS = ["--device", "cpu", "--beam-size", "1"]
FINISHED = {"completed", "failed"}
# The clips conftest's `long_wav` joins, in order: its reference is theirs, joined.
LONG_WAV_CLIPS = ["1272-128104-0004-8k.wav", "mfa_acoustic_corpus.wav", *ENGLISH_CLIPS[:7]]
HEALTH_TIMEOUT_S = 2.0


# -- helpers -------------------------------------------------------------------------------


def submit(server: ServerProcess, clip: Path, job_id: str | None = None) -> requests.Response:
    data = {"job_id": job_id} if job_id is not None else {}
    files = {"file": (clip.name, clip.read_bytes(), "application/octet-stream")}
    return requests.post(f"{server.url}/transcribe", files=files, data=data, timeout=120)


def get_status(server: ServerProcess, job_id: str) -> dict[str, Any]:
    response = requests.get(f"{server.url}/status/{job_id}", timeout=10)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def download(server: ServerProcess, job_id: str, fmt: str) -> str:
    response = requests.get(f"{server.url}/download/{job_id}", params={"format": fmt}, timeout=10)
    assert response.status_code == 200, response.text
    return response.text


def names_in(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_exit(server: ServerProcess, timeout: float, what: str) -> tuple[int, float]:
    """Wait for the process to end; returns (exit code, seconds waited)."""
    assert server.proc is not None
    started = time.monotonic()
    try:
        rc = server.proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what}: still running after {timeout} s:\n{server.log()}")
    return rc, time.monotonic() - started


def wait_for_progress(server: ServerProcess, job_id: str, timeout: float = 300.0) -> dict[str, Any]:
    """Poll until the job is mid-decode: processing with 0 < progress < 1."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        body = get_status(server, job_id)
        if body["status"] == "processing" and 0 < body["progress"] < 1:
            return body
        assert body["status"] not in FINISHED, f"{job_id} finished before progress was seen: {body}"
        time.sleep(0.05)
    raise AssertionError(f"{job_id} never showed progress; last status {body}")


def assert_transcript_matches(text: str, clips: list[str], what: str) -> None:
    reference = " ".join(reference_text(name) for name in clips)
    wer = word_error_rate(reference, text)
    assert wer < MAX_WER, f"{what}: WER {wer:.2f} against {clips}: {text!r}"


def job_row(storage: Path, job_id: str) -> tuple[Any, ...]:
    """Read a job straight from the journal of a stopped server."""
    with closing(sqlite3.connect(storage / "jobs.db")) as conn:
        row = conn.execute(
            "SELECT status, attempts, progress, started_at FROM jobs WHERE job_id = ?", (job_id,)
        ).fetchone()
    assert row is not None, f"no row for {job_id}"
    return tuple(row)


@contextmanager
def upload_in_flight(server: ServerProcess, payload: bytes) -> Iterator[socket.socket]:
    """A multipart upload whose body stops halfway: the server is left streaming it to tmp/."""
    boundary = uuid.uuid4().hex
    head = (
        f"--{boundary}\r\n"
        'Content-Disposition: form-data; name="file"; filename="partial.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    request_head = (
        "POST /transcribe HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n"
        f"Content-Length: {len(head) + len(payload) + len(tail)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    try:
        sock.sendall(request_head + head + payload[: len(payload) // 2])
        yield sock
    finally:
        sock.close()


@dataclass
class Trace:
    """A job polled to the end: statuses[i] was read before healths[i], healths[i] before statuses[i+1]."""

    statuses: list[dict[str, Any]]
    healths: list[dict[str, Any] | str]  # the /health body, or why the request failed
    health_seconds: list[float]


def trace_job(server: ServerProcess, job_id: str, timeout: float = 300.0) -> Trace:
    trace = Trace(statuses=[], healths=[], health_seconds=[])
    deadline = time.monotonic() + timeout
    while True:
        trace.statuses.append(get_status(server, job_id))
        if trace.statuses[-1]["status"] in FINISHED:
            return trace
        assert time.monotonic() < deadline, f"{job_id} not finished after {timeout} s: {trace.statuses[-1]}"
        started = time.monotonic()
        try:
            response = requests.get(f"{server.url}/health", timeout=HEALTH_TIMEOUT_S)
            trace.healths.append(response.json() if response.status_code == 200 else response.text)
        except requests.RequestException as exc:
            trace.healths.append(f"{type(exc).__name__}: {exc}")
        trace.health_seconds.append(time.monotonic() - started)
        time.sleep(0.05)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread_per_server() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        if "OMP_NUM_THREADS" not in os.environ:
            patch.setenv("OMP_NUM_THREADS", "1")
        yield


# -- one server shared by the cheaper tests --------------------------------------------------


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("shared") / "storage")
    try:
        server.start()
        yield server
    finally:
        server.kill()


def test_second_server_on_same_storage_exits_2(shared_server: ServerProcess) -> None:
    intruder = ServerProcess(shared_server.storage_dir)
    intruder.start(wait_ready=False)
    try:
        rc, _ = wait_exit(intruder, 60, "the second server")
    finally:
        intruder.kill()
    log = intruder.log()
    assert rc == 2, log
    assert "already using" in log and str(shared_server.storage_dir) in log, log
    with pytest.raises(requests.ConnectionError):  # it never listened
        requests.get(f"{intruder.url}/health", timeout=2)
    health = requests.get(f"{shared_server.url}/health", timeout=5).json()
    assert health["status"] == "ok" and health["model_loaded"], health


def test_idempotent_retry_conflict_and_unsafe_job_ids(shared_server: ServerProcess) -> None:
    storage = shared_server.storage_dir
    clip = eval_clip("sense_and_sensibility_01_austen_64kb-0930.wav")
    other = eval_clip("uberi_english.wav")
    job_id = f"retry-{uuid.uuid4().hex[:8]}"

    first = submit(shared_server, clip, job_id=job_id)
    assert first.status_code == 202, first.text
    assert first.json() == {"job_id": job_id, "status": "queued"}
    assert first.headers["Location"] == f"/status/{job_id}"

    retry = submit(shared_server, clip, job_id=job_id)
    assert retry.status_code == 200, retry.text
    assert retry.json()["job_id"] == job_id
    assert retry.headers["Location"] == f"/status/{job_id}"

    conflict = submit(shared_server, other, job_id=job_id)
    assert conflict.status_code == 409, conflict.text
    assert job_id in conflict.json()["error"]

    done = wait_for_status(shared_server.url, job_id, FINISHED)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1, done
    # The conflicting upload replaced nothing: the transcript is the first clip's.
    assert_transcript_matches(done["transcript"], [clip.name], job_id)
    again = submit(shared_server, clip, job_id=job_id)
    assert again.status_code == 200 and again.json() == {"job_id": job_id, "status": "completed"}
    assert {name for name in names_in(storage / "pending") if name.startswith(job_id)} == {f"{job_id}.wav"}
    assert names_in(storage / "tmp") == set()

    pending_before = names_in(storage / "pending")
    for bad in ["../../etc/passwd", "..", "a/b", "../escape", ".hidden", "-x", "a\\b", "x" * 129]:
        response = submit(shared_server, other, job_id=bad)
        assert response.status_code == 400, (bad, response.status_code, response.text)
        assert response.headers["Content-Type"].startswith("application/json"), bad
        error = response.json()["error"]
        assert isinstance(error, str) and "job_id" in error, (bad, error)
    assert names_in(storage / "pending") == pending_before
    assert names_in(storage / "tmp") == set()
    strays = [
        p for p in storage.parent.rglob("*") if p.name in ("passwd", "passwd.wav", "b", "b.wav", "escape.wav")
    ]
    assert strays == []
    assert not (storage.parent / "etc").exists()


CONCURRENT_CLIPS = [
    "LDC93S1.wav",
    "61-70968-0000.flac",
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "uberi_english.wav",
]


@pytest.mark.timeout(600)
def test_concurrent_uploads_each_get_their_own_transcript(shared_server: ServerProcess) -> None:
    barrier = threading.Barrier(len(CONCURRENT_CLIPS))

    def post(name: str) -> requests.Response:
        payload = eval_clip(name).read_bytes()
        barrier.wait(timeout=30)  # all requests leave together
        files = {"file": (name, payload, "application/octet-stream")}
        return requests.post(f"{shared_server.url}/transcribe", files=files, timeout=120)

    with ThreadPoolExecutor(max_workers=len(CONCURRENT_CLIPS)) as pool:
        responses = list(pool.map(post, CONCURRENT_CLIPS))

    assert [r.status_code for r in responses] == [202] * len(CONCURRENT_CLIPS), [r.text for r in responses]
    job_ids = [r.json()["job_id"] for r in responses]
    assert len(set(job_ids)) == len(job_ids), job_ids
    for response, job_id in zip(responses, job_ids, strict=True):
        assert response.headers["Location"] == f"/status/{job_id}"
    for name, job_id in zip(CONCURRENT_CLIPS, job_ids, strict=True):
        done = wait_for_status(shared_server.url, job_id, FINISHED, timeout=300)
        assert done["status"] == "completed", (name, done)
        assert_transcript_matches(done["transcript"], [name], f"{name} as {job_id}")
    health = requests.get(f"{shared_server.url}/health", timeout=5).json()
    assert health["queue_size"] == 0 and health["processing"] is None, health
    assert names_in(shared_server.storage_dir / "tmp") == set()


# -- start-up errors ---------------------------------------------------------------------------


def test_model_that_needs_a_download_exits_1_promptly_offline(
    server_factory: Callable[..., ServerProcess],
) -> None:
    import whisper

    host = urlsplit(whisper._MODELS["small"]).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        pass  # offline, as this test needs
    else:
        pytest.skip(f"{host} resolves: this machine may download the model instead of failing")

    server = server_factory(extra_args=["--model", "small"])
    server.start(wait_ready=False)
    rc, elapsed = wait_exit(server, 120, "a server whose model cannot load")
    log = server.log()
    assert rc == 1, log
    assert elapsed < 60, f"took {elapsed:.0f} s to give up"
    assert "could not load the default model 'small'" in log, log
    assert "could not be downloaded" in log, log
    assert not [p for p in (server.storage_dir / "models").iterdir() if p.name.startswith("small")]


# -- a long job: progress, health, SIGTERM, SIGKILL ------------------------------------------


@pytest.mark.timeout(600)
def test_progress_and_health_while_long_job_runs(
    server_factory: Callable[..., ServerProcess], long_wav: Path
) -> None:
    server = server_factory(extra_args=LONG_JOB_ARGS).start()
    assert submit(server, long_wav, job_id="long").status_code == 202
    assert submit(server, eval_clip("uberi_english.wav"), job_id="next").status_code == 202
    wait_for_status(server.url, "long", {"processing", *FINISHED})
    waiting = get_status(server, "next")
    assert waiting["status"] == "queued" and waiting["queue_position"] == 1, waiting

    trace = trace_job(server, "long")

    final = trace.statuses[-1]
    assert final["status"] == "completed" and final["progress"] == 1.0, final
    assert_transcript_matches(final["transcript"], LONG_WAV_CLIPS, "long job")
    progress = [s["progress"] for s in trace.statuses if s["status"] == "processing"]
    assert any(0 < p < 1 for p in progress), f"no partial progress seen: {progress}"
    assert all(0 <= p <= 1 for p in progress), progress
    assert progress == sorted(progress), f"progress went backwards: {progress}"

    failures = [h for h in trace.healths if isinstance(h, str)]
    assert failures == [], f"/health did not answer within {HEALTH_TIMEOUT_S} s: {failures}"
    assert all(h["status"] == "ok" for h in trace.healths if isinstance(h, dict))
    # Health reads taken while the job was surely mid-decode: the status before showed
    # progress and the status after still showed processing.
    during = [
        trace.healths[i]
        for i in range(len(trace.healths))
        if trace.statuses[i]["status"] == "processing"
        and trace.statuses[i]["progress"] > 0
        and trace.statuses[i + 1]["status"] == "processing"
    ]
    assert len(during) >= 3, f"only {len(during)} health reads mid-decode; statuses {trace.statuses}"
    for health in during:
        assert isinstance(health, dict)
        assert health["processing"] == "long" and health["worker"] == "busy", health
        assert health["queue_size"] == 1 and health["model_loaded"], health

    print(f"/health: {len(trace.healths)} reads, slowest {max(trace.health_seconds):.3f} s", end=" ")

    after = wait_for_status(server.url, "next", FINISHED)
    assert after["status"] == "completed", after
    assert_transcript_matches(after["transcript"], ["uberi_english.wav"], "next")


@pytest.mark.timeout(600)
def test_sigterm_mid_job_exits_0_and_refunds_the_attempt(
    server_factory: Callable[..., ServerProcess], long_wav: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    # No grace period: on a fast machine the whole job could finish inside the default one.
    first = server_factory(storage, [*LONG_JOB_ARGS, "--shutdown-grace", "0"]).start()
    assert submit(first, long_wav, job_id="term-long").status_code == 202
    mid = wait_for_progress(first, "term-long")
    assert mid["attempts"] == 1, mid

    assert first.proc is not None
    first.proc.send_signal(signal.SIGTERM)
    rc, elapsed = wait_exit(first, 60, "SIGTERM mid-job")
    log = first.log()
    assert rc == 0, log
    # Stopped at a window boundary, or with the inference process if the window ran long.
    assert (
        "job term-long: interrupted by shutdown; back in the queue" in log
        or "job term-long: stopped with the inference process; back in the queue" in log
    ), log
    assert "did not stop in time" not in log, log
    # Back in the queue with the attempt given back, before anything restarts.
    assert job_row(storage, "term-long") == ("queued", 0, 0.0, None)

    second = server_factory(storage, LONG_JOB_ARGS).start()
    done = wait_for_status(second.url, "term-long", FINISHED, timeout=300)
    assert done["status"] == "completed", done
    assert done["attempts"] == 1, done  # the stopped run was not charged
    assert "requeued" not in second.log(), second.log()  # no crash recovery was needed
    assert_transcript_matches(done["transcript"], LONG_WAV_CLIPS, "term-long")
    print(f"SIGTERM to exit: {elapsed:.1f} s", end=" ")


def test_sigterm_with_a_stalled_upload_exits_promptly_and_leaves_nothing(
    server_factory: Callable[..., ServerProcess], long_wav: Path, tmp_path: Path
) -> None:
    """A client that stops sending mid-upload must not hold a stop past a container's timeout."""
    storage = tmp_path / "storage"
    server = server_factory(storage).start()
    # Half of long_wav is over one 1 MiB chunk: the server has started writing it to tmp/.
    with upload_in_flight(server, long_wav.read_bytes()):
        wait_until(
            lambda: any(p.stat().st_size > 0 for p in (storage / "tmp").iterdir()),
            timeout=30,
            what="the stalled upload to reach tmp/",
        )
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        rc, elapsed = wait_exit(server, 60, "SIGTERM with a stalled upload")
    assert rc == 0, server.log()
    # Docker waits 10 s before SIGKILL; aiohttp alone would wait 60 s for the request.
    assert elapsed < 10, f"SIGTERM took {elapsed:.1f} s with an upload in flight"
    assert names_in(storage / "tmp") == set()
    assert names_in(storage / "pending") == set()


@pytest.mark.timeout(600)
def test_sigkill_mid_job_then_restart_completes_every_job(
    server_factory: Callable[..., ServerProcess], long_wav: Path, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    shorts = {
        "crash-short-1": "61-70968-0000.flac",
        "crash-short-2": "sense_and_sensibility_01_austen_64kb-0870.wav",
    }
    before_name = "sense_and_sensibility_01_austen_64kb-0930.wav"
    first = server_factory(storage, LONG_JOB_ARGS).start()

    # A job that completes before the crash.
    assert submit(first, eval_clip(before_name), job_id="crash-before").status_code == 202
    before = wait_for_status(first.url, "crash-before", FINISHED)
    assert before["status"] == "completed", before
    before_txt = download(first, "crash-before", "txt")

    assert submit(first, long_wav, job_id="crash-long").status_code == 202
    for job_id, name in shorts.items():
        response = submit(first, eval_clip(name), job_id=job_id)
        assert response.status_code == 202, response.text
    wait_for_progress(first, "crash-long")
    for position, job_id in enumerate(shorts, start=1):
        waiting = get_status(first, job_id)
        assert waiting["status"] == "queued" and waiting["queue_position"] == position, waiting

    with upload_in_flight(first, long_wav.read_bytes()):
        wait_until(
            lambda: any(p.stat().st_size > 0 for p in (storage / "tmp").iterdir()),
            timeout=30,
            what="the in-flight upload to reach tmp/",
        )
        last = get_status(first, "crash-long")
        assert last["status"] == "processing" and 0 < last["progress"] < 1, last
        first.kill()
    assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
    assert names_in(storage / "tmp"), "the killed upload should have left a file behind"
    # What a crash between the rename into pending/ and the journal insert leaves.
    (storage / "pending" / "orphan.wav").write_bytes(eval_clip("uberi_english.wav").read_bytes())

    second = server_factory(storage, LONG_JOB_ARGS).start()
    assert "requeued 1 interrupted job(s): crash-long" in second.log(), second.log()
    done = {
        job_id: wait_for_status(second.url, job_id, FINISHED, timeout=300)
        for job_id in ["crash-long", *shorts, "crash-before"]
    }
    assert all(body["status"] == "completed" for body in done.values()), done
    # Killed with the whole service, not by its own audio: that run is not charged.
    assert done["crash-long"]["attempts"] == 1, done["crash-long"]
    assert all(done[job_id]["attempts"] == 1 for job_id in [*shorts, "crash-before"]), done
    assert_transcript_matches(done["crash-long"]["transcript"], LONG_WAV_CLIPS, "crash-long")
    for job_id, name in shorts.items():
        assert_transcript_matches(done[job_id]["transcript"], [name], job_id)

    # The job finished before the crash is untouched and still downloadable.
    assert done["crash-before"]["completed_at"] == before["completed_at"]
    assert download(second, "crash-before", "txt") == before_txt
    assert_transcript_matches(before_txt, [before_name], "crash-before")

    assert names_in(storage / "tmp") == set()
    assert names_in(storage / "pending") == {
        "crash-before.wav",
        "crash-long.wav",
        "crash-short-1.flac",
        "crash-short-2.wav",
    }
    assert names_in(storage / "transcripts") == {f"{job_id}.json" for job_id in done}
