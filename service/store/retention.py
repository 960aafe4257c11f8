"""Retention: finished jobs, their audio and transcripts are removed a set time after they end.

A periodic sweep, touching only completed, failed and cancelled jobs; queued and running ones
are never looked at. Files go first, then the journal row, so a crash between the two leaves a
row the next sweep finishes removing, never an orphaned file.
"""

from __future__ import annotations

import asyncio
import logging
import time

from service.jobs.events import JobEvents
from service.store.base import JobStore
from service.store.files import Layout
from service.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# Sweep about ten times per retention period, at least every hour, at most every second.
MIN_SWEEP_SECONDS, MAX_SWEEP_SECONDS = 1.0, 3600.0


def sweep_interval(retention_s: float) -> float:
    return max(MIN_SWEEP_SECONDS, min(MAX_SWEEP_SECONDS, retention_s / 10))


async def sweep(journal: JobStore, layout: Layout, events: JobEvents, retention_s: float) -> int:
    """Remove every finished job that ended more than `retention_s` ago; returns how many."""
    removed = 0
    while expired := await journal.expired(time.time() - retention_s):
        for job in expired:
            await layout.remove_job_files_async(job.audio_file, job.job_id)
            if await journal.delete_finished(job.job_id):
                removed += 1
            events.forget(job.job_id)
    return removed


class Retention:
    """The periodic sweep, started once the store is open and stopped before it closes."""

    def __init__(self, store: JobStore, layout: Layout, events: JobEvents, retention_s: float) -> None:
        self.store = store
        self.layout = layout
        self.events = events
        self.retention_s = retention_s
        self._tasks = BackgroundTasks(log)

    def start(self) -> None:
        if self.retention_s > 0:
            self._tasks.spawn(self._sweep_forever(), name="retention")

    async def close(self) -> None:
        await self._tasks.close()

    async def _sweep_forever(self) -> None:
        while True:
            try:
                removed = await sweep(self.store, self.layout, self.events, self.retention_s)
                if removed:
                    log.info(
                        "retention: removed %d finished job(s) older than %.0f s", removed, self.retention_s
                    )
            except Exception:
                log.exception("retention sweep failed; trying again later")
            await asyncio.sleep(sweep_interval(self.retention_s))
