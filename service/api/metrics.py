"""`GET /metrics`: Prometheus text format, from a registry of the app's own.

Two kinds of metric. Counters and histograms of what happened (jobs finished, processing time,
real-time factor, audio transcribed, rejected uploads) are kept here, fed by the event bus and
a middleware. Gauges of how things are now (jobs by status, queue depth, running jobs, loaded
models and their load times, inference restarts, uptime) are read at scrape time: the handler
gathers them (the journal and the inference process are asked off the event loop) and a
collector reports that snapshot, so nothing has to be kept in sync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily, Metric
from prometheus_client.registry import Collector

from service import __version__
from service.api.keys import SERVICES
from service.jobs import events as ev
from service.jobs.events import JobEvent
from service.jobs.job import JobStatus
from service.store.base import JobStore
from service.tasks import BackgroundTasks
from service.usecases.services import Services

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Processing time of one job: seconds for a short clip up to hours for a long recording on CPU.
PROCESSING_BUCKETS = (0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400)
# Processing seconds per audio second: 0.01 (a GPU) to 10 (a large model on a slow core).
RTF_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
# The status codes an upload is refused with, by the label they are counted under.
REJECTION_REASONS = {
    400: "bad_request",
    401: "unauthorized",
    409: "conflict",
    413: "too_large",
    415: "unsupported_audio",
    429: "queue_full",
    503: "shutting_down",
    507: "insufficient_storage",
}
# How long a scrape waits for the inference process to list its models.
MODELS_TIMEOUT_SECONDS = 2.0
# How long a scrape waits for observations of jobs that just ended.
PENDING_TIMEOUT_SECONDS = 1.0


def is_upload(request: web.Request) -> bool:
    return request.method == "POST" and (
        request.path == "/transcribe" or request.path.startswith("/v1/audio/")
    )


@dataclass
class Snapshot:
    """The live values one scrape reports."""

    jobs_by_status: dict[str, int] = field(default_factory=dict)
    running: int = 0
    models: list[dict[str, Any]] = field(default_factory=list)
    restarts: int = 0
    worker_ready: bool = False
    uptime_s: float = 0.0
    checks: dict[str, bool] = field(default_factory=dict)


class _LiveCollector(Collector):
    """Reports the latest snapshot; the handler refreshes it right before each scrape."""

    def __init__(self, build: dict[str, str]) -> None:
        self.build = build
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        jobs = GaugeMetricFamily("whisper_jobs", "Jobs in the journal by status.", labels=["status"])
        for status in JobStatus:
            jobs.add_metric([status.value], snap.jobs_by_status.get(status.value, 0))
        yield jobs
        yield GaugeMetricFamily(
            "whisper_queue_depth",
            "Jobs waiting to run.",
            value=snap.jobs_by_status.get(JobStatus.QUEUED.value, 0),
        )
        yield GaugeMetricFamily("whisper_jobs_running", "Jobs being transcribed now.", value=snap.running)
        yield GaugeMetricFamily("whisper_models_loaded", "Models in memory.", value=len(snap.models))
        load = GaugeMetricFamily(
            "whisper_model_load_seconds", "How long each loaded model took to load.", labels=["model"]
        )
        memory = GaugeMetricFamily(
            "whisper_model_memory_bytes", "Approximate memory each loaded model holds.", labels=["model"]
        )
        for model in snap.models:
            name = str(model.get("name"))
            load.add_metric([name], float(model.get("load_seconds") or 0.0))
            memory.add_metric([name], float(model.get("approx_memory_mb") or 0.0) * 1024 * 1024)
        yield load
        yield memory
        yield CounterMetricFamily(
            "whisper_worker_restarts",
            "Restarts of the inference process after it died.",
            value=snap.restarts,
        )
        yield GaugeMetricFamily(
            "whisper_worker_ready",
            "1 while a model is loaded and jobs can run (as /health's 200).",
            value=1 if snap.worker_ready else 0,
        )
        checks = GaugeMetricFamily(
            "whisper_self_check_ok",
            "1 while the self-check passes, 0 while it fails (/health's checks say why).",
            labels=["check"],
        )
        for name, ok in snap.checks.items():
            checks.add_metric([name], 1 if ok else 0)
        yield checks
        yield GaugeMetricFamily("whisper_uptime_seconds", "Seconds since the service started.", snap.uptime_s)
        yield InfoMetricFamily("whisper_build", "Version and configuration of the service.", value=self.build)


class Metrics:
    """One app's metrics, in a registry of its own (never the process-wide default one)."""

    def __init__(self, build: dict[str, str]) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.finished = Counter(
            "whisper_jobs_finished",
            "Jobs that ended, by outcome (answers from the transcript cache included).",
            ["outcome"],
            registry=self.registry,
        )
        self.cache_hits = Counter(
            "whisper_transcript_cache_hits",
            "Uploads answered at once from the transcript of identical earlier audio.",
            registry=self.registry,
        )
        self.processing = Histogram(
            "whisper_job_processing_seconds",
            "Wall time from a completed job's start to its end.",
            ["model"],
            buckets=PROCESSING_BUCKETS,
            registry=self.registry,
        )
        self.rtf = Histogram(
            "whisper_job_real_time_factor",
            "Processing seconds per second of audio, per completed job (lower is faster).",
            ["model"],
            buckets=RTF_BUCKETS,
            registry=self.registry,
        )
        self.audio_seconds = Counter(
            "whisper_audio_seconds_transcribed",
            "Seconds of audio in completed jobs (cache answers not included).",
            ["model"],
            registry=self.registry,
        )
        self.rejected = Counter(
            "whisper_uploads_rejected",
            "Uploads refused, by reason (the status code's meaning).",
            ["reason"],
            registry=self.registry,
        )
        for reason in (*REJECTION_REASONS.values(), "other"):
            self.rejected.labels(reason)  # every reason shows, at 0, from the start
        for outcome in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
            self.finished.labels(outcome.value)
        self.live = _LiveCollector(build)
        self.registry.register(self.live)
        self._observing = BackgroundTasks(log)

    # -- what happened --------------------------------------------------------------------
    def listener(self, journal: JobStore) -> Callable[[JobEvent], None]:
        def on_event(event: JobEvent) -> None:
            if event.type != ev.END or event.origin is not None:
                return  # another instance's job: counted there
            self.finished.labels(str(event.data.get("status"))).inc()
            if event.data.get("status") == JobStatus.COMPLETED.value:
                self._observing.spawn(self._observe_completed(journal, event.job_id), name="metrics-observe")

        return on_event

    async def _observe_completed(self, journal: JobStore, job_id: str) -> None:
        try:
            job = await journal.get(job_id)
        except Exception:  # the journal closed under a late event: only a metric is lost
            log.debug("metrics: could not read job %s", job_id, exc_info=True)
            return
        if job is None or job.status is not JobStatus.COMPLETED:
            return
        if job.attempts == 0:  # never ran: answered from the transcript cache
            self.cache_hits.inc()
            return
        if job.started_at is None or job.completed_at is None:
            return
        seconds = max(0.0, job.completed_at - job.started_at)
        self.processing.labels(job.model).observe(seconds)
        if job.duration_s:
            self.audio_seconds.labels(job.model).inc(job.duration_s)
            self.rtf.labels(job.model).observe(seconds / job.duration_s)

    def reject(self, status: int) -> None:
        """A refused upload; a 500 is the service's fault, not a refusal, and is not counted."""
        if status in REJECTION_REASONS:
            self.rejected.labels(REJECTION_REASONS[status]).inc()
        elif 400 <= status < 500:
            self.rejected.labels("other").inc()

    async def settle(self) -> None:
        """Let observations of jobs that just ended land before a scrape reads them."""
        if self._observing:
            await asyncio.wait(list(self._observing), timeout=PENDING_TIMEOUT_SECONDS)

    async def close(self) -> None:
        await self._observing.close()

    # -- how things are -------------------------------------------------------------------
    async def refresh(self, services: Services) -> None:
        worker = services.worker

        models: list[dict[str, Any]] = []
        with contextlib.suppress(Exception):  # restarting, or just died: no models right now
            models = await asyncio.wait_for(worker.runner.models(), MODELS_TIMEOUT_SECONDS)
        self.live.snapshot = Snapshot(
            jobs_by_status=await services.store.counts_by_status(),
            running=len(worker.active_jobs),
            models=models,
            restarts=worker.runner.restarts,
            worker_ready=worker.model_loaded
            and not worker.stopping
            and worker.fatal_error is None
            and services.selfcheck.jobs_can_run,
            uptime_s=time.time() - services.started_at,
            checks={name: result.ok for name, result in services.selfcheck.results.items()},
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    await metrics.settle()
    await metrics.refresh(request.app[SERVICES])
    return web.Response(body=metrics.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def rejections_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts refused uploads by the status they get. Outside the error middleware, so it sees
    the status every refusal ends as (domain errors, aiohttp's own, the token check)."""
    if not is_upload(request):
        return await handler(request)
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        if exc.status >= 400:
            request.app[METRICS].reject(exc.status)
        raise
    if response.status >= 400:
        request.app[METRICS].reject(response.status)
    return response


async def _metrics_ctx(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[METRICS].close()


def setup_metrics(app: web.Application) -> None:
    """Create the app's metrics, listen for job endings, serve GET /metrics."""
    services = app[SERVICES]
    settings = services.settings
    build = {
        "version": __version__,
        "engine": settings.engine,
        "model": settings.model,
        "device": services.catalog.device,
        "isolation": services.worker.runner.isolation,
    }
    metrics = app[METRICS] = Metrics(build)
    services.events.add_listener(metrics.listener(services.store))
    app.cleanup_ctx.append(_metrics_ctx)
