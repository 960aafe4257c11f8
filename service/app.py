"""The composition root: `create_app(settings)` builds the services object once, picks the
backend once, and ties start-up and shutdown together.

Nothing touches disk or loads a model until the app starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from service.api import auth, clients, guard, metrics, routes
from service.api.keys import SERVICES
from service.api.middleware import errors_middleware
from service.engines import create_catalog, create_engine
from service.engines.base import Engine, ModelCatalog
from service.errors import ServiceError
from service.inference.models import ModelManager
from service.inference.process import ProcessRunner
from service.inference.runner import Runner, ThreadRunner
from service.inference.selfcheck import SelfCheck
from service.inference.worker import ProgressWriter, Worker
from service.jobs.events import JobEvents
from service.jobs.watch import JobWatch
from service.sdnotify import Notifier
from service.settings import Settings
from service.store import files as storage
from service.store.base import JobStore
from service.store.cluster import ClusterBus
from service.store.files import Layout
from service.store.redis import RedisJobStore
from service.store.retention import Retention
from service.store.sqlite import SqliteJobStore
from service.usecases.control import JobControl
from service.usecases.services import Services
from service.usecases.submit import Submissions
from service.usecases.views import JobViews
from service.webhooks.deliveries import DeliveryStore, RedisDeliveryStore, SqliteDeliveryStore
from service.webhooks.dispatcher import WebhookDispatcher, claim_lease_seconds

log = logging.getLogger(__name__)

# How long shutdown waits for the running decode to reach a window boundary.
STOP_GRACE_SECONDS = 30.0


@dataclass(frozen=True)
class Backend:
    """Where jobs and webhook deliveries live. `redis` is set only for the shared Redis store,
    whose instances also need the cluster bus and the worker's lease callbacks."""

    store: JobStore
    deliveries: DeliveryStore
    redis: RedisJobStore | None = None


def create_backend(settings: Settings, layout: Layout) -> Backend:
    """The one place that asks which backend is configured."""
    if settings.backend == "redis":
        redis = RedisJobStore(
            settings.redis_url,
            settings.redis_prefix,
            priority_aging_s=settings.priority_aging_seconds,
            lease_s=settings.lease_seconds,
            max_attempts=settings.max_attempts,
        )
        return Backend(redis, RedisDeliveryStore(redis, claim_lease_seconds(settings)), redis)
    sqlite = SqliteJobStore(layout.journal, settings.priority_aging_seconds)
    return Backend(sqlite, SqliteDeliveryStore(sqlite))


def build_services(settings: Settings, engine: Engine | None = None) -> Services:
    """Every collaborator, wired once. `engine` lets tests substitute a fake."""
    layout = Layout(settings.storage_dir, settings.model_dir)
    backend = create_backend(settings, layout)
    store = backend.store
    events, watch, lock = JobEvents(), JobWatch(), asyncio.Lock()
    progress = ProgressWriter(store, events)
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
    worker = Worker(settings, store, layout, runner, watch, events, lock)
    cluster = None
    if backend.redis is not None:
        backend.redis.on_lease_lost = worker.lease_lost
        backend.redis.on_reclaimed = worker.jobs_reclaimed
        cluster = ClusterBus(backend.redis, events, watch, worker.wake, worker.cancel_running)
    selfcheck = SelfCheck(settings, layout, store, worker, Notifier())
    return Services(
        settings=settings,
        layout=layout,
        store=store,
        catalog=catalog,
        worker=worker,
        events=events,
        watch=watch,
        webhooks=WebhookDispatcher(settings, backend.deliveries, layout, events),
        submissions=Submissions(settings, store, layout, catalog, events, watch, lock, worker.wake),
        control=JobControl(
            store,
            layout,
            worker,
            watch,
            lock,
            settings.workers,
            settings.max_queue,
            cluster,
            min_free_bytes=settings.min_free_bytes,
        ),
        views=JobViews(store, layout, watch, lambda: worker.stopping),
        selfcheck=selfcheck,
        started_at=time.time(),
        cluster=cluster,
        lock=lock,
    )


async def _service_ctx(app: web.Application) -> AsyncIterator[None]:
    """Storage lock, store, crash recovery, worker and retention: set up and torn down as one."""
    services = app[SERVICES]
    settings, layout, store, worker = services.settings, services.layout, services.store, services.worker
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, layout.create)
    lock = storage.lock_storage(layout, shared=store.shared)
    worker_task: asyncio.Task[None] | None = None
    retention = Retention(store, layout, services.events, settings.retention_seconds)
    try:
        await store.open()
        if store.shared:
            log.info("%s", store.location())
        # With inference in its own process, a run cut short by the whole service dying was
        # killed from outside (OOM killer, docker kill, power): not the job's fault, so not
        # counted. In-process inference may itself have taken the service down: counted.
        charge = settings.isolation == "thread"
        requeued, failed = await store.recover_interrupted(settings.max_attempts, charge=charge)
        if requeued:
            log.warning("requeued %d interrupted job(s): %s", len(requeued), ", ".join(requeued))
        if failed:
            log.warning("failed %d job(s) past the attempt limit: %s", len(failed), ", ".join(failed))
        await _remove_leftovers(store, layout)
        worker_task = asyncio.create_task(worker.run(), name="worker")
        services.selfcheck.start()  # READY=1 to systemd once the model is loaded, then the checks
        retention.start()
        yield
    finally:
        await retention.close()
        services.selfcheck.stopping()  # no checks (nor kills) while the worker winds down
        if worker_task is not None:
            await worker.stop()
            try:
                await asyncio.wait_for(asyncio.shield(worker_task), STOP_GRACE_SECONDS)
            except TimeoutError:
                log.warning("the running job did not stop in time; it is requeued at next start")
                worker_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await worker_task
        await services.selfcheck.close()
        await worker.close()
        await store.close()
        lock.close()


async def _remove_leftovers(store: JobStore, layout: Layout) -> None:
    """Half-written uploads and audio no job refers to. With a shared store and directory, only
    old ones: other instances' uploads may be in flight right now."""
    loop = asyncio.get_running_loop()
    try:
        referenced = await store.audio_files()
    except ServiceError as exc:  # the shared store is away: leave the files for the next start
        log.warning("left leftover files alone: %s", exc.message)
        return
    min_age = storage.SHARED_LEFTOVER_AGE_SECONDS if store.shared else 0.0
    removed = await loop.run_in_executor(None, storage.clean_start, layout, referenced, min_age)
    if removed:
        log.info("removed %d leftover file(s) from interrupted uploads", removed)


async def _stop_taking_jobs(app: web.Application) -> None:
    """Runs as shutdown begins, before requests in flight drain: no new job starts after it."""
    app[SERVICES].selfcheck.stopping()  # STOPPING=1 to systemd, at once
    await app[SERVICES].worker.stop()


def create_app(settings: Settings, engine: Engine | None = None) -> web.Application:
    """Build the application; nothing touches disk or loads a model until it starts.

    `engine` lets tests substitute a fake; by default the one named in settings is used.
    """
    services = build_services(settings, engine)
    middlewares: list[Middleware] = [
        metrics.rejections_middleware,
        errors_middleware,
        guard.request_guard(settings),  # a foreign Host, a cross-site page, a compressed body
        clients.client_version_middleware,  # a client too old (or new) is told how to upgrade
    ]
    if settings.api_token is not None:
        middlewares.append(auth.token_middleware(settings.api_token))
    app = web.Application(middlewares=middlewares)
    app[SERVICES] = services
    app.cleanup_ctx.append(_service_ctx)
    if services.cluster is not None:
        app.cleanup_ctx.append(services.cluster.ctx)
    app.cleanup_ctx.append(services.webhooks.ctx)  # after the store opens, stops before it closes
    app.on_shutdown.append(_stop_taking_jobs)
    routes.setup_routes(app)
    return app
