"""The aiohttp application: factory, error middleware, start-up and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api import auth, metrics, openai_compat, routes
from service.api.keys import (
    CLUSTER,
    ENGINE,
    EVENTS,
    JOURNAL,
    LAYOUT,
    SETTINGS,
    STARTED_AT,
    SUBMIT_LOCK,
    WATCH,
    WEBHOOKS,
    WORKER,
)
from service.engines import create_catalog, create_engine
from service.engines.base import Engine, ModelCatalog
from service.errors import ServiceError
from service.inference.models import ModelManager
from service.inference.process import ProcessRunner
from service.inference.runner import Runner, ThreadRunner
from service.inference.worker import ProgressWriter, Worker
from service.jobs.events import JobEvents
from service.jobs.watch import JobWatch
from service.settings import Settings
from service.store import files as storage
from service.store import retention
from service.store.base import JobStore
from service.store.cluster import ClusterBus
from service.store.files import Layout
from service.store.redis import RedisJobStore
from service.store.sqlite import SqliteJobStore
from service.webhooks.dispatcher import WebhookDispatcher

log = logging.getLogger(__name__)

# How long shutdown waits for the running decode to reach a window boundary.
STOP_GRACE_SECONDS = 30.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


def _error(
    request: web.Request,
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    exc: BaseException | None = None,
) -> web.Response:
    """The service's own error shape, or OpenAI's on the OpenAI-compatible routes."""
    if openai_compat.is_openai_path(request.path):
        return openai_compat.error_response(status, message, headers, exc)
    return error_response(status, message, headers)


@web.middleware
async def errors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure leaves as JSON {"error": ...} with a fitting status code."""
    try:
        return await handler(request)
    except ServiceError as exc:
        headers = dict(exc.headers)
        if exc.status == 503:
            headers.setdefault("Retry-After", "5")
        return _error(request, exc.status, exc.message, headers or None, exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = None
        if exc.status == 404:
            message = f"No such endpoint: {request.method} {request.path}"
        elif exc.status == 405:
            message = f"{request.method} is not allowed on {request.path}"
            headers = {"Allow": exc.headers.get("Allow", "")}
        elif exc.status == 413:
            message = "The request body is too large."
        else:
            message = exc.reason
        return _error(request, exc.status, message, headers, exc)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return _error(request, 500, "Internal error in the service; its log has the details.")


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    """Storage lock, journal, crash recovery and worker: set up and torn down as one."""
    settings, layout, journal, worker = app[SETTINGS], app[LAYOUT], app[JOURNAL], app[WORKER]
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, layout.create)
    lock = storage.lock_storage(layout, shared=journal.shared)
    worker_task: asyncio.Task[None] | None = None
    try:
        await journal.open()
        if isinstance(journal, RedisJobStore):
            log.info(
                "jobs and queue in Redis at %s (prefix %s), shared with every instance there; "
                "this instance is %s",
                journal.safe_url,
                journal.prefix,
                journal.instance_id,
            )
        requeued, failed = await journal.recover_interrupted(settings.max_attempts)
        if requeued:
            log.warning("requeued %d interrupted job(s): %s", len(requeued), ", ".join(requeued))
        if failed:
            log.warning("failed %d job(s) past the attempt limit: %s", len(failed), ", ".join(failed))
        await _remove_leftovers(journal, layout)
        worker_task = asyncio.create_task(worker.run(), name="worker")
        yield
    finally:
        if worker_task is not None:
            await worker.stop()
            try:
                await asyncio.wait_for(asyncio.shield(worker_task), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("the running job did not stop in time; it is requeued at next start")
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
        await worker.close()
        await journal.close()
        lock.close()


async def _remove_leftovers(journal: JobStore, layout: Layout) -> None:
    """Half-written uploads and audio no job refers to. With a shared store and directory, only
    old ones: other instances' uploads may be in flight right now."""
    loop = asyncio.get_running_loop()
    try:
        referenced = await journal.audio_files()
    except ServiceError as exc:  # the shared store is away: leave the files for the next start
        log.warning("left leftover files alone: %s", exc.message)
        return
    min_age = storage.SHARED_LEFTOVER_AGE_SECONDS if journal.shared else 0.0
    removed = await loop.run_in_executor(None, storage.clean_start, layout, referenced, min_age)
    if removed:
        log.info("removed %d leftover file(s) from interrupted uploads", removed)


def create_store(settings: Settings, layout: Layout) -> JobStore:
    if settings.backend == "redis":
        return RedisJobStore(
            settings.redis_url,
            settings.redis_prefix,
            priority_aging_s=settings.priority_aging_seconds,
            lease_s=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
    return SqliteJobStore(layout.journal, settings.priority_aging_seconds)


async def _stop_taking_jobs(app: web.Application) -> None:
    """Runs as shutdown begins, before requests in flight drain: no new job starts after it."""
    await app[WORKER].stop()


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """Build the application; nothing touches disk or loads a model until it starts.

    `engine` lets tests substitute a fake; by default the one named in settings is used.
    """
    layout = Layout(settings.storage_dir, settings.model_dir)
    journal = create_store(settings, layout)
    events = JobEvents()
    progress = ProgressWriter(journal, events)
    runner: Runner
    catalog: ModelCatalog
    if engine is None and settings.isolation == "process":
        # Models live in the child; this process only asks about names, with no torch imported.
        catalog = create_catalog(settings, layout.models)
        runner = ProcessRunner(settings, layout.models, progress, progress.segment)
    else:
        engine = engine if engine is not None else create_engine(settings, layout.models)
        catalog = engine
        manager = ModelManager.for_settings(engine, settings)
        runner = ThreadRunner(manager, settings.workers, progress, progress.segment)
    middlewares: list[Middleware] = [metrics.rejections_middleware, errors_middleware]
    if settings.api_token is not None:
        middlewares.append(auth.token_middleware(settings.api_token))
    app = web.Application(middlewares=middlewares)
    app[SETTINGS] = settings
    app[LAYOUT] = layout
    app[ENGINE] = catalog
    app[JOURNAL] = journal
    app[WATCH] = JobWatch()
    app[EVENTS] = events
    app[SUBMIT_LOCK] = asyncio.Lock()
    app[WORKER] = worker = Worker(settings, journal, layout, runner, app[WATCH], events, app[SUBMIT_LOCK])
    app[STARTED_AT] = time.time()
    app[WEBHOOKS] = WebhookDispatcher(settings, journal, layout, events)
    app.cleanup_ctx.append(_service_ctx)
    if isinstance(journal, RedisJobStore):
        journal.on_lease_lost = worker.lease_lost
        journal.on_reclaimed = worker.jobs_reclaimed
        app[CLUSTER] = ClusterBus(journal, events, app[WATCH], worker.wake, worker.cancel_running)
        app.cleanup_ctx.append(app[CLUSTER].ctx)
    app.cleanup_ctx.append(retention.retention_ctx)
    app.cleanup_ctx.append(app[WEBHOOKS].ctx)  # after the journal opens, stops before it closes
    app.on_shutdown.append(_stop_taking_jobs)
    routes.setup_routes(app)
    metrics.setup_metrics(app)
    return app
