"""Webhooks: when a job with a callback_url ends, POST its outcome there, signed, until it lands.

Deliveries are rows in the journal (`webhook_deliveries`), written before the first attempt,
so a restart resumes them; start-up also adds rows for jobs that ended while no row could be
written (the process died in between). Delivery is at least once: receivers deduplicate on
`X-Webhook-Id`. docs/webhooks.md is the receiver's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from service import __version__, logs
from service import events as ev
from service.errors import BadRequest
from service.events import JobEvent, JobEvents
from service.jobs import JobStatus, iso_time
from service.journal import Journal
from service.settings import Settings
from service.storage import Layout

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
EVENT_NAMES = {
    JobStatus.COMPLETED: "job.completed",
    JobStatus.FAILED: "job.failed",
    JobStatus.CANCELLED: "job.cancelled",
}

PENDING, DELIVERED, GIVEN_UP = "pending", "delivered", "given_up"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS webhook_deliveries (
    delivery_id TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    job_ended_at REAL NOT NULL,
    url TEXT NOT NULL,
    payload TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    last_status INTEGER,
    last_error TEXT,
    created_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (job_id, job_ended_at)
);
CREATE INDEX IF NOT EXISTS webhook_deliveries_due ON webhook_deliveries (state, next_attempt_at);
"""
_FINISHED = tuple(status.value for status in EVENT_NAMES)
_JOB_COLUMNS = "job_id, status, model, language, duration_s, created_at, completed_at, error, callback_url"


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


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Webhook-Signature value: HMAC-SHA256 over `<timestamp>.<raw body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def backoff_delay(attempt: int, base: float, cap: float = BACKOFF_CAP_SECONDS) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based)."""
    delay = min(cap, base * 2 ** min(attempt - 1, 30))
    return delay * (1 - BACKOFF_JITTER * random.random())


@dataclass(frozen=True)
class _Delivery:
    delivery_id: str
    job_id: str
    job_ended_at: float
    url: str
    payload: dict[str, Any]
    attempts: int


def _snapshot(row: tuple[Any, ...]) -> dict[str, Any]:
    """The job's part of the payload, fixed when the job ends (the row may change or go later)."""
    job_id, status, model, language, duration_s, created_at, completed_at, error, _ = row
    payload: dict[str, Any] = {
        "event": EVENT_NAMES[JobStatus(status)],
        "job_id": job_id,
        "status": status,
        "model": model,
        "language": language,
        "duration_s": round(duration_s, 3) if duration_s is not None else None,  # as /status has it
        "created_at": iso_time(created_at),
        "completed_at": iso_time(completed_at),
    }
    if status == JobStatus.FAILED.value:
        payload["error"] = error
    return payload


def _insert(conn: sqlite3.Connection, row: tuple[Any, ...], now: float) -> str | None:
    """A pending delivery for this ending of the job, unless it has one; the new id or None."""
    delivery_id = uuid.uuid4().hex
    inserted = conn.execute(
        "INSERT OR IGNORE INTO webhook_deliveries (delivery_id, job_id, job_ended_at, url, payload, "
        "state, next_attempt_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (delivery_id, row[0], row[6], row[8], json.dumps(_snapshot(row)), PENDING, now, now),
    ).rowcount
    return delivery_id if inserted else None


def _read_transcript(path: Path) -> dict[str, Any] | None:
    try:
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    return data


class WebhookDispatcher:
    """Owns the deliveries table and the delivery loop; `ctx` is its aiohttp cleanup context."""

    def __init__(self, settings: Settings, journal: Journal, layout: Layout, events: JobEvents) -> None:
        self.settings = settings
        self.journal = journal
        self.layout = layout
        self.events = events
        self.backoff_base = BACKOFF_BASE_SECONDS  # tests shorten it
        self.backoff_cap = BACKOFF_CAP_SECONDS
        self._wake = asyncio.Event()
        self._running = False
        self._loop_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()  # held, or the loop may drop them
        self._in_flight: set[str] = set()
        self._session: aiohttp.ClientSession | None = None
        events.add_listener(self._on_event)

    async def ctx(self, app: web.Application) -> AsyncIterator[None]:
        """Start after the journal is open; stop before it closes (cleanup_ctx unwinds in reverse)."""
        await self.start()
        try:
            yield
        finally:
            await self.stop()

    async def start(self) -> None:
        await self.journal.run(lambda conn: conn.executescript(_SCHEMA))
        self._session = aiohttp.ClientSession(headers={"User-Agent": USER_AGENT})
        self._running = True  # from here on, endings get rows; reconcile covers the ones before
        added = await self.reconcile()
        if added:
            log.info("webhooks: queued %d delivery(ies) for jobs that ended without one", added)
        self._loop_task = asyncio.create_task(self._run(), name="webhooks")

    async def stop(self) -> None:
        """Prompt: attempts in flight are abandoned; their rows stay pending for the next start."""
        self._running = False
        tasks = [t for t in (self._loop_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._loop_task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- rows -----------------------------------------------------------------------------
    def _on_event(self, event: JobEvent) -> None:
        if event.type != ev.END or not self._running:
            return
        self._spawn(self._job_ended(event.job_id))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _job_ended(self, job_id: str) -> None:
        with logs.job_context(job_id):
            await self._record_ending(job_id)

    async def _record_ending(self, job_id: str) -> None:
        def op(conn: sqlite3.Connection) -> str | None:
            row = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = ? AND callback_url IS NOT NULL "
                f"AND completed_at IS NOT NULL AND status IN ({', '.join('?' for _ in _FINISHED)})",
                (job_id, *_FINISHED),
            ).fetchone()
            return _insert(conn, row, time.time()) if row else None

        try:
            delivery_id = await self.journal.run(op)
        except Exception:
            log.exception("job %s: could not record its webhook delivery; retried at next start", job_id)
            return
        if delivery_id is not None:
            log.info("job %s: webhook %s queued", job_id, delivery_id)
            self._wake.set()

    async def reconcile(self) -> int:
        """Rows for finished jobs, ended within the retry window, that have none; how many added."""
        since = time.time() - self.settings.webhook_retry_seconds
        retention = self.settings.retention_seconds
        keep_s = max(retention, self.settings.webhook_retry_seconds) if retention > 0 else 0.0

        def op(conn: sqlite3.Connection) -> int:
            rows = conn.execute(
                f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN ({', '.join('?' for _ in _FINISHED)}) "
                "AND completed_at >= ? AND callback_url IS NOT NULL AND NOT EXISTS ("
                "SELECT 1 FROM webhook_deliveries d WHERE d.job_id = jobs.job_id "
                "AND d.job_ended_at = jobs.completed_at)",
                (*_FINISHED, since),
            ).fetchall()
            now = time.time()
            if keep_s > 0:  # finished rows go with the jobs they belong to (retention)
                conn.execute(
                    "DELETE FROM webhook_deliveries WHERE state != ? AND job_ended_at < ?",
                    (PENDING, now - keep_s),
                )
            return sum(_insert(conn, row, now) is not None for row in rows)

        return await self.journal.run(op)

    async def deliveries(self, job_id: str) -> list[dict[str, Any]]:
        """The job's delivery rows, oldest first (for tests and operators)."""

        def op(conn: sqlite3.Connection) -> list[dict[str, Any]]:
            cursor = conn.execute(
                "SELECT delivery_id, job_id, url, state, attempts, next_attempt_at, last_status, "
                "last_error, created_at, finished_at FROM webhook_deliveries WHERE job_id = ? "
                "ORDER BY created_at",
                (job_id,),
            )
            names = [d[0] for d in cursor.description]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

        return await self.journal.run(op)

    # -- the loop -------------------------------------------------------------------------
    async def _run(self) -> None:
        last_reconcile = time.monotonic()
        while True:
            self._wake.clear()
            if time.monotonic() - last_reconcile >= IDLE_POLL_SECONDS:
                await self._guard(self.reconcile())
                last_reconcile = time.monotonic()
            due, next_at = await self._guard(self._due()) or ([], None)
            for delivery in due:
                self._in_flight.add(delivery.delivery_id)
                self._spawn(self._attempt(delivery))
            timeout = IDLE_POLL_SECONDS if next_at is None else max(0.0, next_at - time.time())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(timeout, IDLE_POLL_SECONDS))

    async def _guard(self, coro: Any) -> Any:
        """A journal error must not end the loop: log it and try again on the next pass."""
        try:
            return await coro
        except Exception:
            log.exception("webhooks: journal error; retrying")
            await asyncio.sleep(1.0)
            return None

    async def _due(self) -> tuple[list[_Delivery], float | None]:
        """Pending rows due now (not already in flight), and when the next one falls due."""
        busy = set(self._in_flight)
        room = MAX_CONCURRENT - len(busy)

        def op(conn: sqlite3.Connection) -> tuple[list[_Delivery], float | None]:
            rows = conn.execute(
                "SELECT delivery_id, job_id, job_ended_at, url, payload, attempts, next_attempt_at "
                "FROM webhook_deliveries WHERE state = ? ORDER BY next_attempt_at LIMIT ?",
                (PENDING, len(busy) + room + 1),
            )
            due: list[_Delivery] = []
            now = time.time()
            for delivery_id, job_id, ended_at, url, payload, attempts, next_at in rows:
                if delivery_id in busy:
                    continue
                if len(due) >= room:
                    return due, None  # full: an attempt that ends wakes the loop
                if next_at > now:
                    return due, next_at
                due.append(_Delivery(delivery_id, job_id, ended_at, url, json.loads(payload), attempts))
            return due, None

        return await self.journal.run(op)

    async def _attempt(self, delivery: _Delivery) -> None:
        with logs.job_context(delivery.job_id):
            try:
                await self._deliver(delivery)
            except Exception:
                log.exception("job %s: webhook %s: unexpected error", delivery.job_id, delivery.delivery_id)
            finally:
                self._in_flight.discard(delivery.delivery_id)
                self._wake.set()

    async def _deliver(self, delivery: _Delivery) -> None:
        attempt = delivery.attempts + 1
        payload = {**delivery.payload, "delivery_id": delivery.delivery_id, "attempt": attempt}
        if payload["status"] == JobStatus.COMPLETED.value:
            path = self.layout.transcript_path(delivery.job_id)
            result = await asyncio.get_running_loop().run_in_executor(None, _read_transcript, path)
            if result is None:
                await self._record(delivery, attempt, GIVEN_UP, None, "the transcript is gone from storage")
                log.warning(
                    "job %s: webhook %s given up: the transcript is gone",
                    delivery.job_id,
                    delivery.delivery_id,
                )
                return
            payload["transcript"] = result.get("text", "")
            payload["segments"] = [
                {key: segment.get(key) for key in ("id", "start", "end", "text")}
                for segment in result.get("segments", [])
            ]
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
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"

        if error is None:
            await self._record(delivery, attempt, DELIVERED, status, None)
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
            await self._record(delivery, attempt, GIVEN_UP, status, error)
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
        await self._record(delivery, attempt, PENDING, status, error, retry_at)
        log.info(
            "job %s: webhook %s attempt %d failed (%s); next in %.1f s",
            delivery.job_id,
            delivery.delivery_id,
            attempt,
            error,
            retry_at - now,
        )

    async def _record(
        self,
        delivery: _Delivery,
        attempt: int,
        state: str,
        status: int | None,
        error: str | None,
        retry_at: float | None = None,
    ) -> None:
        now = time.time()

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE webhook_deliveries SET state = ?, attempts = ?, last_status = ?, last_error = ?, "
                "next_attempt_at = COALESCE(?, next_attempt_at), finished_at = ? WHERE delivery_id = ?",
                (
                    state,
                    attempt,
                    status,
                    error,
                    retry_at,
                    None if state == PENDING else now,
                    delivery.delivery_id,
                ),
            )

        await self.journal.run(op)
