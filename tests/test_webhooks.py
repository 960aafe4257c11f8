"""Webhooks: real receivers on loopback, signatures checked as docs/webhooks.md tells receivers to.

Queue behaviour runs on the fake engine in-process; one test runs a real server process with
tiny.en on an eval clip.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import hmac
import io
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import FormData, web
from aiohttp.test_utils import TestClient, TestServer
from conftest import FakeEngine, eval_clip, free_port, reference_text, word_error_rate

from service import __version__
from service.api.keys import SERVICES
from service.app import create_app
from service.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
ServerFactory = Callable[..., Awaitable[TestServer]]

CLIP = "LDC93S1.wav"
SECRET = "s3cret"
FAST_BACKOFF = 0.2  # seconds before the first retry, doubling


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """The receivers here listen on loopback, which webhooks reach only when allowed to."""
    return dataclasses.replace(settings, webhook_allow_private=True)


def verify_signature(secret: str, headers: Mapping[str, str], raw: bytes, max_age_s: float = 300) -> bool:
    """The receiver's check, exactly as docs/webhooks.md describes it."""
    timestamp = headers.get("X-Webhook-Timestamp", "")
    given = headers.get("X-Webhook-Signature", "")
    if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > max_age_s:
        return False
    mac = hmac.new(secret.encode(), timestamp.encode() + b"." + raw, hashlib.sha256)
    return hmac.compare_digest("sha256=" + mac.hexdigest(), given)


@dataclass
class Call:
    headers: dict[str, str]
    raw: bytes
    at: float
    signed_ok: bool

    @property
    def body(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.raw)
        return data


@dataclass
class Receiver:
    """A webhook endpoint: answers from `statuses` in turn (200 once they run out)."""

    secret: str | None = None
    statuses: list[int] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        raw = await request.read()
        ok = self.secret is not None and verify_signature(self.secret, request.headers, raw)
        self.calls.append(Call(dict(request.headers), raw, time.monotonic(), ok))
        if self.secret is not None and not ok:
            return web.Response(status=401)
        return web.Response(status=self.statuses.pop(0) if self.statuses else 200)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/hook", self.handle)
        return app

    async def wait_calls(self, count: int, timeout: float = 20.0) -> list[Call]:
        deadline = time.monotonic() + timeout
        while len(self.calls) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.calls)} webhook call(s) after {timeout} s, wanted {count}")
            await asyncio.sleep(0.02)
        return self.calls


async def start_receiver(
    aiohttp_server: ServerFactory, secret: str | None = None, port: int | None = None, **kw: Any
) -> Receiver:
    receiver = Receiver(secret=secret, **kw)
    server = await aiohttp_server(receiver.app(), port=port) if port else await aiohttp_server(receiver.app())
    receiver.url = f"http://127.0.0.1:{server.port}/hook"
    return receiver


def form(path: Path, **fields: str) -> FormData:
    body = FormData()
    for key, value in fields.items():
        body.add_field(key, value)
    body.add_field("file", io.BytesIO(path.read_bytes()), filename=path.name)
    return body


async def start_app(
    aiohttp_client: ClientFactory, settings: Settings, engine: FakeEngine | None = None
) -> TestClient[Any, Any]:
    app = create_app(settings, engine=engine or FakeEngine())
    app[SERVICES].webhooks.backoff_base = FAST_BACKOFF
    return await aiohttp_client(app)


async def submit(client: TestClient[Any, Any], job_id: str, callback_url: str) -> None:
    resp = await client.post(
        "/transcribe", data=form(eval_clip(CLIP), job_id=job_id, callback_url=callback_url)
    )
    assert resp.status == 202, await resp.text()


def served_app(client: TestClient[Any, Any]) -> web.Application:
    assert client.app is not None
    return client.app


async def deliveries(client: TestClient[Any, Any], job_id: str) -> list[dict[str, Any]]:
    return await served_app(client)[SERVICES].webhooks.deliveries(job_id)


async def wait_delivery(
    client: TestClient[Any, Any], job_id: str, ready: Callable[[dict[str, Any]], bool], timeout: float = 20
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = await deliveries(client, job_id)
        if rows and ready(rows[-1]):
            return rows[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"delivery of {job_id} never got there: {rows}")


def journal_rows(settings: Settings, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with sqlite3.connect(settings.storage_dir / "jobs.db") as conn:
        return conn.execute(sql, args).fetchall()


# -- delivery --------------------------------------------------------------------------------


async def test_completed_job_posts_one_signed_delivery(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server, secret=SECRET)
    client = await start_app(aiohttp_client, dataclasses.replace(settings, webhook_secret=SECRET))
    await submit(client, "signed", receiver.url)

    (call,) = await receiver.wait_calls(1)
    assert call.signed_ok
    assert call.headers["Content-Type"] == "application/json"
    assert call.headers["User-Agent"] == f"whisper-transcription-service/{__version__}"
    body = call.body
    assert body["event"] == "job.completed" and body["status"] == "completed"
    assert body["job_id"] == "signed" and body["model"] == "tiny.en" and body["language"] == "en"
    assert body["transcript"].endswith("samples")
    assert body["segments"] == [
        {
            "id": 0,
            "start": 0.0,
            "end": pytest.approx(body["duration_s"], abs=1e-3),
            "text": " " + body["transcript"],
        }
    ]
    assert body["attempt"] == 1 and body["delivery_id"] == call.headers["X-Webhook-Id"]
    assert body["created_at"] <= body["completed_at"] and "error" not in body
    status = await (await client.get("/status/signed")).json()
    assert body["completed_at"] == status["completed_at"] and body["duration_s"] == status["duration_s"]

    row = await wait_delivery(client, "signed", lambda r: r["state"] == "delivered")
    assert row["attempts"] == 1 and row["last_status"] == 200
    await asyncio.sleep(0.5)
    assert len(receiver.calls) == 1  # delivered: never sent again


async def test_tampered_body_fails_the_documented_check() -> None:
    from service.webhooks.dispatcher import sign

    raw, timestamp = b'{"event":"job.completed"}', int(time.time())
    headers = {"X-Webhook-Timestamp": str(timestamp), "X-Webhook-Signature": sign(SECRET, timestamp, raw)}
    assert verify_signature(SECRET, headers, raw)
    assert not verify_signature(SECRET, headers, raw.replace(b"completed", b"failed"))
    assert not verify_signature("other", headers, raw)
    stale = {**headers, "X-Webhook-Timestamp": str(timestamp - 301)}
    stale["X-Webhook-Signature"] = sign(SECRET, timestamp - 301, raw)
    assert not verify_signature(SECRET, stale, raw)


async def test_unsigned_without_a_secret(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server)
    client = await start_app(aiohttp_client, settings)
    await submit(client, "plain", receiver.url)
    (call,) = await receiver.wait_calls(1)
    assert "X-Webhook-Signature" not in call.headers and "X-Webhook-Timestamp" not in call.headers
    assert call.headers["X-Webhook-Id"] == call.body["delivery_id"]


async def test_server_errors_are_retried_with_backoff(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server, secret=SECRET, statuses=[500, 500])
    client = await start_app(aiohttp_client, dataclasses.replace(settings, webhook_secret=SECRET))
    await submit(client, "flaky", receiver.url)

    calls = await receiver.wait_calls(3)
    row = await wait_delivery(client, "flaky", lambda r: r["state"] == "delivered")
    await asyncio.sleep(0.5)
    assert len(receiver.calls) == 3
    assert all(c.signed_ok for c in calls)  # every attempt is signed afresh
    assert [c.body["attempt"] for c in calls] == [1, 2, 3]
    assert len({c.body["delivery_id"] for c in calls}) == 1
    first_gap, second_gap = calls[1].at - calls[0].at, calls[2].at - calls[1].at
    # 0.2 s then 0.4 s, each shortened by up to a quarter (a loaded machine only adds to them).
    assert 0.15 <= first_gap < 0.2 + 1.0
    assert 0.3 <= second_gap < 0.4 + 1.0
    assert row["attempts"] == 3 and row["last_status"] == 200 and row["last_error"] is None


async def test_failed_job_posts_job_failed_with_the_error(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server)
    client = await start_app(aiohttp_client, settings, FakeEngine(fail_with=RuntimeError("decoder exploded")))
    await submit(client, "doomed", receiver.url)
    (call,) = await receiver.wait_calls(1)
    body = call.body
    assert body["event"] == "job.failed" and body["status"] == "failed"
    assert "decoder exploded" in body["error"]
    assert "transcript" not in body and "segments" not in body


async def test_delivery_is_given_up_after_the_retry_window(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server, statuses=[503] * 100)
    client = await start_app(aiohttp_client, dataclasses.replace(settings, webhook_retry_seconds=1.0))
    await submit(client, "unlucky", receiver.url)
    row = await wait_delivery(client, "unlucky", lambda r: r["state"] == "given_up", timeout=10)
    assert row["last_status"] == 503 and row["last_error"] == "HTTP 503"
    assert row["attempts"] == len(receiver.calls) >= 3
    count = len(receiver.calls)
    await asyncio.sleep(0.6)
    assert len(receiver.calls) == count


async def test_cancelled_queued_job_posts_job_cancelled(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    engine = FakeEngine()
    engine.gate.clear()
    receiver = await start_receiver(aiohttp_server)
    client = await start_app(aiohttp_client, settings, engine)
    if not any(
        r.method == "DELETE" and r.resource is not None and r.resource.canonical == "/jobs/{job_id}"
        for r in served_app(client).router.routes()
    ):
        pytest.skip("DELETE /jobs/{job_id} is not part of this build")
    await submit(client, "running", receiver.url)
    await submit(client, "waiting", receiver.url)
    assert (await client.delete("/jobs/waiting")).status == 200
    (call,) = await receiver.wait_calls(1)
    assert call.body["event"] == "job.cancelled" and call.body["job_id"] == "waiting"
    assert call.body["status"] == "cancelled" and "transcript" not in call.body
    engine.gate.set()
    calls = await receiver.wait_calls(2)
    assert calls[1].body["job_id"] == "running" and calls[1].body["event"] == "job.completed"


async def test_shutdown_does_not_wait_for_a_hanging_receiver(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    arrived = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        arrived.set()
        await asyncio.sleep(60)
        return web.Response()

    hook = web.Application()
    hook.router.add_post("/hook", hang)
    server = await aiohttp_server(hook)
    client = await start_app(aiohttp_client, dataclasses.replace(settings, webhook_timeout=30))
    await submit(client, "stuck", f"http://127.0.0.1:{server.port}/hook")
    await asyncio.wait_for(arrived.wait(), 10)
    started = time.monotonic()
    await client.close()
    assert time.monotonic() - started < 3
    rows = journal_rows(settings, "SELECT state, attempts FROM webhook_deliveries WHERE job_id = 'stuck'")
    assert rows == [("pending", 0)]  # the abandoned attempt is made again at the next start


# -- restarts ---------------------------------------------------------------------------------


async def test_pending_delivery_survives_a_restart(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    port = free_port()  # nothing listens yet: connection refused
    url = f"http://127.0.0.1:{port}/hook"
    client = await start_app(aiohttp_client, settings)
    await submit(client, "patient", url)
    row = await wait_delivery(client, "patient", lambda r: r["attempts"] >= 1)
    assert row["state"] == "pending" and "Connect" in row["last_error"]
    await client.close()  # the app stops; the row stays pending

    receiver = await start_receiver(aiohttp_server, port=port)
    client2 = await start_app(aiohttp_client, settings)
    (call,) = await receiver.wait_calls(1)
    assert call.body["delivery_id"] == row["delivery_id"] and call.body["attempt"] > row["attempts"]
    assert call.body["event"] == "job.completed" and call.body["transcript"].endswith("samples")
    done = await wait_delivery(client2, "patient", lambda r: r["state"] == "delivered")
    assert done["delivery_id"] == row["delivery_id"]


async def test_start_up_adds_deliveries_missed_by_a_crash(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    """The process died after the jobs ended, before their delivery rows were written."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/hook"
    client = await start_app(aiohttp_client, settings)
    for job_id in ("recent", "long-ago"):
        await submit(client, job_id, url)
        await wait_delivery(client, job_id, lambda r: r["attempts"] >= 1)
    await client.close()
    journal_rows(settings, "DELETE FROM webhook_deliveries")
    journal_rows(settings, "UPDATE jobs SET completed_at = completed_at - 7200 WHERE job_id = 'long-ago'")

    receiver = await start_receiver(aiohttp_server, port=port)
    client2 = await start_app(aiohttp_client, settings)
    (call,) = await receiver.wait_calls(1)
    assert call.body["job_id"] == "recent" and call.body["attempt"] == 1
    await wait_delivery(client2, "recent", lambda r: r["state"] == "delivered")
    await asyncio.sleep(0.5)
    assert len(receiver.calls) == 1  # ended before the retry window: no delivery
    assert await deliveries(client2, "long-ago") == []


# -- callback URLs at upload ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://localhost/hook", "http:// or https://"),
        ("http:///hook", "no host"),
        ("https://", "no host"),
        ("localhost/hook", "http:// or https://"),
        ("http://127.0.0.1:{port}/hook", "'127.0.0.1' is not allowed"),
        ("http://evil.example/hook", "'evil.example' is not allowed"),
        ("http://localhost:notaport/hook", "not a valid URL"),
    ],
)
async def test_bad_callback_urls_are_refused(
    settings: Settings, aiohttp_client: ClientFactory, url: str, message: str
) -> None:
    settings = dataclasses.replace(settings, webhook_allowed_hosts=("LocalHost",))
    client = await start_app(aiohttp_client, settings)
    resp = await client.post(
        "/transcribe", data=form(eval_clip(CLIP), job_id="refused", callback_url=url.format(port=8080))
    )
    assert resp.status == 400
    assert resp.content_type == "application/json"
    assert message in (await resp.json())["error"]
    assert (await client.get("/status/refused")).status == 404
    root = settings.storage_dir
    assert [p.name for d in ("pending", "tmp") for p in (root / d).iterdir()] == []
    assert journal_rows(settings, "SELECT COUNT(*) FROM jobs") == [(0,)]


async def test_allowed_host_passes_and_is_delivered(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server)
    client = await start_app(
        aiohttp_client, dataclasses.replace(settings, webhook_allowed_hosts=("localhost",))
    )
    await submit(client, "allowed", receiver.url.replace("127.0.0.1", "LOCALHOST"))
    (call,) = await receiver.wait_calls(1)
    assert call.body["job_id"] == "allowed"


# -- a real server process with the real model -------------------------------------------------


@pytest.mark.slow
async def test_end_to_end_with_a_real_server(
    server_factory: Callable[..., Any], aiohttp_server: ServerFactory
) -> None:
    receiver = await start_receiver(aiohttp_server, secret=SECRET)
    server = server_factory(extra_args=["--webhook-secret", SECRET, "--webhook-allow-private"])
    await asyncio.to_thread(server.start)
    async with aiohttp.ClientSession() as session:
        resp = await session.post(
            server.url + "/transcribe", data=form(eval_clip(CLIP), job_id="e2e", callback_url=receiver.url)
        )
        assert resp.status == 202, await resp.text()
    (call,) = await receiver.wait_calls(1, timeout=180)
    assert call.signed_ok, call.headers
    body = call.body
    assert body["event"] == "job.completed" and body["job_id"] == "e2e" and body["model"] == "tiny.en"
    assert word_error_rate(reference_text(CLIP), body["transcript"]) < 0.35
    assert body["segments"] and all(set(s) == {"id", "start", "end", "text"} for s in body["segments"])
    for _ in range(100):  # the service logs the delivery once the answer is recorded
        if "delivered (attempt 1, HTTP 200)" in server.log():
            break
        await asyncio.sleep(0.05)
    assert "job e2e: webhook " + body["delivery_id"] + " delivered (attempt 1, HTTP 200)" in server.log()
