"""The service itself: health, and the models it can use, has loaded, or is told to load."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from service import __version__
from service.api.keys import SERVICES
from service.errors import JobNotFound, StoreUnavailable
from service.inference.selfcheck import BLOCKING
from service.jobs.job import JobStatus


async def health(request: web.Request) -> web.Response:
    """Answers from memory and one indexed count: fast even while a decode runs.

    200 only while a model is ready to take jobs; 503 while starting, loading, restarting the
    inference process, stopping, broken, or while a self-check that jobs need fails (the
    inference process does not answer, a job is stuck, the storage takes no writes), so health
    checks and load balancers act on it. `status` says the same as the code: "ok" with 200,
    "unavailable" or (after a fatal error) "error" with 503.
    """
    services = request.app[SERVICES]
    worker, settings, store = services.worker, services.settings, services.store
    selfcheck = services.selfcheck
    store_error: str | None = None
    queue_size: int | None = None
    try:
        queue_size = await store.count(JobStatus.QUEUED)
    except StoreUnavailable as exc:
        store_error = exc.message
    blocked = selfcheck.failing(BLOCKING)
    storage_fault = worker.storage_fault
    ready = (
        worker.model_loaded
        and not worker.stopping
        and worker.fatal_error is None
        and not store_error
        and not storage_fault
        and not blocked
    )
    body: dict[str, Any] = {
        "status": "ok" if ready else "error" if worker.fatal_error is not None else "unavailable",
        "model_loaded": worker.model_loaded,
        "model": settings.model,
        "engine": settings.engine,
        "device": services.catalog.device,
        "worker": worker.state.value,
        "isolation": settings.isolation,
        "worker_pid": worker.runner.pid,
        "worker_restarts": worker.runner.restarts,
        "processing": worker.current_job,
        "active_jobs": list(worker.active_jobs),
        "workers": settings.workers,
        "queue_size": queue_size,
        "backend": settings.backend,
        "uptime_s": round(time.time() - services.started_at, 1),
        "version": __version__,
    }
    shared = store.describe()
    if shared:  # a store shared by instances says who this one is and how many are alive
        body["instance"] = shared["instance"]
        body["store"] = "unreachable" if store_error else "ok"
        body["instances"] = shared["instances"]
    body["checks"] = {name: result.body() for name, result in selfcheck.results.items()}
    if worker.fatal_error is not None:
        body["error"] = worker.fatal_error
    elif store_error is not None:
        body["error"] = store_error
    elif storage_fault is not None:
        body["error"] = f"storage: {storage_fault}"
    elif blocked and not worker.stopping:
        body["error"] = "; ".join(f"{name}: {result.detail}" for name, result in blocked.items())
    return web.json_response(body, status=200 if ready else 503)


async def list_models(request: web.Request) -> web.Response:
    """What can be used: known names, which load offline, which are on disk, which are in memory."""
    services = request.app[SERVICES]
    settings = services.settings
    loaded = {str(m["name"]): m for m in await services.worker.runner.models()}
    listed = await asyncio.get_running_loop().run_in_executor(None, services.catalog.list_models)
    models = []
    for entry in listed:
        info = loaded.pop(str(entry["name"]), None)
        models.append(
            {**entry, "default": entry["name"] == settings.model, "loaded": info is not None, **(info or {})}
        )
    for name, info in loaded.items():  # e.g. an operator's checkpoint path as the default
        models.append(
            {"name": name, "bundled": False, "on_disk": True, "offline": True, "loaded": True, **info}
        )
    return web.json_response({"default": settings.model, "engine": settings.engine, "models": models})


def _model_name(request: web.Request) -> str:
    name = request.match_info["name"]
    request.app[SERVICES].submissions.check_model_name(name)
    return name


async def load_model(request: web.Request) -> web.Response:
    """Warm a model by hand, so the first job for it does not wait for the load."""
    name = _model_name(request)
    info = await request.app[SERVICES].worker.load_model(name)
    return web.json_response({"name": name, "loaded": True, **info})


async def unload_model(request: web.Request) -> web.Response:
    name = _model_name(request)
    if not await request.app[SERVICES].worker.unload_model(name):
        raise JobNotFound(f"Model {name} is not loaded.")
    return web.json_response({"name": name, "loaded": False})
