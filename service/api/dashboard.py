"""The web dashboard: `GET /` and its assets under `/static/`, plain files from service/api/static/.

The page is static; everything it shows comes from the public API (/health, /models, /queue,
/jobs, /events/{id}), fetched by its script with the API token when one is needed. The page
and its assets carry no data, so they stay open without a token (see auth.OPEN_PATHS).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path

from aiohttp import web

ASSETS = Path(__file__).resolve().parent / "static"
INDEX = "index.html"
STATIC_PREFIX = "/static/"
_CONTENT_TYPES = {
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".svg": "image/svg+xml",
}
_ASSET_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]*\.(?:css|js|svg)$")
# Everything comes from this origin: no CDN, no inline script, no framing by other sites.
_SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Small files that change with the service: revalidate (ETag) on each load.
    "Cache-Control": "no-cache",
}


def _read(path: Path) -> tuple[bytes, str]:
    body = path.read_bytes()
    return body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


async def _serve(request: web.Request, path: Path, content_type: str) -> web.Response:
    """The whole file, or 304 when the browser has it. Range and If-Match are ignored: these
    files are a few kilobytes, and every answer stays a 200, a 304 or a JSON error."""
    body, etag = await asyncio.get_running_loop().run_in_executor(None, _read, path)
    headers = {**_SECURITY_HEADERS, "ETag": etag}
    if etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={**headers, "Content-Type": content_type})


async def index(request: web.Request) -> web.Response:
    return await _serve(request, ASSETS / INDEX, "text/html; charset=utf-8")


async def asset(request: web.Request) -> web.Response:
    """Only the dashboard's own files, by plain name: no subfolders, no dot segments."""
    name = request.match_info["name"]
    path = ASSETS / name
    if not _ASSET_NAME.match(name) or not path.is_file():
        raise web.HTTPNotFound()
    return await _serve(request, path, _CONTENT_TYPES[path.suffix])
