"""HTTP handlers: upload, status, download, health. Registered in one place (setup_routes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiofiles
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from service import __version__
from service.api import control, dashboard, streams
from service.api.keys import (
    ENGINE,
    EVENTS,
    JOURNAL,
    LAYOUT,
    SETTINGS,
    STARTED_AT,
    SUBMIT_LOCK,
    WATCH,
    WORKER,
)
from service.engines.whisper_tables import LANGUAGES, TO_LANGUAGE_CODE
from service.errors import (
    BadRequest,
    InvalidAudio,
    JobConflict,
    JobNotFound,
    ServiceUnavailable,
    StoreUnavailable,
    TranscriptNotReady,
)
from service.inference import audio
from service.jobs import cache, formats
from service.jobs import events as ev
from service.jobs.job import (
    JOB_ID_PATTERN,
    Job,
    JobOptions,
    JobStatus,
    NewJob,
    Task,
    iso_time,
    parse_priority,
)
from service.store import files as storage
from service.store.base import JobExists
from service.store.files import ReceivedUpload
from service.store.redis import RedisJobStore
from service.webhooks.dispatcher import check_callback_url

log = logging.getLogger(__name__)

# Form fields other than the file are short; anything longer is a client bug or abuse.
MAX_FIELD_BYTES = 4096
# Multipart framing (boundaries, part headers) on top of the file itself.
MULTIPART_OVERHEAD_BYTES = 64 * 1024
_SAFE_EXTENSION = re.compile(r"^\.[a-z0-9]{1,8}$")
_TEXT_FIELDS = (
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
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")
# Longest long-poll on /status?wait=: below common proxy and client read timeouts.
MAX_WAIT_SECONDS = 60.0


@dataclass
class Form:
    """A received multipart upload: its short fields, and the file as stored in tmp/."""

    fields: dict[str, str]
    upload: ReceivedUpload | None
    filename: str | None


@contextlib.contextmanager
def _multipart_errors() -> Iterator[None]:
    """aiohttp says a body is malformed (no or a bad boundary, a bad part header, a truncated
    part, a body that does not match its Content-Encoding) with ValueError, HttpProcessingError
    or RequestPayloadError; those are the client's mistakes (400), not the service's (500)."""
    try:
        yield
    except (ValueError, HttpProcessingError, web.RequestPayloadError) as exc:
        # aiohttp's messages start "400, message:" on a line of their own; the last line says it.
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        detail = lines[-1] if lines else type(exc).__name__
        raise BadRequest(
            f"The multipart body is malformed ({detail}); "
            "send multipart/form-data with the audio in a field named 'file'."
        ) from None


async def _read_chunk(part: BodyPartReader, size: int) -> bytes:
    with _multipart_errors():
        return await part.read_chunk(size)


async def _file_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await _read_chunk(part, storage.UPLOAD_CHUNK_BYTES):
        yield chunk


async def _read_field(part: BodyPartReader) -> str:
    """A short text field, read with a bound so an oversized one is never held in memory."""
    raw = b""
    while chunk := await _read_chunk(part, MAX_FIELD_BYTES):
        raw += chunk
        if len(raw) > MAX_FIELD_BYTES:
            raise BadRequest(f"Field {part.name!r} is longer than {MAX_FIELD_BYTES} bytes.")
    return raw.decode("utf-8", errors="replace").strip()


FieldCheck = Callable[[dict[str, str]], object]


async def read_form(
    request: web.Request,
    names: Collection[str],
    check: FieldCheck,
    repeated: Collection[str] = (),
) -> Form:
    """Stream the multipart body: the file goes to tmp/, the short fields in `names` into memory.

    `check` sees the fields sent before the file, so a bad one is refused before a large body is
    stored. A field in `repeated` may come several times; its values are joined with commas.
    """
    settings = request.app[SETTINGS]
    if not request.content_type.startswith("multipart/"):
        raise BadRequest(
            "Send multipart/form-data with the audio in a field named 'file' (curl -F file=@audio.wav ...)."
        )
    limit = settings.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + MULTIPART_OVERHEAD_BYTES:
        raise storage.too_large(limit)
    form = Form(fields={}, upload=None, filename=None)
    try:
        with _multipart_errors():
            reader = await request.multipart()
        while True:
            with _multipart_errors():
                part = await reader.next()
            if part is None:
                break
            if not isinstance(part, BodyPartReader):
                raise BadRequest("Nested multipart bodies are not supported.")
            if part.name == "file":
                if form.upload is not None:
                    raise BadRequest("Send exactly one 'file' field.")
                # Fields sent before the file are checked now, before a large body is stored.
                check(form.fields)
                form.filename = part.filename
                form.upload = await storage.receive_upload(_file_chunks(part), request.app[LAYOUT].tmp, limit)
            elif part.name is not None and part.name in names:
                name, value = part.name, await _read_field(part)
                if name in repeated and form.fields.get(name):
                    value = f"{form.fields[name]},{value}"
                form.fields[name] = value
            else:
                with _multipart_errors():
                    await part.release()  # unknown fields are ignored, as form posts usually are
    except BaseException:
        if form.upload is not None:
            form.upload.discard()
        raise
    return form


def check_fields(request: web.Request, fields: dict[str, str]) -> None:
    """What an upload's fields must pass before its body is stored."""
    _validate_fields(request, fields)
    parse_priority(fields.get("priority"))


def _flag(fields: dict[str, str], name: str) -> bool:
    value = fields.get(name, "").lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise BadRequest(f"{name} must be true or false, not {fields[name]!r}.")


def _count(fields: dict[str, str], name: str) -> int | None:
    value = fields.get(name, "")
    if value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise BadRequest(f"{name} must be a whole number, not {value!r}.") from None


def _temperature(fields: dict[str, str]) -> float | None:
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


def _job_options(fields: dict[str, str]) -> JobOptions:
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


def _validate_fields(
    request: web.Request, fields: dict[str, str]
) -> tuple[str, str, str | None, Task, str | None, JobOptions]:
    settings = request.app[SETTINGS]
    engine = request.app[ENGINE]

    job_id = fields.get("job_id") or uuid.uuid4().hex
    if not JOB_ID_PATTERN.match(job_id):
        raise BadRequest(
            "job_id must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit."
        )

    model = fields.get("model") or settings.model
    if model != settings.model:
        # Clients may pick among named models; file paths are for the operator's --model only.
        engine.check_model_name(model)
        if "/" in model or "\\" in model:
            raise BadRequest("model must be a model name, not a path.")

    language = (fields.get("language") or "").lower() or None
    if language is not None:
        language = TO_LANGUAGE_CODE.get(language, language)
        if language not in LANGUAGES:
            raise BadRequest(f"Unknown language {fields['language']!r}; use a code such as 'en' or 'de'.")

    try:
        task = Task(fields.get("task") or Task.TRANSCRIBE.value)
    except ValueError:
        raise BadRequest("task must be 'transcribe' or 'translate'.") from None

    if engine.is_english_only(model):
        if language not in (None, "en"):
            raise BadRequest(f"Model {model} only understands English; choose a multilingual model.")
        if task is Task.TRANSLATE:
            raise BadRequest(f"Model {model} cannot translate; choose a multilingual model.")

    callback_url = fields.get("callback_url") or None
    if callback_url is not None:
        check_callback_url(callback_url, settings)
    return job_id, model, language, task, callback_url, _job_options(fields)


def _audio_name(job_id: str, filename: str | None, unique: bool = False) -> str:
    suffix = Path(filename or "").suffix.lower()
    stem = f"{job_id}.{uuid.uuid4().hex[:8]}" if unique else job_id
    return stem + (suffix if _SAFE_EXTENSION.match(suffix) else ".audio")


async def _lost_race(request: web.Request, new: NewJob) -> Job:
    """Another upload of the same id was stored first: the same work answers 200, other 409."""
    existing = await request.app[JOURNAL].get(new.job_id)
    if existing is None:
        raise ServiceUnavailable(f"Job {new.job_id!r} changed while it was stored; send it again.")
    _check_same_job(existing, new.audio_sha256, new.model, new.language, new.task, new.options)
    return existing


def _status_url(request: web.Request, job_id: str) -> str:
    return str(request.app.router["status"].url_for(job_id=job_id))


def _accepted(request: web.Request, job: Job, status: int) -> web.Response:
    return web.json_response(
        {"job_id": job.job_id, "status": job.status.value},
        status=status,
        headers={"Location": _status_url(request, job.job_id)},
    )


def _check_same_job(
    existing: Job, sha256: str, model: str, language: str | None, task: Task, options: JobOptions
) -> None:
    """A resubmitted job_id must mean the same work, or the client would get another job's result."""
    if existing.audio_sha256 != sha256:
        raise JobConflict(
            f"Job {existing.job_id!r} already exists with different audio; choose another job_id or omit it."
        )
    # An unset language means "detect"; the journal stores the detected one once the job ran.
    same_language = language is None or existing.language is None or language == existing.language
    if existing.options != options:
        raise JobConflict(
            f"Job {existing.job_id!r} already exists with other options "
            f"({json.dumps(existing.options.describe()) or 'none'}); choose another job_id."
        )
    if existing.model != model or existing.task is not task or not same_language:
        raise JobConflict(
            f"Job {existing.job_id!r} already exists with model={existing.model}, "
            f"language={existing.language}, task={existing.task.value}; choose another job_id "
            "for different options."
        )


async def transcribe(request: web.Request) -> web.Response:
    """Accept an upload as a queued job.

    202 when new (or when a failed job is submitted again: it is queued afresh), 200 when the
    same job already exists, 409 when the job_id is taken by different audio or options.
    """
    check_accepting(request)
    await control.check_queue_room(request.app)  # before the body is read: nothing is stored
    form = await read_form(request, _TEXT_FIELDS, lambda fields: check_fields(request, fields))
    job, created = await submit(request, form.fields, form.upload, form.filename)
    return _accepted(request, job, 202 if created else 200)


def check_accepting(request: web.Request) -> None:
    """Uploads are refused while stopping, before their body is read."""
    if request.app[WORKER].stopping:
        raise ServiceUnavailable("The service is shutting down; send the upload again in a moment.")


async def submit(
    request: web.Request, fields: dict[str, str], upload: ReceivedUpload | None, filename: str | None
) -> tuple[Job, bool]:
    """Validate a received upload and record its job: the one path every upload route takes.

    Returns the job and whether this call created it (new, queued again, or answered from the
    cache) rather than finding the same job already there. The upload is always consumed:
    renamed into pending/ or discarded.
    """
    try:
        job_id, model, language, task, callback_url, options = _validate_fields(request, fields)
        priority = parse_priority(fields.get("priority"))
        if upload is None:
            raise BadRequest("The form has no 'file' field; attach the audio as file=@audio.wav.")
        if upload.size == 0:
            raise InvalidAudio("The uploaded file is empty.")
        loop = asyncio.get_running_loop()
        info = await loop.run_in_executor(None, audio.probe, upload.path)
        if options.split_channels and info.channels < 2:
            raise BadRequest("channels=split needs a recording with two or more channels; this one is mono.")

        journal = request.app[JOURNAL]
        layout = request.app[LAYOUT]
        settings = request.app[SETTINGS]
        key = cache.cache_key(settings, upload.sha256, model, language, task, options)
        async with request.app[SUBMIT_LOCK]:
            existing = await journal.get(job_id)
            retry = False
            if existing is not None:
                _check_same_job(existing, upload.sha256, model, language, task, options)
                if existing.status not in (JobStatus.FAILED, JobStatus.CANCELLED):
                    return existing, False
                retry = True  # the same upload again after a failure or cancel: run it again
            # Instances sharing a directory may race on one id: each upload gets its own file.
            audio_file = _audio_name(job_id, filename, unique=journal.shared)
            target = layout.audio_path(audio_file)
            new = NewJob(
                job_id=job_id,
                audio_file=audio_file,
                audio_sha256=upload.sha256,
                audio_bytes=upload.size,
                original_filename=filename,
                model=model,
                language=language,
                task=task,
                callback_url=callback_url,
                duration_s=info.duration_s,
                options=options,
                priority=priority,
                cache_key=key,
            )
            try:
                cached = await _from_cache(request, new) if settings.transcript_cache else None
            except JobExists:
                return await _lost_race(request, new), False
            if cached is not None:
                request.app[WATCH].notify(job_id)
                request.app[EVENTS].publish(job_id, ev.END, {"status": cached.status.value})
                return cached, True
            await loop.run_in_executor(None, storage.commit_upload, upload, target)
            try:
                job = await (journal.replace_failed(new) if retry else journal.insert(new))
            except Exception as exc:
                # A retry's audio file may be the failed job's, byte for byte: keep that one.
                if existing is None or existing.audio_file != audio_file:
                    target.unlink(missing_ok=True)
                if isinstance(exc, JobExists):  # another instance stored this id meanwhile
                    return await _lost_race(request, new), False
                raise
            if existing is not None and existing.audio_file != audio_file:
                await loop.run_in_executor(
                    None, lambda: layout.audio_path(existing.audio_file).unlink(missing_ok=True)
                )
    finally:
        if upload is not None:
            upload.discard()  # a no-op once the file was renamed into pending/
    log.info(
        "job %s: accepted %s (%s/%s, %d Hz, %d ch, %s s)",
        job_id,
        storage.human_size(upload.size),
        info.format_name,
        info.codec,
        info.sample_rate,
        info.channels,
        f"{info.duration_s:.1f}" if info.duration_s is not None else "?",
        extra={"job_id": job_id},
    )
    request.app[EVENTS].publish(job_id, ev.STATUS, {"status": job.status.value})
    request.app[WORKER].wake()
    return job, True


async def _from_cache(request: web.Request, new: NewJob) -> Job | None:
    """A completed job from an earlier job with the same audio, model and options, or None."""
    journal, layout = request.app[JOURNAL], request.app[LAYOUT]
    assert new.cache_key is not None
    source = await journal.find_cached(new.cache_key)
    if source is None:
        return None
    copied = await asyncio.get_running_loop().run_in_executor(
        None,
        cache.copy_transcript,
        layout.transcript_path(source.job_id),
        layout.transcript_path(new.job_id),
    )
    if not copied:
        return None
    note = f"Transcript reused from job {source.job_id} (same audio, model and options)."
    job = await journal.insert_completed(new, source, note)
    log.info(
        "job %s: answered from the transcript cache (job %s)",
        new.job_id,
        source.job_id,
        extra={"job_id": new.job_id},
    )
    return job


async def _get_job(request: web.Request) -> Job:
    job_id = request.match_info["job_id"]
    job = await request.app[JOURNAL].get(job_id) if JOB_ID_PATTERN.match(job_id) else None
    if job is None:
        raise JobNotFound(f"No job with id {job_id!r}.")
    return job


async def load_result(request: web.Request, job: Job) -> dict[str, Any]:
    path = request.app[LAYOUT].transcript_path(job.job_id)
    try:
        async with aiofiles.open(path, encoding="utf-8") as fp:
            raw = await fp.read()
    except FileNotFoundError:
        raise TranscriptNotReady(
            f"Job {job.job_id!r} is completed but its transcript file is missing from storage."
        ) from None
    data: dict[str, Any] = await asyncio.get_running_loop().run_in_executor(None, json.loads, raw)
    return data


def _message(job: Job, position: int | None) -> str:
    if job.status is JobStatus.QUEUED:
        return "Waiting in the queue" + (f" (position {position})" if position else "") + "."
    if job.status is JobStatus.PROCESSING:
        return f"Transcribing: {job.progress:.0%} done."
    if job.status is JobStatus.COMPLETED:
        took = (job.completed_at or 0) - (job.started_at or job.created_at)
        return f"Completed in {took:.1f} s; download the transcript from /download/{job.job_id}."
    if job.status is JobStatus.CANCELLED:
        return "Cancelled; submit the audio again to run it."
    return f"Failed: {job.error}"


def _wait_seconds(request: web.Request) -> float:
    raw = request.query.get("wait")
    if raw is None or raw == "":
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, got {raw!r}.") from None
    if not 0 <= seconds < float("inf"):
        raise BadRequest(f"wait must be between 0 and {MAX_WAIT_SECONDS:g} seconds, got {raw!r}.")
    return min(seconds, MAX_WAIT_SECONDS)


async def wait_until_finished(request: web.Request, job: Job, seconds: float) -> Job:
    """Hold the request until the job is completed or failed, the wait runs out, or shutdown."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    watch, worker = request.app[WATCH], request.app[WORKER]
    while not job.status.finished and not worker.stopping:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        with watch.watching(job.job_id) as changed:
            job = await _reload(request, job.job_id)  # read after subscribing, so no wake-up is missed
            if job.status.finished:
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed, remaining)
        job = await _reload(request, job.job_id)
    return job


async def _reload(request: web.Request, job_id: str) -> Job:
    job = await request.app[JOURNAL].get(job_id)
    if job is None:  # removed meanwhile (retention)
        raise JobNotFound(f"No job with id {job_id!r}.")
    return job


async def status_body(request: web.Request, job: Job) -> dict[str, Any]:
    """What GET /status says about a job; live streams send the same as their `state` messages."""
    position = await request.app[JOURNAL].queue_position(job) if job.status is JobStatus.QUEUED else None
    body: dict[str, Any] = {
        "job_id": job.job_id,
        "status": job.status.value,
        "progress": round(job.progress, 4),
        "message": _message(job, position),
        "model": job.model,
        "language": job.language,
        "task": job.task.value,
        "duration_s": round(job.duration_s, 3) if job.duration_s is not None else None,
        "attempts": job.attempts,
        "priority": job.priority,
        "options": job.options.describe(),
        "created_at": iso_time(job.created_at),
        "started_at": iso_time(job.started_at),
        "completed_at": iso_time(job.completed_at),
    }
    if position is not None:
        body["queue_position"] = position
    if job.status is JobStatus.COMPLETED:
        body["transcript"] = (await load_result(request, job))["text"]
    if job.status is JobStatus.FAILED:
        body["error"] = job.error
    if job.note:
        body["note"] = job.note
    return body


async def status(request: web.Request) -> web.Response:
    """The job's state; with ?wait=N, answers as soon as the job finishes (or after N seconds)."""
    wait = _wait_seconds(request)
    job = await _get_job(request)
    if wait > 0:
        job = await wait_until_finished(request, job, wait)
    return web.json_response(await status_body(request, job))


async def download(request: web.Request) -> web.Response:
    fmt = formats.check_format(request.query.get("format", "txt").lower())
    job = await _get_job(request)
    if job.status is not JobStatus.COMPLETED:
        detail = f"it failed: {job.error}" if job.status is JobStatus.FAILED else f"it is {job.status.value}"
        raise TranscriptNotReady(
            f"Job {job.job_id!r} has no transcript: {detail}. "
            f"Poll /status/{job.job_id} until it is completed."
        )
    result = await load_result(request, job)
    # Rendering hours of segments takes tens of milliseconds: not on the event loop.
    body, content_type = await asyncio.get_running_loop().run_in_executor(
        None, formats.render, result, fmt, job.job_id, job.task.value
    )
    return web.Response(
        text=body,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": f'inline; filename="{job.job_id}.{fmt}"',
        },
    )


async def health(request: web.Request) -> web.Response:
    """Answers from memory and one indexed count: fast even while a decode runs.

    200 only while a model is ready to take jobs; 503 while starting, loading, restarting the
    inference process, stopping, or broken, so health checks and load balancers act on it.
    """
    worker = request.app[WORKER]
    settings = request.app[SETTINGS]
    journal = request.app[JOURNAL]
    store_error: str | None = None
    queue_size: int | None = None
    try:
        queue_size = await journal.count(JobStatus.QUEUED)
    except StoreUnavailable as exc:
        store_error = exc.message
    ready = worker.model_loaded and not worker.stopping and worker.fatal_error is None and not store_error
    body: dict[str, Any] = {
        "status": "ok" if worker.fatal_error is None else "error",
        "model_loaded": worker.model_loaded,
        "model": settings.model,
        "engine": settings.engine,
        "device": request.app[ENGINE].device,
        "worker": worker.state.value,
        "isolation": settings.isolation,
        "worker_pid": worker.runner.pid,
        "worker_restarts": worker.runner.restarts,
        "processing": worker.current_job,
        "active_jobs": list(worker.active_jobs),
        "workers": settings.workers,
        "queue_size": queue_size,
        "backend": settings.backend,
        "uptime_s": round(time.time() - request.app[STARTED_AT], 1),
        "version": __version__,
    }
    if isinstance(journal, RedisJobStore):
        body["instance"] = journal.instance_id
        body["store"] = "unreachable" if store_error else "ok"
        body["instances"] = journal.instances_alive
    if worker.fatal_error is not None:
        body["error"] = worker.fatal_error
    elif store_error is not None:
        body["error"] = store_error
    return web.json_response(body, status=200 if ready else 503)


async def list_models(request: web.Request) -> web.Response:
    """What can be used: known names, which load offline, which are on disk, which are in memory."""
    settings, worker = request.app[SETTINGS], request.app[WORKER]
    engine = request.app[ENGINE]
    loaded = {str(m["name"]): m for m in await worker.runner.models()}
    listed = await asyncio.get_running_loop().run_in_executor(None, engine.list_models)
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
    settings = request.app[SETTINGS]
    if name != settings.model:
        request.app[ENGINE].check_model_name(name)
        if "/" in name or "\\" in name:
            raise BadRequest("model must be a model name, not a path.")
    return name


async def load_model(request: web.Request) -> web.Response:
    """Warm a model by hand, so the first job for it does not wait for the load."""
    name = _model_name(request)
    info = await request.app[WORKER].load_model(name)
    return web.json_response({"name": name, "loaded": True, **info})


async def unload_model(request: web.Request) -> web.Response:
    name = _model_name(request)
    if not await request.app[WORKER].unload_model(name):
        raise JobNotFound(f"Model {name} is not loaded.")
    return web.json_response({"name": name, "loaded": False})


def setup_routes(app: web.Application) -> None:
    app.router.add_post("/transcribe", transcribe, name="transcribe")
    app.router.add_get("/status/{job_id}", status, name="status")
    app.router.add_get("/download/{job_id}", download, name="download")
    app.router.add_get("/health", health, name="health")
    app.router.add_get("/models", list_models, name="models")
    app.router.add_post("/models/{name}/load", load_model, name="load_model")
    app.router.add_delete("/models/{name}", unload_model, name="unload_model")
    control.setup_control_routes(app)
    streams.setup_stream_routes(app)
    dashboard.setup_dashboard_routes(app)
    # Both build on this module (openai_api on its upload path, openapi on openai_api's names).
    from service.api import openai_compat, openapi

    openai_compat.setup_openai_routes(app)
    openapi.setup_openapi_routes(app)
