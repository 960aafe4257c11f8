"""Accepting an upload as a job: field checks, same-id retries, the transcript cache, the commit.

Every upload route (`POST /transcribe`, the OpenAI-compatible ones) goes through `Submissions`:
the adapters turn their request into the service's form fields and a received file, and get a
job back. The upload is always consumed: renamed into pending/ or discarded.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from service.engines.base import ModelCatalog
from service.engines.whisper_tables import LANGUAGES, TO_LANGUAGE_CODE
from service.errors import AudioTooLong, BadRequest, InvalidAudio, JobConflict, ServiceUnavailable
from service.inference import audio
from service.jobs import cache
from service.jobs import events as ev
from service.jobs.events import JobEvents
from service.jobs.job import JOB_ID_PATTERN, Job, JobOptions, JobStatus, NewJob, Task, parse_priority
from service.jobs.view import clock
from service.jobs.watch import JobWatch
from service.settings import Settings
from service.store import files as storage
from service.store.base import JobExists, JobStore, QueueAtLimit
from service.store.files import Layout, ReceivedUpload
from service.usecases.control import queue_full
from service.webhooks.targets import check_callback_url

log = logging.getLogger(__name__)

# The form fields an upload may carry besides the file.
FIELDS = (
    "job_id",
    "model",
    "language",
    "task",
    "callback_url",
    "word_timestamps",
    "diarize",
    "num_speakers",
    "min_speakers",
    "max_speakers",
    "channels",
    "priority",
    "prompt",
    "temperature",
)
_SAFE_EXTENSION = re.compile(r"^\.[a-z0-9]{1,8}$")
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


@dataclass(frozen=True)
class JobRequest:
    """An upload's fields, checked and typed."""

    job_id: str
    model: str
    language: str | None
    task: Task
    callback_url: str | None
    options: JobOptions
    priority: int


def _flag(fields: Mapping[str, str], name: str) -> bool:
    value = fields.get(name, "").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, not {fields[name]!r}.")


def _count(fields: Mapping[str, str], name: str) -> int | None:
    value = fields.get(name, "")
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {value!r}.") from None


def _temperature(fields: Mapping[str, str]) -> float | None:
    """0 and absent mean the same (start greedy, rise on fallback), so both are stored as None."""
    raw = fields.get("temperature", "")
    if raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise BadRequest(f"temperature must be a number from 0 to 1, not {raw!r}.") from None
    if not 0.0 <= value <= 1.0:
        raise BadRequest(f"temperature must be from 0 to 1, not {raw!r}.")
    return value or None


def _job_options(fields: Mapping[str, str]) -> JobOptions:
    channels = fields.get("channels", "mix").lower() or "mix"
    if channels not in ("mix", "split"):
        raise BadRequest("channels must be 'mix' (default) or 'split' (one speaker per channel).")
    options = JobOptions(
        word_timestamps=_flag(fields, "word_timestamps"),
        initial_prompt=fields.get("prompt") or None,
        temperature=_temperature(fields),
        diarize=_flag(fields, "diarize"),
        num_speakers=_count(fields, "num_speakers"),
        min_speakers=_count(fields, "min_speakers"),
        max_speakers=_count(fields, "max_speakers"),
        split_channels=channels == "split",
    )
    counts = (options.num_speakers, options.min_speakers, options.max_speakers)
    if any(c is not None for c in counts):
        if not options.diarize:
            raise BadRequest("num_speakers, min_speakers and max_speakers need diarize=true.")
        from service.diarization import DiarizationOptions  # checks ranges; raises BadRequest

        DiarizationOptions(*counts)
    if options.diarize and options.split_channels:
        raise BadRequest("Use diarize=true or channels=split, not both: split labels speakers by channel.")
    return options


def audio_name(job_id: str, filename: str | None, unique: bool = False) -> str:
    suffix = Path(filename or "").suffix.lower()
    stem = f"{job_id}.{uuid.uuid4().hex[:8]}" if unique else job_id
    return stem + (suffix if _SAFE_EXTENSION.match(suffix) else ".audio")


def check_same_job(existing: Job, sha256: str, request: JobRequest) -> None:
    """A resubmitted job_id must mean the same work, or the client would get another job's result."""
    if existing.audio_sha256 != sha256:
        raise JobConflict(
            f"Job {existing.job_id!r} already exists with different audio; choose another job_id or omit it."
        )
    # An unset language means "detect"; the journal stores the detected one once the job ran.
    language = request.language
    same_language = language is None or existing.language is None or language == existing.language
    if existing.options != request.options:
        raise JobConflict(
            f"Job {existing.job_id!r} already exists with other options "
            f"({json.dumps(existing.options.describe()) or 'none'}); choose another job_id."
        )
    if existing.model != request.model or existing.task is not request.task or not same_language:
        raise JobConflict(
            f"Job {existing.job_id!r} already exists with model={existing.model}, "
            f"language={existing.language}, task={existing.task.value}; choose another job_id "
            "for different options."
        )


class Submissions:
    """The upload use case. `lock` serialises uploads, cancels and clean-ups of one job id."""

    def __init__(
        self,
        settings: Settings,
        store: JobStore,
        layout: Layout,
        catalog: ModelCatalog,
        events: JobEvents,
        watch: JobWatch,
        lock: asyncio.Lock,
        wake_worker: Callable[[], None],
    ) -> None:
        self.settings = settings  # the default model, the cache switch and key, callback rules
        self.store = store
        self.layout = layout
        self.catalog = catalog
        self.events = events
        self.watch = watch
        self.lock = lock
        self.wake_worker = wake_worker

    def check_model_name(self, name: str) -> None:
        """Clients may pick among named models; file paths are for the operator's --model only."""
        if name != self.settings.model:
            self.catalog.check_model_name(name)
            if "/" in name or "\\" in name:
                raise BadRequest("model must be a model name, not a path.")

    def parse(self, fields: Mapping[str, str]) -> JobRequest:
        """Check an upload's fields; raises BadRequest (or ModelUnavailable) on the first bad one.

        Called on the fields sent before the file too, so a bad one is refused before a large
        body is stored.
        """
        job_id = fields.get("job_id") or uuid.uuid4().hex
        if not JOB_ID_PATTERN.match(job_id):
            raise BadRequest(
                "job_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
                "starting with a letter or digit."
            )

        model = fields.get("model") or self.settings.model
        self.check_model_name(model)

        language = (fields.get("language") or "").lower() or None
        if language is not None:
            language = TO_LANGUAGE_CODE.get(language, language)
            if language not in LANGUAGES:
                raise BadRequest(f"Unknown language {fields['language']!r}; use a code such as 'en' or 'de'.")

        try:
            task = Task(fields.get("task") or Task.TRANSCRIBE.value)
        except ValueError:
            raise BadRequest("task must be 'transcribe' or 'translate'.") from None

        if self.catalog.is_english_only(model):
            if language not in (None, "en"):
                raise BadRequest(f"Model {model} only understands English; choose a multilingual model.")
            if task is Task.TRANSLATE:
                raise BadRequest(f"Model {model} cannot translate; choose a multilingual model.")

        callback_url = fields.get("callback_url") or None
        if callback_url is not None:
            check_callback_url(callback_url, self.settings)
        options = _job_options(fields)
        priority = parse_priority(fields.get("priority"))
        return JobRequest(job_id, model, language, task, callback_url, options, priority)

    async def submit(
        self, fields: Mapping[str, str], upload: ReceivedUpload | None, filename: str | None
    ) -> tuple[Job, bool]:
        """Validate a received upload and record its job.

        Returns the job and whether this call created it (new, queued again after a failure or
        cancel, or answered from the cache) rather than finding the same job already there.
        """
        try:
            request = self.parse(fields)
            if upload is None:
                raise BadRequest("The form has no 'file' field; attach the audio as file=@audio.wav.")
            if upload.size == 0:
                raise InvalidAudio("The uploaded file is empty.")
            loop = asyncio.get_running_loop()
            info = await loop.run_in_executor(None, audio.probe, upload.path)
            limit = self.settings.max_audio_seconds
            if limit and info.duration_s is not None and info.duration_s > limit:
                raise AudioTooLong(
                    f"The recording is {clock(info.duration_s)} long; this service takes at most "
                    f"{clock(limit)} (--max-audio-seconds {limit:g}). Split it, or ask the operator "
                    "to raise the limit."
                )
            if request.options.split_channels and info.channels < 2:
                raise BadRequest(
                    "channels=split needs a recording with two or more channels; this one is mono."
                )
            job, created = await self._record(request, upload, filename, info.duration_s)
        finally:
            if upload is not None:
                upload.discard()  # a no-op once the file was renamed into pending/
        if not created or job.status is JobStatus.COMPLETED:
            return job, created
        log.info(
            "job %s: accepted %s (%s/%s, %d Hz, %d ch, %s s)",
            job.job_id,
            storage.human_size(upload.size),
            info.format_name,
            info.codec,
            info.sample_rate,
            info.channels,
            f"{info.duration_s:.1f}" if info.duration_s is not None else "?",
            extra={"job_id": job.job_id},
        )
        self.events.publish(job.job_id, ev.STATUS, {"status": job.status.value})
        self.wake_worker()
        return job, True

    async def _record(
        self, request: JobRequest, upload: ReceivedUpload, filename: str | None, duration_s: float | None
    ) -> tuple[Job, bool]:
        store, layout, job_id = self.store, self.layout, request.job_id
        key = cache.cache_key(
            self.settings, upload.sha256, request.model, request.language, request.task, request.options
        )
        async with self.lock:
            existing = await store.get(job_id)
            retry = False
            if existing is not None:
                check_same_job(existing, upload.sha256, request)
                if existing.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                    return existing, False
                retry = True  # the same upload again after a failure or cancel: run it again
            # Instances sharing a directory may race on one id: each upload gets its own file.
            audio_file = audio_name(job_id, filename, unique=store.shared)
            new = NewJob(
                job_id=job_id,
                audio_file=audio_file,
                audio_sha256=upload.sha256,
                audio_bytes=upload.size,
                original_filename=filename,
                model=request.model,
                language=request.language,
                task=request.task,
                callback_url=request.callback_url,
                duration_s=duration_s,
                options=request.options,
                priority=request.priority,
                cache_key=key,
            )
            try:
                cached = await self._from_cache(new) if self.settings.transcript_cache else None
            except JobExists:
                return await self._lost_race(new, request), False
            if cached is not None:
                self.watch.notify(job_id)
                self.events.publish(job_id, ev.END, {"status": cached.status.value})
                return cached, True
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, storage.commit_upload, upload, layout.audio_path(audio_file))
            limit = self.settings.max_queue
            try:
                job = await (store.replace_failed(new, limit) if retry else store.insert(new, limit))
            except Exception as exc:
                # A retry's audio file may be the failed job's, byte for byte: keep that one.
                if existing is None or existing.audio_file != audio_file:
                    await layout.remove_job_files_async(audio_file)
                if isinstance(exc, JobExists):  # another instance stored this id meanwhile
                    return await self._lost_race(new, request), False
                if isinstance(exc, QueueAtLimit):  # uploads that raced past the early check
                    raise await queue_full(store, exc.queued, limit, self.settings.workers) from None
                raise
            if existing is not None and existing.audio_file != audio_file:
                await layout.remove_job_files_async(existing.audio_file)
        return job, True

    async def _lost_race(self, new: NewJob, request: JobRequest) -> Job:
        """Another upload of the same id was stored first: the same work answers 200, other 409."""
        existing = await self.store.get(new.job_id)
        if existing is None:
            raise ServiceUnavailable(f"Job {new.job_id!r} changed while it was stored; send it again.")
        check_same_job(existing, new.audio_sha256, request)
        return existing

    async def _from_cache(self, new: NewJob) -> Job | None:
        """A completed job from an earlier job with the same audio, model and options, or None."""
        assert new.cache_key is not None
        source = await self.store.find_cached(new.cache_key)
        if source is None:
            return None
        copied = await asyncio.get_running_loop().run_in_executor(
            None,
            cache.copy_transcript,
            self.layout.transcript_path(source.job_id),
            self.layout.transcript_path(new.job_id),
        )
        if not copied:
            return None
        note = f"Transcript reused from job {source.job_id} (same audio, model and options)."
        job = await self.store.insert_completed(new, source, note)
        log.info(
            "job %s: answered from the transcript cache (job %s)",
            new.job_id,
            source.job_id,
            extra={"job_id": new.job_id},
        )
        return job
