"""Retention: finished jobs, their audio and transcripts are removed a set time after they end.

A periodic sweep, touching only completed, failed and cancelled jobs; queued and running ones
are never looked at. Files go first, then the journal row, so a crash between the two leaves a
row the next sweep finishes removing, never an orphaned file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from aiohttp import web

from service.api.keys import EVENTS, JOURNAL, LAYOUT, SETTINGS
from service.jobs.events import JobEvents
from service.store.base import JobStore
from service.store.files import Layout

log = logging.getLogger(__name__)

# Sweep about ten times per retention period, at least every hour, at most every second.
MIN_SWEEP_SECONDS, MAX_SWEEP_SECONDS = 1.0, 3600.0


def sweep_interval(retention_s: float) -> float:
    return max(MIN_SWEEP_SECONDS, min(MAX_SWEEP_SECONDS, retention_s / 10))


def _remove_files(layout: Layout, audio_file: str, job_id: str) -> None:
    layout.audio_path(audio_file).unlink(missing_ok=True)
    layout.transcript_path(job_id).unlink(missing_ok=True)


async def sweep(journal: JobStore, layout: Layout, events: JobEvents, retention_s: float) -> int:
    """Remove every finished job that ended more than `retention_s` ago; returns how many."""
    loop = asyncio.get_running_loop()
    removed = 0
    while expired := await journal.expired(time.time() - retention_s):
        for job in expired:
            await loop.run_in_executor(None, _remove_files, layout, job.audio_file, job.job_id)
            if await journal.delete_finished(job.job_id):
                removed += 1
            events.forget(job.job_id)
    return removed


async def _sweep_forever(app: web.Application) -> None:
    settings = app[SETTINGS]
    while True:
        try:
            removed = await sweep(app[JOURNAL], app[LAYOUT], app[EVENTS], settings.retention_seconds)
            if removed:
                log.info(
                    "retention: removed %d finished job(s) older than %.0f s",
                    removed,
                    settings.retention_seconds,
                )
        except Exception:
            log.exception("retention sweep failed; trying again later")
        await asyncio.sleep(sweep_interval(settings.retention_seconds))


async def retention_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs after the journal is open (registered after the service context)."""
    task = None
    if app[SETTINGS].retention_seconds > 0:
        task = asyncio.create_task(_sweep_forever(app), name="retention")
    yield
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
