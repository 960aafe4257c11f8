"""Job control: cancel, list, the queue in run order with wait estimates, and backpressure."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Collection
from dataclasses import dataclass
from statistics import median
from typing import Any

from service.errors import (
    BadRequest,
    InsufficientStorage,
    JobFinished,
    JobNotFound,
    QueueFull,
    ServiceUnavailable,
)
from service.inference.worker import Worker
from service.jobs.job import JOB_ID_PATTERN, Job, JobStatus
from service.jobs.view import job_summary, queued_job, running_job
from service.jobs.watch import JobWatch
from service.store.base import JobStore
from service.store.cluster import ClusterBus
from service.store.files import Layout, human_size

log = logging.getLogger(__name__)

DEFAULT_PAGE = 50
MAX_PAGE = 500
# Real-time factor assumed before any job has completed here (tiny.en on a slow CPU core).
ASSUMED_RTF = 0.5
# Audio length of a job assumed before any job has completed here.
ASSUMED_JOB_AUDIO_S = 30.0
# Bounds on the Retry-After a full queue answers with.
RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S = 1, 600


def parse_statuses(raw: str | None) -> list[JobStatus]:
    if not raw:
        return []
    try:
        # An empty name ("queued," or ",,") is a mistake too: it matches no status.
        return [JobStatus(part.strip().lower()) for part in raw.split(",")]
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise BadRequest(f"status must be one or more of {names} (comma-separated), not {raw!r}.") from None


@dataclass(frozen=True)
class Cancelled:
    job_id: str
    previous: JobStatus
    # Whether a running decode was told to stop (here or on the instance that runs it).
    stopping: bool

    def body(self) -> dict[str, Any]:
        message = (
            "Cancelled; the running decode stops within a few seconds."
            if self.stopping
            else "Cancelled before it started."
        )
        return {
            "job_id": self.job_id,
            "status": JobStatus.CANCELLED.value,
            "previous_status": self.previous.value,
            "message": message,
        }


def _median_rtf(speeds: list[tuple[float, float]]) -> float | None:
    """Median processing time per audio second over recent jobs; None before the first."""
    return median(p / a for a, p in speeds) if speeds else None


def _remaining_s(job: Job, rtf: float) -> float:
    return max(0.0, (1.0 - job.progress) * (job.duration_s or 0.0) * rtf)


async def queue_full(store: JobStore, queued: int, limit: int, workers: int) -> QueueFull:
    """The 429 for a full queue, with a Retry-After estimated from recent jobs' speed."""
    speeds = await store.recent_speeds()
    rtf = _median_rtf(speeds) or ASSUMED_RTF
    typical = median(a for a, _ in speeds) if speeds else ASSUMED_JOB_AUDIO_S
    # One queue place frees up each time a job finishes: about one typical job's time per worker.
    retry = math.ceil(typical * rtf / workers)
    retry = max(RETRY_AFTER_MIN_S, min(RETRY_AFTER_MAX_S, retry))
    return QueueFull(
        f"The queue is full ({queued} jobs waiting, limit {limit}); send the upload again in {retry} s.",
        headers={"Retry-After": str(retry)},
    )


class JobControl:
    """Changing and listing jobs. `lock` is the uploads' lock: a resubmission of a cancelled id
    waits for the cancel's clean-up."""

    def __init__(
        self,
        store: JobStore,
        layout: Layout,
        worker: Worker,
        watch: JobWatch,
        lock: asyncio.Lock,
        workers: int,
        max_queue: int,
        cluster: ClusterBus | None = None,
        min_free_bytes: int = 0,
    ) -> None:
        self.store = store
        self.layout = layout
        self.worker = worker
        self.watch = watch
        self.lock = lock
        self.workers = workers
        self.max_queue = max_queue
        self.cluster = cluster
        self.min_free_bytes = min_free_bytes

    def check_accepting(self) -> None:
        """Uploads are refused while stopping, before their body is read."""
        if self.worker.stopping:
            raise ServiceUnavailable("The service is shutting down; send the upload again in a moment.")

    async def admit_upload(self) -> None:
        """Everything an upload must pass before its body is read, so a refusal stores nothing:
        the service is not stopping, the disk has room, the queue has room."""
        self.check_accepting()
        await self.check_disk_room()
        await self.check_queue_room()

    async def check_disk_room(self) -> None:
        """Refuse an upload while the storage is below --min-free-mb, before its body is read:
        a full disk would stop the journal and every transcript, not just this upload."""
        if not self.min_free_bytes:
            return
        free = await asyncio.get_running_loop().run_in_executor(None, self.layout.free_bytes)
        if free < self.min_free_bytes:
            raise InsufficientStorage(
                f"The service's storage is nearly full ({human_size(free)} free, "
                f"--min-free-mb is {human_size(self.min_free_bytes)}); nothing was stored. "
                "Free space on the storage volume (or lower --retention-days), then send it again."
            )

    async def check_queue_room(self) -> None:
        """Backpressure: refuse an upload while the queue is at its limit, before its body is read.

        The store checks again as it inserts (atomically), for uploads that raced past here."""
        if not self.max_queue:
            return
        queued = await self.store.count(JobStatus.QUEUED)
        if queued >= self.max_queue:
            raise await queue_full(self.store, queued, self.max_queue, self.workers)

    async def cancel(self, job_id: str) -> Cancelled:
        """A queued job ends at once; a running one stops at its next window."""
        worker = self.worker
        async with self.lock:
            before = await self.store.cancel(job_id) if JOB_ID_PATTERN.match(job_id) else None
            if before is None:
                raise JobNotFound(f"No job with id {job_id!r}.")
            if before.status.finished:
                raise JobFinished(
                    f"Job {job_id!r} is already {before.status.value}; there is nothing to cancel."
                )
            running = before.status is JobStatus.PROCESSING
            stopping = running and worker.cancel_running(job_id)
            elsewhere = running and not stopping and self.cluster is not None
            if elsewhere and self.cluster is not None:
                # Another instance runs it: tell it (its lease renewal would notice too).
                self.cluster.cancel(job_id)
            if not stopping:
                # Queued (or no decode of it runs here): nothing else will touch its audio.
                await self.layout.remove_job_files_async(before.audio_file)
        if not stopping:
            await worker.job_ended(job_id)
        else:
            self.watch.notify(job_id)  # the worker says END once the decode has stopped
        log.info("job %s: cancelled (was %s)", job_id, before.status.value, extra={"job_id": job_id})
        return Cancelled(job_id, before.status, stopping or elsewhere)

    async def list_jobs(
        self, statuses: Collection[JobStatus], limit: int, cursor: int | None
    ) -> dict[str, Any]:
        """Newest first; `next_cursor` fetches the next page."""
        jobs = await self.store.list_jobs(statuses, limit + 1, cursor)
        more = len(jobs) > limit
        jobs = jobs[:limit]
        return {
            "jobs": [job_summary(job).body() for job in jobs],
            "count": len(jobs),
            "next_cursor": str(jobs[-1].seq) if more else None,
        }

    async def queue(self) -> dict[str, Any]:
        """The running jobs, the queued ones in run order, and estimates of the wait.

        Estimates come from recent real-time factors on this machine and assume the workers share
        the queue evenly; a job for a model that is not loaded yet also waits for its load.
        """
        store = self.store
        measured = _median_rtf(await store.recent_speeds())
        rtf = measured if measured is not None else ASSUMED_RTF
        if store.shared:  # every instance's running jobs; each of them is a slot
            running = sorted(await store.list_jobs([JobStatus.PROCESSING], 1000), key=lambda j: j.seq)
        else:
            running = [j for job_id in self.worker.active_jobs if (j := await store.get(job_id)) is not None]
        queued = await store.queued_in_order()
        slots = [_remaining_s(job, rtf) for job in running]
        slots += [0.0] * max(0, self.workers - len(slots))
        running_out = [running_job(job, _remaining_s(job, rtf)).body() for job in running]
        queued_out = []
        for position, job in enumerate(queued, start=1):
            index = min(range(len(slots)), key=slots.__getitem__)  # the slot that frees up first
            start = slots[index]
            slots[index] += (job.duration_s or 0.0) * rtf
            queued_out.append(queued_job(job, position, start).body())
        return {
            "running": running_out,
            "queued": queued_out,
            "queue_length": len(queued_out),
            "workers": self.workers,
            "real_time_factor": round(measured, 4) if measured is not None else None,
            "estimated_wait_s": round(min(slots), 1),  # for a job uploaded now at normal priority
            "max_queue": self.max_queue or None,
        }
