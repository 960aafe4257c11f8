"""What happens to jobs, as it happens: status changes, progress, each decoded segment, the end.

Memory only, and never the truth: a live stream starts from the journal's state and ends with
the journal's final state; these events fill in what happens between. Listeners (webhooks,
metrics) hear every job's events; subscribers (WebSocket and SSE streams) hear one job's.
A job's events are kept while it runs and for a while after it ends, so a client that
reconnects can resume from the last event id it saw.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

# Event types.
STATUS = "status"  # data: {"status": "queued" | "processing"}
PROGRESS = "progress"  # data: {"progress": 0..1}
SEGMENT = "segment"  # data: a segment dict (id, start, end, text)
END = "end"  # data: {"status": "completed" | "failed" | "cancelled"}

# Ended jobs whose events are kept for resuming streams; older ones are dropped first.
KEEP_ENDED_JOBS = 256
KEEP_ENDED_SECONDS = 600.0
# Events kept per job; a very long job's early progress events go first, segments and END stay.
MAX_EVENTS_PER_JOB = 20_000

Listener = Callable[["JobEvent"], None]


@dataclass(frozen=True)
class JobEvent:
    id: int  # increases per job: the SSE event id a client resumes from
    job_id: str
    type: str
    data: dict[str, Any]
    at: float = field(default_factory=time.time)
    # The service instance it happened on, when another one (relayed through Redis); else None.
    origin: str | None = None


@dataclass
class _JobLog:
    events: list[JobEvent] = field(default_factory=list)
    next_id: int = 1
    ended_at: float | None = None
    subscribers: set[asyncio.Queue[JobEvent]] = field(default_factory=set)


class JobEvents:
    """Fan-out of job events on the event loop. Call publish only from the loop's thread."""

    def __init__(self) -> None:
        self._logs: OrderedDict[str, _JobLog] = OrderedDict()
        self._listeners: list[Listener] = []

    def add_listener(self, listener: Listener) -> None:
        """Called with every job's every event, synchronously; it must not block."""
        self._listeners.append(listener)

    def publish(
        self, job_id: str, type: str, data: dict[str, Any] | None = None, origin: str | None = None
    ) -> JobEvent:
        log = self._logs.get(job_id)
        if log is None:
            log = self._logs[job_id] = _JobLog()
        elif type == STATUS and log.ended_at is not None:
            log.ended_at = None  # queued again (resubmitted after a failure): a new run
        event = JobEvent(log.next_id, job_id, type, dict(data or {}), origin=origin)
        log.next_id += 1
        log.events.append(event)
        if len(log.events) > MAX_EVENTS_PER_JOB:
            self._trim(log)
        if type == END:
            log.ended_at = time.monotonic()
            self._logs.move_to_end(job_id)
            self._forget_old()
        for queue in log.subscribers:
            queue.put_nowait(event)
        for listener in self._listeners:
            listener(event)
        return event

    def since(self, job_id: str, last_id: int = 0) -> list[JobEvent]:
        """The job's kept events after `last_id` (all of them for 0)."""
        log = self._logs.get(job_id)
        return [e for e in log.events if e.id > last_id] if log else []

    @contextlib.contextmanager
    def subscribe(self, job_id: str) -> Iterator[asyncio.Queue[JobEvent]]:
        """A queue of the job's events from now on. Subscribe, then read state, then drain."""
        log = self._logs.get(job_id)
        if log is None:
            log = self._logs[job_id] = _JobLog()
        queue: asyncio.Queue[JobEvent] = asyncio.Queue()
        log.subscribers.add(queue)
        try:
            yield queue
        finally:
            log.subscribers.discard(queue)

    def forget(self, job_id: str) -> None:
        """The job is gone (retention removed it)."""
        log = self._logs.get(job_id)
        if log is not None and not log.subscribers:
            del self._logs[job_id]

    def _trim(self, log: _JobLog) -> None:
        for index, event in enumerate(log.events):
            if event.type == PROGRESS:
                del log.events[index]
                return
        del log.events[0]

    def _forget_old(self) -> None:
        now = time.monotonic()
        ended = [job_id for job_id, log in self._logs.items() if log.ended_at is not None]
        excess = len(ended) - KEEP_ENDED_JOBS
        for job_id in ended:
            log = self._logs[job_id]
            assert log.ended_at is not None
            if (excess > 0 or now - log.ended_at > KEEP_ENDED_SECONDS) and not log.subscribers:
                del self._logs[job_id]
                excess -= 1
