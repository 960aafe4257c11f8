"""Both job stores keep the same promises: SQLite on real disk, Redis on the real local server.

Each Redis test uses its own key prefix and removes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from service.errors import StoreUnavailable
from service.jobs.job import JobStatus, NewJob, Task
from service.store.base import JobExists, JobStore, QueueAtLimit
from service.store.redis import RedisJobStore
from service.store.sqlite import SqliteJobStore

REDIS_URL = "redis://127.0.0.1:6379/0"


def new_job(job_id: str, priority: int = 0, model: str = "tiny.en", cache_key: str | None = None) -> NewJob:
    return NewJob(
        job_id=job_id,
        audio_file=f"{job_id}.wav",
        audio_sha256="0" * 64,
        audio_bytes=10,
        original_filename="a.wav",
        model=model,
        language=None,
        task=Task.TRANSCRIBE,
        callback_url=None,
        duration_s=2.5,
        priority=priority,
        cache_key=cache_key,
    )


def redis_store(prefix: str, **kwargs: float) -> RedisJobStore:
    return RedisJobStore(REDIS_URL, prefix, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, prefix: str) -> AsyncIterator[JobStore]:
    s: JobStore
    if request.param == "sqlite":
        s = SqliteJobStore(tmp_path / "jobs.db", priority_aging_s=60.0)
    else:
        s = redis_store(prefix, priority_aging_s=60.0)
    await s.open()
    yield s
    if isinstance(s, RedisJobStore):
        await s.clear()
    await s.close()


async def test_priority_then_arrival_and_positions(store: JobStore) -> None:
    await store.insert(new_job("low", priority=-10))
    await store.insert(new_job("a"))
    await store.insert(new_job("urgent", priority=10))
    await store.insert(new_job("b"))
    order = [job.job_id for job in await store.queued_in_order()]
    assert order == ["urgent", "a", "b", "low"]
    b = await store.get("b")
    assert b is not None and await store.queue_position(b) == 3
    claimed = [(await store.claim_next()) for _ in range(4)]
    assert [job.job_id for job in claimed if job] == order
    assert all(job and job.status is JobStatus.PROCESSING and job.attempts == 1 for job in claimed)
    assert await store.claim_next() is None
    assert await store.count(JobStatus.PROCESSING) == 4
    assert await store.counts_by_status() == {"processing": 4}


async def test_duplicate_id_refused_and_failed_job_replaced(store: JobStore) -> None:
    await store.insert(new_job("a"))
    with pytest.raises(JobExists):
        await store.insert(new_job("a"))
    with pytest.raises(JobExists):
        await store.replace_failed(new_job("a"))  # queued, not failed
    job = await store.claim_next()
    assert job is not None
    await store.fail("a", "broken audio")
    failed = await store.get("a")
    assert failed is not None and failed.status is JobStatus.FAILED and failed.error == "broken audio"
    again = await store.replace_failed(new_job("a"))
    assert again.status is JobStatus.QUEUED and again.attempts == 0 and again.seq > failed.seq


async def test_complete_is_guarded_and_feeds_the_cache(store: JobStore) -> None:
    await store.insert(new_job("a", cache_key="k1"))
    job = await store.claim_next()
    assert job is not None
    await store.set_progress("a", 0.5)
    assert (await store.get("a")).progress == 0.5  # type: ignore[union-attr]
    assert await store.complete("a", "en", 2.5)
    assert not await store.complete("a", "en", 2.5)  # only once
    done = await store.get("a")
    assert done is not None and done.status is JobStatus.COMPLETED and done.language == "en"
    await store.set_progress("a", 0.1)  # finished jobs keep progress 1
    assert (await store.get("a")).progress == 1.0  # type: ignore[union-attr]
    cached = await store.find_cached("k1")
    assert cached is not None and cached.job_id == "a"
    copy = await store.insert_completed(new_job("b", cache_key="k1"), cached, "reused")
    assert copy.status is JobStatus.COMPLETED and copy.note == "reused" and copy.language == "en"
    assert (await store.find_cached("k1")).job_id == "b"  # type: ignore[union-attr]
    speeds = await store.recent_speeds()
    assert speeds and all(audio == 2.5 for audio, _ in speeds)


async def test_cancel_queued_and_running(store: JobStore) -> None:
    await store.insert(new_job("run"))
    await store.insert(new_job("wait"))
    assert (await store.claim_next()).job_id == "run"  # type: ignore[union-attr]
    before = await store.cancel("wait")
    assert before is not None and before.status is JobStatus.QUEUED
    before = await store.cancel("run")
    assert before is not None and before.status is JobStatus.PROCESSING
    assert not await store.complete("run", None, 1.0)  # the cancel wins over a late result
    for job_id in ("run", "wait"):
        assert (await store.get(job_id)).status is JobStatus.CANCELLED  # type: ignore[union-attr]
    again = await store.cancel("run")
    assert again is not None and again.status is JobStatus.CANCELLED  # unchanged, reported as is
    assert await store.cancel("nope") is None
    assert await store.count(JobStatus.QUEUED) == 0


async def test_crashes_requeue_until_the_limit(store: JobStore) -> None:
    await store.insert(new_job("a"))
    for attempt in (1, 2):
        job = await store.claim_next()
        assert job is not None and job.attempts == attempt
        assert not await store.requeue_crashed("a", max_attempts=3)
    job = await store.claim_next()
    assert job is not None and job.attempts == 3
    assert await store.requeue_crashed("a", max_attempts=3)
    failed = await store.get("a")
    assert failed is not None and failed.status is JobStatus.FAILED and "3 times" in (failed.error or "")


async def test_release_refunds_the_attempt(store: JobStore) -> None:
    await store.insert(new_job("a"))
    await store.claim_next()
    await store.release("a")
    job = await store.get("a")
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
    assert job.started_at is None


def _chunk(start: float, end: float, text: str, channel: int = 0) -> dict[str, object]:
    segment = {"id": 0, "start": start + 0.2, "end": end - 0.2, "text": text}
    return {"channel": channel, "start": start, "end": end, "segments": [segment], "transcribed_s": end}


async def test_checkpoints_are_kept_for_a_running_job_until_it_ends(store: JobStore) -> None:
    await store.insert(new_job("long"))
    assert not await store.save_checkpoint("long", _chunk(0, 28, " a")), "only a running job keeps them"
    await store.claim_next()
    assert await store.save_checkpoint("long", _chunk(30, 55, " b"))
    assert await store.save_checkpoint("long", _chunk(0, 28, " a"))
    assert await store.save_checkpoint("long", _chunk(0, 28, " a"))  # a chunk kept twice is kept once
    assert [c["start"] for c in await store.checkpoints("long")] == [0, 30]
    running = await store.get("long")
    assert running is not None and running.transcribed_s == 28  # the last one kept
    # Back in the queue (a crash, a restart, stepping aside): the checkpoints stay.
    await store.release("long")
    assert len(await store.checkpoints("long")) == 2
    queued = await store.get("long")
    assert queued is not None and queued.transcribed_s == 28
    await store.claim_next()
    assert await store.complete("long", "en", 60.0)
    assert await store.checkpoints("long") == []
    assert not await store.save_checkpoint("long", _chunk(60, 70, " c")), "an ended job keeps none"
    for end in ("fail", "cancel"):
        job_id = f"ends-by-{end}"
        await store.insert(new_job(job_id))
        await store.claim_next()
        assert await store.save_checkpoint(job_id, _chunk(0, 10, " x"))
        await (store.fail(job_id, "no") if end == "fail" else store.cancel(job_id))
        assert await store.checkpoints(job_id) == []


async def test_a_crash_past_the_limit_names_where_it_crashed(store: JobStore) -> None:
    await store.insert(new_job("poison"))
    await store.claim_next()
    assert await store.requeue_crashed("poison", max_attempts=1, detail=" It crashed after 12:30.")
    job = await store.get("poison")
    assert job is not None and (job.error or "").endswith("It crashed after 12:30.")


async def test_outranked_follows_the_claim_order(store: JobStore) -> None:
    await store.insert(new_job("long"))
    running = await store.claim_next()
    assert running is not None
    await store.insert(new_job("later"))
    assert not await store.outranked(running), "an equal priority that came later waits its turn"
    await store.insert(new_job("high", priority=5))
    assert await store.outranked(running)
    urgent_running = await store.claim_next()  # "high" runs now
    assert urgent_running is not None and urgent_running.job_id == "high"
    assert not await store.outranked(urgent_running)


async def test_listing_paging_retention(store: JobStore) -> None:
    for i in range(5):
        await store.insert(new_job(f"j{i}"))
    for _ in range(2):
        job = await store.claim_next()
        assert job is not None
        await store.complete(job.job_id, None, 1.0)
    page = await store.list_jobs(limit=3)
    assert [j.job_id for j in page] == ["j4", "j3", "j2"]
    rest = await store.list_jobs(limit=3, before_seq=page[-1].seq)
    assert [j.job_id for j in rest] == ["j1", "j0"]
    done = await store.list_jobs([JobStatus.COMPLETED])
    assert [j.job_id for j in done] == ["j1", "j0"]
    expired = await store.expired(time.time() + 1)
    assert {j.job_id for j in expired} == {"j0", "j1"}
    assert not await store.delete_finished("j2")  # queued: never removed
    assert await store.delete_finished("j0")
    assert await store.get("j0") is None
    assert {j.job_id for j in await store.list_jobs()} == {"j1", "j2", "j3", "j4"}
    assert await store.audio_files() == {"j1.wav", "j2.wav", "j3.wav", "j4.wav"}


async def test_loaded_model_overtakes_only_within_patience(store: JobStore) -> None:
    await store.insert(new_job("other", model="base.en"))
    await store.insert(new_job("loaded"))
    job = await store.claim_next(prefer={"tiny.en"}, patience_s=60)
    assert job is not None and job.job_id == "loaded"
    await store.insert(new_job("loaded2"))
    job = await store.claim_next(prefer={"tiny.en"}, patience_s=0)
    assert job is not None and job.job_id == "other"


# -- Redis only: leases across instances ---------------------------------------------------


@pytest.fixture
async def two_instances(prefix: str) -> AsyncIterator[tuple[RedisJobStore, RedisJobStore]]:
    a = redis_store(prefix, lease_s=0.6)
    b = redis_store(prefix, lease_s=0.6)
    a.instance_id, b.instance_id = "instance-a", "instance-b"
    yield a, b
    await a.clear()
    await a.close()
    await b.close()


async def test_expired_lease_is_reclaimed_and_only_the_holder_completes(
    two_instances: tuple[RedisJobStore, RedisJobStore],
) -> None:
    a, b = two_instances
    await a.insert(new_job("x"))
    claimed = await a.claim_next()
    assert claimed is not None and claimed.attempts == 1
    assert await b.claim_next() is None  # a holds it
    assert await b.reclaim_expired() == ([], [])  # the lease is still live
    await asyncio.sleep(0.8)  # a "dies": no renewal
    assert await b.reclaim_expired() == (["x"], [])
    again = await b.claim_next()
    assert again is not None and again.attempts == 2  # the attempt count crosses instances
    lost: list[tuple[str, str]] = []
    a.on_lease_lost = lambda job_id, why: lost.append((job_id, why))
    await a.renew_leases()
    assert lost == [("x", "lost")]
    assert not await a.complete("x", None, 1.0)  # the stale worker's result is dropped
    assert await b.complete("x", None, 1.0)
    job = await b.get("x")
    assert job is not None and job.status is JobStatus.COMPLETED and job.attempts == 2


async def test_renewal_keeps_a_lease_and_reports_a_cancel(
    two_instances: tuple[RedisJobStore, RedisJobStore],
) -> None:
    a, b = two_instances
    await a.insert(new_job("x"))
    await a.claim_next()
    for _ in range(4):
        await asyncio.sleep(0.3)
        await a.renew_leases()
        assert await b.reclaim_expired() == ([], [])
    seen: list[tuple[str, str]] = []
    a.on_lease_lost = lambda job_id, why: seen.append((job_id, why))
    await b.cancel("x")
    await a.renew_leases()
    assert seen == [("x", "cancelled")]


async def test_reclaim_fails_a_job_past_the_attempt_limit(prefix: str) -> None:
    store = redis_store(prefix, lease_s=0.2, max_attempts=2)  # type: ignore[arg-type]
    try:
        await store.insert(new_job("x"))
        for expected in ((["x"], []), ([], ["x"])):
            assert await store.claim_next() is not None
            store._leases.clear()  # the instance "died" holding it
            await asyncio.sleep(0.3)
            assert await store.reclaim_expired() == expected
        job = await store.get("x")
        assert job is not None and job.status is JobStatus.FAILED and "2 times" in (job.error or "")
    finally:
        await store.clear()
        await store.close()


async def test_concurrent_claims_hand_each_job_out_once(prefix: str) -> None:
    stores = [redis_store(prefix) for _ in range(3)]
    try:
        for i in range(30):
            await stores[0].insert(new_job(f"j{i:02d}"))

        async def drain(s: RedisJobStore) -> list[str]:
            got = []
            while (job := await s.claim_next()) is not None:
                got.append(job.job_id)
            return got

        results = await asyncio.gather(*(drain(s) for s in stores))
        everything = [job_id for got in results for job_id in got]
        assert sorted(everything) == [f"j{i:02d}" for i in range(30)]
    finally:
        await stores[0].clear()
        for s in stores:
            await s.close()


async def test_unreachable_redis_is_a_clear_503() -> None:
    store = RedisJobStore("redis://127.0.0.1:1/0", "nowhere")
    store.end_write_retry_s = 0.5
    try:
        with pytest.raises(StoreUnavailable) as info:
            await store.insert(new_job("a"))
        assert info.value.status == 503 and "Redis" in info.value.message
        assert not store.reachable
        with pytest.raises(StoreUnavailable):
            await store.claim_next()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):  # an ending write retries a while first
            await store.complete("a", None, 1.0)
        assert time.monotonic() - started >= 0.25
        assert not await store.ping()
    finally:
        await store.close()


def test_logs_never_show_the_redis_password() -> None:
    store = RedisJobStore("redis://user:s3cret@redis.example:6380/2")
    assert "s3cret" not in store.safe_url and store.safe_url.endswith("@redis.example:6380/2")


async def test_the_queue_limit_holds_under_concurrent_inserts(store: JobStore) -> None:
    """Forty uploads at once against a limit of five: five queued, the rest refused, none
    half-stored; the same id again is still answered as taken, not as a full queue."""
    results = await asyncio.gather(
        *(store.insert(new_job(f"j{i}"), max_queued=5) for i in range(40)), return_exceptions=True
    )
    stored = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, QueueAtLimit)]
    assert len(stored) == 5 and len(refused) == 35, results
    assert all(r.queued == 5 for r in refused)
    assert await store.count(JobStatus.QUEUED) == 5
    assert len(await store.list_jobs()) == 5
    with pytest.raises(JobExists):
        await store.insert(new_job(stored[0].job_id), max_queued=5)
    # A claimed job frees a place.
    assert await store.claim_next() is not None
    await store.insert(new_job("late"), max_queued=5)
    with pytest.raises(QueueAtLimit):
        await store.insert(new_job("later"), max_queued=5)


async def test_recovery_without_charge_never_fails_a_job(store: JobStore) -> None:
    """Whole-service kills while inference runs in its own process do not count against the
    job: after more kills than the attempt limit it is still queued, its count unchanged."""
    await store.insert(new_job("victim"))
    if isinstance(store, RedisJobStore):
        store.lease_s, store.max_attempts, store.charge_interrupted = 0.05, 2, False
    for _ in range(5):
        claimed = await store.claim_next()
        assert claimed is not None and claimed.attempts == 1
        if isinstance(store, RedisJobStore):
            store._leases.clear()  # the instance "died" holding it
            await asyncio.sleep(0.2)
            assert await store.reclaim_expired() == (["victim"], [])
        else:
            assert await store.recover_interrupted(max_attempts=2, charge=False) == (["victim"], [])
    job = await store.get("victim")
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0
