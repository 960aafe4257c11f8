"""Live job streams (WebSocket and SSE): state first, replay, live events, final state, resume.

The fast tests run the app in process on the fake engine (its gate holds a decode, so a job can
be watched while it runs); one test runs a real server with tiny.en on ~90 s of speech.
"""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import signal
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import requests
from aiohttp import FormData, WSServerHandshakeError
from aiohttp.test_utils import TestClient
from conftest import FakeEngine, ServerProcess, wait_for_status, write_wav

from service.api.keys import SERVICES
from service.api.streams import STREAMS
from service.app import create_app
from service.engines.base import DecodeOptions
from service.inference import audio
from service.inference.chunking import ChunkingOptions
from service.inference.models import ModelManager
from service.inference.pipeline import TranscribeRequest, execute
from service.jobs.job import JobOptions
from service.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
Message = dict[str, Any]  # {"type", "data", "id"?}, as the WebSocket sends them


def _wav_bytes(seconds: float = 1.0) -> bytes:
    import wave

    import numpy as np

    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16_000)
        t = np.arange(int(16_000 * seconds)) / 16_000
        out.writeframes((np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2").tobytes())
    return buffer.getvalue()


def _form(job_id: str) -> FormData:
    body = FormData()
    body.add_field("job_id", job_id)
    body.add_field("file", io.BytesIO(_wav_bytes()), filename="a.wav", content_type="audio/wav")
    return body


async def _wait_status(client: TestClient[Any, Any], job_id: str, wanted: str) -> Message:
    body: Message = {}
    for _ in range(400):
        body = await (await client.get(f"/status/{job_id}")).json()
        if body["status"] == wanted:
            return body
        await asyncio.sleep(0.025)
    raise AssertionError(f"{job_id} never reached {wanted}: {body}")


@pytest.fixture
async def fake(settings: Settings, aiohttp_client: ClientFactory) -> tuple[TestClient[Any, Any], FakeEngine]:
    engine = FakeEngine()
    return await aiohttp_client(create_app(settings, engine=engine)), engine


async def _running_job(client: TestClient[Any, Any], engine: FakeEngine, job_id: str) -> None:
    """A job held in its first step by the fake engine's gate."""
    engine.gate.clear()
    resp = await client.post("/transcribe", data=_form(job_id))
    assert resp.status == 202
    await _wait_status(client, job_id, "processing")


# -- reading streams -------------------------------------------------------------------------


async def _read_sse(
    resp: aiohttp.ClientResponse, stop: Callable[[list[Message]], bool] | None = None
) -> list[Message]:
    """Parse text/event-stream into messages shaped like the WebSocket's, until EOF or `stop`."""
    out: list[Message] = []
    fields: dict[str, str] = {}
    while raw := await resp.content.readline():
        line = raw.decode().rstrip("\r\n")
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if "data" in fields:
            message: Message = {"type": fields.get("event", "message"), "data": json.loads(fields["data"])}
            if "id" in fields:
                message["id"] = int(fields["id"])
            out.append(message)
            if stop is not None and stop(out):
                break
        fields = {}
    return out


async def _read_ws(ws: aiohttp.ClientWebSocketResponse, limit: int | None = None) -> list[Message]:
    out: list[Message] = []
    async for msg in ws:
        assert msg.type == aiohttp.WSMsgType.TEXT, msg
        out.append(json.loads(msg.data))
        if limit is not None and len(out) >= limit:
            break
    return out


def _ids(messages: list[Message]) -> list[int]:
    return [m["id"] for m in messages if "id" in m]


def _check_live_run(messages: list[Message], job_id: str, transcript: str | None = None) -> None:
    """state first; events with increasing ids; segments; end; final state completed, last."""
    assert messages[0]["type"] == "state" and messages[0]["data"]["job_id"] == job_id
    assert messages[0]["data"]["status"] in ("queued", "processing")
    assert all(b > a for a, b in itertools.pairwise(_ids(messages))), _ids(messages)
    progress = [m["data"]["progress"] for m in messages if m["type"] == "progress"]
    assert progress == sorted(progress) and progress[-1] == 1.0, progress
    assert [m["type"] for m in messages[-2:]] == ["end", "state"]
    assert messages[-2]["data"] == {"status": "completed"}
    final = messages[-1]["data"]
    assert final["status"] == "completed" and final["progress"] == 1.0
    if transcript is not None:
        assert final["transcript"] == transcript
    assert sum(m["type"] == "state" for m in messages) == 2


# -- in process, fake engine -----------------------------------------------------------------


async def test_unknown_job_is_404_before_any_upgrade(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, _ = fake
    resp = await client.get("/events/no-such-job")
    assert resp.status == 404
    assert "no-such-job" in (await resp.json())["error"]
    with pytest.raises(WSServerHandshakeError) as caught:
        await client.ws_connect("/ws/no-such-job")
    assert caught.value.status == 404
    resp = await client.get("/events/anything", headers={"Last-Event-ID": "x"})
    assert resp.status == 400
    assert not client.app[STREAMS].open


async def test_websocket_streams_a_running_job_to_its_end(
    fake: tuple[TestClient[Any, Any], FakeEngine],
) -> None:
    client, engine = fake
    await _running_job(client, engine, "ws-live")
    ws = await client.ws_connect("/ws/ws-live")
    first = await _read_ws(ws, limit=1)
    assert first[0]["type"] == "state" and first[0]["data"]["status"] == "processing"
    engine.gate.set()
    messages = first + await _read_ws(ws)
    assert ws.close_code == 1000
    _check_live_run(messages, "ws-live", transcript="16000 samples")
    segments = [m["data"] for m in messages if m["type"] == "segment"]
    assert [s["text"] for s in segments] == [f" step {n}" for n in range(1, 5)]
    assert [s["id"] for s in segments] == [0, 1, 2, 3]
    # Every kept event came through, once: the replay from 0 and the live queue overlap.
    assert _ids(messages) == list(range(1, len(_ids(messages)) + 1))


async def test_sse_resumes_from_last_event_id_without_duplicates(
    fake: tuple[TestClient[Any, Any], FakeEngine],
) -> None:
    client, engine = fake
    await _running_job(client, engine, "sse-resume")
    resp = await client.get("/events/sse-resume")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/event-stream")
    assert resp.headers["Cache-Control"] == "no-cache"
    # The held decode reports progress every 50 ms: read a few events, then drop the connection.
    before = await _read_sse(resp, stop=lambda out: len(_ids(out)) >= 3)
    resp.close()
    assert before[0]["type"] == "state" and before[0]["data"]["status"] == "processing"
    await asyncio.sleep(0.2)  # events go by while the client is away

    resp = await client.get("/events/sse-resume", headers={"Last-Event-ID": str(_ids(before)[-1])})
    again = await _read_sse(resp, stop=lambda out: len(out) >= 2)
    engine.gate.set()
    after = again + await _read_sse(resp)
    assert again[0]["type"] == "state"
    assert _ids(after)[0] == _ids(before)[-1] + 1  # what it missed is replayed, nothing twice
    assert not set(_ids(before)) & set(_ids(after))
    _check_live_run(after, "sse-resume", transcript="16000 samples")

    # The query parameter works the same (for clients that cannot set headers); the job is
    # over now, so the stream is what was missed, then the final state.
    resp = await client.get(f"/events/sse-resume?last_event_id={_ids(after)[-3]}")
    tail = await _read_sse(resp)
    assert _ids(tail) == _ids(after)[-2:] and tail[-1] == after[-1]


async def test_websocket_resume_and_finished_job_get_one_final_state(
    fake: tuple[TestClient[Any, Any], FakeEngine],
) -> None:
    client, _ = fake
    resp = await client.post("/transcribe", data=_form("done"))
    assert resp.status == 202
    status = await _wait_status(client, "done", "completed")

    # Opened after the end: one state, exactly what /status says, then a normal close.
    ws = await client.ws_connect("/ws/done")
    assert await _read_ws(ws) == [{"type": "state", "data": status}]
    assert ws.close_code == 1000
    resp = await client.get("/events/done")
    assert await _read_sse(resp) == [{"type": "state", "data": status}]

    # Resuming after the end: the events it missed, then the final state.
    ws = await client.ws_connect("/ws/done?last_event_id=1")
    messages = await _read_ws(ws)
    assert ws.close_code == 1000
    assert _ids(messages)[0] == 2 and messages[-1] == {"type": "state", "data": status}
    assert [m["type"] for m in messages[-2:]] == ["end", "state"]


async def test_clients_that_leave_end_their_streams(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = fake
    await _running_job(client, engine, "leaving")
    ws = await client.ws_connect("/ws/leaving")
    sse = await client.get("/events/leaving")
    await _read_ws(ws, limit=1)
    await _read_sse(sse, stop=lambda out: len(out) >= 1)
    hub = client.app[STREAMS]
    assert len(hub.open) == 2
    await ws.close()
    sse.close()
    for _ in range(100):  # the SSE stream notices at its next write (the held decode reports)
        if not hub.open:
            break
        await asyncio.sleep(0.02)
    assert not hub.open and not hub.sockets
    engine.gate.set()


async def test_a_resubmitted_job_streams_only_its_new_run(
    fake: tuple[TestClient[Any, Any], FakeEngine],
) -> None:
    client, engine = fake
    engine.fail_with = RuntimeError("first run fails")
    assert (await client.post("/transcribe", data=_form("again"))).status == 202
    await _wait_status(client, "again", "failed")
    engine.fail_with = None
    await _running_job(client, engine, "again")  # the same upload queues it afresh
    ws = await client.ws_connect("/ws/again")
    first = await _read_ws(ws, limit=2)
    engine.gate.set()
    messages = first + await _read_ws(ws)
    assert messages[1]["type"] == "status" and messages[1]["data"] == {"status": "queued"}
    _check_live_run(messages, "again", transcript="16000 samples")
    assert [m["data"]["status"] for m in messages if m["type"] == "end"] == ["completed"]


async def test_streams_end_when_the_worker_stops(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = fake
    await _running_job(client, engine, "stopping")
    ws = await client.ws_connect("/ws/stopping")
    sse = await client.get("/events/stopping")
    assert (await _read_ws(ws, limit=1))[0]["type"] == "state"
    assert (await _read_sse(sse, stop=lambda out: len(out) >= 1))[0]["type"] == "state"
    started = time.monotonic()
    await client.app[SERVICES].worker.stop()
    rest = await asyncio.wait_for(_read_ws(ws), 5)
    assert ws.close_code == 1001  # going away: reconnect later, the job is not over
    assert rest[-1]["type"] == "state" and rest[-1]["data"]["status"] == "processing"
    sse_rest = await asyncio.wait_for(_read_sse(sse), 5)
    assert sse_rest[-1]["type"] == "state"
    assert time.monotonic() - started < 3
    resp = await client.get("/events/stopping")
    assert resp.status == 503  # no new streams while stopping
    engine.gate.set()


async def test_shutdown_closes_open_streams(fake: tuple[TestClient[Any, Any], FakeEngine]) -> None:
    client, engine = fake
    await _running_job(client, engine, "shutdown")
    ws = await client.ws_connect("/ws/shutdown")
    sse = await client.get("/events/shutdown")
    await _read_ws(ws, limit=1)
    await _read_sse(sse, stop=lambda out: len(out) >= 1)
    hub = client.app[STREAMS]
    assert len(hub.open) == 2
    readers = asyncio.gather(_read_ws(ws), _read_sse(sse))  # clients read on, as real ones do
    started = time.monotonic()
    await asyncio.wait_for(hub.close_all(), 5)
    assert time.monotonic() - started < 1.5  # each stream ended itself; none was waited out
    ws_rest, sse_rest = await asyncio.wait_for(readers, 5)
    assert ws_rest[-1]["type"] == "state" and sse_rest[-1]["type"] == "state"
    assert ws.close_code == 1001
    assert not hub.open and not hub.sockets
    engine.gate.set()


def test_split_channel_segments_stay_distinct(settings: Settings, tmp_path: Path) -> None:
    """channels=split: live segments carry their channel, and ids count across channels."""
    import wave

    import numpy as np

    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes((np.random.default_rng(0).normal(0, 2000, 32_000)).astype("<i2").tobytes())
    manager = ModelManager.for_settings(FakeEngine(), settings)
    request = TranscribeRequest(
        "split",
        str(path),
        "tiny.en",
        DecodeOptions(),
        JobOptions(split_channels=True),
        chunking=ChunkingOptions(detect_speech=settings.vad),
    )
    heard: list[dict[str, Any]] = []
    result = execute(manager, request, lambda: False, lambda _: None, heard.append)
    assert [s["id"] for s in heard] == list(range(8))
    assert [s["channel"] for s in heard] == [1] * 4 + [2] * 4
    assert [s["speaker"] for s in heard] == ["CHANNEL_1"] * 4 + ["CHANNEL_2"] * 4
    assert {s.speaker for s in result.segments} == {"CHANNEL_1", "CHANNEL_2"}


# -- a real server, the real model --------------------------------------------------------------


def _sse_lines(
    url: str,
    headers: dict[str, str],
    stop: Callable[[list[Message]], bool],
    opened: threading.Event | None = None,
) -> list[Message]:
    """An SSE reader on requests, as a plain script would write one; sets `opened` once the
    stream is open."""
    out: list[Message] = []
    fields: dict[str, str] = {}
    with requests.get(url, headers=headers, stream=True, timeout=(5, 60)) as resp:
        assert resp.status_code == 200, resp.text
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        if opened is not None:
            opened.set()
        for line in resp.iter_lines(decode_unicode=True):
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                message: Message = {"type": fields["event"], "data": json.loads(fields["data"])}
                if "id" in fields:
                    message["id"] = int(fields["id"])
                out.append(message)
                if stop(out):
                    break
            fields = {}
    return out


def _upload(url: str, path: Path, job_id: str) -> requests.Response:
    with path.open("rb") as fp:
        return requests.post(f"{url}/transcribe", files={"file": fp}, data={"job_id": job_id}, timeout=30)


def _sse_with_a_drop(url: str) -> tuple[list[Message], list[Message]]:
    """Read until the first segment, drop, wait, resume with Last-Event-ID until the end."""
    before = _sse_lines(url, {}, lambda out: out[-1]["type"] == "segment")
    time.sleep(1.0)
    after = _sse_lines(url, {"Last-Event-ID": str(_ids(before)[-1])}, lambda out: False)
    return before, after


@pytest.mark.slow
async def test_real_server_streams_segments_progress_and_final_state(
    server_factory: Callable[..., ServerProcess], long_wav: Path, tmp_path: Path
) -> None:
    server = server_factory(extra_args=["--beam-size", "1"]).start()  # greedy: half the time
    resp = await asyncio.to_thread(_upload, server.url, long_wav, "live")
    assert resp.status_code == 202, resp.text

    async with aiohttp.ClientSession() as session:
        sse = asyncio.ensure_future(asyncio.to_thread(_sse_with_a_drop, f"{server.url}/events/live"))
        async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws/live") as ws:
            messages = await asyncio.wait_for(_read_ws(ws), 180)
            assert ws.close_code == 1000
        before, after = await asyncio.wait_for(sse, 60)

        final = messages[-1]["data"]
        _check_live_run(messages, "live", transcript=final["transcript"])
        progress = [m["data"]["progress"] for m in messages if m["type"] == "progress"]
        assert len(set(progress)) >= 3, progress  # one report per 30 s window
        segments = [m["data"] for m in messages if m["type"] == "segment"]
        assert len(segments) >= 5
        joined = "".join(s["text"] for s in segments)
        assert joined.split() == final["transcript"].split()
        # Segments arrived while the job ran: the first before the last progress report.
        kinds = [m["type"] for m in messages]
        assert kinds.index("segment") < len(kinds) - 1 - kinds[::-1].index("progress")
        assert [s["id"] for s in segments] == list(range(len(segments)))

        # The SSE client that dropped and resumed saw the same events, each once, and the end.
        assert after[0]["type"] == "state" and after[0]["data"]["status"] == "processing"
        assert not set(_ids(before)) & set(_ids(after))
        assert _ids(before) + _ids(after) == _ids(messages)
        assert after[-1] == messages[-1]

        # Opened after the end: the final state alone, then closed.
        async with session.ws_connect(f"{server.url.replace('http', 'ws')}/ws/live") as ws:
            assert await asyncio.wait_for(_read_ws(ws), 10) == [messages[-1]]
            assert ws.close_code == 1000
        late = await asyncio.to_thread(_sse_lines, f"{server.url}/events/live", {}, lambda out: False)
        assert late == [messages[-1]]
        async with session.get(f"{server.url}/events/nope") as missing:
            assert missing.status == 404

    status = await asyncio.to_thread(wait_for_status, server.url, "live", {"completed"})
    assert status["transcript"] == final["transcript"]

    # Streams open at SIGTERM end at once (WebSocket 1001, SSE response ended): no hang.
    other = write_wav(tmp_path / "other.wav", audio.decode(long_wav) * 0.5)  # not a cache hit
    resp = await asyncio.to_thread(_upload, server.url, other, "cut-short")
    assert resp.status_code == 202, resp.text
    await asyncio.to_thread(wait_for_status, server.url, "cut-short", {"processing"})
    ws_url = f"{server.url.replace('http', 'ws')}/ws/cut-short"
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url) as ws:
        assert (await _read_ws(ws, limit=1))[0]["data"]["status"] == "processing"
        sse_open = threading.Event()
        cut_sse = asyncio.ensure_future(
            asyncio.to_thread(_sse_lines, f"{server.url}/events/cut-short", {}, lambda out: False, sse_open)
        )
        assert await asyncio.to_thread(sse_open.wait, 30)  # the stream is open before the SIGTERM
        assert server.proc is not None
        stopped_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        rest = await asyncio.wait_for(_read_ws(ws), 10)
        assert ws.close_code == 1001
        assert rest[-1]["type"] == "state"
        assert (await asyncio.wait_for(cut_sse, 10))[-1]["type"] == "state"
        assert time.monotonic() - stopped_at < 5, server.log()
    assert await asyncio.to_thread(server.proc.wait, 60) == 0
