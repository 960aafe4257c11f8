"""Webhook deliveries in Redis, shared by several instances: on the real local Redis server.

The Redis job store is stood in for by `Jobs`: its client, its key prefix, and job hashes and
the `ended` sorted set written directly in the layout that store provides. Each test has its
own key prefix and removes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, cast

import pytest
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer
from conftest import FakeEngine
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.api.keys import SERVICES
from service.app import create_app, create_backend
from service.errors import StoreUnavailable
from service.jobs import events as ev
from service.jobs.events import JobEvents
from service.settings import Settings
from service.store.files import Layout
from service.store.sqlite import SqliteJobStore
from service.webhooks.deliveries import (
    DELIVERED,
    GIVEN_UP,
    PENDING,
    RedisDeliveryStore,
    SqliteDeliveryStore,
)
from service.webhooks.dispatcher import WebhookDispatcher, claim_lease_seconds

ServerFactory = Callable[..., Awaitable[TestServer]]
LEASE = 0.5  # claim lease of the stores under test (seconds)


class Jobs:
    """Stand-in for the Redis job store: `.redis`, `.key()`, and jobs written in its layout."""

    def __init__(self, prefix: str, port: int = 6379, **client: Any) -> None:
        self.prefix = prefix
        self.redis = aioredis.Redis(
            host="127.0.0.1", port=port, decode_responses=True, socket_connect_timeout=1.0, **client
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    async def end(
        self,
        job_id: str,
        status: str = "completed",
        callback_url: str | None = "http://127.0.0.1:9/hook",
        ago_s: float = 0.0,
        error: str | None = None,
    ) -> float:
        """A job that ended `ago_s` seconds ago; its completed_at."""
        completed_at = time.time() - ago_s
        fields = {
            "job_id": job_id,
            "status": status,
            "model": "tiny.en",
            "language": "en",
            "duration_s": "2.5",
            "created_at": repr(completed_at - 3.0),
            "completed_at": repr(completed_at),
            "callback_url": callback_url,
            "error": error,
        }
        await self.redis.delete(self.key("job", job_id))
        await self.redis.hset(
            self.key("job", job_id), mapping={k: v for k, v in fields.items() if v is not None}
        )
        await self.redis.zadd(self.key("ended"), {job_id: completed_at})
        return completed_at


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    prefix = f"test-{uuid.uuid4().hex}"
    yield prefix
    client = aioredis.Redis(host="127.0.0.1", port=6379, decode_responses=True)
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def instances(prefix: str) -> AsyncIterator[Callable[[], Jobs]]:
    """Jobs stand-ins on the test's prefix, each with its own client (one per "instance")."""
    made: list[Jobs] = []

    def make() -> Jobs:
        made.append(Jobs(prefix))
        return made[-1]

    yield make
    for jobs in made:
        await jobs.redis.aclose()


async def store_on(jobs: Jobs, lease: float = LEASE) -> RedisDeliveryStore:
    store = RedisDeliveryStore(jobs, claim_lease_s=lease)
    await store.setup()
    return store


async def keys_of(jobs: Jobs) -> list[str]:
    return sorted([key async for key in jobs.redis.scan_iter(match=f"{jobs.prefix}:*")])


# -- choosing the store ------------------------------------------------------------------------


async def test_the_store_follows_the_job_store(tmp_path: Path, settings: Settings) -> None:
    """The app factory picks the deliveries' store with the job store, and nowhere else."""
    sqlite = create_backend(dataclasses.replace(settings, backend="sqlite"), Layout(tmp_path))
    assert isinstance(sqlite.store, SqliteJobStore) and sqlite.redis is None
    assert isinstance(sqlite.deliveries, SqliteDeliveryStore)
    shared = dataclasses.replace(
        settings, backend="redis", redis_prefix=f"test-{uuid.uuid4().hex}", webhook_timeout=4.0
    )
    redis = create_backend(shared, Layout(tmp_path))
    try:
        assert redis.redis is redis.store
        assert (
            isinstance(redis.deliveries, RedisDeliveryStore) and redis.deliveries.redis is redis.redis.redis
        )
        assert redis.deliveries.claim_lease_s > 4.0  # outlasts an attempt
        dispatcher = create_app(shared, engine=FakeEngine())[SERVICES].webhooks
        assert isinstance(dispatcher.store, RedisDeliveryStore) and dispatcher.store.claim_lease_s > 4.0
    finally:
        await redis.redis.redis.aclose()


# -- recording endings -------------------------------------------------------------------------


async def test_one_delivery_per_ending_however_many_instances_record_it(
    instances: Callable[[], Jobs],
) -> None:
    a, b = instances(), instances()
    store_a, store_b = await store_on(a), await store_on(b)
    await a.end("job1")
    results = await asyncio.gather(*(s.record_ending("job1") for s in (store_a, store_b) * 5))
    recorded = [r for r in results if r is not None]
    assert len(recorded) == 1
    assert await store_a.reconcile(time.time() - 60, 0) == 0
    assert await store_b.reconcile(time.time() - 60, 0) == 0
    (row,) = await store_b.deliveries("job1")
    assert row["delivery_id"] == recorded[0] and row["state"] == PENDING and row["attempts"] == 0
    assert row["url"] == "http://127.0.0.1:9/hook" and row["last_status"] is None

    # Submitted again after a failure and ended again: a new ending, a new delivery.
    await asyncio.sleep(0.01)
    await a.end("job1", status="failed", error="decoder exploded")
    again = await asyncio.gather(store_a.record_ending("job1"), store_b.record_ending("job1"))
    assert len([r for r in again if r is not None]) == 1
    rows = await store_a.deliveries("job1")
    assert rows[0]["delivery_id"] == recorded[0] and len(rows) == 2

    await a.end("quiet", callback_url=None)
    await a.redis.hset(a.key("job", "running"), mapping={"job_id": "running", "status": "processing"})
    assert await store_a.record_ending("quiet") is None
    assert await store_a.record_ending("running") is None
    assert await store_a.record_ending("never-was") is None

    due, _ = await store_a.due(set(), 8)
    failed = next(d for d in due if d.payload["status"] == "failed")
    assert failed.payload["event"] == "job.failed" and failed.payload["error"] == "decoder exploded"
    assert failed.payload["duration_s"] == 2.5 and failed.payload["language"] == "en"
    others = [k for k in await keys_of(a) if not k.startswith(a.key("webhook") + ":")]
    assert sorted(others) == sorted(
        [a.key("ended"), *(a.key("job", j) for j in ("job1", "quiet", "running"))]
    )


# -- claims --------------------------------------------------------------------------------------


async def test_a_vanished_claimers_delivery_falls_due_after_the_lease(
    instances: Callable[[], Jobs],
) -> None:
    a, b = instances(), instances()
    store_a, store_b = await store_on(a), await store_on(b)
    await a.end("job1")
    delivery_id = await store_a.record_ending("job1")

    (claimed,), _ = await store_a.due(set(), 8)  # instance A claims it, then dies
    assert claimed.delivery_id == delivery_id and claimed.attempts == 0
    started = time.time()
    assert await store_a.due(set(), 8) == ([], pytest.approx(started + LEASE, abs=0.15))
    due, next_at = await store_b.due(set(), 8)
    assert due == [] and next_at is not None and 0.2 < next_at - started <= LEASE + 0.1

    await asyncio.sleep(max(0.0, next_at - time.time()) + 0.05)
    (taken,), _ = await store_b.due(set(), 8)
    assert taken.delivery_id == delivery_id and taken.attempts == 0 and taken.claim != claimed.claim
    assert (await store_a.due(set(), 8))[0] == []  # B holds it now

    # A comes back with a stale claim: its retry is not recorded; B's outcome is.
    await store_a.record(claimed, 1, PENDING, 500, "HTTP 500", time.time())
    (row,) = await store_a.deliveries("job1")
    assert row["state"] == PENDING and row["attempts"] == 0
    await store_b.record(taken, 1, DELIVERED, 200, None)
    await store_a.record(claimed, 1, GIVEN_UP, 500, "HTTP 500")  # too late: delivered stays
    (row,) = await store_b.deliveries("job1")
    assert row["state"] == DELIVERED and row["attempts"] == 1 and row["last_status"] == 200
    assert row["finished_at"] is not None
    assert await store_a.due(set(), 8) == ([], None)
    assert await store_b.due(set(), 8) == ([], None)


async def test_released_claims_fall_due_at_once(instances: Callable[[], Jobs]) -> None:
    a, b = instances(), instances()
    store_a, store_b = await store_on(a, lease=30.0), await store_on(b, lease=30.0)
    for job_id in ("one", "two"):
        await a.end(job_id)
        await store_a.record_ending(job_id)
    claimed, _ = await store_a.due(set(), 8)
    assert len(claimed) == 2
    assert (await store_b.due(set(), 8))[0] == []
    await store_a.release(claimed)  # A shuts down mid-attempt
    taken, _ = await store_b.due(set(), 8)
    assert sorted(d.delivery_id for d in taken) == sorted(d.delivery_id for d in claimed)
    await store_a.release(claimed)  # B's claims now: A's release leaves them alone
    assert (await store_a.due(set(), 8))[0] == []


async def test_room_and_busy_limit_what_is_claimed(instances: Callable[[], Jobs]) -> None:
    jobs = instances()
    store = await store_on(jobs)
    for index in range(5):
        await jobs.end(f"job{index}")
        await store.record_ending(f"job{index}")
    assert await store.due(set(), 0) == ([], None)
    first, next_at = await store.due(set(), 2)
    assert len(first) == 2 and next_at is None  # full: the loop waits for an attempt to end
    second, next_at = await store.due({d.delivery_id for d in first}, 6)
    assert len(second) == 3 and next_at is not None  # the earliest claim's expiry
    assert {d.delivery_id for d in first}.isdisjoint(d.delivery_id for d in second)


# -- retries -------------------------------------------------------------------------------------


async def test_a_failed_attempt_is_due_again_at_its_retry_time(instances: Callable[[], Jobs]) -> None:
    jobs = instances()
    store = await store_on(jobs)
    await jobs.end("flaky")
    await store.record_ending("flaky")
    (delivery,), _ = await store.due(set(), 8)

    retry_at = time.time() + 0.4
    await store.record(delivery, 1, PENDING, 503, "HTTP 503", retry_at)
    (row,) = await store.deliveries("flaky")
    assert row["state"] == PENDING and row["attempts"] == 1
    assert row["last_status"] == 503 and row["last_error"] == "HTTP 503"
    assert row["next_attempt_at"] == pytest.approx(retry_at) and row["finished_at"] is None
    due, next_at = await store.due(set(), 8)
    assert due == [] and next_at == pytest.approx(retry_at, abs=0.1)

    await asyncio.sleep(max(0.0, retry_at - time.time()) + 0.05)
    (again,), _ = await store.due(set(), 8)
    assert again.delivery_id == delivery.delivery_id and again.attempts == 1
    await store.record(again, 2, PENDING, None, "ClientConnectorError: refused", time.time() - 1)
    (row,) = await store.deliveries("flaky")
    assert row["last_status"] is None and row["last_error"] == "ClientConnectorError: refused"
    (third,), _ = await store.due(set(), 8)  # a retry time in the past: due at once
    await store.record(third, 3, DELIVERED, 204, None)
    (row,) = await store.deliveries("flaky")
    assert row["state"] == DELIVERED and row["attempts"] == 3
    assert row["last_status"] == 204 and row["last_error"] is None
    assert await store.due(set(), 8) == ([], None)


# -- reconcile and retention ---------------------------------------------------------------------


async def test_reconcile_adds_missed_endings_and_retention_drops_old_finished_ones(
    instances: Callable[[], Jobs],
) -> None:
    a, b = instances(), instances()
    store_a, store_b = await store_on(a), await store_on(b)
    await a.end("has-one")
    await store_a.record_ending("has-one")
    await a.end("missed")
    await a.end("missed-failed", status="failed", error="boom")
    await a.end("cancelled", status="cancelled")
    await a.end("no-callback", callback_url=None)
    await a.end("before-window", ago_s=7200)
    since = time.time() - 3600

    added = await asyncio.gather(store_a.reconcile(since, 0), store_b.reconcile(since, 0))
    assert sum(added) == 3  # however the two instances raced, each missed ending once
    for job_id in ("has-one", "missed", "missed-failed", "cancelled"):
        assert len(await store_a.deliveries(job_id)) == 1, job_id
    assert await store_a.deliveries("no-callback") == []
    assert await store_a.deliveries("before-window") == []
    assert await store_b.reconcile(since, 0) == 0

    # Retention: finished deliveries of jobs ended over keep_s ago go; pending ones stay.
    await a.end("old-done", ago_s=7200)
    await a.end("old-pending", ago_s=7200)
    await store_a.record_ending("old-done")
    await store_a.record_ending("old-pending")
    for delivery in (await store_a.due(set(), 8))[0]:
        if delivery.job_id == "old-done":
            await store_a.record(delivery, 1, GIVEN_UP, 500, "HTTP 500")
    assert await store_b.reconcile(since, 3600) == 0
    assert await store_a.deliveries("old-done") == []
    assert [r["state"] for r in await store_a.deliveries("old-pending")] == [PENDING]
    assert len(await store_a.deliveries("missed")) == 1  # recent: kept
    webhook_keys = [k for k in await keys_of(a) if k.startswith(a.key("webhook") + ":")]
    assert not any("old-done" in k for k in webhook_keys)
    assert a.key("webhook", "job", "old-pending") in webhook_keys


# -- whole dispatchers -----------------------------------------------------------------------------


async def test_two_dispatchers_deliver_each_webhook_exactly_once(
    tmp_path: Path, settings: Settings, instances: Callable[[], Jobs], aiohttp_server: ServerFactory
) -> None:
    calls: list[dict[str, Any]] = []
    answered: collections.Counter[str] = collections.Counter()
    in_flight: set[str] = set()
    overlaps: list[str] = []
    all_answered = asyncio.Event()

    async def hook(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        delivery_id = request.headers["X-Webhook-Id"]
        if delivery_id in in_flight:
            overlaps.append(delivery_id)
        in_flight.add(delivery_id)
        calls.append(body)
        await asyncio.sleep(0.05)  # both instances' loops get to run meanwhile
        in_flight.discard(delivery_id)
        if body["job_id"].endswith(("0", "3")) and body["attempt"] == 1:
            return web.Response(status=500)  # these are retried, by whichever instance
        answered[body["job_id"]] += 1
        if len(answered) == len(job_ids):
            all_answered.set()
        return web.Response(status=204)

    receiver = web.Application()
    receiver.router.add_post("/hook", hook)
    server = await aiohttp_server(receiver)
    url = f"http://127.0.0.1:{server.port}/hook"

    layout = Layout(tmp_path / "storage")
    layout.transcripts.mkdir(parents=True)
    job_ids = [f"job{index}" for index in range(14)]
    settings = dataclasses.replace(settings, webhook_allow_private=True)  # the receiver is on loopback
    dispatchers: list[WebhookDispatcher] = []
    events_by_instance: list[JobEvents] = []
    for _ in range(2):
        events = JobEvents()
        jobs = instances()
        dispatcher = WebhookDispatcher(
            settings, RedisDeliveryStore(jobs, claim_lease_seconds(settings)), layout, events
        )
        assert isinstance(dispatcher.store, RedisDeliveryStore)
        dispatcher.backoff_base = 0.1
        dispatchers.append(dispatcher)
        events_by_instance.append(events)
    first = cast(RedisDeliveryStore, dispatchers[0].store).journal
    assert isinstance(first, Jobs)
    statuses = {job_id: "failed" if index % 2 else "completed" for index, job_id in enumerate(job_ids)}
    for job_id, status in statuses.items():
        if status == "completed":
            transcript = {"text": f"text of {job_id}", "segments": [{"id": 0, "start": 0.0, "end": 1.0}]}
            layout.transcript_path(job_id).write_text(json.dumps(transcript), encoding="utf-8")
        await first.end(job_id, status=status, callback_url=url, error="boom" if status == "failed" else None)

    try:
        for dispatcher in dispatchers:
            await dispatcher.start()  # the first's start-up reconcile may already queue them
        for job_id in job_ids:  # both instances hear every ending (the worst case)
            for events in events_by_instance:
                events.publish(job_id, ev.END, {"status": statuses[job_id]})
        await asyncio.wait_for(all_answered.wait(), 4.0)
        await asyncio.sleep(0.3)  # anything sent twice would arrive by now
    finally:
        for dispatcher in dispatchers:
            await dispatcher.stop()

    assert answered == {job_id: 1 for job_id in job_ids}
    assert overlaps == []
    attempts: dict[str, list[int]] = collections.defaultdict(list)
    for body in calls:
        attempts[body["delivery_id"]].append(body["attempt"])
    assert len(attempts) == len(job_ids)  # one delivery per job
    retried = {body["job_id"] for body in calls if body["attempt"] == 2}
    assert retried == {job_id for job_id in job_ids if job_id.endswith(("0", "3"))}
    assert all(sorted(a) == list(range(1, len(a) + 1)) for a in attempts.values()), attempts
    done = next(body for body in calls if body["job_id"] == "job2")
    assert done["transcript"] == "text of job2" and done["event"] == "job.completed"
    for job_id in job_ids:
        (row,) = await dispatchers[1].deliveries(job_id)
        assert row["state"] == DELIVERED and row["last_status"] == 204


async def test_an_unreachable_redis_does_not_stop_the_loop(settings: Settings, tmp_path: Path) -> None:
    # Nothing listens there; no client-side retries (redis-py's default retries take seconds).
    jobs = Jobs(f"test-{uuid.uuid4().hex}", port=1, retry=Retry(NoBackoff(), 0))
    try:
        store = await store_on(jobs)
        with pytest.raises(StoreUnavailable):
            await store.record_ending("job1")
        dispatcher = WebhookDispatcher(
            settings, RedisDeliveryStore(jobs, claim_lease_seconds(settings)), Layout(tmp_path), JobEvents()
        )
        await dispatcher.start()  # logs, and keeps trying in the loop
        await asyncio.sleep(0.3)
        assert dispatcher._loop_task is not None and not dispatcher._loop_task.done()
        started = time.monotonic()
        await dispatcher.stop()
        assert time.monotonic() - started < 2
    finally:
        await jobs.redis.aclose()
