"""The worker: drains the journal's queue through a runner, which owns the models.

It decides what runs next (oldest first, grouped by loaded model), keeps the journal true
about every outcome (completed, failed, interrupted, crashed, timed out), and stops gracefully.
Inference itself happens in the runner: a supervised child process, or a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from enum import StrEnum
from typing import TypeVar

from service import logs
from service.atomic import write_json_atomic
from service.backoff import Backoff
from service.engines.base import DecodeOptions, JobInterrupted, Result
from service.errors import (
    STORAGE_FAULTS,
    ModelUnavailable,
    ServiceError,
    StoreUnavailable,
    storage_fault,
)
from service.inference.chunking import ChunkingOptions
from service.inference.pipeline import GO_ON, STEP_ASIDE, STOP, TranscribeRequest
from service.inference.runner import Runner, WorkerCrashed
from service.jobs import events as ev
from service.jobs.events import JobEvents
from service.jobs.job import Job, JobStatus, checkpoints_reach
from service.jobs.view import clock
from service.jobs.watch import JobWatch
from service.settings import Settings
from service.store.base import JobStore
from service.store.files import Layout
from service.tasks import BackgroundTasks

log = logging.getLogger(__name__)

T = TypeVar("T")

# While idle the worker sleeps on an event; the timeout is only a safety net for missed wakes.
IDLE_POLL_SECONDS = 5.0
# While the job store (Redis) is unreachable, claims back off from this up to the cap.
STORE_BACKOFF_SECONDS = 0.5
STORE_BACKOFF_CAP_SECONDS = 10.0
# A job for a loaded model may overtake an older one for another model for this long.
MODEL_SWITCH_PATIENCE_SECONDS = 120.0
# After an interrupt (timeout), how long a decode gets to stop before its process is killed.
KILL_AFTER_SECONDS = 10.0
# At shutdown, after the grace period and an interrupt, how long before the process is ended.
STOP_INTERRUPT_SECONDS = 2.0
# Automatic job timeout: a fixed allowance for loading, plus a multiple of the audio's length
# (tiny.en on one slow core runs at about 1x real time; larger models on CPU slower still).
TIMEOUT_BASE_SECONDS = 600.0
TIMEOUT_PER_AUDIO_SECOND = 10.0


class WorkerState(StrEnum):
    STARTING = "starting"
    LOADING_MODEL = "loading_model"
    READY = "ready"
    BUSY = "busy"
    RESTARTING = "restarting"
    STOPPING = "stopping"
    ERROR = "error"


class JobTimedOut(Exception):
    pass


def job_timeout(settings: Settings, duration_s: float | None) -> float:
    if settings.job_timeout > 0:
        return settings.job_timeout
    return TIMEOUT_BASE_SECONDS + TIMEOUT_PER_AUDIO_SECOND * (duration_s or 3600.0)


class ProgressWriter:
    """The runner's progress sink: writes each report to the journal without waiting for it,
    and tells live streams. Called on the event loop."""

    def __init__(self, journal: JobStore, events: JobEvents | None = None) -> None:
        self.journal = journal
        self.events = events if events is not None else JobEvents()
        self._writes = BackgroundTasks(log)  # held, or the loop may drop them mid-write

    def __call__(self, job_id: str, fraction: float) -> None:
        self._writes.spawn(self._write(job_id, fraction))
        self.events.publish(job_id, ev.PROGRESS, {"progress": round(fraction, 4)})

    async def _write(self, job_id: str, fraction: float) -> None:
        with contextlib.suppress(*STORAGE_FAULTS):  # advisory: the next report tries again
            await self.journal.set_progress(job_id, fraction)

    def segment(self, job_id: str, segment: dict[str, object]) -> None:
        """One decoded segment (id, start, end, text), for live streams only."""
        self.events.publish(job_id, ev.SEGMENT, segment)


class Worker:
    def __init__(
        self,
        settings: Settings,
        journal: JobStore,
        layout: Layout,
        runner: Runner,
        watch: JobWatch | None = None,
        events: JobEvents | None = None,
        submit_lock: asyncio.Lock | None = None,
    ) -> None:
        self.settings = settings
        self.journal = journal
        self.layout = layout
        self.runner = runner
        self.watch = watch if watch is not None else JobWatch()
        self.events = events if events is not None else JobEvents()
        # Held by uploads while they check and store a job: file clean-ups take it too.
        self.submit_lock = submit_lock if submit_lock is not None else asyncio.Lock()
        self.active_jobs: list[str] = []
        self._cancelled: set[str] = set()  # running jobs a client cancelled, until they stop
        self._lost: set[str] = set()  # running jobs another instance took over (shared store)
        self._stepping_aside: set[str] = set()  # running jobs pausing for a higher-priority one
        self._running: dict[str, Job] = {}
        self._reached: dict[str, float] = {}  # each running job's last checkpoint, in audio seconds
        self._announcing = BackgroundTasks(log)
        self.fatal_error: str | None = None
        # Why the storage takes no writes (disk full, journal locked, Redis refusing), while it
        # lasts: /health is 503 and jobs wait; it clears by itself once a write lands again.
        self.storage_fault: str | None = None
        self.fatal = asyncio.Event()
        self.started = False
        self.ready = asyncio.Event()  # set once the default model is loaded: start-up is over
        # Each running job's last sign of life (its start, a progress report, a segment), monotonic.
        self._last_heard: dict[str, float] = {}
        self.events.add_listener(self._heard)
        self._loaded_models: set[str] = set()
        self._wake = asyncio.Event()
        self._stopped = asyncio.Event()  # set once stop() is called
        self._grace = BackgroundTasks(log)  # the interrupt after the grace period, once stopping
        self._idle = asyncio.Event()  # set while no job runs
        self._idle.set()
        runner.on_chunk = self.chunk_done

    # -- state ----------------------------------------------------------------------------
    @property
    def state(self) -> WorkerState:
        if self.fatal_error is not None:
            return WorkerState.ERROR
        if self._stopped.is_set():
            return WorkerState.STOPPING
        if not self.started:
            return WorkerState.LOADING_MODEL
        if not self.runner.ready:
            return WorkerState.RESTARTING
        return WorkerState.BUSY if self.active_jobs else WorkerState.READY

    @property
    def model_loaded(self) -> bool:
        return self.started and self.runner.ready

    @property
    def stopping(self) -> bool:
        return self._stopped.is_set()

    @property
    def current_job(self) -> str | None:
        return self.active_jobs[0] if self.active_jobs else None

    def wake(self) -> None:
        self._wake.set()

    def _heard(self, event: ev.JobEvent) -> None:
        """A progress report or a segment of a job running here is a sign of life."""
        if (
            event.type in (ev.PROGRESS, ev.SEGMENT)
            and event.origin is None
            and event.job_id in self._last_heard
        ):
            self._last_heard[event.job_id] = time.monotonic()

    def quiet_seconds(self) -> dict[str, float]:
        """Seconds since each running job last reported progress (or started), for the self-check."""
        now = time.monotonic()
        return {job_id: now - heard for job_id, heard in self._last_heard.items()}

    def cancel_running(self, job_id: str) -> bool:
        """Stop a running job at its next window or segment; the journal already says cancelled."""
        if job_id not in self.active_jobs:
            return False
        self._cancelled.add(job_id)
        self.runner.interrupt(job_id)
        return True

    def lease_lost(self, job_id: str, reason: str) -> None:
        """The shared store says this run is no longer ours: cancelled elsewhere, or taken over."""
        if reason == "cancelled":
            self.cancel_running(job_id)
        elif job_id in self.active_jobs:
            self._lost.add(job_id)
            self.runner.interrupt(job_id)

    def jobs_reclaimed(self, requeued: list[str], failed: list[str]) -> None:
        """A dead instance's jobs were taken back by the store's sweep: run them, announce the
        ones that failed past the attempt limit."""
        if requeued:
            self.wake()
        for job_id in failed:
            self._announcing.spawn(self.job_ended(job_id))

    async def job_ended(self, job_id: str) -> None:
        """Tell waiters and streams what the journal now says about the job."""
        self.watch.notify(job_id)
        try:
            job = await self.journal.get(job_id)
        except StoreUnavailable:
            return  # waiters re-read the store anyway; streams end when they next can
        if job is None:
            return
        if job.status.finished:
            self.events.publish(job_id, ev.END, {"status": job.status.value})
        else:
            self.events.publish(job_id, ev.STATUS, {"status": job.status.value})

    async def chunk_done(self, job_id: str, chunk: dict[str, object]) -> str:
        """A decoded chunk of a running job: keep it, then say whether the decode goes on.

        It steps aside between chunks when a queued job would be claimed before it (a higher
        priority): the urgent job then waits for at most one chunk of a long one.
        """
        if job_id in self._cancelled or job_id in self._lost:
            return STOP
        job = self._running.get(job_id)
        # Which run decoded it: the attempt, and the run's start (a whole-service kill is not
        # charged, so two runs can share an attempt number).
        kept = dict(chunk, attempt=job.attempts, run=job.started_at) if job is not None else dict(chunk)
        try:
            if not await self.journal.save_checkpoint(job_id, kept):
                return STOP
            self._storage_ok()
            self._reached[job_id] = float(chunk["end"])  # type: ignore[arg-type]
            busy = len(self.active_jobs) >= self.settings.workers
            if job is not None and busy and not self._stopped.is_set() and await self.journal.outranked(job):
                self._stepping_aside.add(job_id)
                return STEP_ASIDE
        except STORAGE_FAULTS as exc:
            # The decode goes on: a checkpoint only saves work after a crash. The outcome's
            # writes wait for the storage instead.
            self._storage_trouble(exc)
        return GO_ON

    # -- models ---------------------------------------------------------------------------
    async def load_model(self, name: str) -> dict[str, object]:
        info = await self.runner.load(name)
        self._loaded_models.add(name)
        return info

    async def unload_model(self, name: str) -> bool:
        unloaded = await self.runner.unload(name)
        self._loaded_models.discard(name)
        return unloaded

    async def _prefer(self) -> set[str]:
        with contextlib.suppress(Exception):
            self._loaded_models = {str(m["name"]) for m in await self.runner.models()}
        return self._loaded_models

    # -- the loop -------------------------------------------------------------------------
    async def run(self) -> None:
        try:
            await self.runner.start()  # starts inference and loads the default model
            self._loaded_models.add(self.settings.model)
        except Exception as exc:
            self.fatal_error = f"could not load the default model {self.settings.model!r}: {exc}"
            log.error("%s", self.fatal_error)
            self.fatal.set()
            return
        self.started = True
        self.ready.set()
        log.info(
            "model %s ready; waiting for jobs (%d at a time)", self.settings.model, self.settings.workers
        )
        try:
            await asyncio.gather(*(self._drain() for _ in range(self.settings.workers)))
        except Exception as exc:  # _drain retries everything; this is the last line of defence
            self.fatal_error = f"the worker stopped: {type(exc).__name__}: {exc}"
            log.exception("%s", self.fatal_error)
            self.fatal.set()

    async def _drain(self) -> None:
        """One slot: claim the next job, run it, repeat. Claims are atomic in the journal."""
        backoff = Backoff(STORE_BACKOFF_SECONDS, STORE_BACKOFF_CAP_SECONDS)
        while not self._stopped.is_set():
            if not self.runner.ready:
                ready = asyncio.ensure_future(self.runner.wait_ready())
                await asyncio.wait({ready}, timeout=IDLE_POLL_SECONDS)
                ready.cancel()
                continue
            self._wake.clear()
            try:
                job = await self.journal.claim_next(await self._prefer(), MODEL_SWITCH_PATIENCE_SECONDS)
                if job is not None:
                    self._storage_ok()  # the claim wrote to the journal
                    await self._process(job)
                elif self.storage_fault is not None:
                    await self._probe_storage()
                backoff.reset()
            except STORAGE_FAULTS as exc:
                # Nothing is lost: a claim that could not be written claimed nothing, and a
                # run whose outcome could not be written is run again (see _run_job).
                self._storage_trouble(exc)
                await self._sleep_unless_stopping(backoff.next())
                continue
            except Exception:
                # No bug in one pass may end the slot: every queued job would wait forever.
                log.exception("the worker loop failed; retrying")
                await self._sleep_unless_stopping(backoff.next())
                continue
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_POLL_SECONDS)

    # -- storage faults -------------------------------------------------------------------
    def _storage_trouble(self, exc: ServiceError) -> None:
        if self.storage_fault is None:
            log.error("the storage takes no writes: %s Jobs wait until it does.", exc.message)
        self.storage_fault = exc.message

    def _storage_ok(self) -> None:
        if self.storage_fault is not None:
            log.warning("the storage takes writes again; jobs go on")
            self.storage_fault = None

    async def _probe_storage(self) -> None:
        """With nothing to claim, no journal write tells whether the fault has cleared: a
        small file written at the storage's root does."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.layout.probe_writable)
        except OSError:
            await self._sleep_unless_stopping(STORE_BACKOFF_CAP_SECONDS)
            return
        self._storage_ok()

    async def _persist(self, write: Callable[[], Awaitable[T]]) -> T:
        """A write that keeps a job's outcome, retried through storage faults until it lands.

        A full disk never fails an accepted job. Only when the service stops meanwhile is
        the fault raised: the job is still `processing` in the journal, and start-up puts it
        back in the queue.
        """
        backoff = Backoff(STORE_BACKOFF_SECONDS, STORE_BACKOFF_CAP_SECONDS)
        while True:
            try:
                result = await write()
            except STORAGE_FAULTS as exc:
                self._storage_trouble(exc)
                if self._stopped.is_set():
                    raise
                await self._sleep_unless_stopping(backoff.next())
                continue
            self._storage_ok()
            return result

    async def _note_skipped(self, job_id: str, result: Result) -> None:
        """Damaged audio was skipped, the way players skip it: the status says how much."""
        skipped = (
            f"Damaged audio was skipped: {result.skipped_packets} packet(s) "
            f"(about {result.skipped_s:.1f} s) could not be decoded; the rest is transcribed."
        )
        job = await self.journal.get(job_id)
        note = f"{job.note} {skipped}" if job is not None and job.note else skipped
        await self.journal.set_note(job_id, note)  # an earlier note's cache decision stands
        log.warning("job %s: %s", job_id, skipped)

    async def _write_transcript(self, job_id: str, result: Result) -> None:
        transcript = self.layout.transcript_path(job_id)
        try:
            await asyncio.get_running_loop().run_in_executor(
                None, write_json_atomic, transcript, result.as_dict()
            )
        except OSError as exc:
            raise storage_fault(exc, "the transcript") or exc from exc

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopped.wait(), seconds)

    async def stop(self) -> None:
        """No new job starts; running ones get the grace period, then are interrupted and requeued."""
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._wake.set()
        self.watch.notify_all()
        self._grace.spawn(self._interrupt_after_grace())

    async def _interrupt_after_grace(self) -> None:
        if self.active_jobs:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), self.settings.shutdown_grace)
        for job_id in list(self.active_jobs):
            log.info("job %s: still running at shutdown; interrupting it", job_id, extra={"job_id": job_id})
            self.runner.interrupt(job_id)
        if self.active_jobs:
            # A decode stops only between 30 s windows; a process need not be waited for.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), STOP_INTERRUPT_SECONDS)
        if self.active_jobs:
            await self.runner.close()

    async def close(self) -> None:
        await self._grace.close()
        await self.runner.close()

    # -- one job --------------------------------------------------------------------------
    async def _process(self, job: Job) -> None:
        with logs.job_context(job.job_id):  # every line logged meanwhile in this task names the job
            await self._run_job(job)

    async def _run_job(self, job: Job) -> None:
        self.active_jobs.append(job.job_id)
        self._running[job.job_id] = job
        self._idle.clear()
        started = self._last_heard[job.job_id] = time.monotonic()
        log.info("job %s: started (attempt %d, model %s)", job.job_id, job.attempts, job.model)
        self.events.publish(job.job_id, ev.STATUS, {"status": "processing", "attempt": job.attempts})
        try:
            await self._run_and_record(job, started)
        except STORAGE_FAULTS:
            # Only while stopping (see _persist): the journal still says `processing`, and
            # start-up requeues it. The checkpoints that did land save the decoding.
            log.warning("job %s: its outcome could not be written before shutdown; it runs again", job.job_id)
        finally:
            self.active_jobs.remove(job.job_id)
            self._last_heard.pop(job.job_id, None)
            self._cancelled.discard(job.job_id)
            self._lost.discard(job.job_id)
            self._stepping_aside.discard(job.job_id)
            self._running.pop(job.job_id, None)
            self._reached.pop(job.job_id, None)
            if not self.active_jobs:
                self._idle.set()
            await self.job_ended(job.job_id)

    async def _run_and_record(self, job: Job, started: float) -> None:
        """Run the job and write its outcome; storage faults on the way are waited out."""
        persist, job_id = self._persist, job.job_id
        try:
            result = await self._transcribe(job)
            if result.skipped_packets:
                await persist(lambda: self._note_skipped(job_id, result))
            await persist(lambda: self._write_transcript(job_id, result))
            if not await persist(lambda: self.journal.complete(job_id, result.language, result.duration_s)):
                # Cancelled while its last window decoded: the result is not wanted. Or, with a
                # shared store, taken over by another instance: its files are that run's now.
                cancelled = JobStatus.CANCELLED
                if await persist(lambda: self._remove_files(job, transcript=True, status=cancelled)):
                    log.info("job %s: cancelled", job_id)
                else:
                    log.info("job %s: another instance runs it now; this run's result dropped", job_id)
                return
            if self.settings.delete_audio_on_complete:
                await persist(lambda: self._remove_files(job, transcript=False, status=JobStatus.COMPLETED))
            elapsed = time.monotonic() - started
            log.info(
                "job %s: completed %.1f s of audio in %.1f s (%.2fx real time)",
                job_id,
                result.duration_s,
                elapsed,
                result.duration_s / elapsed if elapsed else 0.0,
            )
        except JobInterrupted:
            if job_id in self._stepping_aside and job_id not in self._cancelled:
                await persist(lambda: self.journal.release(job_id))
                log.info(
                    "job %s: stepped aside after %s for a job of higher priority; its finished "
                    "chunks are kept",
                    job_id,
                    clock(self._reached.get(job_id, 0.0)),
                )
                return
            if job_id in self._lost:
                log.info("job %s: stopped here; another instance runs it now", job_id)
                return
            if job_id in self._cancelled:
                await persist(lambda: self._remove_files(job, transcript=True, status=JobStatus.CANCELLED))
                log.info("job %s: cancelled while processing; stopped", job_id)
                return
            await persist(lambda: self.journal.release(job_id))
            log.info("job %s: interrupted by shutdown; back in the queue", job_id)
        except JobTimedOut as exc:
            timed_out = str(exc)
            await persist(lambda: self.journal.fail(job_id, timed_out))
            log.warning("job %s: %s", job_id, timed_out)
        except WorkerCrashed as exc:
            if self._stopped.is_set():  # ended by the stop itself: not the job's fault
                await persist(lambda: self.journal.release(job_id))
                log.info("job %s: stopped with the inference process; back in the queue", job_id)
                return
            reached = checkpoints_reach(await persist(lambda: self.journal.checkpoints(job_id)))
            where = (
                f" It last crashed decoding the chunk after {clock(reached)} of the recording."
                if reached > 0
                else " It last crashed decoding the recording's first chunk."
            )
            failed = await persist(
                lambda: self.journal.requeue_crashed(job_id, self.settings.max_attempts, where)
            )
            log.error(
                "job %s: %s; %s",
                job_id,
                exc,
                "failed after too many crashes" if failed else "back in the queue",
            )
        except STORAGE_FAULTS as exc:
            # Not the job's fault (its checkpoints or note could not be read or written): it
            # goes back to the queue, uncharged, and runs once the storage takes writes again.
            self._storage_trouble(exc)
            await persist(lambda: self.journal.release(job_id))
            log.warning("job %s: back in the queue until the storage takes writes", job_id)
        except ServiceError as exc:
            reason = exc.message
            await persist(lambda: self.journal.fail(job_id, reason))
            log.warning("job %s: failed: %s", job_id, reason)
        except Exception as exc:
            log.exception("job %s: failed", job_id)
            message = f"Transcription failed: {type(exc).__name__}: {exc}"
            await persist(lambda: self.journal.fail(job_id, message))

    async def _remove_files(self, job: Job, transcript: bool, status: JobStatus) -> bool:
        """A cancelled job's audio and partial result, or a completed job's audio (by setting).

        Under the upload lock, and only while the journal row is still this run's and in the
        expected `status`: the same audio sent again after a cancel reuses the file names, and
        those files are the new job's; a job another instance took over needs its files.
        Returns whether the files were removed.
        """

        async with self.submit_lock:
            current = await self.journal.get(job.job_id)
            if current is None or current.seq != job.seq or current.status is not status:
                return False
            await self.layout.remove_job_files_async(job.audio_file, job.job_id if transcript else None)
            return True

    async def _transcribe(self, job: Job) -> Result:
        path = self.layout.audio_path(job.audio_file)
        if not path.is_file():
            raise ServiceError("The job's audio file is missing from the storage directory.")
        options = DecodeOptions(
            language=job.language,
            task=job.task.value,
            beam_size=self.settings.beam_size,
            initial_prompt=job.options.initial_prompt,
            temperature=job.options.temperature,
        )
        done = tuple(await self.journal.checkpoints(job.job_id))
        if done:
            log.info(
                "job %s: resuming after %s (%d chunks kept from earlier runs)",
                job.job_id,
                clock(checkpoints_reach(done)),
                len(done),
            )
        chunking = ChunkingOptions(
            detect_speech=self.settings.vad, max_audio_s=self.settings.max_audio_seconds
        )
        request = TranscribeRequest(
            job.job_id,
            str(path),
            job.model,
            options,
            job.options,
            done,
            chunking,
            batch_size=self.settings.batch_size,
        )
        try:
            return await self._run_with_timeout(request, job_timeout(self.settings, job.duration_s))
        except ModelUnavailable as exc:
            if not self.settings.model_fallback or job.model == self.settings.model:
                raise
            note = (
                f"Model {job.model} could not be loaded ({exc.message}); "
                f"transcribed with the default model {self.settings.model} instead."
            )
            log.warning("job %s: %s", job.job_id, note)
            await self.journal.set_note(job.job_id, note, cacheable=False)
            fallback = replace(request, model=self.settings.model)
            return await self._run_with_timeout(fallback, job_timeout(self.settings, job.duration_s))

    async def _run_with_timeout(self, request: TranscribeRequest, limit_s: float) -> Result:
        task = asyncio.ensure_future(self.runner.transcribe(request))
        done, _ = await asyncio.wait({task}, timeout=limit_s)
        if done:
            return task.result()
        log.warning("job %s: over its %.0f s limit; stopping it", request.job_id, limit_s)
        self.runner.interrupt(request.job_id)
        done, _ = await asyncio.wait({task}, timeout=KILL_AFTER_SECONDS)
        if not done:
            await self.runner.kill()
        with contextlib.suppress(Exception):
            await task
        raise JobTimedOut(
            f"The job ran longer than its {limit_s:.0f} s limit and was stopped "
            "(raise --job-timeout for very long audio or slow models)."
        )
