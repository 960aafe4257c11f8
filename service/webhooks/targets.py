"""Where webhooks may go: a callback_url must lead to a public address, not into the service's own network.

Without `--webhook-allow-private`, a callback must not reach loopback, private, link-local
(cloud metadata at 169.254.169.254), multicast, reserved or otherwise non-global addresses,
and an IPv6 form (::ffff:a.b.c.d, 64:ff9b::/96, 2002::/16) is judged by the IPv4 address it reaches.
Checked twice: at upload on what the URL itself says (an IP literal, `localhost`), and at every
delivery on the addresses the connection is actually made to: `GuardedResolver` drops the
refused ones from each DNS answer, so a name that later resolves somewhere internal (DNS
rebinding) is refused too, without a connection being attempted.
"""

from __future__ import annotations

import ipaddress
import socket
from ipaddress import IPv4Address, IPv6Address
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from service.errors import BadRequest
from service.settings import Settings

IPAddress = IPv4Address | IPv6Address

# NAT64's well-known prefix (RFC 6052): the low 32 bits are the IPv4 address reached.
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
# Names that always mean this machine (RFC 6761), whatever DNS says.
_LOOPBACK_NAMES = ("localhost", ".localhost")
_HOW_TO_ALLOW = "the service runs with --webhook-allow-private"


class ForbiddenTarget(OSError):
    """Every address a callback's host resolved to is one webhooks may not reach.

    An OSError so aiohttp's connector passes it on (as ClientConnectorError.os_error) like any
    failed lookup; the dispatcher then gives the delivery up instead of retrying it.
    """

    def __init__(self, host: str, reasons: list[str]) -> None:
        self.host = host
        self.reasons = reasons
        super().__init__(
            f"callback host {host!r} resolves only to addresses webhooks may not reach "
            f"({'; '.join(reasons) or 'no addresses'}); allowed when {_HOW_TO_ALLOW}"
        )


def address_refusal(ip: IPAddress) -> str | None:
    """Why webhooks may not be sent to `ip` ("loopback", "private", ...), or None when it is public."""
    if isinstance(ip, IPv6Address):
        if ip.ipv4_mapped is not None:  # ::ffff:a.b.c.d is a.b.c.d
            return address_refusal(ip.ipv4_mapped)
        if ip in _NAT64:  # a NAT64 gateway connects to the IPv4 address in the low 32 bits
            return address_refusal(IPv4Address(int(ip) & 0xFFFFFFFF))
        if ip.sixtofour is not None and (why := address_refusal(ip.sixtofour)) is not None:
            return why  # 2002:AABB:CCDD::/48 is tunnelled to the IPv4 address AA.BB.CC.DD
    kinds = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        # What is left and still not global: shared address space (100.64.0.0/10, carrier-grade NAT).
        ("non-global", not ip.is_global),
    )
    return next((name for name, matches in kinds if matches), None)


def parse_address(text: str) -> IPAddress | None:
    """`text` as an IP address (an IPv6 zone, `%eth0` or `%25eth0`, allowed), or None."""
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _legacy_ipv4(host: str) -> bool:
    """`127.1`, `2130706433`, `0x7f.0.0.1`: read as an IPv4 address by some resolvers, not others."""
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return parse_address(host) is None


def literal_refusal(host: str) -> str | None:
    """Why a URL host, taken as written (no DNS), may not be a callback target, or None.

    None for a name that could be public: its addresses are checked at each delivery.
    """
    host = host.lower().rstrip(".")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if host == _LOOPBACK_NAMES[0] or host.endswith(_LOOPBACK_NAMES[1]):
        return f"{host!r} always names this machine (loopback)"
    if _legacy_ipv4(host):
        return f"{host!r} is an IPv4 address not written as four decimal numbers"
    ip = parse_address(host)
    if ip is None:
        return None
    why = address_refusal(ip)
    return None if why is None else f"{host!r} is {'an' if why[0] in 'aeiou' else 'a'} {why} address"


def check_callback_url(url: str, settings: Settings) -> None:
    """Refuse at upload what could never be delivered, or points where the operator forbids."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises ValueError for a port that is not a number
    except ValueError:
        raise BadRequest(f"callback_url {url!r} is not a valid URL.") from None
    if parts.scheme not in ("http", "https"):
        raise BadRequest("callback_url must be an absolute http:// or https:// URL.")
    if not host:
        raise BadRequest("callback_url has no host; send an absolute URL such as https://example.com/hook.")
    allowed = settings.webhook_allowed_hosts
    if allowed and host.lower() not in allowed:
        raise BadRequest(
            f"callback_url host {host!r} is not allowed here; allowed hosts: {', '.join(allowed)}."
        )
    if _legacy_ipv4(host):  # aiohttp refuses to connect to these: it could never be delivered
        raise BadRequest(f"callback_url host {host!r}: write an IPv4 address as four decimal numbers.")
    if not settings.webhook_allow_private and (why := literal_refusal(host)) is not None:
        raise BadRequest(
            f"callback_url host {why}: webhooks are not sent to loopback, private, link-local, "
            f"multicast or reserved addresses unless {_HOW_TO_ALLOW}."
        )


def url_refusal(url: str) -> str | None:
    """Why a delivery to `url` is not even attempted: its host, read as aiohttp reads it, is refused.

    aiohttp connects to an IP literal without asking its resolver, so literals are checked here.
    """
    try:
        host = URL(url).raw_host
    except ValueError:
        return None  # the request fails as any bad URL does
    why = literal_refusal(host) if host else None
    return None if why is None else f"callback host {why}; allowed when {_HOW_TO_ALLOW}"


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` and keeps only the addresses webhooks may reach.

    aiohttp connects only to what its resolver returns, so the check is on the very addresses
    connected to. All refused: `ForbiddenTarget`, and nothing is connected to.
    """

    def __init__(self, inner: AbstractResolver) -> None:
        self.inner = inner

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self.inner.resolve(host, port, family)
        allowed: list[ResolveResult] = []
        reasons: list[str] = []
        for result in found:
            ip = parse_address(result["host"])
            why = "not an IP address" if ip is None else address_refusal(ip)
            if why is None:
                allowed.append(result)
            else:
                reasons.append(f"{result['host']} is {why}")
        if not allowed:
            raise ForbiddenTarget(host, reasons)
        return allowed

    async def close(self) -> None:
        await self.inner.close()
