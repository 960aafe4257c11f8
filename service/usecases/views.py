"""Showing jobs: one job as GET /status (and streams) show it, waiting for it to end, its result.

Reads only: the store says what a job is, the watch wakes waiters when it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from typing import Any

import aiofiles

from service.errors import BadRequest, JobNotFound, TranscriptNotReady
from service.jobs import formats
from service.jobs.job import JOB_ID_PATTERN, Job, JobStatus, checkpoints_reach
from service.jobs.view import job_view
from service.jobs.watch import JobWatch
from service.store.base import JobStore
from service.store.files import Layout

# Longest long-poll on /status?wait=: below common proxy and client read timeouts.
MAX_WAIT_SECONDS = 60.0


def wait_seconds(raw: str | None) -> float:
    """A client's `wait` parameter: any number of seconds from 0 up, `inf` included, is cut to
    MAX_WAIT_SECONDS (a client asking for longer gets the longest there is); NaN, a negative
    number and text are refused."""
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, got {raw!r}.") from None
    if not seconds >= 0:  # also NaN, which compares false with everything
        raise BadRequest(
            f"wait must be a number of seconds from 0 up (at most {MAX_WAIT_SECONDS:g} are used), "
            f"got {raw!r}."
        )
    return min(seconds, MAX_WAIT_SECONDS)


class JobViews:
    """Reads of jobs and their results. `stopping` tells waits to give up at shutdown."""

    def __init__(
        self, store: JobStore, layout: Layout, watch: JobWatch, stopping: Callable[[], bool]
    ) -> None:
        self.store = store
        self.layout = layout
        self.watch = watch
        self._stopping = stopping

    async def get(self, job_id: str) -> Job:
        job = await self.store.get(job_id) if JOB_ID_PATTERN.match(job_id) else None
        if job is None:
            raise JobNotFound(f"No job with id {job_id!r}.")
        return job

    async def load_result(self, job: Job) -> dict[str, Any]:
        path = self.layout.transcript_path(job.job_id)
        try:
            async with aiofiles.open(path, encoding="utf-8") as fp:
                raw = await fp.read()
        except FileNotFoundError:
            raise TranscriptNotReady(
                f"Job {job.job_id!r} is completed but its transcript file is missing from storage."
            ) from None
        data: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(None, json.loads, raw)
        return data

    async def status(self, job: Job) -> dict[str, Any]:
        """What GET /status says about a job; live streams send the same as their `state` messages."""
        position = await self.store.queue_position(job) if job.status is JobStatus.QUEUED else None
        transcript = None
        if job.status is JobStatus.COMPLETED:
            transcript = (await self.load_result(job))["text"]
        return job_view(job, position, transcript).body()

    async def wait_until_finished(self, job: Job, seconds: float) -> Job:
        """The job once it is completed, failed or cancelled, the wait ran out, or shutdown began."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while not job.status.finished and not self._stopping():
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            with self.watch.watching(job.job_id) as changed:
                job = await self._reload(job.job_id)  # read after subscribing: no wake-up is missed
                if job.status.finished:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed, remaining)
            job = await self._reload(job.job_id)
        return job

    async def _reload(self, job_id: str) -> Job:
        job = await self.store.get(job_id)
        if job is None:  # removed meanwhile (retention)
            raise JobNotFound(f"No job with id {job_id!r}.")
        return job

    async def partial_transcript(self, job: Job, fmt: str) -> tuple[str, str, float]:
        """A queued or running job's transcript so far, from its checkpoints, with its content
        type and how far into the recording it reaches."""
        checkpoints = await self.store.checkpoints(job.job_id)
        if job.options.split_channels:
            for c in checkpoints:
                for s in c.get("segments", ()):
                    s.setdefault("speaker", f"CHANNEL_{int(c.get('channel', 0)) + 1}")
        segments = [dict(s) for c in checkpoints for s in c.get("segments", ())]
        segments.sort(key=lambda s: (float(s["start"]), s.get("speaker") or ""))
        for index, segment in enumerate(segments):
            segment["id"] = index
        reached = checkpoints_reach(checkpoints)
        result = {
            "text": " ".join(str(s["text"]).strip() for s in segments).strip(),
            "language": next((c["language"] for c in checkpoints if c.get("language")), job.language),
            "duration": round(reached, 3),
            "segments": segments,
        }
        body, content_type = await asyncio.get_running_loop().run_in_executor(
            None, formats.render, result, fmt, job.job_id, job.task.value
        )
        return body, content_type, float(job.transcribed_s or reached)

    async def transcript(self, job: Job, fmt: str) -> tuple[str, str]:
        """A completed job's transcript in `fmt`, with its content type."""
        if job.status is not JobStatus.COMPLETED:
            detail = (
                f"it failed: {job.error}" if job.status is JobStatus.FAILED else f"it is {job.status.value}"
            )
            raise TranscriptNotReady(
                f"Job {job.job_id!r} has no transcript: {detail}. "
                f"Poll /status/{job.job_id} until it is completed."
            )
        result = await self.load_result(job)
        # Rendering hours of segments takes tens of milliseconds: not on the event loop.
        return await asyncio.get_running_loop().run_in_executor(
            None, formats.render, result, fmt, job.job_id, job.task.value
        )
