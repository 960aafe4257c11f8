"""The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.

Built from two things the code already has, so it cannot drift from it: `OPERATIONS`, one entry
per route the app registers (by its route name: the contract with service/api/routes.py), and
the pydantic models of every body (service/jobs/view.py, service/api/schemas.py), whose JSON
Schemas become components/schemas. tests/test_openapi.py checks both ways that the table and
`app.router` agree, and runs schemathesis against a live server.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from service import __version__
from service.api import clients
from service.api import schemas as s
from service.api.auth import OPEN_PATHS, OPEN_PREFIXES
from service.api.keys import SERVICES
from service.api.schemas import RESPONSE_FORMATS
from service.jobs import formats
from service.jobs.job import JobStatus
from service.jobs.view import JobView
from service.usecases.control import DEFAULT_PAGE, MAX_PAGE

Schema = dict[str, Any]
Model = type[BaseModel]

OPENAPI_PATH = "/openapi.json"
# HTTP methods an OpenAPI path item may hold, in the order they are listed.
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


@dataclass(frozen=True)
class Header:
    description: str
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    required: bool = True


@dataclass(frozen=True)
class Param:
    name: str
    where: str  # path, query or header; path parameters are always required
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    description: str | None = None


@dataclass(frozen=True)
class Reply:
    """One response. `model` is its application/json body; `content` other media types (a model
    there becomes a $ref). On /v1 an `Error` body is sent in OpenAI's shape, as the service does."""

    description: str
    model: Model | None = None
    content: Mapping[str, Model | Schema] = field(default_factory=dict)
    headers: Mapping[str, Header] = field(default_factory=dict)
    extra: Mapping[str, Model] = field(default_factory=dict)  # e.g. x-websocket-message


@dataclass(frozen=True)
class Operation:
    """One route: `name` is its name in app.router. A str response is a components/responses one."""

    name: str
    route: str  # "METHOD /path", the path as app.router writes it
    operation_id: str
    summary: str
    responses: Mapping[int, Reply | str]
    description: str | None = None
    parameters: tuple[Param, ...] = ()
    form: Model | None = None  # a multipart/form-data request body

    @property
    def method(self) -> str:
        return self.route.split(" ", 1)[0]

    @property
    def path(self) -> str:
        return self.route.split(" ", 1)[1]

    @property
    def open(self) -> bool:
        """Open without a token: what the token check lets through (auth.OPEN_PATHS)."""
        return self.path in OPEN_PATHS or self.path.startswith(OPEN_PREFIXES)


def error(description: str, headers: Mapping[str, Header] | None = None) -> Reply:
    return Reply(description, s.Error, headers=headers or {})


RETRY_AFTER = {"Retry-After": Header("Seconds to wait before trying again.")}
QUEUE_FULL = error(
    "The queue is at --max-queue; the body was not read.",
    {"Retry-After": Header("Seconds, estimated from recent jobs.")},
)
STOPPING = error("The service is shutting down.", RETRY_AFTER)
NO_ROOM = error("The storage has less free space than --min-free-mb; the body was not read.")
JOB_ID = Param("job_id", "path", description="The job's id.")
MODEL_NAME = Param("name", "path")
ACCEPTED_HEADERS = {"Location": Header("The job's status URL, `/status/{job_id}`.")}
ASSET_HEADERS = {
    "Content-Security-Policy": Header("Same-origin only; no inline script; no framing."),
    "X-Content-Type-Options": Header("`nosniff`"),
    "Cache-Control": Header("`no-cache`: revalidated (ETag) on each load."),
}
NOT_MODIFIED = Reply("If-None-Match matched the ETag: the cached copy is current.")
TEXT: Schema = {"type": "string"}
NO_RETRY = "`false`: sending the same request again would only repeat the outcome."


def _by_media_type(names: Mapping[str, str], json_schema: Schema) -> dict[str, Schema]:
    """format name -> media type, as content grouped by media type with the names as x-formats."""
    content: dict[str, Schema] = {}
    for name, media_type in names.items():
        entry = content.setdefault(media_type, {"schema": json_schema if "json" in media_type else TEXT})
        entry.setdefault("x-formats", []).append(name)
    return content


def _download_content() -> dict[str, Schema]:
    # anyOf: a verbose_json body also satisfies Transcript (its fields are a superset).
    either = {"anyOf": [s.Transcript, s.VerboseTranscript]}
    media = {name: content_type.split(";")[0].strip() for name, (content_type, _) in formats.FORMATS.items()}
    return _by_media_type(media, either)


def _openai_content() -> dict[str, Schema]:
    # json and verbose_json are JSON; text, srt and vtt plain text, as OpenAI labels them.
    either = {"anyOf": [s.OpenAITranscription, s.VerboseTranscript]}
    media = {fmt: "application/json" if "json" in fmt else "text/plain" for fmt in RESPONSE_FORMATS}
    content = _by_media_type(media, either)
    content["text/event-stream"] = {"schema": s.OpenAIStreamEvent, "x-formats": list(s.STREAM_FORMATS)}
    return content


def _openai_audio(name: str, path: str, operation_id: str, summary: str, english_only_note: str) -> Operation:
    return Operation(
        name,
        f"POST {path}",
        operation_id,
        summary,
        description=(
            "OpenAI-compatible, answered when the transcript is ready, or with stream=true as "
            "text/event-stream while it is decoded. The upload is an ordinary job (journal, queue "
            "order, --max-queue, cache, webhooks, restarts); the request holds until it ends. "
            "Other OpenAI fields are accepted and ignored."
        ),
        form=s.OpenAIAudioForm,
        responses={
            200: Reply(
                "json: `{text, usage}`; verbose_json: VerboseTranscript; text: one string and a "
                "newline; srt and vtt: subtitles; stream=true: transcript.text.delta events, then "
                "transcript.text.done (an error after the stream began is an `error` event).",
                content=_openai_content(),
                headers={
                    "X-Job-Id": Header(
                        "The job behind the answer (`oai-` and 32 hex digits): /status/{id}, /download/{id}.",
                        {"type": "string", "pattern": "^oai-[0-9a-f]{32}$"},
                    ),
                    "X-Model": Header("The model that ran."),
                },
            ),
            400: error(
                "A bad field (`param` names it), not multipart, no, empty, sample-less or "
                "undecodable audio (`param: file`)" + english_only_note
            ),
            404: error("A model name that is neither OpenAI's nor one the engine has (`model_not_found`)."),
            409: error(
                "The job was cancelled (DELETE /jobs/{id}) while the request waited.",
                {"x-should-retry": Header(NO_RETRY)},
            ),
            413: error("Larger than --max-upload-mb."),
            429: QUEUE_FULL,
            500: error(
                "The job failed (its error is the message, with `x-should-retry: false`), or an "
                "unexpected failure.",
                {"x-should-retry": Header(NO_RETRY + " Sent when the job failed.", required=False)},
            ),
            503: error(
                "The service is stopping; a job already accepted is kept and runs after the restart.",
                RETRY_AFTER,
            ),
            504: error("The job is still running past its time limit; its result will be at /status/{id}."),
            507: NO_ROOM,
        },
    )


def _operations() -> tuple[Operation, ...]:
    """The route table: one entry per operation, in the document's order."""
    statuses = "|".join(status.value for status in JobStatus)
    return (
        Operation(
            "transcribe",
            "POST /transcribe",
            "transcribe",
            "Upload audio as a queued job",
            description=(
                "202 for a new job (or a failed/cancelled one submitted again, or a transcript-cache hit "
                "that completes at once); 200 when that job_id already exists with the same audio and "
                "options. The body is streamed to disk and kept only once every check has passed."
            ),
            form=s.UploadForm,
            responses={
                200: Reply("The same job already exists.", s.JobAccepted, headers=ACCEPTED_HEADERS),
                202: Reply(
                    "Accepted (queued, or completed from the cache).", s.JobAccepted, headers=ACCEPTED_HEADERS
                ),
                400: error(
                    "Not multipart, no or an empty file, no samples, or a bad field (job_id, model, "
                    "language, task, callback_url, options, priority)."
                ),
                409: error("The job_id exists with different audio or options."),
                413: error("Larger than --max-upload-mb."),
                415: error("The bytes are not decodable audio."),
                429: QUEUE_FULL,
                503: STOPPING,
                507: NO_ROOM,
            },
        ),
        Operation(
            "status",
            "GET /status/{job_id}",
            "getStatus",
            "A job's state; long-polls with ?wait=",
            parameters=(
                JOB_ID,
                Param(
                    "wait",
                    "query",
                    {"type": "number", "minimum": 0},
                    "Seconds to hold the request until the job ends (at most 60 are used).",
                ),
            ),
            responses={
                200: Reply("The job.", JobView),
                400: error("wait is not a non-negative number."),
                404: "JobNotFound",
            },
        ),
        Operation(
            "download",
            "GET /download/{job_id}",
            "download",
            "A completed job's transcript in one of several formats",
            parameters=(
                JOB_ID,
                Param(
                    "format",
                    "query",
                    {"type": "string", "enum": list(formats.FORMATS), "default": "txt"},
                    "; ".join(f"{name}: {ctype}" for name, (ctype, _) in formats.FORMATS.items()),
                ),
                Param(
                    "partial",
                    "query",
                    {"type": "boolean", "default": False},
                    "true: a queued or running job's transcript so far (its checkpointed chunks), "
                    "in any format; a completed job's whole transcript.",
                ),
            ),
            responses={
                200: Reply(
                    "The transcript, with `Content-Disposition: inline`. A partial one carries "
                    "`X-Transcript-Partial: true` and `X-Transcribed-Seconds`.",
                    content=_download_content(),
                    headers={
                        "Content-Disposition": Header('`inline; filename="<job_id>.<format>"`'),
                        "X-Transcript-Partial": Header(
                            "`true` when the job has not finished (partial=true only).", required=False
                        ),
                        "X-Transcribed-Seconds": Header(
                            "Partial transcripts: how far into the recording they reach.", required=False
                        ),
                    },
                ),
                400: error("Unknown format, or rttm for a job without speakers."),
                404: error(
                    "No such job, or it has no transcript (queued or processing without "
                    "partial=true, failed, cancelled)."
                ),
            },
        ),
        Operation(
            "health",
            "GET /health",
            "health",
            "Readiness: 200 only while a model is ready for jobs",
            responses={
                200: Reply("Ready.", s.Health),
                503: Reply(
                    "Not ready: starting, loading the model, restarting inference, stopping, broken, "
                    "or a self-check that jobs need is failing (`checks`).",
                    s.Health,
                ),
            },
        ),
        Operation(
            "models",
            "GET /models",
            "listModels",
            "Known models: which load offline, which are on disk, which are loaded",
            responses={200: Reply("The models.", s.ModelList)},
        ),
        Operation(
            "load_model",
            "POST /models/{name}/load",
            "loadModel",
            "Load (warm) a model",
            parameters=(MODEL_NAME,),
            responses={
                200: Reply("Loaded.", s.ModelLoaded),
                400: error("Unknown name, a path, not available offline, or not enough memory."),
            },
        ),
        Operation(
            "unload_model",
            "DELETE /models/{name}",
            "unloadModel",
            "Unload a model",
            parameters=(MODEL_NAME,),
            responses={
                200: Reply("Unloaded.", s.ModelUnloaded),
                400: error("Unknown name or a path."),
                404: error("That model is not loaded."),
                409: error("The default model, or one a job is using."),
            },
        ),
        Operation(
            "cancel",
            "DELETE /jobs/{job_id}",
            "cancelJob",
            "Cancel a queued or running job",
            parameters=(JOB_ID,),
            responses={
                200: Reply("Cancelled (a running decode stops within seconds).", s.Cancelled),
                404: "JobNotFound",
                409: error("The job already ended."),
            },
        ),
        Operation(
            "jobs",
            "GET /jobs",
            "listJobs",
            "Jobs, newest first, a page at a time",
            parameters=(
                Param(
                    "status",
                    "query",
                    {"type": "string", "pattern": f"^({statuses})(,({statuses}))*$"},
                    "One or more states, comma-separated.",
                ),
                Param(
                    "limit",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": DEFAULT_PAGE},
                ),
                Param(
                    "cursor",
                    "query",
                    {"type": "integer", "minimum": 1, "maximum": 2**62},
                    "next_cursor from the previous page.",
                ),
            ),
            responses={200: Reply("A page.", s.JobList), 400: error("A bad status, limit or cursor.")},
        ),
        Operation(
            "queue",
            "GET /queue",
            "queue",
            "Running and queued jobs with wait estimates",
            responses={200: Reply("The queue.", s.QueueView)},
        ),
        Operation(
            "stream_sse",
            "GET /events/{job_id}",
            "streamEvents",
            "Live progress as Server-Sent Events",
            description=(
                "`state`, the job's events, and a final `state` when it ends (docs/streams.md). "
                "A `: keep-alive` comment every 15 s while idle."
            ),
            parameters=(
                JOB_ID,
                Param(
                    "Last-Event-ID",
                    "header",
                    {"type": "integer", "minimum": 0},
                    "Resume after this event id.",
                ),
                Param(
                    "last_event_id",
                    "query",
                    {"type": "integer", "minimum": 0},
                    "Resume after this event id (when the header is absent).",
                ),
            ),
            responses={
                200: Reply(
                    "The stream; it ends after the job's final state.",
                    content={"text/event-stream": s.ServerSentEvent},
                    headers={"Cache-Control": Header("`no-cache`")},
                ),
                400: error("A bad last event id."),
                404: "JobNotFound",
                503: STOPPING,
            },
        ),
        Operation(
            "stream_ws",
            "GET /ws/{job_id}",
            "streamWebSocket",
            "Live progress over a WebSocket",
            description=(
                "A GET that upgrades to a WebSocket: one JSON text message (StreamMessage) per item, "
                "closed with 1000 at the job's end (1001 when the service stops). Checks happen before "
                "the upgrade, so an unknown job or a bad last_event_id answers plain JSON errors."
            ),
            parameters=(
                JOB_ID,
                Param(
                    "last_event_id", "query", {"type": "integer", "minimum": 0}, "Resume after this event id."
                ),
                Param("Upgrade", "header", {"type": "string", "const": "websocket"}),
                Param("Sec-WebSocket-Key", "header"),
                Param("Sec-WebSocket-Version", "header"),
            ),
            responses={
                101: Reply(
                    "Switching protocols; then StreamMessage JSON text frames.",
                    extra={"x-websocket-message": s.StreamMessage},
                ),
                400: error("A bad last_event_id, or the request is not a WebSocket upgrade."),
                404: "JobNotFound",
                503: STOPPING,
            },
        ),
        Operation(
            "openapi",
            f"GET {OPENAPI_PATH}",
            "openapi",
            "This document",
            responses={200: Reply("OpenAPI 3.1.", content={"application/json": {"type": "object"}})},
        ),
        Operation(
            "metrics",
            "GET /metrics",
            "metrics",
            "Prometheus metrics",
            description=(
                "Counters and histograms of finished jobs, processing time, real-time factor, audio "
                "transcribed and refused uploads; gauges of jobs by status, queue depth, running jobs, "
                "loaded models, restarts, readiness and uptime (docs/metrics.md). Needs the token "
                "when one is set: give the scraper a bearer token."
            ),
            responses={
                200: Reply(
                    "Prometheus text exposition format (`text/plain; version=...`).",
                    content={"text/plain": TEXT},
                )
            },
        ),
        Operation(
            "client_index",
            f"GET {clients.CLIENT_PREFIX}",
            "clientIndex",
            "The light client's wheel: its URL and the lines that install it",
            description=(
                f"`{clients.DISTRIBUTION}` (the HTTP client, the MCP tools, the command line), as this "
                "service hands it out to agents' containers: `pip install <url>`. JSON by default; an "
                "HTML page (which pip's `--find-links` reads) when the request asks for text/html. "
                "Open without a token."
            ),
            responses={
                200: Reply(
                    "The wheel and how to install it.",
                    content={"application/json": s.ClientIndex, "text/html": TEXT},
                ),
                404: error("The service was installed without building the wheel (the message says how)."),
            },
        ),
        Operation(
            "client_wheel",
            f"GET {clients.CLIENT_PREFIX}{{wheel}}",
            "clientWheel",
            "The light client's wheel file",
            description="The bytes of the wheel GET /client/ names. Open without a token.",
            parameters=(
                Param(
                    "wheel",
                    "path",
                    {"type": "string", "pattern": clients.WHEEL_PATTERN},
                    "The wheel's file name, as GET /client/ gives it.",
                ),
            ),
            responses={
                200: Reply(
                    "The wheel (a zip archive).",
                    content={"application/octet-stream": {"type": "string", "format": "binary"}},
                    headers={"Content-Disposition": Header('`attachment; filename="<wheel>"`')},
                ),
                404: error("No wheel by that name, or none at all."),
            },
        ),
        Operation(
            "dashboard",
            "GET /",
            "dashboard",
            "The web dashboard",
            description=(
                "A static page; what it shows comes from this API, fetched by its script (with the "
                "token it asks for, when one is needed). Open without a token: it holds no data."
            ),
            responses={
                200: Reply("The page.", content={"text/html": TEXT}, headers=ASSET_HEADERS),
                304: NOT_MODIFIED,
            },
        ),
        Operation(
            "dashboard_asset",
            "GET /static/{name}",
            "dashboardAsset",
            "The dashboard's script, style sheet and icon",
            description="Only the dashboard's own files, by plain name (no folders). Open without a token.",
            parameters=(
                Param(
                    "name",
                    "path",
                    description="A file name such as `dashboard.js`, `dashboard.css`, `icon.svg`.",
                ),
            ),
            responses={
                200: Reply(
                    "The file.",
                    content={media: TEXT for media in ("text/css", "text/javascript", "image/svg+xml")},
                    headers=ASSET_HEADERS,
                ),
                304: NOT_MODIFIED,
                404: error("No asset by that name."),
            },
        ),
        _openai_audio(
            "openai_transcriptions",
            "/v1/audio/transcriptions",
            "openaiTranscriptions",
            "OpenAI-compatible transcription",
            ".",
        ),
        _openai_audio(
            "openai_translations",
            "/v1/audio/translations",
            "openaiTranslations",
            "OpenAI-compatible translation to English",
            ", or an English-only model.",
        ),
        Operation(
            "openai_models",
            "GET /v1/models",
            "openaiModels",
            "OpenAI-compatible model list",
            description="whisper-1 (the default model), then every model loaded or loadable with no network.",
            responses={200: Reply("The models.", s.OpenAIModelList)},
        ),
        Operation(
            "openai_model",
            "GET /v1/models/{model}",
            "openaiModel",
            "One entry of the OpenAI-compatible model list",
            parameters=(Param("model", "path", description="An id from GET /v1/models."),),
            responses={
                200: Reply("The model.", s.OpenAIModel),
                404: error("Not a model listed by GET /v1/models (`code: model_not_found`)."),
            },
        ),
    )


# -- the document ------------------------------------------------------------------------------------


class _SchemaGenerator(GenerateJsonSchema):
    """Pydantic's JSON Schema less what the document does not need: field titles, and
    `default: null` (a None default means the key is left out, or not sent, never null)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def default_schema(self, schema: core_schema.WithDefaultSchema) -> JsonSchemaValue:
        json_schema = super().default_schema(schema)
        if "default" in json_schema and json_schema["default"] is None:
            del json_schema["default"]
        return json_schema


def _ref(model: Model) -> Schema:
    return {"$ref": s.REF_TEMPLATE.format(model=model.__name__)}


def _model_schema(model: Model, components: dict[str, Schema]) -> Schema:
    """The model's JSON Schema, its $defs hoisted into `components` (one schema per name)."""
    schema = model.model_json_schema(ref_template=s.REF_TEMPLATE, schema_generator=_SchemaGenerator)
    for name, definition in schema.pop("$defs", {}).items():
        if components.setdefault(name, definition) != definition:
            raise ValueError(f"two different schemas are named {name}")
    return schema


def _component(model: Model, components: dict[str, Schema]) -> Schema:
    """A $ref to the model, its schema put in components on first use."""
    if model.__name__ not in components:
        components[model.__name__] = _model_schema(model, components)
    return _ref(model)


def _schema(value: Any, components: dict[str, Schema]) -> Any:
    """`value` with every model in it (at any depth) replaced by a $ref to its component."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        return _component(value, components)
    if isinstance(value, dict):
        return {key: _schema(item, components) for key, item in value.items()}
    if isinstance(value, list):
        return [_schema(item, components) for item in value]
    return value


def _header(header: Header) -> Schema:
    return {"description": header.description, "required": header.required, "schema": header.schema}


def _reply(reply: Reply, openai: bool, components: dict[str, Schema]) -> Schema:
    content = dict(reply.content)
    if reply.model is not None:
        content["application/json"] = s.OpenAIError if openai and reply.model is s.Error else reply.model
    out: Schema = {"description": reply.description}
    if reply.headers:
        out["headers"] = {name: _header(header) for name, header in reply.headers.items()}
    if content:
        out["content"] = {}
        for media_type, value in content.items():
            # A media object (a schema and x-formats), or just the schema.
            media = value if isinstance(value, dict) and "schema" in value else {"schema": value}
            out["content"][media_type] = _schema(media, components)
    out.update(_schema(dict(reply.extra), components))
    return out


def _parameter(param: Param) -> Schema:
    out: Schema = {"name": param.name, "in": param.where, "required": param.where == "path"}
    if param.description:
        out["description"] = param.description
    out["schema"] = param.schema
    return out


def _operation(op: Operation, components: dict[str, Schema]) -> Schema:
    openai = op.path.startswith(s.OPENAI_PREFIX)
    out: Schema = {"operationId": op.operation_id, "summary": op.summary}
    if op.description:
        out["description"] = op.description
    if op.open:
        out["security"] = []
    if op.parameters:
        out["parameters"] = [_parameter(param) for param in op.parameters]
    if op.form is not None:
        form = _model_schema(op.form, components)  # inline: a form is no reusable body
        out["requestBody"] = {"required": True, "content": {"multipart/form-data": {"schema": form}}}
    shared = {}  # every route can fail (500); every one the token guards can answer 401
    if not op.open:
        shared[401] = "OpenAIUnauthorized" if openai else "Unauthorized"
    if not op.open and not openai:  # the client's version check (service/api/clients.py)
        shared[400] = "BadClientVersion"
        shared[426] = "ClientIncompatible"
    shared[500] = "OpenAIInternalError" if openai else "InternalError"
    responses = {**shared, **op.responses}
    out["responses"] = {
        str(code): (
            {"$ref": f"#/components/responses/{reply}"}
            if isinstance(reply, str)
            else _reply(reply, openai, components)
        )
        for code, reply in sorted(responses.items())
    }
    return out


SHARED_RESPONSES: dict[str, Reply] = {
    "Unauthorized": error(
        "The service has an API token and the request did not send it (`Authorization: Bearer <token>`).",
        {"WWW-Authenticate": Header('`Bearer realm="transcription"`')},
    ),
    "InternalError": error("An unexpected failure; the service log has the details."),
    "JobNotFound": error("No job with that id."),
    "BadClientVersion": error(
        f"`{clients.VERSION_HEADER}` was sent but is not a version (such as 0.1.0). Other causes of a "
        "400 are listed with each operation."
    ),
    "ClientIncompatible": error(
        f"`{clients.VERSION_HEADER}` names a client this service does not work with (another major "
        f"version, or older than its minimum); the message has the line that installs the right one "
        f"from GET {clients.CLIENT_PREFIX}."
    ),
    "OpenAIUnauthorized": Reply(
        "The service has an API token and the request did not send it as the API key "
        "(`Authorization: Bearer <token>`); `code: invalid_api_key`.",
        s.OpenAIError,
        headers={"WWW-Authenticate": Header('`Bearer realm="transcription"`')},
    ),
    "OpenAIInternalError": Reply("An unexpected failure; the service log has the details.", s.OpenAIError),
}
OPERATIONS = _operations()


@functools.cache
def _document() -> dict[str, Any]:
    components: dict[str, Schema] = {}
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, components)
    responses = {name: _reply(reply, False, components) for name, reply in SHARED_RESPONSES.items()}
    open_routes = ", ".join(sorted(OPEN_PATHS) + [f"{prefix}*" for prefix in OPEN_PREFIXES])
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Whisper transcription service",
            "version": __version__,
            "description": (
                "Upload audio, follow the job, download the transcript; the model stays loaded. "
                'Every error is JSON `{"error": "..."}`, except under /v1/ (the OpenAI-compatible '
                "routes), where every error, 401, 404 and 405 included, has OpenAI's shape "
                '`{"error": {"message", "type", "param", "code"}}`. With --api-token set, every '
                f"route but {open_routes} needs `Authorization: Bearer <token>`. The light client "
                f"(`{clients.DISTRIBUTION}`, its wheel at GET {clients.CLIENT_PREFIX}) sends "
                f"`{clients.VERSION_HEADER}`; an incompatible one is answered 426 on the service's own "
                "routes. Requests without the header are not checked."
            ),
        },
        "paths": paths,
        "components": {
            "schemas": dict(sorted(components.items())),
            "responses": responses,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Enforced only when the service runs with --api-token.",
                }
            },
        },
        "security": [{"bearerAuth": []}],
    }


def build_document() -> dict[str, Any]:
    """The whole document, a fresh copy."""
    return copy.deepcopy(_document())


def __getattr__(name: str) -> Any:
    """`PATHS`: the document's paths, built on first use (schema generation takes a moment)."""
    if name == "PATHS":
        return build_document()["paths"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def operations(paths: Mapping[str, Mapping[str, Any]]) -> set[tuple[str, str]]:
    """(METHOD, path) for every operation in a `paths` mapping."""
    return {(method.upper(), path) for path, item in paths.items() for method in item if method in METHODS}


def route_operations(app: web.Application) -> set[tuple[str, str]]:
    """(METHOD, OpenAPI path) for every route the app registers; aiohttp's automatic HEAD for
    each GET is left out. A static folder counts as `GET {prefix}/{path}`."""
    found: set[tuple[str, str]] = set()
    for route in app.router.routes():
        resource = route.resource
        if resource is None or route.method == "HEAD":
            continue
        path = resource.canonical
        if isinstance(resource, web.StaticResource):
            path = path.rstrip("/") + "/{path}"
        found.add((route.method, path))
    return found


# The served document, built on first use and kept as text.
_SERVED = web.AppKey("openapi_served", dict)


def _without_auth(document: dict[str, Any]) -> dict[str, Any]:
    """The document as served with no --api-token: no bearer scheme a client would try to fill."""
    out = {**document, "components": dict(document["components"])}
    out.pop("security", None)
    out["components"].pop("securitySchemes", None)
    return out


async def openapi_document(request: web.Request) -> web.Response:
    served: dict[str, str] = request.app[_SERVED]
    if "text" not in served:
        document = _document()
        if request.app[SERVICES].settings.api_token is None:
            document = _without_auth(document)
        served["text"] = json.dumps(document, indent=1)
    return web.Response(text=served["text"], content_type="application/json")


def setup_openapi_routes(app: web.Application) -> None:
    app[_SERVED] = {}
    app.router.add_get(OPENAPI_PATH, openapi_document, name="openapi")
