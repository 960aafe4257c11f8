"""Webhooks: when a job with a callback_url ends, POST its outcome there, signed, until it lands.

Deliveries are kept where the jobs are (service/webhooks/deliveries.py: the SQLite journal's
`webhook_deliveries` table, or Redis shared by many instances), written before the first
attempt, so a restart resumes them; start-up (and every IDLE_POLL_SECONDS) also adds
deliveries for jobs that ended while none could be written (the process died in between).
This module is the dispatcher: the HTTP, the signing and the backoff; service/webhooks/targets.py
keeps it off internal addresses (its DNS drops them; a delivery left with none is given up).
Delivery is at least once: receivers deduplicate on `X-Webhook-Id`. docs/webhooks.md is the
receiver's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.abc import AbstractResolver
from aiohttp.resolver import DefaultResolver

from service import __version__, logs
from service.backoff import Backoff
from service.errors import StoreUnavailable
from service.jobs import events as ev
from service.jobs.events import JobEvent, JobEvents
from service.jobs.job import JobStatus
from service.jobs.view import webhook_payload
from service.settings import Settings
from service.store.files import Layout
from service.tasks import BackgroundTasks
from service.webhooks.deliveries import (
    CLAIM_MARGIN_SECONDS,
    DELIVERED,
    GIVEN_UP,
    PENDING,
    Delivery,
    DeliveryStore,
)
from service.webhooks.targets import ForbiddenTarget, GuardedResolver, url_refusal

log = logging.getLogger(__name__)

# Retry delays: BASE * 2**(attempt-1), capped, each shortened by up to JITTER of itself so
# receivers that came back up are not hit by every pending delivery at once.
BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 300.0
BACKOFF_JITTER = 0.25
# Deliveries in flight at once: a slow receiver must not hold up the others.
MAX_CONCURRENT = 8
# The loop sleeps until the next due row; this bounds the sleep (and re-checks for missed jobs).
IDLE_POLL_SECONDS = 60.0

USER_AGENT = f"whisper-transcription-service/{__version__}"


def claim_lease_seconds(settings: Settings) -> float:
    """A claim (Redis) must outlast an attempt: the request's timeout, plus reading and recording."""
    return settings.webhook_timeout + CLAIM_MARGIN_SECONDS


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Webhook-Signature value: HMAC-SHA256 over `<timestamp>.<raw body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def backoff_delay(attempt: int, base: float, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    return Backoff(base, cap, jitter=BACKOFF_JITTER).delay(attempt)


def _read_transcript(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data


class WebhookDispatcher:
    """Owns the delivery loop over a `DeliveryStore`; `ctx` is its aiohttp cleanup context.

    The store is the one the app factory chose with the job store: Redis for the Redis job
    store (claimed for `claim_lease_seconds(settings)`), else the SQLite journal's table.
    """

    def __init__(self, settings: Settings, store: DeliveryStore, layout: Layout, events: JobEvents) -> None:
        self.settings = settings
        self.layout = layout
        self.events = events
        self.store = store
        self.backoff_base = BACKOFF_BASE_SECONDS  # tests shorten it
        self.backoff_cap = BACKOFF_CAP_SECONDS
        self.resolver: AbstractResolver | None = None  # DNS; tests substitute a stub
        self._session_resolver: AbstractResolver | None = None
        self._wake = asyncio.Event()
        self._running = False
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks = BackgroundTasks(log)  # the loop, then its attempts and recordings
        self._in_flight: dict[str, Delivery] = {}
        self._session: aiohttp.ClientSession | None = None
        self._store_down = False
        events.add_listener(self._on_event)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Start after the journal is open; stop before it closes (cleanup_ctx unwinds in reverse)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        await self.store.setup()
        self._session = aiohttp.ClientSession(
            headers={"User-Agent": USER_AGENT}, connector=aiohttp.TCPConnector(resolver=self._resolver())
        )
        self._running = True  # from here on, endings get deliveries; reconcile covers the ones before
        reconciled = True
        try:
            added = await self.reconcile()
        except StoreUnavailable as exc:  # a shared store that is down: the loop keeps trying
            log.warning("webhooks: %s; missed deliveries are looked for once it is back", exc)
            reconciled = False
        else:
            if added:
                log.info("webhooks: queued %d delivery(ies) for jobs that ended without one", added)
        self._loop_task = self._tasks.spawn(self._run(reconciled), name="webhooks")

    async def stop(self) -> None:
        """Prompt: attempts in flight are abandoned; they stay pending for the next start."""
        self._running = False
        abandoned = list(self._in_flight.values())
        await self._tasks.close()
        self._loop_task = None
        if abandoned:  # another instance (Redis) may take them now rather than when claims expire
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.store.release(abandoned), 1.0)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._session_resolver is not None:  # a connector does not close a resolver it was given
            await self._session_resolver.close()
            self._session_resolver = None

    def _resolver(self) -> AbstractResolver:
        """The session's DNS: unless private targets are allowed, it drops refused addresses."""
        resolver = self.resolver or DefaultResolver()
        if not self.settings.webhook_allow_private:
            resolver = GuardedResolver(resolver)
        self._session_resolver = resolver
        return resolver

    # -- deliveries -------------------------------------------------------------------------
    def _on_event(self, event: JobEvent) -> None:
        if event.type != ev.END or not self._running:
            return
        self._spawn(self._job_ended(event.job_id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._tasks.spawn(coro)

    async def _job_ended(self, job_id: str) -> None:
        with logs.job_context(job_id):
            await self._record_ending(job_id)

    async def _record_ending(self, job_id: str) -> None:
        try:
            delivery_id = await self.store.record_ending(job_id)
        except StoreUnavailable as exc:
            log.warning("job %s: could not record its webhook delivery (%s); reconciled later", job_id, exc)
            return
        except Exception:
            log.exception("job %s: could not record its webhook delivery; retried at next start", job_id)
            return
        if delivery_id is not None:
            log.info("job %s: webhook %s queued", job_id, delivery_id)
            self._wake.set()

    async def reconcile(self) -> int:
        """Deliveries for finished jobs, ended within the retry window, that have none; how many added."""
        since = time.time() - self.settings.webhook_retry_seconds
        retention = self.settings.retention_seconds
        keep_s = max(retention, self.settings.webhook_retry_seconds) if retention > 0 else 0.0
        return await self.store.reconcile(since, keep_s)

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's deliveries, oldest first (for tests and operators)."""
        return await self.store.deliveries(job_id)

    # -- the loop -------------------------------------------------------------------------
    async def _run(self, reconciled: bool = True) -> None:
        last_reconcile = time.monotonic() if reconciled else -IDLE_POLL_SECONDS
        while True:
            self._wake.clear()
            stale = time.monotonic() - last_reconcile >= IDLE_POLL_SECONDS
            if stale and await self._guard(self.reconcile()) is not None:
                last_reconcile = time.monotonic()
            due, next_at = await self._guard(self._due()) or ([], None)
            for delivery in due:
                self._in_flight[delivery.delivery_id] = delivery
                self._spawn(self._attempt(delivery))
            timeout = IDLE_POLL_SECONDS if next_at is None else max(0.0, next_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(timeout, IDLE_POLL_SECONDS))

    async def _guard(self, coro: Any) -> Any:
        """A store error must not end the loop: log it and try again on the next pass."""
        try:
            result = await coro
        except StoreUnavailable as exc:  # logged once per outage, without a traceback
            if not self._store_down:
                log.warning("webhooks: %s; retrying", exc)
                self._store_down = True
            await asyncio.sleep(1.0)
            return None
        except Exception:
            log.exception("webhooks: journal error; retrying")
            await asyncio.sleep(1.0)
            return None
        if self._store_down:
            log.info("webhooks: the delivery store is reachable again")
            self._store_down = False
        return result

    async def _due(self) -> tuple[list[Delivery], float | None]:
        """Pending deliveries due now (not already in flight), and when the next one falls due."""
        busy = set(self._in_flight)
        return await self.store.due(busy, MAX_CONCURRENT - len(busy))

    async def _attempt(self, delivery: Delivery) -> None:
        with logs.job_context(delivery.job_id):
            try:
                await self._deliver(delivery)
            except StoreUnavailable as exc:  # its claim (Redis) expires: attempted again then
                log.warning("job %s: webhook %s: %s", delivery.job_id, delivery.delivery_id, exc)
            except Exception:
                log.exception("job %s: webhook %s: unexpected error", delivery.job_id, delivery.delivery_id)
            finally:
                self._in_flight.pop(delivery.delivery_id, None)
                self._wake.set()

    async def _deliver(self, delivery: Delivery) -> None:
        attempt = delivery.attempts + 1
        refused = None if self.settings.webhook_allow_private else url_refusal(delivery.url)
        if refused is not None:  # aiohttp connects to an IP literal without asking the resolver
            await self._refuse(delivery, attempt, refused)
            return
        result: dict[str, Any] | None = None
        if delivery.payload["status"] == JobStatus.COMPLETED.value:
            path = self.layout.transcript_path(delivery.job_id)
            result = await asyncio.get_running_loop().run_in_executor(None, _read_transcript, path)
            if result is None:
                await self.store.record(
                    delivery, attempt, GIVEN_UP, None, "the transcript is gone from storage"
                )
                log.warning(
                    "job %s: webhook %s given up: the transcript is gone",
                    delivery.job_id,
                    delivery.delivery_id,
                )
                return
        payload = webhook_payload(delivery.payload, delivery.delivery_id, attempt, result).body()
        body = json.dumps(payload, ensure_ascii=False).encode("utf-8")
        headers = {"Content-Type": "application/json", "X-Webhook-Id": delivery.delivery_id}
        if self.settings.webhook_secret:
            timestamp = int(time.time())
            headers["X-Webhook-Timestamp"] = str(timestamp)
            headers["X-Webhook-Signature"] = sign(self.settings.webhook_secret, timestamp, body)

        status: int | None = None
        error: str | None = None
        assert self._session is not None
        try:
            async with self._session.post(
                delivery.url,
                data=body,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.settings.webhook_timeout),
                allow_redirects=False,  # a redirect could lead past the allowed hosts
            ) as response:
                status = response.status
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
        except TimeoutError:
            error = f"no answer within {self.settings.webhook_timeout:g} s"
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, ForbiddenTarget):  # what DNS said is not for webhooks
                await self._refuse(delivery, attempt, str(exc.os_error))
                return
            error = f"{type(exc).__name__}: {exc}"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"

        if error is None:
            await self.store.record(delivery, attempt, DELIVERED, status, None)
            log.info(
                "job %s: webhook %s delivered (attempt %d, HTTP %s)",
                delivery.job_id,
                delivery.delivery_id,
                attempt,
                status,
            )
            return
        now = time.time()
        deadline = delivery.job_ended_at + self.settings.webhook_retry_seconds
        if now >= deadline:
            await self.store.record(delivery, attempt, GIVEN_UP, status, error)
            log.warning(
                "job %s: webhook %s given up after %d attempt(s) over %.0f s: %s",
                delivery.job_id,
                delivery.delivery_id,
                attempt,
                now - delivery.job_ended_at,
                error,
            )
            return
        retry_at = min(now + backoff_delay(attempt, self.backoff_base, self.backoff_cap), deadline)
        await self.store.record(delivery, attempt, PENDING, status, error, retry_at)
        log.info(
            "job %s: webhook %s attempt %d failed (%s); next in %.1f s",
            delivery.job_id,
            delivery.delivery_id,
            attempt,
            error,
            retry_at - now,
        )

    async def _refuse(self, delivery: Delivery, attempt: int, why: str) -> None:
        """A target webhooks may not reach: given up at once (it would be refused every time)."""
        await self.store.record(delivery, attempt, GIVEN_UP, None, why)
        log.warning("job %s: webhook %s given up: %s", delivery.job_id, delivery.delivery_id, why)
