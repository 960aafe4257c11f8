"""The shared retry pause (`service.backoff`) and background-task holder (`service.tasks`)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from service.backoff import Backoff
from service.inference.process import RESTART_BACKOFF_SECONDS
from service.tasks import BackgroundTasks
from service.webhooks.dispatcher import BACKOFF_JITTER, backoff_delay

# -- Backoff --------------------------------------------------------------------------------


def test_delays_double_up_to_the_cap_then_stay() -> None:
    backoff = Backoff(0.5, 10.0)
    assert [backoff.next() for _ in range(8)] == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0, 10.0]
    assert backoff.attempts == 8


def test_reset_starts_over_at_base() -> None:
    backoff = Backoff(0.25, 2.0)
    for _ in range(5):
        backoff.next()
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.next() == 0.25
    assert backoff.next() == 0.5


def test_delay_is_stateless_and_one_based() -> None:
    backoff = Backoff(1.0, 300.0, factor=3.0)
    assert [backoff.delay(n) for n in (1, 2, 3, 4, 5, 6, 7)] == [1.0, 3.0, 9.0, 27.0, 81.0, 243.0, 300.0]
    assert backoff.delay(0) == 1.0  # no attempt yet reads as the first
    assert backoff.attempts == 0


def test_huge_attempt_numbers_stay_at_the_cap() -> None:
    assert Backoff(1.0, 300.0).delay(10**6) == 300.0
    assert Backoff(0.0, 5.0).delay(10**6) == 0.0


def test_jitter_only_shortens_by_up_to_its_fraction() -> None:
    assert Backoff(2.0, 60.0, jitter=0.25, rand=lambda: 0.0).delay(3) == 8.0
    assert Backoff(2.0, 60.0, jitter=0.25, rand=lambda: 1.0).delay(3) == 6.0
    for _ in range(200):
        assert 45.0 <= Backoff(2.0, 60.0, jitter=0.25).delay(10) <= 60.0


def test_stepped_schedule_repeats_its_last_delay() -> None:
    backoff = Backoff.stepped(RESTART_BACKOFF_SECONDS)
    assert [backoff.next() for _ in range(8)] == [0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 30.0, 30.0]
    backoff.reset()
    assert backoff.next() == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [
        {"base": -1.0, "cap": 1.0},
        {"base": 2.0, "cap": 1.0},
        {"base": 1.0, "cap": 2.0, "factor": 0.5},
        {"base": 1.0, "cap": 2.0, "jitter": 1.5},
    ],
)
def test_nonsense_settings_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)
    with pytest.raises(ValueError):
        Backoff.stepped([])


def test_webhook_delays_keep_their_numbers() -> None:
    for attempt, full in [(1, 1.0), (2, 2.0), (5, 16.0), (9, 256.0), (10, 300.0), (40, 300.0)]:
        for _ in range(20):
            assert full * (1 - BACKOFF_JITTER) <= backoff_delay(attempt, 1.0) <= full


# -- BackgroundTasks ------------------------------------------------------------------------


async def test_a_spawned_task_is_held_until_it_ends() -> None:
    tasks = BackgroundTasks()
    gate = asyncio.Event()
    ran: list[str] = []

    async def work() -> None:
        await gate.wait()
        ran.append("done")

    task = tasks.spawn(work(), name="held")
    del task
    gc.collect()  # only the holder references it now
    assert len(tasks) == 1
    assert [t.get_name() for t in tasks] == ["held"]
    gate.set()
    await asyncio.sleep(0.01)
    assert ran == ["done"]
    assert len(tasks) == 0


async def test_a_failing_task_is_logged_not_dropped(caplog: pytest.LogCaptureFixture) -> None:
    owner = logging.getLogger("tests.owner")
    tasks = BackgroundTasks(owner)

    async def boom() -> None:
        raise RuntimeError("kaput")

    with caplog.at_level(logging.ERROR, logger="tests.owner"):
        task = tasks.spawn(boom(), name="boom")
        await asyncio.wait({task})
        await asyncio.sleep(0)  # done callbacks run on the next pass
    records = [r for r in caplog.records if r.name == "tests.owner"]
    assert len(records) == 1
    assert "boom" in records[0].getMessage()
    assert records[0].exc_info is not None and "kaput" in str(records[0].exc_info[1])
    assert len(tasks) == 0


async def test_a_cancelled_task_is_not_logged(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks()
    task = tasks.spawn(asyncio.sleep(60))
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR):
        task.cancel()
        await asyncio.wait({task})
        await asyncio.sleep(0)
    assert not caplog.records
    assert len(tasks) == 0


async def test_close_cancels_in_spawn_order_and_awaits_all() -> None:
    tasks = BackgroundTasks()
    order: list[str] = []
    finished: list[str] = []

    async def forever(name: str) -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            order.append(name)
            await asyncio.sleep(0.01)  # clean-up that close() must wait for
            finished.append(name)
            raise

    spawned = [tasks.spawn(forever(name), name=name) for name in ("first", "second", "third")]
    await asyncio.sleep(0)
    await tasks.close()
    assert order == ["first", "second", "third"]
    assert sorted(finished) == ["first", "second", "third"]
    assert all(t.cancelled() for t in spawned)
    assert len(tasks) == 0
    await tasks.close()  # twice is harmless


async def test_close_raises_nothing_and_logs_what_failed(caplog: pytest.LogCaptureFixture) -> None:
    tasks = BackgroundTasks()

    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            raise RuntimeError("clean-up broke") from None

    tasks.spawn(fails_when_cancelled(), name="fragile")
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="service.tasks"):
        await tasks.close()
    assert any("fragile" in r.getMessage() for r in caplog.records)


async def test_close_also_stops_tasks_spawned_while_it_waits() -> None:
    tasks = BackgroundTasks()
    late: list[asyncio.Task[None]] = []

    async def spawns_on_the_way_out() -> None:
        try:
            await asyncio.sleep(60)
        finally:
            late.append(tasks.spawn(asyncio.sleep(60)))

    tasks.spawn(spawns_on_the_way_out())
    await asyncio.sleep(0)
    await tasks.close()
    assert len(late) == 1 and late[0].cancelled()
    assert len(tasks) == 0


async def test_close_from_one_of_its_own_tasks_does_not_wait_for_itself() -> None:
    tasks = BackgroundTasks()
    other = tasks.spawn(asyncio.sleep(60))

    async def closer() -> str:
        await tasks.close()
        return "closed"

    me = tasks.spawn(closer())
    assert await asyncio.wait_for(me, 5) == "closed"
    assert other.cancelled()


async def test_the_holder_is_usable_after_close() -> None:
    tasks = BackgroundTasks()
    await tasks.close()

    async def value() -> int:
        return 7

    assert await tasks.spawn(value()) == 7
