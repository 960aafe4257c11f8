"""API-token authentication: with a token configured, all but the open routes (/health,
/openapi.json, the dashboard's page and files, the client's wheel at /client/) need it."""

from __future__ import annotations

import hmac
import ipaddress
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.errors import Unauthorized

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Health checks and load balancers must not need the secret; nor does reading the API's
# description, nor the dashboard's page and its static files (they hold no data: the page asks
# for the token and sends it to the API), nor the client's wheel (a container installs it before
# it has anything to send the token with).
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/"})
OPEN_PREFIXES = ("/static/", "/client/")


def _presented(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def token_middleware(token: str) -> Middleware:
    expected = token.encode()

    @web.middleware
    async def check_token(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path not in OPEN_PATHS and not request.path.startswith(OPEN_PREFIXES):
            presented = _presented(request)
            # compare_digest takes the same time wherever the strings differ.
            if presented is None or not hmac.compare_digest(presented.encode(), expected):
                raise Unauthorized(
                    "Missing or wrong API token: send the header 'Authorization: Bearer <token>'.",
                    headers={"WWW-Authenticate": 'Bearer realm="transcription"'},
                )
        return await handler(request)

    return check_token


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_open(host: str, token: str | None) -> None:
    """Anyone who can reach a non-loopback address could read every transcript."""
    if token is None and not is_loopback(host):
        log.warning(
            "!!! listening on %s with no API token: anyone who can reach this address can upload, "
            "read and cancel jobs. Set --api-token (SERVICE_API_TOKEN) or bind 127.0.0.1. !!!",
            host,
        )
