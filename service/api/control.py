"""Job control over HTTP: cancel, list, the queue view with wait estimates, and backpressure."""

from __future__ import annotations

import asyncio
import logging
import math
from statistics import median
from typing import Any

from aiohttp import web

from service.api.keys import CLUSTER, JOURNAL, LAYOUT, SETTINGS, SUBMIT_LOCK, WATCH, WORKER
from service.errors import BadRequest, JobFinished, JobNotFound, QueueFull
from service.jobs.job import JOB_ID_PATTERN, Job, JobStatus, iso_time, priority_name

log = logging.getLogger(__name__)

DEFAULT_PAGE = 50
MAX_PAGE = 500
# Real-time factor assumed before any job has completed here (tiny.en on a slow CPU core).
ASSUMED_RTF = 0.5
# Audio length of a job assumed before any job has completed here.
ASSUMED_JOB_AUDIO_S = 30.0
# Bounds on the Retry-After a full queue answers with.
RETRY_AFTER_MIN_S, RETRY_AFTER_MAX_S = 1, 600


def job_summary(job: Job) -> dict[str, Any]:
    """The fields of a job that lists and the queue view show."""
    body: dict[str, Any] = {
        "job_id": job.job_id,
        "status": job.status.value,
        "progress": round(job.progress, 4),
        "priority": job.priority,
        "model": job.model,
        "language": job.language,
        "task": job.task.value,
        "duration_s": round(job.duration_s, 3) if job.duration_s is not None else None,
        "filename": job.original_filename,
        "attempts": job.attempts,
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "completed_at": iso_time(job.completed_at),
    }
    if (name := priority_name(job.priority)) is not None:
        body["priority_name"] = name
    if job.error:
        body["error"] = job.error
    if job.note:
        body["note"] = job.note
    return body


async def cancel(request: web.Request) -> web.Response:
    """DELETE /jobs/{id}: a queued job ends at once; a running one stops at its next window."""
    job_id = request.match_info["job_id"]
    journal, layout = request.app[JOURNAL], request.app[LAYOUT]
    worker = request.app[WORKER]
    async with request.app[SUBMIT_LOCK]:  # a resubmission of the same id waits for the clean-up
        before = await journal.cancel(job_id) if JOB_ID_PATTERN.match(job_id) else None
        if before is None:
            raise JobNotFound(f"No job with id {job_id!r}.")
        if before.status.finished:
            raise JobFinished(f"Job {job_id!r} is already {before.status.value}; there is nothing to cancel.")
        stopping = before.status is JobStatus.PROCESSING and worker.cancel_running(job_id)
        elsewhere = before.status is JobStatus.PROCESSING and not stopping and CLUSTER in request.app
        if elsewhere:  # another instance runs it: tell it (its lease renewal would notice too)
            request.app[CLUSTER].cancel(job_id)
        if not stopping:
            # Queued (or no decode of it runs here): nothing else will touch its audio.
            await asyncio.get_running_loop().run_in_executor(
                None, lambda: layout.audio_path(before.audio_file).unlink(missing_ok=True)
            )
    if not stopping:
        await worker.job_ended(job_id)
    else:
        request.app[WATCH].notify(job_id)  # the worker says END once the decode has stopped
    log.info("job %s: cancelled (was %s)", job_id, before.status.value, extra={"job_id": job_id})
    message = (
        "Cancelled; the running decode stops within a few seconds."
        if stopping or elsewhere
        else "Cancelled before it started."
    )
    return web.json_response(
        {
            "job_id": job_id,
            "status": JobStatus.CANCELLED.value,
            "previous_status": before.status.value,
            "message": message,
        }
    )


def _statuses(raw: str | None) -> list[JobStatus]:
    if not raw:
        return []
    try:
        return [JobStatus(part.strip().lower()) for part in raw.split(",") if part.strip()]
    except ValueError:
        names = ", ".join(s.value for s in JobStatus)
        raise BadRequest(f"status must be one or more of {names} (comma-separated), not {raw!r}.") from None


def _int_param(request: web.Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {raw!r}.") from None
    if not low <= value <= high:
        raise BadRequest(f"{name} must be between {low} and {high}, not {value}.")
    return value


async def list_jobs(request: web.Request) -> web.Response:
    """GET /jobs?status=a,b&limit=N&cursor=C: newest first; `next_cursor` fetches the next page."""
    statuses = _statuses(request.query.get("status"))
    limit = _int_param(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    cursor = _int_param(request, "cursor", None, 1, 2**62)
    assert limit is not None
    jobs = await request.app[JOURNAL].list_jobs(statuses, limit + 1, cursor)
    more = len(jobs) > limit
    jobs = jobs[:limit]
    return web.json_response(
        {
            "jobs": [job_summary(job) for job in jobs],
            "count": len(jobs),
            "next_cursor": str(jobs[-1].seq) if more else None,
        }
    )


def _median_rtf(speeds: list[tuple[float, float]]) -> float | None:
    """Median processing time per audio second over recent jobs; None before the first."""
    return median(p / a for a, p in speeds) if speeds else None


def _remaining_s(job: Job, rtf: float) -> float:
    return max(0.0, (1.0 - job.progress) * (job.duration_s or 0.0) * rtf)


async def queue_view(request: web.Request) -> web.Response:
    """GET /queue: the running jobs, the queued ones in run order, and estimates of the wait.

    Estimates come from recent real-time factors on this machine and assume the workers share
    the queue evenly; a job for a model that is not loaded yet also waits for its load.
    """
    journal, settings = request.app[JOURNAL], request.app[SETTINGS]
    worker = request.app[WORKER]
    measured = _median_rtf(await journal.recent_speeds())
    rtf = measured if measured is not None else ASSUMED_RTF
    if journal.shared:  # every instance's running jobs; each of them is a slot
        running = sorted(await journal.list_jobs([JobStatus.PROCESSING], 1000), key=lambda j: j.seq)
    else:
        running = [job for job_id in worker.active_jobs if (job := await journal.get(job_id)) is not None]
    queued = await journal.queued_in_order()
    slots = [_remaining_s(job, rtf) for job in running]
    slots += [0.0] * max(0, settings.workers - len(slots))
    running_out = []
    for job in running:
        running_out.append({**job_summary(job), "estimated_remaining_s": round(_remaining_s(job, rtf), 1)})
    queued_out = []
    for position, job in enumerate(queued, start=1):
        index = min(range(len(slots)), key=slots.__getitem__)  # the slot that frees up first
        start = slots[index]
        slots[index] += (job.duration_s or 0.0) * rtf
        queued_out.append({**job_summary(job), "position": position, "estimated_start_s": round(start, 1)})
    return web.json_response(
        {
            "running": running_out,
            "queued": queued_out,
            "queue_length": len(queued_out),
            "workers": settings.workers,
            "real_time_factor": round(measured, 4) if measured is not None else None,
            "estimated_wait_s": round(min(slots), 1),  # for a job uploaded now at normal priority
            "max_queue": settings.max_queue or None,
        }
    )


async def check_queue_room(app: web.Application) -> None:
    """Backpressure: refuse an upload while the queue is at its limit, before its body is read."""
    settings = app[SETTINGS]
    if not settings.max_queue:
        return
    journal = app[JOURNAL]
    queued = await journal.count(JobStatus.QUEUED)
    if queued < settings.max_queue:
        return
    speeds = await journal.recent_speeds()
    rtf = _median_rtf(speeds) or ASSUMED_RTF
    typical = median(a for a, _ in speeds) if speeds else ASSUMED_JOB_AUDIO_S
    # One queue place frees up each time a job finishes: about one typical job's time per worker.
    retry = math.ceil(typical * rtf / settings.workers)
    retry = max(RETRY_AFTER_MIN_S, min(RETRY_AFTER_MAX_S, retry))
    raise QueueFull(
        f"The queue is full ({queued} jobs waiting, limit {settings.max_queue}); "
        f"send the upload again in {retry} s.",
        headers={"Retry-After": str(retry)},
    )


def setup_control_routes(app: web.Application) -> None:
    app.router.add_delete("/jobs/{job_id}", cancel, name="cancel")
    app.router.add_get("/jobs", list_jobs, name="jobs")
    app.router.add_get("/queue", queue_view, name="queue")
