"""The service's own job routes: upload, status, download, cancel, list, queue.

Thin adapters: read the request, call a use case on the services object, answer in JSON.
"""

from __future__ import annotations

from aiohttp import web

from service.api.keys import SERVICES
from service.api.uploads import read_form
from service.errors import BadRequest
from service.jobs import formats
from service.usecases import control
from service.usecases.submit import FIELDS
from service.usecases.views import wait_seconds


async def transcribe(request: web.Request) -> web.Response:
    """Accept an upload as a queued job.

    202 when new (or when a failed job is submitted again: it is queued afresh), 200 when the
    same job already exists, 409 when the job_id is taken by different audio or options.
    """
    services = request.app[SERVICES]
    await services.control.admit_upload()  # before the body is read: nothing is stored
    form = await read_form(
        request,
        FIELDS,
        services.submissions.parse,
        services.layout.tmp,
        services.settings.max_upload_bytes,
    )
    job, created = await services.submissions.submit(form.fields, form.upload, form.filename)
    return web.json_response(
        {"job_id": job.job_id, "status": job.status.value},
        status=202 if created else 200,
        headers={"Location": str(request.app.router["status"].url_for(job_id=job.job_id))},
    )


async def status(request: web.Request) -> web.Response:
    """The job's state; with ?wait=N, answers as soon as the job finishes (or after N seconds)."""
    views = request.app[SERVICES].views
    wait = wait_seconds(request.query.get("wait"))
    job = await views.get(request.match_info["job_id"])
    if wait > 0:
        job = await views.wait_until_finished(job, wait)
    return web.json_response(await views.status(job))


async def download(request: web.Request) -> web.Response:
    fmt = formats.check_format(request.query.get("format", "txt").lower())
    views = request.app[SERVICES].views
    job = await views.get(request.match_info["job_id"])
    partial = _flag(request, "partial")
    headers: dict[str, str] = {}
    if partial and not job.status.finished:
        body, content_type, reached = await views.partial_transcript(job, fmt)
        headers = {"X-Transcript-Partial": "true", "X-Transcribed-Seconds": f"{reached:.3f}"}
    else:
        body, content_type = await views.transcript(job, fmt)
    headers["Content-Type"] = content_type
    headers["Content-Disposition"] = f'inline; filename="{job.job_id}.{fmt}"'
    return web.Response(text=body, headers=headers)


def _flag(request: web.Request, name: str) -> bool:
    raw = request.query.get(name, "").strip().lower()
    if raw in ("", "0", "false", "no", "off"):
        return False
    if raw in ("1", "true", "yes", "on"):
        return True
    raise BadRequest(f"{name} must be true or false, not {raw!r}.")


async def cancel(request: web.Request) -> web.Response:
    """DELETE /jobs/{id}: a queued job ends at once; a running one stops at its next window."""
    cancelled = await request.app[SERVICES].control.cancel(request.match_info["job_id"])
    return web.json_response(cancelled.body())


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
    statuses = control.parse_statuses(request.query.get("status"))
    limit = _int_param(request, "limit", control.DEFAULT_PAGE, 1, control.MAX_PAGE)
    cursor = _int_param(request, "cursor", None, 1, 2**62)
    assert limit is not None
    return web.json_response(await request.app[SERVICES].control.list_jobs(statuses, limit, cursor))


async def queue_view(request: web.Request) -> web.Response:
    """GET /queue: the running jobs, the queued ones in run order, and estimates of the wait."""
    return web.json_response(await request.app[SERVICES].control.queue())
