"""The light client as its own distribution (clients/python, `whisper-transcription-client`): the
service hands out its wheel at /client/, checks the version it sends, and the wheel installs into
a fresh virtualenv without the service and runs the MCP tools against a real one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from aiohttp.test_utils import TestClient
from conftest import REPO, FakeEngine, ServerProcess, eval_clip, reference_text, word_error_rate
from mcp import ClientSession, StdioServerParameters, stdio_client

import mcp_tools
import mcp_tools.client
from mcp_tools.client import ClientOutdated, TranscriptionClient
from service.api import clients
from service.app import create_app
from service.jobs import formats
from service.jobs.job import MAX_PRIORITY, MIN_PRIORITY, PRIORITIES, Task
from service.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]
CLIENT_SRC = REPO / "clients" / "python"
WHEEL_NAME = f"whisper_transcription_client-{mcp_tools.__version__}-py3-none-any.whl"
CLIP = "LDC93S1.wav"
# Packages that mean the server side came along: none may be installed or imported on the client side.
HEAVY = ("torch", "numpy", "whisper", "aiohttp", "service", "scipy", "av")


def test_client_distribution_depends_on_mcp_and_requests_only() -> None:
    project = tomllib.loads((CLIENT_SRC / "pyproject.toml").read_text())["project"]
    assert project["name"] == clients.DISTRIBUTION
    assert sorted(re.split(r"[<>=~ ]", dep)[0] for dep in project["dependencies"]) == ["mcp", "requests"]
    assert project["scripts"] == {
        "transcription-mcp": "mcp_tools.server:main",
        "transcription-client": "mcp_tools.cli:main",
    }
    server = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert any(dep.startswith(clients.DISTRIBUTION) for dep in server["project"]["dependencies"])
    assert server["tool"]["setuptools"]["packages"]["find"]["include"] == ["service*"]
    assert not (REPO / "mcp_tools").exists(), "the client lives in clients/python only"


def test_client_tables_match_the_service() -> None:
    """The client cannot import the service, so it keeps its own copies of what it checks."""
    assert mcp_tools.client.PRIORITIES == PRIORITIES
    assert (mcp_tools.client.MIN_PRIORITY, mcp_tools.client.MAX_PRIORITY) == (MIN_PRIORITY, MAX_PRIORITY)
    assert tuple(task.value for task in Task) == mcp_tools.client.TASKS
    assert tuple(formats.FORMATS) == mcp_tools.client.FORMATS


@pytest.mark.parametrize(
    ("client", "verdict"),
    [
        ("0.1.0", None),
        ("0.1", None),
        ("0.9.3", None),  # a newer client of the same major version
        ("0.1.0rc1", None),
        ("0.0.9", "older than this service works with (at least 0.1.0)"),
        ("1.0.0", "another major version"),
    ],
)
def test_version_rule(client: str, verdict: str | None) -> None:
    found = clients.incompatibility(client, shipped="0.1.0", minimum="0.1.0")
    assert (found is None) if verdict is None else (found is not None and verdict in found), found


def test_versions_parse_or_are_refused() -> None:
    assert clients.parse_version("v1.2") == (1, 2, 0)
    assert clients.parse_version("0.10.3.dev1") == (0, 10, 3)
    for bad in ("", "abc", "1", "1.x", "0.1.0 ; rm -rf"):
        assert clients.parse_version(bad) is None, bad


# -- /client/ and the version check, in-process ---------------------------------------------------


def fake_wheel(directory: Path) -> bytes:
    """Serving does not look inside the wheel; the real one is installed in the slow test below."""
    directory.mkdir(parents=True, exist_ok=True)
    data = b"PK not really a wheel"
    (directory / WHEEL_NAME).write_bytes(data)
    (directory / "whisper_transcription_client-0.0.1-py3-none-any.whl").write_bytes(b"stale")
    return data


async def test_client_index_and_wheel_are_open_with_a_token(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    data = fake_wheel(tmp_path / "wheels")
    app = create_app(Settings(storage_dir=tmp_path / "storage", api_token="s3cret"), engine=FakeEngine())
    clients.setup_clients(app, tmp_path / "wheels")
    client = await aiohttp_client(app)
    base = str(client.make_url("/client/"))

    index = await client.get("/client/")
    assert index.status == 200 and index.content_type == "application/json"
    body = await index.json()
    assert body["wheel"] == WHEEL_NAME and body["version"] == mcp_tools.__version__
    assert body["url"] == base + WHEEL_NAME
    assert body["install"] == f"pip install {base}{WHEEL_NAME}"
    assert body["uvx"] == f"uvx --from {base}{WHEEL_NAME} transcription-mcp"
    assert body["pipx"] == f"pipx run --spec {base}{WHEEL_NAME} transcription-mcp"
    assert body["sha256"] == hashlib.sha256(data).hexdigest() and body["size"] == len(data)
    assert body["min_client_version"] == clients.MIN_CLIENT_VERSION

    page = await client.get("/client/", headers={"Accept": "text/html,application/xhtml+xml"})
    assert page.content_type == "text/html"
    assert f'<a href="{WHEEL_NAME}#sha256={body["sha256"]}">{WHEEL_NAME}</a>' in await page.text()

    wheel = await client.get(f"/client/{WHEEL_NAME}")
    assert wheel.status == 200 and await wheel.read() == data
    assert wheel.content_type == "application/octet-stream"
    assert WHEEL_NAME in wheel.headers["Content-Disposition"]

    stale = await client.get("/client/whisper_transcription_client-0.0.1-py3-none-any.whl")
    assert stale.status == 404 and WHEEL_NAME in (await stale.json())["error"]
    assert (await client.get("/jobs")).status == 401  # the token still guards the rest


async def test_no_wheel_says_how_to_build_one(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    app = create_app(Settings(storage_dir=tmp_path / "storage"), engine=FakeEngine())
    clients.setup_clients(app, tmp_path / "empty")
    client = await aiohttp_client(app)
    for path in ("/client/", f"/client/{WHEEL_NAME}"):
        answer = await client.get(path)
        assert answer.status == 404, path
        error = (await answer.json())["error"]
        assert "scripts/install.sh" in error and str(tmp_path / "empty") in error, error


async def test_version_header_is_checked_on_the_service_api_only(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    fake_wheel(tmp_path / "wheels")
    app = create_app(Settings(storage_dir=tmp_path / "storage"), engine=FakeEngine())
    clients.setup_clients(app, tmp_path / "wheels")
    client = await aiohttp_client(app)
    wheel_url = str(client.make_url(f"/client/{WHEEL_NAME}"))

    def sent(version: str) -> dict[str, str]:
        return {clients.VERSION_HEADER: version}

    assert (await client.get("/jobs")).status == 200  # curl, scripts: no header, no check
    assert (await client.get("/jobs", headers=sent(mcp_tools.__version__))).status == 200
    for version, says in (("0.0.1", "is older than"), ("7.0.0", "another major version")):
        answer = await client.get("/queue", headers=sent(version))
        assert answer.status == 426, version
        error = (await answer.json())["error"]
        assert says in error and f"pip install --upgrade --force-reinstall {wheel_url}" in error, error
    garbled = await client.get("/jobs", headers=sent("latest"))
    assert garbled.status == 400 and "X-Client-Version must be a version" in (await garbled.json())["error"]
    # The open routes answer an old client, so it can see the service and fetch the new client.
    for path in ("/health", "/client/", f"/client/{WHEEL_NAME}", "/openapi.json", "/v1/models"):
        assert (await client.get(path, headers=sent("0.0.1"))).status in (200, 503), path


async def test_an_outdated_client_raises_upgrade_the_client(
    tmp_path: Path, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_wheel(tmp_path / "wheels")
    app = create_app(Settings(storage_dir=tmp_path / "storage"), engine=FakeEngine())
    clients.setup_clients(app, tmp_path / "wheels")
    client = await aiohttp_client(app)
    url = str(client.make_url("")).rstrip("/")
    monkeypatch.setattr(mcp_tools.client, "__version__", "0.0.1")

    def jobs() -> None:
        with TranscriptionClient(url, retries=0) as transcription:
            transcription.jobs()

    with pytest.raises(ClientOutdated) as caught:
        await asyncio.to_thread(jobs)
    assert caught.value.status_code == 426
    assert caught.value.message.startswith("Upgrade the client: the transcription service at ")
    assert f"{url}/client/{WHEEL_NAME}" in caught.value.message


# -- the wheel the service serves, in a fresh virtualenv ------------------------------------------


def venv_size_mb(venv: Path) -> float:
    return sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink()) / 1e6


def imported_modules(importtime_log: str) -> set[str]:
    """Top-level names from `-X importtime` lines: 'import time: self | cumulative | <indent>name'."""
    names = re.findall(r"^import time:\s+\d+ \|\s+\d+ \|\s+([\w.]+)", importtime_log, flags=re.MULTILINE)
    return {name.split(".")[0] for name in names}


async def transcribe_through(params: StdioServerParameters, errlog: Any, out: Path) -> dict[str, Any]:
    """An agent's turn: queue the clip, then check with waits until it is done."""
    async with stdio_client(params, errlog=errlog) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        queued = (
            await session.call_tool(
                "transcribe_wav", {"filename": str(eval_clip(CLIP)), "output_dir": str(out)}
            )
        ).structured_content
        assert queued is not None and queued["success"], queued
        deadline = time.monotonic() + 120
        while True:
            done = (
                await session.call_tool(
                    "check_transcription_status",
                    {"job_id": queued["job_id"], "output_dir": str(out), "wait_seconds": 20},
                )
            ).structured_content
            assert done is not None and done["success"], done
            if done["status"] == "completed" or time.monotonic() > deadline:
                return done


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_served_wheel_installs_alone_and_its_tools_transcribe(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What an agent's container does: read /client/, pip install the wheel's URL into a fresh
    virtualenv (no service, no torch), start `transcription-mcp` from it, and transcribe through
    the MCP SDK's stdio client against a real service with the real tiny.en engine."""
    if "OMP_NUM_THREADS" not in os.environ:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
    server = ServerProcess(tmp_path / "storage", extra_args=["--beam-size", "1"]).start()
    try:
        index = requests.get(server.url + "/client/", timeout=10).json()
        assert index["wheel"] == WHEEL_NAME and index["install"] == f"pip install {index['url']}", index

        venv = tmp_path / "agent-venv"
        clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", venv], check=True, timeout=120)
        created = time.monotonic() - started
        python = venv / "bin" / "python"
        install = subprocess.run(
            [python, "-m", "pip", "install", "--disable-pip-version-check", "-q", index["url"]],
            env=clean,
            capture_output=True,
            text=True,
            timeout=300,
        )
        installed = time.monotonic() - started - created
        assert install.returncode == 0, install.stdout + install.stderr
        size = venv_size_mb(venv)
        print(f"client venv: created in {created:.1f} s, installed in {installed:.1f} s, {size:.0f} MB")
        assert size < 100, f"{size:.0f} MB: the client pulled in more than mcp and requests"
        assert installed < 120, f"{installed:.0f} s to install the client"

        probe = (
            "import json, importlib.util as u, mcp_tools; "
            f"print(json.dumps([mcp_tools.__file__, [m for m in {HEAVY!r} if u.find_spec(m)]]))"
        )
        found = subprocess.run(
            [python, "-c", probe], cwd=tmp_path, env=clean, capture_output=True, text=True, timeout=60
        )
        assert found.returncode == 0, found.stderr
        where, heavy = json.loads(found.stdout)
        package = Path(where).parent
        assert package.is_relative_to(venv) and heavy == [], (where, heavy)
        for source in sorted((CLIENT_SRC / "mcp_tools").glob("*.py")):
            assert (package / source.name).read_bytes() == source.read_bytes(), (
                f"the wheel the service serves has an older {source.name}: run bash scripts/install.sh"
            )

        log_path = tmp_path / "mcp-server.log"
        params = StdioServerParameters(
            command=str(venv / "bin" / "transcription-mcp"),
            args=[],
            cwd=tmp_path,
            env={"TRANSCRIPTION_SERVICE_URL": server.url, "PYTHONPROFILEIMPORTTIME": "1"},
        )
        out = tmp_path / "transcriptions"
        with open(log_path, "w", encoding="utf-8") as errlog:
            done = asyncio.run(transcribe_through(params, errlog, out))
        assert done["status"] == "completed", done
        wer = word_error_rate(reference_text(CLIP), done["transcript"])
        assert wer < 0.35, (wer, done["transcript"])
        assert Path(done["transcript_file"]).read_text(encoding="utf-8") == done["transcript"]

        modules = imported_modules(log_path.read_text(encoding="utf-8"))
        assert {"mcp_tools", "mcp", "requests"} <= modules, sorted(modules)
        assert not modules & set(HEAVY), sorted(modules & set(HEAVY))

        # The command-line client came with it.
        health = subprocess.run(
            [venv / "bin" / "transcription-client", "health", "--url", server.url],
            env=clean,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert health.returncode == 0 and f"{server.url}: ready" in health.stdout, health
    finally:
        server.kill()


def test_the_docs_name_the_current_wheel_and_no_repository_path() -> None:
    """The container set-up in README and MONITOR.md is runnable as written for this version."""
    for doc in ("README.md", "MONITOR.md"):
        text = (REPO / doc).read_text(encoding="utf-8")
        assert f"pip install http://host.docker.internal:8765/client/{WHEEL_NAME}" in text, doc
        assert 'command = "transcription-mcp"' in text and '"command": "transcription-mcp"' in text, doc
        assert "/path/to/repo" not in text, doc
