"""The worker: owns the models and drains the journal's queue, oldest first.

Model loads and decodes run on dedicated inference threads, one per concurrent job (one
openai-whisper model must never decode twice at once, so that engine gets exactly one);
audio decoding and file writes run on the default executor.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from enum import StrEnum
from typing import Any

from service import audio
from service.engines.base import DecodeOptions, Engine, JobInterrupted, Result
from service.errors import ServiceError
from service.jobs import Job
from service.journal import Journal
from service.settings import Settings
from service.storage import Layout, write_json_atomic
from service.watch import JobWatch

log = logging.getLogger(__name__)

# Models besides the default kept loaded, so alternating between two models does not reload.
EXTRA_MODELS_CACHED = 1
# While idle the worker sleeps on an event; the timeout is only a safety net for missed wakes.
IDLE_POLL_SECONDS = 5.0


class WorkerState(StrEnum):
    STARTING = "starting"
    LOADING_MODEL = "loading_model"
    READY = "ready"
    BUSY = "busy"
    STOPPING = "stopping"
    ERROR = "error"


class Worker:
    def __init__(
        self,
        settings: Settings,
        journal: Journal,
        layout: Layout,
        engine: Engine,
        watch: JobWatch | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.layout = layout
        self.engine = engine
        self.watch = watch if watch is not None else JobWatch()
        self.state = WorkerState.STARTING
        self.active_jobs: list[str] = []
        self.fatal_error: str | None = None
        self.fatal = asyncio.Event()
        self._models: OrderedDict[str, Any] = OrderedDict()
        self._load_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._stopping = False
        self._inference = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="inference")

    @property
    def model_loaded(self) -> bool:
        return self.settings.model in self._models

    @property
    def stopping(self) -> bool:
        return self._stopping

    @property
    def current_job(self) -> str | None:
        return self.active_jobs[0] if self.active_jobs else None

    def wake(self) -> None:
        self._wake.set()

    # -- models -----------------------------------------------------------------------
    async def _model(self, name: str) -> Any:
        async with self._load_lock:  # two slots asking for one model load it once
            if name in self._models:
                self._models.move_to_end(name)
                return self._models[name]
            loop = asyncio.get_running_loop()
            previous = self.state
            self.state = WorkerState.LOADING_MODEL
            started = time.monotonic()
            try:
                model = await loop.run_in_executor(self._inference, self.engine.load, name)
            finally:
                self.state = previous
            log.info("model %s loaded in %.1f s on %s", name, time.monotonic() - started, self.engine.device)
            self._models[name] = model
            extras = [key for key in self._models if key != self.settings.model]
            while len(extras) > EXTRA_MODELS_CACHED:
                del self._models[extras.pop(0)]
            return model

    # -- the loop ---------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self._model(self.settings.model)
        except Exception as exc:
            self.state = WorkerState.ERROR
            self.fatal_error = f"could not load the default model {self.settings.model!r}: {exc}"
            log.error("%s", self.fatal_error)
            self.fatal.set()
            return
        self.state = WorkerState.READY
        log.info(
            "model %s ready on %s; waiting for jobs (%d at a time)",
            self.settings.model,
            self.engine.device,
            self.settings.workers,
        )
        await asyncio.gather(*(self._drain() for _ in range(self.settings.workers)))

    async def _drain(self) -> None:
        """One slot: claim the next job, run it, repeat. Claims are atomic in the journal."""
        while not self._stopping:
            self._wake.clear()
            job = await self.journal.claim_next()
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)
                continue
            await self._process(job)

    async def stop(self) -> None:
        """Interrupt running decodes between windows; their jobs go back to the queue."""
        self._stopping = True
        self.state = WorkerState.STOPPING
        self._wake.set()
        self.watch.notify_all()

    def close(self) -> None:
        self._inference.shutdown(wait=True, cancel_futures=True)

    async def _process(self, job: Job) -> None:
        self.active_jobs.append(job.job_id)
        self.state = WorkerState.BUSY
        started = time.monotonic()
        log.info("job %s: started (attempt %d, model %s)", job.job_id, job.attempts, job.model)
        try:
            result = await self._transcribe(job)
            await asyncio.get_running_loop().run_in_executor(
                None, write_json_atomic, self.layout.transcript_path(job.job_id), result.as_dict()
            )
            await self.journal.complete(job.job_id, result.language, result.duration_s)
            elapsed = time.monotonic() - started
            log.info(
                "job %s: completed %.1f s of audio in %.1f s (%.2fx real time)",
                job.job_id,
                result.duration_s,
                elapsed,
                result.duration_s / elapsed if elapsed else 0.0,
            )
        except JobInterrupted:
            await self.journal.release(job.job_id)
            log.info("job %s: interrupted by shutdown; back in the queue", job.job_id)
        except ServiceError as exc:
            await self.journal.fail(job.job_id, exc.message)
            log.warning("job %s: failed: %s", job.job_id, exc.message)
        except Exception as exc:
            log.exception("job %s: failed", job.job_id)
            await self.journal.fail(job.job_id, f"Transcription failed: {type(exc).__name__}: {exc}")
        finally:
            self.active_jobs.remove(job.job_id)
            self.watch.notify(job.job_id)
            if not self._stopping and not self.active_jobs:
                self.state = WorkerState.READY

    async def _transcribe(self, job: Job) -> Result:
        loop = asyncio.get_running_loop()
        path = self.layout.audio_path(job.audio_file)
        if not path.is_file():
            raise ServiceError("The job's audio file is missing from the storage directory.")
        model = await self._model(job.model)
        pcm = await loop.run_in_executor(None, audio.decode, path)

        def on_progress(fraction: float) -> None:
            # Runs on the inference thread: hand the write to the loop, never wait for it.
            if self._stopping and fraction < 1.0:  # the last window done: keep the result
                raise JobInterrupted
            asyncio.run_coroutine_threadsafe(self.journal.set_progress(job.job_id, fraction), loop)

        options = DecodeOptions(language=job.language, task=job.task.value, beam_size=self.settings.beam_size)
        return await loop.run_in_executor(
            self._inference, self.engine.transcribe, model, pcm, options, on_progress
        )
