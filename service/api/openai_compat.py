"""OpenAI-compatible speech-to-text: `/v1/audio/transcriptions`, `/v1/audio/translations`, `/v1/models`.

Tools that already speak OpenAI's API work unchanged against this service. The answer is
synchronous, as OpenAI's is, but the work is an ordinary durable job: the upload takes the same
path as `POST /transcribe` (journal, queue order, backpressure, cache, webhooks, restarts), and
the request then waits for that job to end and renders its transcript in the asked format, or,
with `stream=true`, sends the text as it is decoded (openai_stream.py). Errors on these routes
use OpenAI's shape, so the official clients raise their usual exceptions.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
import uuid
from typing import Any

from aiohttp import web

from service.api import openai_stream
from service.api.keys import SERVICES
from service.api.schemas import (
    GRANULARITIES,
    INCLUDES,
    MODEL_ALIASES,
    OPENAI_PREFIX,
    RESPONSE_FORMATS,
    STREAM_FORMATS,
)
from service.api.uploads import read_form
from service.errors import (
    BadRequest,
    InvalidAudio,
    JobConflict,
    ModelUnavailable,
    ServiceError,
    ServiceUnavailable,
    UnsupportedAudio,
    UploadTooLarge,
)
from service.inference.worker import KILL_AFTER_SECONDS, job_timeout
from service.jobs import formats
from service.jobs.job import Job, JobStatus, Task
from service.usecases import views

# The names OpenAI's clients send (whisper-1 by default); here they mean the service's default model.
ALIAS = MODEL_ALIASES[0]
OWNER = "whisper-transcription-service"
_FIELDS = (
    "model",
    "language",
    "prompt",
    "response_format",
    "temperature",
    "timestamp_granularities[]",
    "timestamp_granularities",
    "stream",
    "include[]",
    # Extensions beyond OpenAI's parameters (send them with the SDK's extra_body).
    "priority",
    "callback_url",
)
_GRANULARITY_FIELDS = ("timestamp_granularities[]", "timestamp_granularities")
_REPEATED = (*_GRANULARITY_FIELDS, "include[]")
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off", "")
# Prefixes of the model ids other servers use for the same weights (speaches' and Hugging Face's
# `Systran/faster-whisper-tiny.en`, `openai/whisper-base`): the rest names a model here.
_HUB_PREFIX, _WHISPER_PREFIX, _HUB_SUFFIX = "faster-", "whisper-", "-ct2"
# Beyond the job's own time limit (twice: a model fallback runs a second attempt), how long a
# request keeps waiting for the worker to record the ending before it gives up on it.
_WAIT_SLACK_S = 30.0

# OpenAI's `code` for errors that carry no more specific one.
_CODES = {
    401: "invalid_api_key",
    404: "not_found",
    409: "conflict",
    413: "file_too_large",
    415: "invalid_file_format",
    429: "rate_limit_exceeded",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
    507: "insufficient_storage",
}


class ParamError(BadRequest):
    """A bad request parameter, named in the error's `param` as OpenAI does."""

    def __init__(self, message: str, param: str, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code


class JobFailed(ServiceError):
    """The job ran and failed; sending the same request again would just repeat it."""

    status = 500


class JobCancelled(JobConflict):
    """Someone cancelled the job (DELETE /jobs/{id}) while this request waited for it."""


class WaitTimedOut(ServiceError):
    status = 504


class UnknownModel(ServiceError):
    status = 404
    param = "model"
    code = "model_not_found"


# Errors about the upload itself, which OpenAI reports against the `file` parameter.
_FILE_ERRORS = (InvalidAudio, UnsupportedAudio, UploadTooLarge)


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIX)


def error_body(status: int, message: str, exc: BaseException | None = None) -> dict[str, Any]:
    """OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`."""
    code = getattr(exc, "code", None) or _CODES.get(status)
    param = getattr(exc, "param", None)
    if isinstance(exc, _FILE_ERRORS):
        param = "file"
    return {
        "error": {
            "message": message,
            "type": "invalid_request_error" if status < 500 else "server_error",
            "param": param,
            "code": code,
        }
    }


def error_response(
    status: int, message: str, headers: dict[str, str] | None = None, exc: BaseException | None = None
) -> web.Response:
    """An error in OpenAI's shape. Bytes that are not audio are a 400, as OpenAI answers them
    (the service's own routes say 415), so clients catching BadRequestError see them."""
    body = error_body(status, message, exc)
    if status == 415:
        status = 400
    return web.json_response(body, status=status, headers=headers)


def _stream_error(exc: ServiceError) -> dict[str, Any]:
    return error_body(exc.status, exc.message, exc)


def _hub_name(name: str) -> str:
    """`Systran/faster-whisper-tiny.en` -> `tiny.en`, `Systran/faster-distil-whisper-large-v3`
    -> `distil-large-v3`; other names unchanged."""
    base = name.rsplit("/", 1)[-1].removesuffix(_HUB_SUFFIX).removeprefix(_HUB_PREFIX)
    if base.startswith("distil-" + _WHISPER_PREFIX):
        return "distil-" + base.removeprefix("distil-" + _WHISPER_PREFIX)
    return base.removeprefix(_WHISPER_PREFIX)


def resolve_model(request: web.Request, name: str) -> str:
    """The model a requested name means here; "" for the service's default.

    Names the engine knows (`tiny.en`, `base`) are used as given, and so are the hub ids other
    servers use for them (`Systran/faster-whisper-tiny.en`); OpenAI's names (`whisper-1`,
    `gpt-4o-transcribe`) mean the default. Anything else is OpenAI's 404 `model_not_found`, as
    `GET /v1/models/{id}` answers, so a typo is not run on another model. Paths never load.
    """
    name = name.strip()
    services = request.app[SERVICES]
    default = services.settings.model
    if not name or name in MODEL_ALIASES or name == default:
        return ""
    for candidate in dict.fromkeys((name, _hub_name(name))):
        if candidate == default:
            return ""
        if not candidate or "/" in candidate or "\\" in candidate or candidate.endswith(".pt"):
            continue
        try:
            services.catalog.check_model_name(candidate)
        except ModelUnavailable:
            continue
        return candidate
    raise UnknownModel(
        f"The model {name!r} does not exist here; see GET /v1/models ({ALIAS} means the default, {default})."
    )


def _response_format(raw: dict[str, str]) -> str:
    fmt = raw.get("response_format", "").strip().lower() or "json"
    if fmt not in RESPONSE_FORMATS:
        raise ParamError(
            f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, not {fmt!r}.",
            "response_format",
        )
    return fmt


def _granularities(raw: dict[str, str]) -> set[str]:
    values = ",".join(raw.get(name, "") for name in _GRANULARITY_FIELDS)
    chosen = {value.strip().lower() for value in values.split(",") if value.strip()}
    unknown = sorted(chosen - set(GRANULARITIES))
    if unknown:
        raise ParamError(
            f"timestamp_granularities[] takes 'segment' and 'word', not {unknown[0]!r}.",
            "timestamp_granularities[]",
        )
    return chosen


def _flag(raw: dict[str, str], name: str) -> bool:
    value = raw.get(name, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ParamError(f"{name} must be true or false, not {raw[name]!r}.", name)
    return value in _TRUE


def _includes(raw: dict[str, str]) -> set[str]:
    chosen = {value.strip().lower() for value in raw.get("include[]", "").split(",") if value.strip()}
    unknown = sorted(chosen - set(INCLUDES))
    if unknown:
        raise ParamError(f"include[] takes {', '.join(INCLUDES)}, not {unknown[0]!r}.", "include[]")
    return chosen


def _wants_logprobs(raw: dict[str, str], fmt: str) -> bool:
    """include[]=logprobs, where OpenAI sends them: json, and streamed events. They are per word
    here (Whisper's word probabilities), so the job decodes with word times."""
    return "logprobs" in _includes(raw) and (fmt == "json" or _stream(raw, fmt))


def _stream(raw: dict[str, str], fmt: str) -> bool:
    stream = _flag(raw, "stream")
    if stream and fmt not in STREAM_FORMATS:
        raise ParamError(
            f"stream=true sends text events, so response_format must be {' or '.join(STREAM_FORMATS)}, "
            f"not {fmt!r}; leave stream out for {fmt}.",
            "stream",
        )
    return stream


def _check_temperature(raw: dict[str, str]) -> None:
    value = raw.get("temperature", "").strip()
    if value == "":
        return
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if not 0.0 <= number <= 1.0:
        raise ParamError(f"temperature must be a number from 0 to 1, not {value!r}.", "temperature")


def to_service_fields(request: web.Request, raw: dict[str, str], task: Task, job_id: str) -> dict[str, str]:
    """OpenAI's parameters as the form fields `POST /transcribe` takes; raises on bad ones."""
    fmt = _response_format(raw)
    words = "word" in _granularities(raw) and fmt == "verbose_json"
    _stream(raw, fmt)
    words = words or _wants_logprobs(raw, fmt)
    _check_temperature(raw)
    model = resolve_model(request, raw.get("model", ""))
    services = request.app[SERVICES]
    effective = model or services.settings.model
    engine = services.catalog
    if engine.is_english_only(effective):
        if task is Task.TRANSLATE:
            raise ParamError(
                f"Translation needs a multilingual model, and {raw.get('model') or effective!r} runs on "
                f"{effective}, which only knows English. Send model=base (or another multilingual "
                "model from GET /v1/models).",
                "model",
            )
        language = raw.get("language", "").strip().lower()
        if language not in ("", "en", "english"):
            raise ParamError(
                f"The model {effective} only understands English, not {raw['language']!r}; "
                "send model=base (or another multilingual model) for other languages.",
                "language",
            )
    return {
        "job_id": job_id,
        "model": model,
        "language": raw.get("language", ""),
        "task": task.value,
        "prompt": raw.get("prompt", ""),
        "temperature": raw.get("temperature", ""),
        "word_timestamps": "true" if words else "false",
        "priority": raw.get("priority", ""),
        "callback_url": raw.get("callback_url", ""),
    }


async def _wait_for_end(request: web.Request, job: Job) -> Job:
    """Wait, in long-poll steps, until the job ends.

    A queued job may wait as long as the queue takes; a running one at most its time limit
    (the worker fails it then), so a lost ending cannot hold the request forever.
    """
    services = request.app[SERVICES]
    settings, worker = services.settings, services.worker
    while not job.status.finished and not worker.stopping:
        step = views.MAX_WAIT_SECONDS
        if job.status is JobStatus.PROCESSING and job.started_at is not None:
            limit = 2 * job_timeout(settings, job.duration_s) + KILL_AFTER_SECONDS + _WAIT_SLACK_S
            left = job.started_at + limit - time.time()
            if left <= 0:
                raise WaitTimedOut(
                    f"Job {job.job_id} is still running past its time limit; "
                    f"its result will be at /status/{job.job_id}."
                )
            step = min(step, left)
        job = await services.views.wait_until_finished(job, step)
    return job


def _finished(job: Job) -> Job:
    """The completed job, or the error its ending means to the client."""
    if job.status is JobStatus.FAILED:
        raise JobFailed(f"Transcription failed: {job.error}", headers={"x-should-retry": "false"})
    if job.status is JobStatus.CANCELLED:
        raise JobCancelled(f"Job {job.job_id} was cancelled.", headers={"x-should-retry": "false"})
    if job.status is not JobStatus.COMPLETED:  # the service began stopping meanwhile
        raise ServiceUnavailable(
            f"The service is restarting; job {job.job_id} is kept and runs once it is back "
            f"(GET /status/{job.job_id}), or send the request again."
        )
    return job


def duration_usage(result: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage for whisper-1: the audio's length, in whole seconds rounded up."""
    return {"type": "duration", "seconds": math.ceil(float(result.get("duration") or 0.0))}


def render(result: dict[str, Any], fmt: str, job: Job, logprobs: bool = False) -> tuple[str, str]:
    """The body and content type OpenAI sends for each response_format: JSON, or plain text
    (srt and vtt too, as OpenAI labels them; /download keeps their own types)."""
    plain = "text/plain; charset=utf-8"
    if fmt == "json":
        body: dict[str, Any] = {"text": result.get("text", "")}
        if logprobs:
            words = [w for s in result.get("segments", []) for w in s.get("words") or ()]
            body["logprobs"] = openai_stream.word_logprobs(words)
        body["usage"] = duration_usage(result)
        return json.dumps(body, ensure_ascii=False), "application/json"
    if fmt == "text":
        # One string, as OpenAI sends it; /download's txt has a line per segment instead.
        return str(result.get("text", "")).strip() + "\n", plain
    if fmt == "verbose_json":
        verbose = formats.verbose_json(result, job.task.value)
        verbose["usage"] = duration_usage(result)
        return json.dumps(verbose, ensure_ascii=False), "application/json"
    return formats.render(result, fmt, job.job_id, job.task.value)[0], plain


async def _speech_to_text(request: web.Request, task: Task) -> web.StreamResponse:
    services = request.app[SERVICES]
    await services.control.admit_upload()  # before the body is read: nothing is stored
    job_id = f"oai-{uuid.uuid4().hex}"

    def check(raw: dict[str, str]) -> None:
        services.submissions.parse(to_service_fields(request, raw, task, job_id))

    form = await read_form(
        request,
        _FIELDS,
        check,
        services.layout.tmp,
        services.settings.max_upload_bytes,
        repeated=_REPEATED,
    )
    try:
        fmt = _response_format(form.fields)
        fields = to_service_fields(request, form.fields, task, job_id)
        stream, logprobs = _stream(form.fields, fmt), _wants_logprobs(form.fields, fmt)
        if form.upload is None:
            raise ParamError(
                "The form has no 'file' field; attach the audio as file=@audio.wav.",
                "file",
                "missing_required_parameter",
            )
    except BaseException:
        form.discard()
        raise
    job, _ = await services.submissions.submit(fields, form.upload, form.filename)
    headers = {"X-Job-Id": job.job_id, "X-Model": job.model}
    if stream:

        async def ending() -> Job:
            return _finished(await _wait_for_end(request, job))

        return await openai_stream.stream_job(
            request, job, ending(), services.views.load_result, _stream_error, headers, logprobs
        )
    job = _finished(await _wait_for_end(request, job))
    result = await services.views.load_result(job)
    body, content_type = await asyncio.get_running_loop().run_in_executor(
        None, render, result, fmt, job, logprobs
    )
    return web.Response(text=body, headers={"Content-Type": content_type, **headers})


async def transcriptions(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/transcriptions: OpenAI's parameters, answered when the job ends."""
    return await _speech_to_text(request, Task.TRANSCRIBE)


async def translations(request: web.Request) -> web.StreamResponse:
    """POST /v1/audio/translations: speech in any language to English text (multilingual models)."""
    return await _speech_to_text(request, Task.TRANSLATE)


def _model_entry(request: web.Request, name: str) -> dict[str, Any]:
    return {
        "id": name,
        "object": "model",
        "created": int(request.app[SERVICES].started_at),
        "owned_by": OWNER,
    }


async def _usable_models(request: web.Request) -> list[str]:
    """OpenAI's names, then what is loaded or loads with no network (names only, never paths)."""
    services = request.app[SERVICES]
    loaded = [str(m["name"]) for m in await services.worker.runner.models()]
    listed = await asyncio.get_running_loop().run_in_executor(None, services.catalog.list_models)
    names = list(MODEL_ALIASES)
    for name in [str(e["name"]) for e in listed if e.get("offline") or e["name"] in loaded] + loaded:
        if name not in names and "/" not in name and "\\" not in name:
            names.append(name)
    return names


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models in OpenAI's list shape."""
    names = await _usable_models(request)
    return web.json_response({"object": "list", "data": [_model_entry(request, n) for n in names]})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{model}: one entry for any name the audio routes take, or OpenAI's 404."""
    name = request.match_info["model"]
    if name not in await _usable_models(request):
        resolve_model(request, name)  # raises UnknownModel for a name the audio routes refuse
    return web.json_response(_model_entry(request, name))
