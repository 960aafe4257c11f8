"""Hostile and careless HTTP: stalled and crowded uploads, forms built to cost CPU, compressed
bodies, foreign Host headers, cross-site pages, odd parameters, requests aiohttp cannot parse,
and the token on every route of the table. Each refusal is JSON and keeps nothing."""

from __future__ import annotations

import asyncio
import gzip
import json
import socket
import time
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from conftest import FakeEngine, ServerProcess, eval_clip
from test_api import ClientFactory, form, leftover_files

from service.api import auth, uploads
from service.api.keys import SERVICES
from service.app import create_app
from service.settings import Settings

CLIP = eval_clip("LDC93S1.wav")
BOUNDARY = "hostile-boundary"
TOKEN = "s3cret-token"


def multipart(*fields: tuple[str, str], file: bytes | None = None) -> bytes:
    """A multipart body by hand, so a test can cut it short or repeat parts at will."""
    out = b""
    for name, value in fields:
        out += f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    if file is not None:
        out += (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + file
        out += b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


def post_head(port: int, length: int, path: str = "/transcribe") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n\r\n"
    ).encode()


async def open_raw(client: TestClient[Any, Any]) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, int]:
    """A raw connection to the test server, for bodies sent in pieces."""
    assert client.port is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    return reader, writer, client.port


async def read_answer(reader: asyncio.StreamReader, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and body of one HTTP/1.1 answer read from a raw connection."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:] if line)}
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", 0))), timeout)
    return int(lines[0].split()[1]), headers, body


async def app_client(aiohttp_client: ClientFactory, tmp_path: Path, **options: Any) -> TestClient[Any, Any]:
    settings = Settings(storage_dir=tmp_path / "storage", vad=False, **options)
    return await aiohttp_client(create_app(settings, engine=FakeEngine()))


def settings_of(client: TestClient[Any, Any]) -> Settings:
    return client.app[SERVICES].settings


async def no_jobs(client: TestClient[Any, Any]) -> bool:
    return (await (await client.get("/jobs")).json())["jobs"] == []


# -- uploads in flight ----------------------------------------------------------------------------


async def test_a_stalled_upload_is_dropped_with_408_and_nothing_kept(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await app_client(aiohttp_client, tmp_path, upload_timeout=0.3)
    body = multipart(("job_id", "stalled"), file=CLIP.read_bytes())
    reader, writer, port = await open_raw(client)
    writer.write(post_head(port, len(body)) + body[: len(body) // 2])  # then nothing more
    status, headers, answer = await read_answer(reader)
    writer.close()
    assert status == 408, answer
    assert "--upload-timeout" in json.loads(answer)["error"]
    assert headers.get("connection", "").lower() == "close"
    assert leftover_files(settings_of(client)) == [] and await no_jobs(client)


async def test_uploads_past_max_uploads_get_503_before_their_body_is_read(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine()
    engine.gate.clear()  # jobs wait: an OpenAI request holds on until its transcript is ready
    settings = Settings(storage_dir=tmp_path / "storage", vad=False, max_uploads=1)
    client = await aiohttp_client(create_app(settings, engine=engine))
    waiting = asyncio.ensure_future(client.post("/v1/audio/transcriptions", data=form(CLIP)))
    for _ in range(500):  # until it is received: its wait for the transcript holds no slot
        if not await no_jobs(client):
            break
        await asyncio.sleep(0.01)
    body = multipart(("job_id", "first"), file=CLIP.read_bytes())
    reader, writer, port = await open_raw(client)
    writer.write(post_head(port, len(body)) + body[: len(body) // 2])
    tmp = tmp_path / "storage" / "tmp"
    for _ in range(500):  # until the first upload is being written: it holds the one slot
        if any(tmp.iterdir()):
            break
        await asyncio.sleep(0.01)
    resp = await client.post("/transcribe", data=form(CLIP, job_id="second"))
    assert resp.status == 503
    assert len(list(tmp.iterdir())) == 1  # only the first upload's file: this body was not read
    assert resp.headers["Retry-After"].isdigit()
    assert "--max-uploads" in (await resp.json())["error"]
    writer.write(body[len(body) // 2 :])  # the first one finishes, and frees its slot
    status, _, answer = await read_answer(reader)
    writer.close()
    assert status == 202, answer
    resp = await client.post("/transcribe", data=form(CLIP, job_id="third"))
    assert resp.status == 202
    engine.gate.set()
    assert (await waiting).status == 200


# -- forms built to cost CPU or memory ------------------------------------------------------------


async def test_forms_with_too_many_parts_or_field_bytes_are_refused(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await app_client(aiohttp_client, tmp_path)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    many_parts = multipart(*[(f"x{i}", "1") for i in range(uploads.MAX_PARTS + 1)], file=b"RIFF")
    resp = await client.post("/transcribe", data=many_parts, headers=headers)
    assert resp.status == 413 and "parts" in (await resp.json())["error"]
    # One repeated field, each value under the per-field limit: joined as it came, it cost
    # quadratic time; now the total is bounded.
    value = "w" * (uploads.MAX_FIELD_BYTES - 10)
    repeated = multipart(*[("timestamp_granularities[]", value)] * 30, file=b"RIFF")
    resp = await client.post("/v1/audio/transcriptions", data=repeated, headers=headers)
    assert resp.status == 413, await resp.text()
    assert "KiB" in (await resp.json())["error"]["message"]
    ignored = multipart(("unknown", "u" * (uploads.MAX_FORM_TEXT_BYTES + 1)), file=b"RIFF")
    resp = await client.post("/transcribe", data=ignored, headers=headers)
    assert resp.status == 413
    assert leftover_files(settings_of(client)) == [] and await no_jobs(client)


async def test_a_single_valued_field_sent_twice_is_refused(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await app_client(aiohttp_client, tmp_path)
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"}
    body = multipart(("job_id", "one"), ("job_id", "two"), file=CLIP.read_bytes())
    resp = await client.post("/transcribe", data=body, headers=headers)
    assert resp.status == 400
    assert "'job_id' was sent twice" in (await resp.json())["error"]
    assert leftover_files(settings_of(client)) == [] and await no_jobs(client)


async def test_a_compressed_upload_is_refused(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    """aiohttp would inflate it after the Content-Length check: a small body, a huge file."""
    client = await app_client(aiohttp_client, tmp_path)
    body = gzip.compress(multipart(("job_id", "zip"), file=b"\0" * 1_000_000))
    headers = {"Content-Type": f"multipart/form-data; boundary={BOUNDARY}", "Content-Encoding": "gzip"}
    resp = await client.post("/transcribe", data=body, headers=headers)
    assert resp.status == 415
    assert "uncompressed" in (await resp.json())["error"]
    assert leftover_files(settings_of(client)) == [] and await no_jobs(client)


# -- Host and Origin ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1:8765",
        "[::1]:8765",
        "10.1.2.3",
        "localhost",
        "localhost.:8765",
        "whisper:8765",  # a compose service name
        "app.localhost",
        "host.docker.internal:8765",
        socket.gethostname(),
    ],
)
async def test_hosts_the_service_answers_to(tmp_path: Path, aiohttp_client: ClientFactory, host: str) -> None:
    client = await app_client(aiohttp_client, tmp_path)
    assert (await client.get("/jobs", headers={"Host": host})).status == 200
    # A container's health check (200 once the model is loaded, 503 before).
    assert (await client.get("/health", headers={"Host": host})).status in (200, 503)


async def test_a_foreign_host_is_refused_unless_allowed(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    """DNS rebinding: a page on rebind.example reads the loopback service under its own name."""
    client = await app_client(aiohttp_client, tmp_path, allowed_hosts=("transcribe.example.com",))
    for host in ("rebind.example", "127.0.0.1.nip.io:8765", "evil.com", "bad host:x"):
        resp = await client.get("/jobs", headers={"Host": host})
        assert resp.status == 421, host
        assert "--allowed-hosts" in (await resp.json())["error"]
    resp = await client.post("/transcribe", data=form(CLIP, job_id="x"), headers={"Host": "evil.com"})
    assert resp.status == 421
    assert (await client.get("/jobs", headers={"Host": "Transcribe.Example.com:443"})).status == 200
    assert leftover_files(settings_of(client)) == []
    anything = await app_client(aiohttp_client, tmp_path / "any", allowed_hosts=("*",))
    assert (await anything.get("/jobs", headers={"Host": "evil.com"})).status == 200


async def test_cross_site_state_changes_are_refused(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    client = await app_client(aiohttp_client, tmp_path)
    own = f"http://127.0.0.1:{client.port}"
    for headers in (
        {"Origin": "http://evil.example"},
        {"Origin": "null"},  # a sandboxed frame or a file:// page
        {"Origin": f"http://localhost:{client.port}"},  # another origin, though the same machine
        {"Sec-Fetch-Site": "cross-site"},
    ):
        resp = await client.post("/transcribe", data=form(CLIP, job_id="csrf"), headers=headers)
        assert resp.status == 403, headers
        assert "--allowed-origins" in (await resp.json())["error"]
        assert (await client.post("/models/tiny/load", headers=headers)).status == 403
        assert (await client.delete("/jobs/x", headers=headers)).status == 403
    assert leftover_files(settings_of(client)) == [] and await no_jobs(client)
    # Reading is allowed: without CORS headers the page cannot see the answer anyway.
    assert (await client.get("/jobs", headers={"Origin": "http://evil.example"})).status == 200
    # The dashboard (same origin) and clients that are not browsers (no Origin) work.
    resp = await client.post("/transcribe", data=form(CLIP, job_id="own"), headers={"Origin": own})
    assert resp.status == 202
    resp = await client.post("/transcribe", data=form(CLIP, job_id="curl"))
    assert resp.status == 202
    # A WebSocket is no simple read: a page of any site could follow the job through it.
    with pytest.raises(Exception, match="403"):
        await client.ws_connect("/ws/own", headers={"Origin": "http://evil.example"})
    ws = await client.ws_connect("/ws/own", headers={"Origin": own})
    await ws.close()


async def test_allowed_origins(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    client = await app_client(aiohttp_client, tmp_path, allowed_origins=("https://app.example/",))
    allowed = {"Origin": "https://app.example:443", "Sec-Fetch-Site": "cross-site"}
    resp = await client.post("/transcribe", data=form(CLIP, job_id="app"), headers=allowed)
    assert resp.status == 202
    resp = await client.post(
        "/transcribe", data=form(CLIP, job_id="x"), headers={"Origin": "https://other.example"}
    )
    assert resp.status == 403
    anything = await app_client(aiohttp_client, tmp_path / "any", allowed_origins=("*",))
    resp = await anything.post("/models/tiny/load", headers={"Origin": "https://other.example"})
    assert resp.status == 200


# -- parameters -----------------------------------------------------------------------------------


async def test_wait_and_status_parameters_are_consistent(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await app_client(aiohttp_client, tmp_path)
    assert (await client.post("/transcribe", data=form(CLIP, job_id="w"))).status == 202
    for wait in ("1e9", "inf"):  # both mean "as long as there is", cut to 60 s; the job is done
        for _ in range(100):
            resp = await client.get(f"/status/w?wait={wait}")
            assert resp.status == 200, wait
            if (await resp.json())["status"] == "completed":
                break
    for bad in ("queued,", ",", "queued,,running"):
        resp = await client.get("/jobs", params={"status": bad})
        assert resp.status == 400, bad
        assert "status must be" in (await resp.json())["error"]


async def test_openapi_declares_bearer_auth_only_with_a_token(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    plain = await (await (await app_client(aiohttp_client, tmp_path)).get("/openapi.json")).json()
    assert "security" not in plain and "securitySchemes" not in plain["components"]
    guarded = await app_client(aiohttp_client, tmp_path / "t", api_token=TOKEN)
    document = await (await guarded.get("/openapi.json")).json()
    assert document["security"] == [{"bearerAuth": []}]
    assert document["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"


# -- the token, on every route of the table -------------------------------------------------------


def _concrete(path: str) -> str:
    """A request path for a route's template: `{name}` as a dashboard asset, any other part `x`."""
    return (
        path.replace("{name}", "dashboard.js")
        .replace("{wheel}", "x.whl")
        .replace("{job_id}", "x")
        .replace("{model}", "x")
    )


async def test_every_route_but_the_open_ones_needs_the_token(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    client = await app_client(aiohttp_client, tmp_path, api_token=TOKEN)
    checked = set()
    for route in client.app.router.routes():
        if route.method == "HEAD" or route.resource is None:  # HEAD: aiohttp's own, for each GET
            continue
        info = route.resource.get_info()
        template = info.get("formatter") or info.get("path") or info.get("prefix", "") + "/x"
        path = _concrete(template)
        is_open = path in auth.OPEN_PATHS or path.startswith(auth.OPEN_PREFIXES)
        resp = await client.request(route.method, path)
        checked.add((route.method, template))
        if is_open:
            assert resp.status != 401, (route.method, path)
            continue
        assert resp.status == 401, (route.method, path)
        assert resp.content_type == "application/json", (route.method, path)
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        with_token = await client.request(route.method, path, headers={"Authorization": f"Bearer {TOKEN}"})
        assert with_token.status != 401, (route.method, path)
    assert {("GET", "/events/{job_id}"), ("GET", "/ws/{job_id}"), ("DELETE", "/models/{name}")} <= checked
    assert ("POST", "/models/{name}/load") in checked


# -- requests aiohttp cannot parse, and a stall, on a real server process -------------------------


@pytest.mark.slow
def test_unreadable_requests_and_stalls_get_json_from_a_real_server(server_factory: Any) -> None:
    server: ServerProcess = server_factory(extra_args=["--upload-timeout", "0.5"]).start(wait_ready=False)
    for _ in range(300):
        try:
            requests.get(server.url + "/health", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.1)
    for headers, path in (({"X-Big": "a" * 10_000}, "/health"), ({}, "/jobs?" + "a" * 10_000)):
        resp = requests.get(server.url + path, headers=headers, timeout=10)
        assert resp.status_code == 400
        assert resp.headers["Content-Type"].startswith("application/json")
        assert "too long" in resp.json()["error"]
    body = multipart(("job_id", "stall"), file=CLIP.read_bytes())
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(post_head(server.port, len(body)) + body[:1000])
        answer = b""
        while b"}" not in answer:  # the whole JSON body, however the bytes arrive
            chunk = sock.recv(65536)
            assert chunk, answer
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 408"), answer
    assert b"--upload-timeout" in answer
    assert list((server.storage_dir / "tmp").iterdir()) == []
