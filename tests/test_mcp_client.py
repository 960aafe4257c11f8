"""`mcp_tools.client.TranscriptionClient`: against a real service process on loopback (upload, wait,
download in every format, the service's errors), and against small stand-in HTTP servers for what
a healthy service never does (503s, being down, ignoring long-polls) and for a 200 MB upload.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import threading
import time
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from conftest import ServerProcess, eval_clip, free_port, reference_text, word_error_rate

from mcp_tools.client import (
    JOB_ID_PATTERN,
    AudioFileError,
    JobConflict,
    JobFailed,
    JobNotFound,
    MultipartFile,
    RejectedUpload,
    ServiceFailure,
    ServiceUnreachable,
    TranscriptionClient,
    TranscriptionError,
    TranscriptNotReady,
    WaitTimeout,
    derive_job_id,
    sanitize_stem,
)

CLIP = "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7 s of read speech
MAX_WER = 0.35


def sha10(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:10]


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real service for the module; greedy decoding and one torch thread keep it light."""
    with pytest.MonkeyPatch.context() as patch:
        if "OMP_NUM_THREADS" not in os.environ:
            patch.setenv("OMP_NUM_THREADS", "1")
        server = ServerProcess(tmp_path_factory.mktemp("client") / "storage", extra_args=["--beam-size", "1"])
        try:
            server.start()
            yield server
        finally:
            server.kill()


# -- a scriptable stand-in server -----------------------------------------------------------------


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body_bytes: int
    body: bytes = b""


@dataclass
class StubServer:
    """A threaded HTTP server answering from `respond(seen) -> (status, json body, delay)`."""

    respond: Callable[[Seen], tuple[int, dict[str, Any], float]]
    port: int = field(default_factory=free_port)
    keep_bodies: bool = True
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @contextmanager
    def running(self) -> Iterator[StubServer]:
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                received = 0
                kept = []
                while received < length:
                    chunk = self.rfile.read(min(256 * 1024, length - received))
                    if not chunk:
                        break
                    received += len(chunk)
                    if stub.keep_bodies:
                        kept.append(chunk)
                parts = urlsplit(self.path)
                seen = Seen(
                    self.command,
                    parts.path,
                    parse_qs(parts.query),
                    dict(self.headers),
                    received,
                    b"".join(kept),
                )
                stub.seen.append(seen)
                status, body, delay = stub.respond(seen)
                time.sleep(delay)
                payload = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = _handle

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            yield self
        finally:
            server.shutdown()
            thread.join()
            server.server_close()


def fast_client(url: str, **kwargs: Any) -> TranscriptionClient:
    """Retries with millisecond backoff, so tests of retry logic take no time."""
    options: dict[str, Any] = {"retries": 3, "backoff": 0.01, "max_backoff": 0.05, "timeout": 10.0}
    options.update(kwargs)
    return TranscriptionClient(url, **options)


# -- job ids and the multipart body (no server) -------------------------------------------------


def test_job_ids_are_stem_plus_content_hash(tmp_path: Path) -> None:
    clip = eval_clip("LDC93S1.wav")
    digest = sha10(clip)
    cases = {
        "team standup.wav": f"team-standup-{digest}",
        "Réunion 3 (final).WAV": f"Reunion-3-final-{digest}",
        "...hidden_.wav": f"hidden-{digest}",
        "日本語.wav": f"audio-{digest}",
        "a.b-c_d.flac": f"a.b-c_d-{digest}",
    }
    for name, expected in cases.items():
        copy = tmp_path / name
        copy.write_bytes(clip.read_bytes())
        assert derive_job_id(copy) == expected
        assert JOB_ID_PATTERN.match(expected)
    assert derive_job_id(tmp_path / "team standup.wav", model="large-v3") == f"team-standup-large-v3-{digest}"
    long_name = tmp_path / ("x" * 250 + ".wav")
    long_name.write_bytes(b"other bytes")
    long_id = derive_job_id(long_name)
    assert len(long_id) == 128 and JOB_ID_PATTERN.match(long_id)
    assert long_id.endswith("-" + hashlib.sha256(b"other bytes").hexdigest()[:10])
    assert sanitize_stem("--..__", 20) == "audio"


def test_multipart_body_has_exact_length_and_replays(tmp_path: Path) -> None:
    audio = tmp_path / 'odd "name".wav'
    audio.write_bytes(bytes(range(256)) * 10)
    body = MultipartFile(audio, {"job_id": "odd-1", "model": "tiny.en"}, chunk_bytes=1000)
    first = b"".join(body)
    second = b"".join(body)  # a retry sends the whole body again
    assert first == second and len(first) == len(body)
    assert first.index(b'name="job_id"') < first.index(b'name="model"') < first.index(b'name="file"')
    assert b'filename="odd _name_.wav"' in first
    assert bytes(range(256)) * 10 in first
    assert first.endswith(f"\r\n--{body.boundary}--\r\n".encode())
    assert body.content_type == f"multipart/form-data; boundary={body.boundary}"


def test_missing_file_fails_before_any_request(tmp_path: Path) -> None:
    with fast_client(f"http://127.0.0.1:{free_port()}") as client:
        with pytest.raises(AudioFileError, match=r"Audio file not found: .*nope\.wav"):
            client.upload(tmp_path / "nope.wav")
        with pytest.raises(AudioFileError, match="not a regular file"):
            client.upload(tmp_path)


def test_bad_base_url_is_refused() -> None:
    with pytest.raises(TranscriptionError, match="Invalid transcription service URL"):
        TranscriptionClient("localhost:8765")


# -- retries, down services, long-polls (stand-in servers) ------------------------------------------


def test_5xx_is_retried_with_backoff_then_succeeds() -> None:
    answers = iter([(500, {"error": "hiccup"}), (502, {"error": "proxy"}), (200, {"status": "ok"})])
    stub = StubServer(lambda seen: (*next(answers), 0.0))
    with stub.running(), fast_client(stub.url) as client:
        assert client.health() == {"status": "ok"}
    assert [s.path for s in stub.seen] == ["/health"] * 3


def test_health_reads_a_503_answer_without_retrying() -> None:
    """The service answers /health with 503 and its JSON while a model loads: that is an answer."""
    stub = StubServer(lambda seen: (503, {"status": "ok", "model_loaded": False}, 0.0))
    with stub.running(), fast_client(stub.url) as client:
        assert client.health() == {"status": "ok", "model_loaded": False}
    assert len(stub.seen) == 1


def test_5xx_that_persists_reports_the_service_error() -> None:
    stub = StubServer(lambda seen: (500, {"error": "disk full"}, 0.0))
    with stub.running(), fast_client(stub.url, retries=2) as client, pytest.raises(ServiceFailure) as caught:
        client.status("job-1")
    assert len(stub.seen) == 3
    assert "disk full" in str(caught.value) and "HTTP 500" in str(caught.value)
    assert caught.value.service_error == "disk full" and caught.value.status_code == 500
    assert f"{stub.url}/health" in str(caught.value)


def test_4xx_is_not_retried() -> None:
    stub = StubServer(lambda seen: (400, {"error": "job_id must be 1-128 characters"}, 0.0))
    with (
        stub.running(),
        fast_client(stub.url) as client,
        pytest.raises(TranscriptionError, match="job_id must"),
    ):
        client.download("job-1", "srt")
    assert len(stub.seen) == 1 and stub.seen[0].query == {"format": ["srt"]}


def test_upload_is_resent_whole_after_a_503(tmp_path: Path) -> None:
    audio = tmp_path / "clip.wav"
    audio.write_bytes(os.urandom(300_000))
    answers = iter([503, 202])
    stub = StubServer(lambda seen: (next(answers), {"job_id": "x", "status": "queued"}, 0.0))
    with stub.running(), fast_client(stub.url) as client:
        submission = client.upload(audio, model="tiny.en")
    assert submission.created and submission.status == "queued"
    first, second = stub.seen
    assert first.body == second.body and first.body_bytes == int(first.headers["Content-Length"])
    assert audio.read_bytes() in second.body
    assert f"clip-tiny.en-{sha10(audio)}".encode() in second.body  # the derived job id makes the retry safe


def test_service_down_then_up_is_retried_until_it_answers() -> None:
    stub = StubServer(lambda seen: (200, {"status": "ok", "model_loaded": True}, 0.0))

    def start_later(ready: threading.Event, stop: threading.Event) -> None:
        time.sleep(0.4)
        with stub.running():
            ready.set()
            stop.wait(30)

    ready, stop = threading.Event(), threading.Event()
    starter = threading.Thread(target=start_later, args=(ready, stop))
    starter.start()
    try:
        with TranscriptionClient(stub.url, retries=6, backoff=0.1, max_backoff=0.4) as client:
            started = time.monotonic()
            assert client.health()["model_loaded"] is True
            assert time.monotonic() - started >= 0.3  # it really was down at first
    finally:
        stop.set()
        starter.join()
    assert ready.is_set() and len(stub.seen) == 1


def test_service_not_running_says_how_to_start_it() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with fast_client(url, retries=1) as client, pytest.raises(ServiceUnreachable) as caught:
        client.status("some-job")
    message = str(caught.value)
    assert f"not reachable at {url}" in message and "Connection refused" in message
    assert "scripts/start_transcription_service.sh" in message and "docker compose up -d" in message
    assert f"curl {url}/health" in message


def test_wait_long_polls_and_returns_as_soon_as_the_job_finishes() -> None:
    stub = StubServer(lambda seen: (200, {"job_id": "j", "status": "completed", "progress": 1.0}, 0.3))
    with stub.running(), fast_client(stub.url) as client:
        started = time.monotonic()
        assert client.wait("j", timeout=30)["status"] == "completed"
        assert time.monotonic() - started < 5
    (only,) = stub.seen
    assert only.path == "/status/j" and 0 < float(only.query["wait"][0]) <= 60


def test_wait_falls_back_to_polling_when_the_server_ignores_wait() -> None:
    answers = iter(["queued", "processing", "processing", "failed"])
    stub = StubServer(lambda seen: (200, {"job_id": "j", "status": next(answers), "error": "boom"}, 0.0))
    with stub.running(), fast_client(stub.url) as client:
        started = time.monotonic()
        assert client.wait("j", timeout=30, poll_interval=0.1)["status"] == "failed"
        assert time.monotonic() - started >= 0.25  # slept between polls rather than spinning
    assert len(stub.seen) == 4


def test_wait_timeout_keeps_the_last_status() -> None:
    stub = StubServer(lambda seen: (200, {"job_id": "j", "status": "processing", "progress": 0.5}, 0.0))
    with stub.running(), fast_client(stub.url) as client, pytest.raises(WaitTimeout) as caught:
        client.wait("j", timeout=0.6, poll_interval=0.1)
    assert caught.value.status["progress"] == 0.5
    assert "still processing" in str(caught.value)
    assert len(stub.seen) <= 10


def test_upload_of_200_mb_streams_from_disk(tmp_path: Path) -> None:
    """The body is never built in memory: Python's peak allocation stays a few chunks' worth."""
    size = 200 * 1024**2
    big = tmp_path / "big.wav"
    with open(big, "wb") as fp:
        fp.truncate(size)  # sparse: no disk written, and reading it costs little
    stub = StubServer(lambda seen: (415, {"error": "The uploaded file is not audio"}, 0.0), keep_bodies=False)
    with stub.running(), fast_client(stub.url) as client:
        tracemalloc.start()
        try:
            with pytest.raises(RejectedUpload, match="not audio"):
                client.upload(big)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    (seen,) = stub.seen
    assert seen.body_bytes == int(seen.headers["Content-Length"]) > size
    assert "Transfer-Encoding" not in seen.headers
    print(f"peak Python allocation {peak / 1024**2:.1f} MiB", end=" ")
    assert peak < 16 * 1024**2, f"peak Python allocation {peak / 1024**2:.0f} MiB"


# -- the real service ------------------------------------------------------------------------------


@pytest.mark.slow
def test_upload_wait_download_every_format(service: ServerProcess, tmp_path: Path) -> None:
    clip = eval_clip(CLIP)
    with TranscriptionClient(service.url) as client:
        submission = client.upload(clip)
        assert submission.created and submission.status == "queued"
        assert submission.job_id == derive_job_id(clip) == f"{clip.stem}-{sha10(clip)}"
        done = client.wait(submission.job_id, timeout=120)
        assert done["status"] == "completed", done

        text = client.download(submission.job_id)
        wer = word_error_rate(reference_text(CLIP), text)
        assert wer < MAX_WER, f"WER {wer:.2f}: {text!r}"
        srt = client.download(submission.job_id, "srt")
        assert srt.startswith("1\n") and " --> " in srt
        vtt = client.download(submission.job_id, "vtt")
        assert vtt.startswith("WEBVTT") and " --> " in vtt
        data = json.loads(client.download(submission.job_id, "json"))
        assert data["segments"] and data["text"].split() == done["transcript"].split()

        again = client.upload(clip)  # a safe retry: same job, no second one
        assert (again.job_id, again.status, again.created) == (submission.job_id, "completed", False)
        assert client.transcribe(clip) == text
        assert client.health()["queue_size"] == 0


@pytest.mark.slow
def test_service_errors_become_typed_exceptions(service: ServerProcess, tmp_path: Path) -> None:
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is a text file, not audio\n" * 50)
    clip = eval_clip("LDC93S1.wav")
    with TranscriptionClient(service.url) as client:
        with pytest.raises(RejectedUpload) as rejected:
            client.upload(not_audio)
        assert rejected.value.status_code == 415 and "not audio" in str(rejected.value)
        assert "notes.wav" in str(rejected.value) and "not audio" in (rejected.value.service_error or "")

        with pytest.raises(RejectedUpload, match="job_id must be"):
            client.upload(clip, job_id="../escape")
        with pytest.raises(JobNotFound, match="no job 'never-made'"):
            client.status("never-made")
        with pytest.raises(JobNotFound):
            client.download("never-made")

        # `small` needs a download this offline machine cannot make: the job fails.
        failing = client.upload(clip, model="small")
        assert "-small-" in failing.job_id
        with pytest.raises(JobConflict, match="different audio"):
            client.upload(eval_clip(CLIP), job_id=failing.job_id)
        failed = client.wait(failing.job_id, timeout=120)
        assert failed["status"] == "failed" and "could not be downloaded" in failed["error"]
        with pytest.raises(TranscriptNotReady, match="it failed"):
            client.download(failing.job_id)
        with pytest.raises(JobFailed, match="could not be downloaded"):
            client.transcribe(clip, model="small")
