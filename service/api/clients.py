"""The light client's side of the service: its wheel at `GET /client/` and `GET /client/{wheel}`,
and the `X-Client-Version` check on the requests it sends.

The wheel is built when the service is installed (scripts/install.sh, scripts/docker-install.sh)
into `<sys.prefix>/share/whisper-transcription-client/`, next to the environment the service runs
in, and found here at start-up; nothing is built or downloaded at run time, so it works offline
and in the image. A container that reaches the service installs its client from it:

    pip install http://host.docker.internal:8765/client/whisper_transcription_client-0.1.0-py3-none-any.whl

The handshake: `mcp_tools` sends its version in `X-Client-Version` on every request. A client is
compatible when its major version is the one of the client this service ships and it is not
older than `MIN_CLIENT_VERSION`; any other gets `426` and the line that installs the right one.
Requests without the header (curl, scripts, the OpenAI SDK) are not checked.
"""

from __future__ import annotations

import hashlib
import html
import re
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

import mcp_tools
from service import __version__
from service.api.auth import OPEN_PATHS, OPEN_PREFIXES
from service.api.schemas import OPENAI_PREFIX, ClientIndex
from service.errors import BadRequest, ServiceError

DISTRIBUTION = "whisper-transcription-client"
VERSION_HEADER = "X-Client-Version"
# The oldest client this service answers; raise it when a change to the API breaks older ones.
MIN_CLIENT_VERSION = "0.1.0"
CLIENT_PREFIX = "/client/"
# The MCP server's console script in the wheel (clients/python/pyproject.toml).
MCP_COMMAND = "transcription-mcp"
WHEEL_PATTERN = r"^[A-Za-z0-9_.+-]+\.whl$"
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?([A-Za-z0-9.+-]*)$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClientIncompatible(ServiceError):
    """The client's version is one this service does not work with (HTTP only: a header's verdict)."""

    status = 426


class ClientWheelMissing(ServiceError):
    """The service was installed without building the client's wheel, or another name was asked for."""

    status = 404


@dataclass(frozen=True)
class ClientWheel:
    path: Path
    version: str
    sha256: str
    size: int

    @property
    def name(self) -> str:
        return self.path.name


@dataclass(frozen=True)
class ClientDownloads:
    """What `/client/` hands out: the wheel of the client this service runs with, if it was built."""

    directory: Path
    version: str
    wheel: ClientWheel | None


_DOWNLOADS = web.AppKey("client_downloads", ClientDownloads)


def wheel_dir(prefix: str | Path = sys.prefix) -> Path:
    """Where the install scripts put the client's wheel: under the service's own environment."""
    return Path(prefix) / "share" / DISTRIBUTION


def find_wheel(directory: Path, version: str) -> ClientWheel | None:
    """The wheel of exactly `version` in `directory` (a stale one of another version is not served)."""
    stem = f"{DISTRIBUTION.replace('-', '_')}-{version}-"
    found = sorted(p for p in directory.glob(f"{stem}*.whl") if p.is_file()) if directory.is_dir() else []
    if not found:
        return None
    path = found[-1]
    data = path.read_bytes()  # tens of kilobytes, read once at start-up
    return ClientWheel(path, version, hashlib.sha256(data).hexdigest(), len(data))


def parse_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of `0.1.0`, `0.2`, `1.0.0rc1`; None for anything else."""
    found = _VERSION.match(text.strip())
    if found is None:
        return None
    return int(found.group(1)), int(found.group(2)), int(found.group(3) or 0)


def incompatibility(client: str, shipped: str, minimum: str = MIN_CLIENT_VERSION) -> str | None:
    """Why a client of version `client` cannot use this service, or None when it can."""
    version, current, oldest = parse_version(client), parse_version(shipped), parse_version(minimum)
    assert version is not None and current is not None and oldest is not None
    if version < oldest:
        return f"{DISTRIBUTION} {client} is older than this service works with (at least {minimum})"
    if version[0] != current[0]:
        return (
            f"{DISTRIBUTION} {client} is for another major version than this service's client "
            f"({shipped}, {current[0]}.x)"
        )
    return None


def _is_checked(path: str) -> bool:
    """The service's own API; not the open routes (health, the document, the wheel) nor /v1/."""
    if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES):
        return False
    return not path.startswith(OPENAI_PREFIX)


@web.middleware
async def client_version_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse a client this service does not work with before it does anything, saying how to
    get the right one; requests without the header pass untouched."""
    sent = request.headers.get(VERSION_HEADER)
    if sent is not None and _is_checked(request.path):
        if parse_version(sent) is None:
            raise BadRequest(
                f"{VERSION_HEADER} must be a version such as {mcp_tools.__version__}, not {sent[:40]!r}; "
                "send the version of whisper-transcription-client, or leave the header out."
            )
        downloads = request.app.get(_DOWNLOADS)
        shipped = downloads.version if downloads is not None else mcp_tools.__version__
        reason = incompatibility(sent, shipped)
        if reason is not None:
            raise ClientIncompatible(f"{reason}. {_install_hint(request, downloads)}")
    return await handler(request)


def _base_url(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def _install_hint(request: web.Request, downloads: ClientDownloads | None) -> str:
    index = f"{_base_url(request)}{CLIENT_PREFIX}"
    if downloads is None or downloads.wheel is None:
        return f"Install {DISTRIBUTION} {downloads.version if downloads else ''} (see {index})."
    return (
        f"Install the client this service (version {__version__}) ships: "
        f"pip install --upgrade --force-reinstall {index}{downloads.wheel.name} (details: {index})."
    )


def _wheel(request: web.Request) -> ClientWheel:
    downloads = request.app[_DOWNLOADS]
    if downloads.wheel is None:
        raise ClientWheelMissing(
            f"This service has no wheel of {DISTRIBUTION} {downloads.version} to hand out "
            f"(none in {downloads.directory}). On the service's machine, run `bash scripts/install.sh` "
            "(or `scripts/docker-install.sh client` in an image), which builds it; or install the "
            "client from the service's source: pip install <checkout>/clients/python."
        )
    return downloads.wheel


def _wants_html(request: web.Request) -> bool:
    """Browsers, and pip's --find-links, ask for HTML; anything else (curl, scripts) gets JSON."""
    accept = request.headers.get("Accept", "")
    return "text/html" in accept and "application/json" not in accept


async def client_index(request: web.Request) -> web.Response:
    """`GET /client/`: the wheel's name, URL and hash, and the lines that install it."""
    wheel = _wheel(request)
    base = f"{_base_url(request)}{CLIENT_PREFIX}"
    url = f"{base}{wheel.name}"
    index = ClientIndex(
        distribution=DISTRIBUTION,
        version=wheel.version,
        service_version=__version__,
        min_client_version=MIN_CLIENT_VERSION,
        wheel=wheel.name,
        url=url,
        sha256=wheel.sha256,
        size=wheel.size,
        install=f"pip install {url}",
        uvx=f"uvx --from {url} {MCP_COMMAND}",
        pipx=f"pipx run --spec {url} {MCP_COMMAND}",
        mcp_command=MCP_COMMAND,
    )
    if not _wants_html(request):
        return web.json_response(index.body())
    # An index pip's --find-links reads (one anchor per file, with its hash), and a person too.
    page = (
        '<!doctype html>\n<html><head><meta charset="utf-8">'
        f"<title>{DISTRIBUTION} {html.escape(wheel.version)}</title></head>\n<body>\n"
        f"<h1>{DISTRIBUTION} {html.escape(wheel.version)}</h1>\n"
        f'<p><a href="{html.escape(wheel.name)}#sha256={wheel.sha256}">{html.escape(wheel.name)}</a></p>\n'
        f"<pre>{html.escape(index.install)}\n{html.escape(index.uvx)}</pre>\n</body></html>\n"
    )
    return web.Response(text=page, content_type="text/html")


async def client_wheel(request: web.Request) -> web.StreamResponse:
    """`GET /client/{wheel}`: the wheel's bytes, for `pip install <this URL>`."""
    wheel = _wheel(request)
    asked = request.match_info["wheel"]
    if asked != wheel.name:
        raise ClientWheelMissing(
            f"No client wheel named {asked!r}: this service has {wheel.name} "
            f"(GET {CLIENT_PREFIX} names it, with the line that installs it)."
        )
    return web.FileResponse(
        wheel.path,
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Disposition": f'attachment; filename="{wheel.name}"',
        },
    )


def setup_clients(app: web.Application, directory: Path | None = None) -> None:
    """Find the client's wheel once, at start-up (a directory listing and one small read)."""
    folder = wheel_dir() if directory is None else directory
    version = mcp_tools.__version__
    app[_DOWNLOADS] = ClientDownloads(folder, version, find_wheel(folder, version))
