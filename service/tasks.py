"""Fire-and-forget tasks that are neither lost nor silent.

The event loop keeps only a weak reference to a task, so one nobody holds can be collected
mid-run; an exception in a task nobody awaits surfaces, if ever, as a vague "never retrieved"
line at garbage collection; and a task left running at shutdown outlives what it uses (a
closed store, a closed session). `BackgroundTasks` holds each task until it ends, logs an
unexpected exception as soon as it happens, and cancels and awaits the lot on `close()`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class BackgroundTasks:
    """A set of running tasks owned by one object, closed with it.

    Unlike `asyncio.TaskGroup`, a failing task does not cancel its siblings and nothing waits
    for the tasks to end on their own: they are background work, stopped on `close()`.
    The holder stays usable after `close()` (a store may be opened again).
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or log
        self._tasks: dict[asyncio.Task[Any], None] = {}  # insertion-ordered: cancelled in spawn order

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """Run `coro` on the running loop, held here until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = None
        task.add_done_callback(self._ended)
        return task

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio does not report it again later
        if exc is not None:
            self._log.error("background task %s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(list(self._tasks))

    def cancel(self) -> None:
        """Ask every task to stop, in the order they were spawned, without waiting."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        """Cancel every task (in spawn order), then wait until all have ended.

        Their exceptions were logged as they ended; none is raised here. Tasks spawned while
        this waits are cancelled too. Called from one of its own tasks, that one is left alone
        (it cannot wait for itself). Cancelling the caller stops only its waiting.
        """
        me = asyncio.current_task()
        while running := [task for task in self._tasks if task is not me]:
            for task in running:
                task.cancel()
            await asyncio.wait(running)
