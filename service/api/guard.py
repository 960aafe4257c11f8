"""What a request must pass before a handler runs: a Host that names this service, no page of
another site driving it, and no compressed body.

A web page can send a multipart POST to any address (it is a "simple" request: no CORS
preflight), and DNS rebinding lets a page read from a loopback service under its own name. A
Host that is not one of the service's names, and a state-changing request from another origin,
are therefore refused. Clients that are not browsers (curl, agents, the light client) send a
plain Host and no Origin, and pass.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.errors import CrossSiteRequest, MisdirectedRequest, UnsupportedEncoding
from service.settings import Settings

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Methods a page may send to any site anyway (reads: without CORS headers the page cannot see
# the answer). Everything else changes state, and needs a same-origin or allowed page.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Names that only ever resolve on this machine or inside its private network (RFC 6761, and
# the .internal names of Docker, cloud VMs and compose setups).
LOCAL_SUFFIXES = (".localhost", ".internal")
DEFAULT_PORTS = {"http": "80", "https": "443", "ws": "80", "wss": "443"}
# How long the machine's own FQDN may take to resolve before it is left out of the names.
FQDN_TIMEOUT_SECONDS = 2.0


def host_name(header: str) -> str | None:
    """The name in a Host header, lowercased, without port or trailing dot; None if malformed."""
    header = header.strip().lower()
    if header.startswith("["):  # an IPv6 literal: [::1]:8765
        literal, sep, rest = header[1:].partition("]")
        if not sep or (rest and not (rest.startswith(":") and rest[1:].isdigit())):
            return None
        return literal
    name, sep, port = header.rpartition(":")
    if not sep:
        name = header
    elif port and not port.isdigit():
        return None
    return name.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class HostRule:
    """The names this service answers to: IP literals, single-label names (localhost, a compose
    service), *.localhost, *.internal, this machine's names, and --allowed-hosts."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.suffixes = LOCAL_SUFFIXES + tuple(h[1:] for h in allowed if h.startswith("*."))
        self.names = {host_name(h) or h for h in allowed if not h.startswith("*")}
        self.names.add(socket.gethostname().lower())  # no lookup: the kernel's name
        self._fqdn: asyncio.Future[str] | None = None

    def _static_allows(self, name: str) -> bool:
        return (
            self.any
            or not name  # no Host at all: HTTP/1.0, never a browser
            or "." not in name
            or _is_ip(name)
            or name.endswith(self.suffixes)
            or name in self.names
        )

    async def allows(self, name: str) -> bool:
        if self._static_allows(name):
            return True
        return name == await self._machine_fqdn()

    async def _machine_fqdn(self) -> str:
        """getfqdn() may ask DNS: asked once, off the event loop, and only when a name is in doubt."""
        if self._fqdn is None:
            loop = asyncio.get_running_loop()
            self._fqdn = loop.run_in_executor(None, socket.getfqdn)
        try:
            done = await asyncio.wait_for(asyncio.shield(self._fqdn), FQDN_TIMEOUT_SECONDS)
        except TimeoutError:
            return ""
        return done.lower().rstrip(".")


def _origin_key(origin: str) -> str:
    """An origin as compared: lowercased, no trailing slash, no default port."""
    origin = origin.strip().lower().rstrip("/")
    scheme, sep, authority = origin.partition("://")
    port = DEFAULT_PORTS.get(scheme)
    if sep and port and authority.endswith(":" + port):
        origin = f"{scheme}://{authority[: -len(port) - 1]}"
    return origin


def _same_origin(origin: str, host: str) -> bool:
    """Whether `origin` is this request's own: the page came from the address it sends to."""
    scheme, sep, _ = origin.partition("://")
    if not sep or not host:
        return False  # "null" (a sandboxed or file:// page) is nobody's own origin
    return origin == _origin_key(f"{scheme}://{host}")


class OriginRule:
    """Which pages may send state-changing requests: their own origin's, and --allowed-origins."""

    def __init__(self, allowed: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.allowed = frozenset(_origin_key(o) for o in allowed)

    def refusal(self, request: web.Request) -> str | None:
        """Why this request is refused as cross-site, or None."""
        upgrade = request.headers.get("Upgrade", "").lower() == "websocket"  # no CORS guards it
        if self.any or (request.method in SAFE_METHODS and not upgrade):
            return None
        sent = request.headers.get("Origin")
        if sent is not None:
            origin = _origin_key(sent)
            if origin in self.allowed or _same_origin(origin, request.headers.get("Host", "").lower()):
                return None
            return f"a page of {sent.strip()[:100]}"
        if request.headers.get("Sec-Fetch-Site", "").lower() == "cross-site":
            return "a page of another site"
        return None


def request_guard(settings: Settings) -> Middleware:
    """Refuse a foreign Host (421), a cross-site state change (403) and a compressed body (415)."""
    hosts = HostRule(settings.allowed_hosts)
    origins = OriginRule(settings.allowed_origins)

    @web.middleware
    async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Host", "")
        name = host_name(header)
        if name is None or not await hosts.allows(name):
            raise MisdirectedRequest(
                f"This service does not answer to the host {header[:100]!r}: a page on another "
                "site may be trying to reach it through DNS. If that is one of its names, start it "
                f"with --allowed-hosts {name or 'NAME'} (SERVICE_ALLOWED_HOSTS)."
            )
        refusal = origins.refusal(request)
        if refusal is not None:
            raise CrossSiteRequest(
                f"Refused {request.method} {request.path} sent by {refusal}: pages of other sites may "
                "not change this service's state. To let a site's pages use it, start it with "
                "--allowed-origins https://that.site (SERVICE_ALLOWED_ORIGINS)."
            )
        encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise UnsupportedEncoding(
                f"Request bodies with Content-Encoding {encoding!r} are not accepted (a compressed "
                "body could inflate past the size limit); send it uncompressed."
            )
        return await handler(request)

    return guard
