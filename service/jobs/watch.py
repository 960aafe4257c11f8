"""Wake-ups for clients waiting on a job (`GET /status/{id}?wait=`), so results need no polling.

Memory only, and only a hint: a waiter always re-reads the journal after subscribing and after
waking, so a missed or spurious wake-up costs nothing but time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator


class JobWatch:
    def __init__(self) -> None:
        self._waiters: dict[str, set[asyncio.Future[None]]] = {}

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[asyncio.Future[None]]:
        """A future that resolves at the job's next change; subscribe before reading its state."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(job_id, set())
        waiters.add(future)
        try:
            yield future
        finally:
            waiters.discard(future)
            if not waiters and self._waiters.get(job_id) is waiters:
                del self._waiters[job_id]

    def notify(self, job_id: str) -> None:
        for future in self._waiters.get(job_id, ()):
            if not future.done():
                future.set_result(None)

    def notify_all(self) -> None:
        """At shutdown: let every waiting request answer now instead of holding the drain."""
        for job_id in list(self._waiters):
            self.notify(job_id)

    @property
    def waiting(self) -> int:
        return sum(len(waiters) for waiters in self._waiters.values())
