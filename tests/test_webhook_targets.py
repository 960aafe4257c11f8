"""Webhooks refuse internal targets: checked at upload on the URL, at delivery on the resolved addresses.

Nothing here connects to anything but loopback: names resolve through a stub, and a guard on
the event loop refuses (and records) any connection to another address before a packet leaves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from conftest import FakeEngine, eval_clip, free_port
from test_webhooks import (
    CLIP,
    FAST_BACKOFF,
    ClientFactory,
    ServerFactory,
    deliveries,
    form,
    journal_rows,
    start_app,
    start_receiver,
    submit,
    wait_delivery,
)

from service.api.keys import SERVICES
from service.app import create_app
from service.settings import Settings
from service.webhooks.targets import ForbiddenTarget, GuardedResolver, literal_refusal

OPT_IN = "--webhook-allow-private"


class StubResolver(AbstractResolver):
    """DNS as a table: each name answers with the addresses given, whatever real DNS says."""

    def __init__(self, answers: dict[str, list[str]]) -> None:
        self.answers = answers
        self.asked: list[str] = []

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self.asked.append(host)
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in self.answers[host]
        ]

    async def close(self) -> None:
        pass


@pytest.fixture
async def outbound(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[list[str]]:
    """Connections attempted to anything but loopback: recorded, and refused before they are made."""
    attempts: list[str] = []
    loop = asyncio.get_running_loop()
    sock_connect, create_connection = loop.sock_connect, loop.create_connection

    def is_loopback(host: str) -> bool:
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    async def guarded_sock_connect(sock: socket.socket, address: Any) -> None:
        if not is_loopback(address[0]):
            attempts.append(address[0])
            raise ConnectionRefusedError(f"the test refuses to connect to {address[0]}")
        await sock_connect(sock, address)

    async def guarded_create_connection(*args: Any, **kwargs: Any) -> Any:
        host = kwargs.get("host", args[1] if len(args) > 1 else None)
        if host is not None and not is_loopback(str(host)):
            attempts.append(str(host))
            raise ConnectionRefusedError(f"the test refuses to connect to {host}")
        return await create_connection(*args, **kwargs)

    monkeypatch.setattr(loop, "sock_connect", guarded_sock_connect)
    monkeypatch.setattr(loop, "create_connection", guarded_create_connection)
    yield attempts


async def start_with_dns(
    aiohttp_client: ClientFactory, settings: Settings, resolver: AbstractResolver
) -> Any:
    app = create_app(settings, engine=FakeEngine())
    app[SERVICES].webhooks.backoff_base = FAST_BACKOFF
    app[SERVICES].webhooks.resolver = resolver
    return await aiohttp_client(app)


# -- which addresses -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "why"),
    [
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("127.0.0.1", "loopback"),
        ("[::1]", "loopback"),
        ("localhost", "loopback"),
        ("Hooks.LOCALHOST.", "loopback"),
        ("10.1.2.3", "private"),
        ("192.168.0.10", "private"),
        ("fd00:ec2::254", "private"),
        ("100.64.0.1", "non-global"),  # carrier-grade NAT
        ("0.0.0.0", "unspecified"),
        ("::", "unspecified"),
        ("::ffff:127.0.0.1", "loopback"),
        ("::ffff:a9fe:a9fe", "link-local"),
        ("64:ff9b::a00:1", "private"),  # NAT64 to 10.0.0.1
        ("2002:c0a8:1::", "private"),  # 6to4 of 192.168.0.1
        ("fe80::1%eth0", "link-local"),
        ("224.0.1.1", "multicast"),
        ("ff02::1", "multicast"),
        ("240.0.0.1", "reserved"),
        ("::127.0.0.1", "reserved"),
        ("2130706433", "four decimal numbers"),
        ("127.1", "four decimal numbers"),
        ("8.8.8.8", None),
        ("::ffff:8.8.8.8", None),
        ("2606:4700::1111", None),
        ("hooks.example.com", None),  # a name: its addresses are checked at each delivery
    ],
)
def test_which_hosts_are_refused(host: str, why: str | None) -> None:
    refusal = literal_refusal(host)
    if why is None:
        assert refusal is None
    else:
        assert refusal is not None and why in refusal


async def test_the_guard_filters_what_the_resolver_found() -> None:
    stub = StubResolver({"mixed.example": ["10.0.0.7", "93.184.216.34"], "inside.example": ["127.0.0.1"]})
    guarded = GuardedResolver(stub)
    assert [r["host"] for r in await guarded.resolve("mixed.example", 443)] == ["93.184.216.34"]
    with pytest.raises(ForbiddenTarget, match=r"127\.0\.0\.1 is loopback"):
        await guarded.resolve("inside.example", 443)
    with pytest.raises(ForbiddenTarget, match="loopback"):  # the real resolver, on a literal: no DNS
        await GuardedResolver(ThreadedResolver()).resolve("127.0.0.1", 80)


# -- at upload -------------------------------------------------------------------------------


async def test_internal_callback_urls_are_refused_at_upload(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    client = await start_app(aiohttp_client, settings)
    urls = [
        "http://169.254.169.254/latest/meta-data/",
        "http://127.0.0.1:22/",
        "http://localhost:6379/",
        "http://[::1]:6379/",
        "https://10.0.0.1/hook",
        "http://100.64.0.1/hook",
        "http://0.0.0.0:8080/hook",
        "http://[::ffff:169.254.169.254]/hook",
    ]
    for url in urls:
        resp = await client.post("/transcribe", data=form(eval_clip(CLIP), job_id="inside", callback_url=url))
        assert resp.status == 400, url
        error = (await resp.json())["error"]
        assert error.startswith("callback_url host ") and OPT_IN in error, error
    resp = await client.post(
        "/transcribe", data=form(eval_clip(CLIP), job_id="inside", callback_url="http://127.1:22/")
    )
    assert resp.status == 400 and "four decimal numbers" in (await resp.json())["error"]
    assert (await client.get("/status/inside")).status == 404
    assert journal_rows(settings, "SELECT COUNT(*) FROM jobs") == [(0,)]


# -- at delivery -------------------------------------------------------------------------------


async def test_a_name_resolving_inside_is_given_up_without_connecting(
    settings: Settings, aiohttp_client: ClientFactory, outbound: list[str]
) -> None:
    """DNS rebinding: the name looked public at upload; at delivery it answers internal addresses."""
    dns = StubResolver({"hooks.example.com": ["169.254.169.254", "10.0.0.7", "::1"]})
    client = await start_with_dns(aiohttp_client, settings, dns)
    await submit(client, "rebound", "http://hooks.example.com/hook")
    row = await wait_delivery(client, "rebound", lambda r: r["state"] == "given_up")
    assert row["attempts"] == 1 and row["last_status"] is None
    assert "169.254.169.254 is link-local" in row["last_error"] and "10.0.0.7 is private" in row["last_error"]
    assert "::1 is loopback" in row["last_error"] and OPT_IN in row["last_error"]
    await asyncio.sleep(3 * FAST_BACKOFF)
    assert await deliveries(client, "rebound") == [row]  # never attempted again
    assert dns.asked == ["hooks.example.com"] and outbound == []


async def test_only_the_public_addresses_of_a_name_are_connected_to(
    settings: Settings, aiohttp_client: ClientFactory, outbound: list[str]
) -> None:
    dns = StubResolver({"hooks.example.com": ["10.0.0.7", "93.184.216.34", "127.0.0.1"]})
    client = await start_with_dns(aiohttp_client, settings, dns)
    await submit(client, "mixed", "http://hooks.example.com/hook")
    row = await wait_delivery(client, "mixed", lambda r: r["attempts"] >= 1)
    # The guard refused the public address (no traffic leaves the machine): an ordinary failure.
    assert row["state"] == "pending" and "Connect" in row["last_error"]
    assert set(outbound) == {"93.184.216.34"}


async def test_a_queued_delivery_to_loopback_is_refused_once_the_opt_in_is_gone(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory
) -> None:
    """The IP literal aiohttp connects to without asking DNS is checked at delivery too."""
    port = free_port()  # nothing listens yet: the first attempt fails and stays pending
    allowed = dataclasses.replace(settings, webhook_allow_private=True)
    client = await start_app(aiohttp_client, allowed)
    await submit(client, "queued", f"http://127.0.0.1:{port}/hook")
    await wait_delivery(client, "queued", lambda r: r["attempts"] >= 1)
    await client.close()

    receiver = await start_receiver(aiohttp_server, port=port)
    client2 = await start_app(aiohttp_client, settings)
    row = await wait_delivery(client2, "queued", lambda r: r["state"] == "given_up")
    assert "'127.0.0.1' is a loopback address" in row["last_error"] and OPT_IN in row["last_error"]
    assert receiver.calls == []


async def test_redirects_are_not_followed(
    settings: Settings, aiohttp_client: ClientFactory, aiohttp_server: ServerFactory, outbound: list[str]
) -> None:
    async def moved(request: web.Request) -> web.Response:
        raise web.HTTPFound("http://169.254.169.254/latest/meta-data/")

    hook = web.Application()
    hook.router.add_post("/hook", moved)
    server = await aiohttp_server(hook)
    client = await start_app(
        aiohttp_client, dataclasses.replace(settings, webhook_allow_private=True, webhook_retry_seconds=0)
    )
    await submit(client, "moved", f"http://127.0.0.1:{server.port}/hook")
    row = await wait_delivery(client, "moved", lambda r: r["state"] == "given_up")
    assert row["last_status"] == 302 and row["last_error"] == "HTTP 302"
    assert outbound == []
