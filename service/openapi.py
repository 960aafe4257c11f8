"""The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.

The document is built here as plain dicts. `CORE_PATHS` describes the routes this service
registers; `CONTRACT_PATHS` (the marked section below) describes endpoints being added on
other branches, written from their agreed contract. The served document always has the core
paths, and has a contract operation only once the running app registers its route, so what a
client reads is true of the server that answers. tests/test_openapi.py checks both ways that
the document and `app.router` agree, and runs schemathesis against a live server.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp import web

from service import __version__, formats
from service.jobs import MAX_PRIORITY, MIN_PRIORITY, PRIORITIES

Schema = dict[str, Any]

OPENAPI_PATH = "/openapi.json"
# HTTP methods an OpenAPI path item may hold, in the order they are listed.
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

_JOB_ID_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_STATUSES = ["queued", "processing", "completed", "failed", "cancelled"]
_WORKER_STATES = ["starting", "loading_model", "ready", "busy", "restarting", "stopping", "error"]


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: Schema) -> Schema:
    """OpenAPI 3.1 (JSON Schema 2020-12) spells nullable as a type list."""
    return {**schema, "type": [schema["type"], "null"]}


def _json(schema: Schema, description: str, headers: dict[str, Any] | None = None) -> Schema:
    response: Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    return _json(_ref("Error"), description, headers)


def _response_ref(name: str) -> Schema:
    return {"$ref": f"#/components/responses/{name}"}


def _header(description: str, schema: Schema | None = None, required: bool = True) -> Schema:
    return {"description": description, "required": required, "schema": schema or {"type": "string"}}


_RETRY_AFTER = {"Retry-After": _header("Seconds to wait before trying again.", {"type": "string"})}


def _job_id_param(description: str = "The job's id.") -> Schema:
    return {
        "name": "job_id",
        "in": "path",
        "required": True,
        "description": description,
        "schema": {"type": "string"},
    }


def _with_auth_errors(responses: dict[str, Any]) -> dict[str, Any]:
    """Every route but /health and /openapi.json can answer 401 (with a token configured) and 500."""
    return {**responses, "401": _response_ref("Unauthorized"), "500": _response_ref("InternalError")}


# -- schemas ---------------------------------------------------------------------------------

_SEGMENT: Schema = {
    "type": "object",
    "description": "One decoded segment; times in seconds.",
    "required": ["id", "start", "end", "text"],
    "properties": {
        "id": {"type": "integer"},
        "start": {"type": "number"},
        "end": {"type": "number"},
        "text": {"type": "string"},
        "avg_logprob": {"type": "number"},
        "no_speech_prob": {"type": "number"},
        "speaker": {"type": "string", "description": "With diarize=true or channels=split."},
        "channel": {"type": "integer", "description": "With channels=split (live segments)."},
        "words": {"type": "array", "items": _ref("Word")},
    },
}

_JOB_SUMMARY_PROPERTIES: dict[str, Schema] = {
    "job_id": {"type": "string"},
    "status": _ref("JobState"),
    "progress": {"type": "number", "minimum": 0, "maximum": 1},
    "priority": {"type": "integer"},
    "priority_name": {"type": "string", "enum": list(PRIORITIES)},
    "model": {"type": "string"},
    "language": _nullable({"type": "string"}),
    "task": {"type": "string", "enum": ["transcribe", "translate"]},
    "duration_s": _nullable({"type": "number"}),
    "filename": _nullable({"type": "string"}),
    "attempts": {"type": "integer", "minimum": 0},
    "created_at": {"type": "string", "format": "date-time"},
    "started_at": _nullable({"type": "string", "format": "date-time"}),
    "completed_at": _nullable({"type": "string", "format": "date-time"}),
    "error": {"type": "string"},
    "note": {"type": "string"},
}
_JOB_SUMMARY_REQUIRED = [
    "job_id",
    "status",
    "progress",
    "priority",
    "model",
    "language",
    "task",
    "duration_s",
    "filename",
    "attempts",
    "created_at",
    "started_at",
    "completed_at",
]

SCHEMAS: dict[str, Schema] = {
    "Error": {
        "type": "object",
        "description": "Every error this service answers (4xx and 5xx) has this body.",
        "required": ["error"],
        "properties": {"error": {"type": "string", "description": "What went wrong and what to do."}},
    },
    "JobState": {"type": "string", "enum": _STATUSES},
    "JobAccepted": {
        "type": "object",
        "required": ["job_id", "status"],
        "properties": {"job_id": {"type": "string"}, "status": _ref("JobState")},
    },
    "JobOptions": {
        "type": "object",
        "description": "The job's options that differ from the defaults (unset ones are left out).",
        "properties": {
            "word_timestamps": {"type": "boolean"},
            "diarize": {"type": "boolean"},
            "num_speakers": {"type": "integer"},
            "min_speakers": {"type": "integer"},
            "max_speakers": {"type": "integer"},
            "split_channels": {"type": "boolean"},
        },
    },
    "JobStatus": {
        "type": "object",
        "description": "A job as GET /status shows it; live streams send the same as `state` messages.",
        "required": [
            "job_id",
            "status",
            "progress",
            "message",
            "model",
            "language",
            "task",
            "duration_s",
            "attempts",
            "priority",
            "options",
            "created_at",
            "started_at",
            "completed_at",
        ],
        "properties": {
            "job_id": {"type": "string"},
            "status": _ref("JobState"),
            "progress": {"type": "number", "minimum": 0, "maximum": 1},
            "message": {"type": "string"},
            "model": {"type": "string"},
            "language": _nullable({"type": "string"}),
            "task": {"type": "string", "enum": ["transcribe", "translate"]},
            "duration_s": _nullable({"type": "number"}),
            "attempts": {"type": "integer", "minimum": 0},
            "priority": {"type": "integer"},
            "options": _ref("JobOptions"),
            "created_at": {"type": "string", "format": "date-time"},
            "started_at": _nullable({"type": "string", "format": "date-time"}),
            "completed_at": _nullable({"type": "string", "format": "date-time"}),
            "queue_position": {"type": "integer", "minimum": 1, "description": "Queued jobs: 1 runs next."},
            "transcript": {"type": "string", "description": "Completed jobs: the text."},
            "error": _nullable({"type": "string", "description": "Failed jobs: why."}),
            "note": {"type": "string"},
        },
    },
    "JobSummary": {
        "type": "object",
        "required": _JOB_SUMMARY_REQUIRED,
        "properties": _JOB_SUMMARY_PROPERTIES,
    },
    "JobList": {
        "type": "object",
        "required": ["jobs", "count", "next_cursor"],
        "properties": {
            "jobs": {"type": "array", "items": _ref("JobSummary")},
            "count": {"type": "integer", "minimum": 0},
            "next_cursor": _nullable(
                {"type": "string", "description": "Pass as `cursor`; null on the last page."}
            ),
        },
    },
    "Cancelled": {
        "type": "object",
        "required": ["job_id", "status", "previous_status", "message"],
        "properties": {
            "job_id": {"type": "string"},
            "status": {"type": "string", "const": "cancelled"},
            "previous_status": {"type": "string", "enum": ["queued", "processing"]},
            "message": {"type": "string"},
        },
    },
    "QueueView": {
        "type": "object",
        "required": [
            "running",
            "queued",
            "queue_length",
            "workers",
            "real_time_factor",
            "estimated_wait_s",
            "max_queue",
        ],
        "properties": {
            "running": {
                "type": "array",
                "items": {
                    "allOf": [
                        _ref("JobSummary"),
                        {
                            "type": "object",
                            "required": ["estimated_remaining_s"],
                            "properties": {"estimated_remaining_s": {"type": "number", "minimum": 0}},
                        },
                    ]
                },
            },
            "queued": {
                "type": "array",
                "description": "In the order they will run.",
                "items": {
                    "allOf": [
                        _ref("JobSummary"),
                        {
                            "type": "object",
                            "required": ["position", "estimated_start_s"],
                            "properties": {
                                "position": {"type": "integer", "minimum": 1},
                                "estimated_start_s": {"type": "number", "minimum": 0},
                            },
                        },
                    ]
                },
            },
            "queue_length": {"type": "integer", "minimum": 0},
            "workers": {"type": "integer", "minimum": 1},
            "real_time_factor": _nullable({"type": "number", "description": "null before the first job."}),
            "estimated_wait_s": {"type": "number", "minimum": 0},
            "max_queue": _nullable({"type": "integer", "description": "null: no limit."}),
        },
    },
    "Health": {
        "type": "object",
        "required": [
            "status",
            "model_loaded",
            "model",
            "engine",
            "device",
            "worker",
            "isolation",
            "worker_pid",
            "worker_restarts",
            "processing",
            "active_jobs",
            "workers",
            "queue_size",
            "uptime_s",
            "version",
        ],
        "properties": {
            "status": {"type": "string", "enum": ["ok", "error"]},
            "model_loaded": {"type": "boolean"},
            "model": {"type": "string"},
            "engine": {"type": "string"},
            "device": {"type": "string"},
            "worker": {"type": "string", "enum": _WORKER_STATES},
            "isolation": {"type": "string", "enum": ["process", "thread"]},
            "worker_pid": _nullable({"type": "integer"}),
            "worker_restarts": {"type": "integer", "minimum": 0},
            "processing": _nullable({"type": "string"}),
            "active_jobs": {"type": "array", "items": {"type": "string"}},
            "workers": {"type": "integer", "minimum": 1},
            "queue_size": {"type": "integer", "minimum": 0},
            "uptime_s": {"type": "number", "minimum": 0},
            "version": {"type": "string"},
            "error": {"type": "string", "description": "Only after a fatal error."},
        },
    },
    "ModelInfo": {
        "type": "object",
        "required": ["name", "bundled", "on_disk", "offline", "loaded"],
        "properties": {
            "name": {"type": "string"},
            "bundled": {"type": "boolean"},
            "on_disk": {"type": "boolean"},
            "offline": {"type": "boolean", "description": "Loadable with no network."},
            "default": {"type": "boolean"},
            "loaded": {"type": "boolean"},
            "in_use": {"type": "boolean"},
            "approx_memory_mb": {"type": "number"},
            "load_seconds": {"type": "number"},
            "loaded_at": {"type": "number"},
            "last_used": {"type": "number"},
        },
    },
    "ModelList": {
        "type": "object",
        "required": ["default", "engine", "models"],
        "properties": {
            "default": {"type": "string"},
            "engine": {"type": "string"},
            "models": {"type": "array", "items": _ref("ModelInfo")},
        },
    },
    "ModelLoaded": {
        "type": "object",
        "required": ["name", "loaded"],
        "properties": {
            "name": {"type": "string"},
            "loaded": {"type": "boolean", "const": True},
            "default": {"type": "boolean"},
            "in_use": {"type": "boolean"},
            "approx_memory_mb": {"type": "number"},
            "load_seconds": {"type": "number"},
            "loaded_at": {"type": "number"},
            "last_used": {"type": "number"},
        },
    },
    "ModelUnloaded": {
        "type": "object",
        "required": ["name", "loaded"],
        "properties": {"name": {"type": "string"}, "loaded": {"type": "boolean", "const": False}},
    },
    "Word": {
        "type": "object",
        "required": ["start", "end", "word"],
        "properties": {
            "start": {"type": "number"},
            "end": {"type": "number"},
            "word": {"type": "string"},
            "probability": {"type": "number"},
            "speaker": {"type": "string"},
        },
    },
    "Segment": _SEGMENT,
    "Transcript": {
        "type": "object",
        "description": "format=json: the stored result.",
        "required": ["text", "segments"],
        "properties": {
            "text": {"type": "string"},
            "language": _nullable({"type": "string"}),
            "duration": {"type": "number"},
            "segments": {"type": "array", "items": _ref("Segment")},
        },
    },
    "VerboseTranscript": {
        "type": "object",
        "description": "format=verbose_json: the shape of OpenAI's transcription API.",
        "required": ["task", "language", "duration", "text", "segments"],
        "properties": {
            "task": {"type": "string", "enum": ["transcribe", "translate"]},
            "language": _nullable({"type": "string"}),
            "duration": {"type": "number"},
            "text": {"type": "string"},
            "segments": {"type": "array", "items": _ref("Segment")},
            "words": {"type": "array", "items": _ref("Word")},
        },
    },
    "ServerSentEvent": {
        "type": "object",
        "description": (
            "One event of GET /events (the schema describes each event, as is usual before OpenAPI "
            "3.2's itemSchema): `event` is the message type, `data` its JSON, `id` the event id "
            "(absent on `state`). Comment lines (`: keep-alive`) are not events."
        ),
        "required": ["event", "data"],
        "oneOf": [
            {
                "properties": {
                    "event": {"const": "state"},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": _ref("JobStatus"),
                    },
                },
                "not": {"required": ["id"]},
            },
            {
                "required": ["id"],
                "properties": {
                    "event": {"enum": ["status", "progress", "segment", "end"]},
                    "data": {
                        "type": "string",
                        "contentMediaType": "application/json",
                        "contentSchema": {"type": "object"},
                    },
                    "id": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
        ],
    },
    "StreamMessage": {
        "type": "object",
        "description": (
            "A WebSocket text message (the SSE `event:` is `type`, `data:` is `data`, `id:` is `id`). "
            "`state` carries a JobStatus and has no id; events are status, progress, segment, end."
        ),
        "required": ["type", "data"],
        "properties": {
            "type": {"type": "string", "enum": ["state", "status", "progress", "segment", "end"]},
            "data": {"type": "object"},
            "id": {"type": "integer", "minimum": 1},
        },
    },
}

RESPONSES: dict[str, Schema] = {
    "Unauthorized": _error(
        "The service has an API token and the request did not send it (`Authorization: Bearer <token>`).",
        {"WWW-Authenticate": _header('`Bearer realm="transcription"`')},
    ),
    "InternalError": _error("An unexpected failure; the service log has the details."),
    "JobNotFound": _error("No job with that id."),
}

_UPLOAD_FORM: Schema = {
    "type": "object",
    "required": ["file"],
    "properties": {
        "file": {
            "type": "string",
            "format": "binary",
            "description": "The audio: WAV, MP3, M4A, FLAC, OGG, WebM, anything FFmpeg decodes.",
        },
        "job_id": {
            "type": "string",
            "pattern": _JOB_ID_PATTERN,
            "description": "Your id; a random hex id when absent. The same id and audio again is idempotent.",
        },
        "model": {
            "type": "string",
            "description": "A Whisper model name; the service's default when absent.",
        },
        "language": {
            "type": "string",
            "description": "A language code or English name (`en`, `german`); detected when absent.",
        },
        "task": {"type": "string", "enum": ["transcribe", "translate"], "default": "transcribe"},
        "callback_url": {
            "type": "string",
            "format": "uri",
            "description": "An http(s) URL that gets a signed POST when the job ends (docs/webhooks.md).",
        },
        "word_timestamps": {"type": "boolean", "default": False},
        "diarize": {"type": "boolean", "default": False, "description": "Label who spoke when."},
        "num_speakers": {"type": "integer", "minimum": 1, "description": "With diarize=true."},
        "min_speakers": {"type": "integer", "minimum": 1, "description": "With diarize=true."},
        "max_speakers": {"type": "integer", "minimum": 1, "description": "With diarize=true."},
        "channels": {
            "type": "string",
            "enum": ["mix", "split"],
            "default": "mix",
            "description": "split: each channel of a stereo recording is one speaker.",
        },
        "priority": {
            "description": f"A level name, or {MIN_PRIORITY} to {MAX_PRIORITY}; higher runs first.",
            "oneOf": [
                {"type": "string", "enum": list(PRIORITIES)},
                {"type": "integer", "minimum": MIN_PRIORITY, "maximum": MAX_PRIORITY},
            ],
            "default": "normal",
        },
    },
}

_ACCEPTED_HEADERS = {"Location": _header("The job's status URL, `/status/{job_id}`.")}

# The media type each download format answers with (formats.FORMATS, without the charset).
_DOWNLOAD_TYPES: dict[str, list[str]] = {}
for _fmt, (_content_type, _writer) in formats.FORMATS.items():
    _DOWNLOAD_TYPES.setdefault(_content_type.split(";")[0].strip(), []).append(_fmt)


def _download_content() -> dict[str, Any]:
    content: dict[str, Any] = {}
    for media_type, names in _DOWNLOAD_TYPES.items():
        if media_type == "application/json":
            # anyOf: a verbose_json body also satisfies Transcript (its fields are a superset).
            schema: Schema = {"anyOf": [_ref("Transcript"), _ref("VerboseTranscript")]}
        else:
            schema = {"type": "string"}
        content[media_type] = {"schema": schema, "x-formats": names}
    return content


CORE_PATHS: dict[str, dict[str, Any]] = {
    "/transcribe": {
        "post": {
            "operationId": "transcribe",
            "summary": "Upload audio as a queued job",
            "description": (
                "202 for a new job (or a failed/cancelled one submitted again, or a transcript-cache hit "
                "that completes at once); 200 when that job_id already exists with the same audio and "
                "options. The body is streamed to disk and kept only once every check has passed."
            ),
            "requestBody": {
                "required": True,
                "content": {"multipart/form-data": {"schema": _UPLOAD_FORM}},
            },
            "responses": _with_auth_errors(
                {
                    "200": _json(_ref("JobAccepted"), "The same job already exists.", _ACCEPTED_HEADERS),
                    "202": _json(
                        _ref("JobAccepted"),
                        "Accepted (queued, or completed from the cache).",
                        _ACCEPTED_HEADERS,
                    ),
                    "400": _error(
                        "Not multipart, no or an empty file, no samples, or a bad field (job_id, model, "
                        "language, task, callback_url, options, priority)."
                    ),
                    "409": _error("The job_id exists with different audio or options."),
                    "413": _error("Larger than --max-upload-mb."),
                    "415": _error("The bytes are not decodable audio."),
                    "429": _error(
                        "The queue is at --max-queue; the body was not read.",
                        {"Retry-After": _header("Seconds, estimated from recent jobs.")},
                    ),
                    "503": _error("The service is shutting down.", _RETRY_AFTER),
                }
            ),
        }
    },
    "/status/{job_id}": {
        "get": {
            "operationId": "getStatus",
            "summary": "A job's state; long-polls with ?wait=",
            "parameters": [
                _job_id_param(),
                {
                    "name": "wait",
                    "in": "query",
                    "required": False,
                    "description": "Seconds to hold the request until the job ends (at most 60 are used).",
                    "schema": {"type": "number", "minimum": 0},
                },
            ],
            "responses": _with_auth_errors(
                {
                    "200": _json(_ref("JobStatus"), "The job."),
                    "400": _error("wait is not a non-negative number."),
                    "404": _response_ref("JobNotFound"),
                }
            ),
        }
    },
    "/download/{job_id}": {
        "get": {
            "operationId": "download",
            "summary": "A completed job's transcript in one of several formats",
            "parameters": [
                _job_id_param(),
                {
                    "name": "format",
                    "in": "query",
                    "required": False,
                    "description": "; ".join(
                        f"{name}: {content_type}" for name, (content_type, _) in formats.FORMATS.items()
                    ),
                    "schema": {"type": "string", "enum": list(formats.FORMATS), "default": "txt"},
                },
            ],
            "responses": _with_auth_errors(
                {
                    "200": {
                        "description": "The transcript, with `Content-Disposition: inline`.",
                        "headers": {"Content-Disposition": _header('`inline; filename="<job_id>.<format>"`')},
                        "content": _download_content(),
                    },
                    "400": _error("Unknown format, or rttm for a job without speakers."),
                    "404": _error("No such job, or it has no transcript (queued, processing, failed)."),
                }
            ),
        }
    },
    "/health": {
        "get": {
            "operationId": "health",
            "summary": "Readiness: 200 only while a model is ready for jobs",
            "security": [],
            "responses": {
                "200": _json(_ref("Health"), "Ready."),
                "503": _json(
                    _ref("Health"),
                    "Not ready: starting, loading the model, restarting inference, stopping, or broken.",
                ),
                "500": _response_ref("InternalError"),
            },
        }
    },
    "/models": {
        "get": {
            "operationId": "listModels",
            "summary": "Known models: which load offline, which are on disk, which are loaded",
            "responses": _with_auth_errors({"200": _json(_ref("ModelList"), "The models.")}),
        }
    },
    "/models/{name}/load": {
        "post": {
            "operationId": "loadModel",
            "summary": "Load (warm) a model",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _with_auth_errors(
                {
                    "200": _json(_ref("ModelLoaded"), "Loaded."),
                    "400": _error("Unknown name, a path, not available offline, or not enough memory."),
                }
            ),
        }
    },
    "/models/{name}": {
        "delete": {
            "operationId": "unloadModel",
            "summary": "Unload a model",
            "parameters": [{"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _with_auth_errors(
                {
                    "200": _json(_ref("ModelUnloaded"), "Unloaded."),
                    "400": _error("Unknown name or a path."),
                    "404": _error("That model is not loaded."),
                    "409": _error("The default model, or one a job is using."),
                }
            ),
        }
    },
    "/jobs/{job_id}": {
        "delete": {
            "operationId": "cancelJob",
            "summary": "Cancel a queued or running job",
            "parameters": [_job_id_param()],
            "responses": _with_auth_errors(
                {
                    "200": _json(_ref("Cancelled"), "Cancelled (a running decode stops within seconds)."),
                    "404": _response_ref("JobNotFound"),
                    "409": _error("The job already ended."),
                }
            ),
        }
    },
    "/jobs": {
        "get": {
            "operationId": "listJobs",
            "summary": "Jobs, newest first, a page at a time",
            "parameters": [
                {
                    "name": "status",
                    "in": "query",
                    "required": False,
                    "description": "One or more states, comma-separated.",
                    "schema": {
                        "type": "string",
                        "pattern": "^({s})(,({s}))*$".format(s="|".join(_STATUSES)),
                    },
                },
                {
                    "name": "limit",
                    "in": "query",
                    "required": False,
                    "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                },
                {
                    "name": "cursor",
                    "in": "query",
                    "required": False,
                    "description": "next_cursor from the previous page.",
                    "schema": {"type": "integer", "minimum": 1, "maximum": 2**62},
                },
            ],
            "responses": _with_auth_errors(
                {"200": _json(_ref("JobList"), "A page."), "400": _error("A bad status, limit or cursor.")}
            ),
        }
    },
    "/queue": {
        "get": {
            "operationId": "queue",
            "summary": "Running and queued jobs with wait estimates",
            "responses": _with_auth_errors({"200": _json(_ref("QueueView"), "The queue.")}),
        }
    },
    "/events/{job_id}": {
        "get": {
            "operationId": "streamEvents",
            "summary": "Live progress as Server-Sent Events",
            "description": (
                "`state`, the job's events, and a final `state` when it ends (docs/streams.md). "
                "A `: keep-alive` comment every 15 s while idle."
            ),
            "parameters": [
                _job_id_param(),
                {
                    "name": "Last-Event-ID",
                    "in": "header",
                    "required": False,
                    "description": "Resume after this event id.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "last_event_id",
                    "in": "query",
                    "required": False,
                    "description": "Resume after this event id (when the header is absent).",
                    "schema": {"type": "integer", "minimum": 0},
                },
            ],
            "responses": _with_auth_errors(
                {
                    "200": {
                        "description": "The stream; it ends after the job's final state.",
                        "headers": {"Cache-Control": _header("`no-cache`")},
                        "content": {"text/event-stream": {"schema": _ref("ServerSentEvent")}},
                    },
                    "400": _error("A bad last event id."),
                    "404": _response_ref("JobNotFound"),
                    "503": _error("The service is shutting down.", _RETRY_AFTER),
                }
            ),
        }
    },
    "/ws/{job_id}": {
        "get": {
            "operationId": "streamWebSocket",
            "summary": "Live progress over a WebSocket",
            "description": (
                "A GET that upgrades to a WebSocket: one JSON text message (StreamMessage) per item, "
                "closed with 1000 at the job's end (1001 when the service stops). Checks happen before "
                "the upgrade, so an unknown job or a bad last_event_id answers plain JSON errors."
            ),
            "parameters": [
                _job_id_param(),
                {
                    "name": "last_event_id",
                    "in": "query",
                    "required": False,
                    "description": "Resume after this event id.",
                    "schema": {"type": "integer", "minimum": 0},
                },
                {
                    "name": "Upgrade",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string", "const": "websocket"},
                },
                {
                    "name": "Sec-WebSocket-Key",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
                {
                    "name": "Sec-WebSocket-Version",
                    "in": "header",
                    "required": False,
                    "schema": {"type": "string"},
                },
            ],
            "responses": _with_auth_errors(
                {
                    "101": {
                        "description": "Switching protocols; then StreamMessage JSON text frames.",
                        "x-websocket-message": _ref("StreamMessage"),
                    },
                    "400": _error("A bad last_event_id, or the request is not a WebSocket upgrade."),
                    "404": _response_ref("JobNotFound"),
                    "503": _error("The service is shutting down.", _RETRY_AFTER),
                }
            ),
        }
    },
}

CORE_PATHS[OPENAPI_PATH] = {
    "get": {
        "operationId": "openapi",
        "summary": "This document",
        "security": [],
        "responses": {
            "200": {
                "description": "OpenAPI 3.1.",
                "content": {"application/json": {"schema": {"type": "object"}}},
            },
            "500": _response_ref("InternalError"),
        },
    }
}


# ============================================================================================
# CONTRACT ENDPOINTS: being added on other branches (OpenAI-compatible API, metrics, the
# dashboard). Written from their agreed contract, not from their code; the lead engineer
# adjusts this section when they merge. An operation here is served only once the running app
# registers its route (method and path), and tests/test_openapi.py fails if a registered route
# has no entry, so a mismatch shows up at merge time. Assumptions: they sit behind the same
# bearer token as everything else, and OpenAI-style errors use OpenAIError.
# ============================================================================================

CONTRACT_SCHEMAS: dict[str, Schema] = {
    "OpenAIError": {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "param": _nullable({"type": "string"}),
                    "code": _nullable({"type": "string"}),
                },
            }
        },
    },
    "OpenAIModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "const": "list"},
            "data": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["id", "object", "created", "owned_by"],
                    "properties": {
                        "id": {"type": "string"},
                        "object": {"type": "string", "const": "model"},
                        "created": {"type": "integer"},
                        "owned_by": {"type": "string"},
                    },
                },
            },
        },
    },
    "OpenAITranscription": {
        "type": "object",
        "description": "response_format=json: just the text; verbose_json: VerboseTranscript.",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    },
}


def _openai_error(description: str) -> Schema:
    return _json(_ref("OpenAIError"), description)


def _openai_audio(operation_id: str, summary: str) -> dict[str, Any]:
    form: Schema = {
        "type": "object",
        "required": ["file", "model"],
        "properties": {
            "file": {"type": "string", "format": "binary"},
            "model": {"type": "string", "description": "e.g. whisper-1 or a Whisper model name."},
            "language": {"type": "string", "description": "ISO-639-1 code of the spoken language."},
            "prompt": {"type": "string"},
            "response_format": {
                "type": "string",
                "enum": ["json", "text", "srt", "verbose_json", "vtt"],
                "default": "json",
            },
            "temperature": {"type": "number", "minimum": 0, "maximum": 1, "default": 0},
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": ["word", "segment"]},
            },
        },
    }
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "description": "OpenAI-compatible; answers when the transcript is ready.",
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
            "responses": {
                "200": {
                    "description": "json and verbose_json as JSON; text, srt and vtt as text/plain.",
                    "content": {
                        "application/json": {
                            "schema": {"anyOf": [_ref("OpenAITranscription"), _ref("VerboseTranscript")]}
                        },
                        "text/plain": {"schema": {"type": "string"}},
                    },
                },
                "400": _openai_error("A bad field or undecodable audio."),
                "401": _response_ref("Unauthorized"),
                "413": _openai_error("Larger than --max-upload-mb."),
                "415": _openai_error("The bytes are not decodable audio."),
                "429": _openai_error("The queue is full."),
                "500": _openai_error("An unexpected failure."),
                "503": _openai_error("The service is shutting down."),
            },
        }
    }


CONTRACT_PATHS: dict[str, dict[str, Any]] = {
    "/v1/audio/transcriptions": _openai_audio("openaiTranscriptions", "OpenAI-compatible transcription"),
    "/v1/audio/translations": _openai_audio("openaiTranslations", "OpenAI-compatible translation to English"),
    "/v1/models": {
        "get": {
            "operationId": "openaiModels",
            "summary": "OpenAI-compatible model list",
            "responses": {
                "200": _json(_ref("OpenAIModelList"), "The models."),
                "401": _response_ref("Unauthorized"),
                "500": _openai_error("An unexpected failure."),
            },
        }
    },
    "/metrics": {
        "get": {
            "operationId": "metrics",
            "summary": "Prometheus metrics",
            "responses": _with_auth_errors(
                {
                    "200": {
                        "description": "Prometheus text exposition format.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                }
            ),
        }
    },
    "/": {
        "get": {
            "operationId": "dashboard",
            "summary": "The web dashboard",
            "responses": _with_auth_errors(
                {
                    "200": {
                        "description": "An HTML page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    }
                }
            ),
        }
    },
    "/static/{path}": {
        "get": {
            "operationId": "staticAsset",
            "summary": "The dashboard's assets (scripts, styles, images)",
            "parameters": [{"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": _with_auth_errors(
                {
                    "200": {"description": "The file.", "content": {"*/*": {"schema": {"type": "string"}}}},
                    "403": _error("A path outside the assets folder."),
                    "404": _error("No such asset."),
                }
            ),
        }
    },
}

# ============================================================================================
# END OF CONTRACT ENDPOINTS
# ============================================================================================


def operations(paths: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    """(METHOD, path) for every operation in a `paths` mapping."""
    return {(method.upper(), path) for path, item in paths.items() for method in item if method in METHODS}


def _filtered(
    paths: dict[str, dict[str, Any]], registered: set[tuple[str, str]]
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for path, item in paths.items():
        kept = {m: op for m, op in item.items() if m not in METHODS or (m.upper(), path) in registered}
        if any(m in METHODS for m in kept):
            out[path] = kept
    return out


def build_document(registered: set[tuple[str, str]] | None = None) -> dict[str, Any]:
    """The whole document. With `registered` ((METHOD, path) pairs), contract operations the app
    does not register are left out; without it, every one is included."""
    contract = CONTRACT_PATHS if registered is None else _filtered(CONTRACT_PATHS, registered)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Whisper transcription service",
            "version": __version__,
            "description": (
                "Upload audio, follow the job, download the transcript; the model stays loaded. "
                'Every error is JSON `{"error": "..."}` (the OpenAI-compatible /v1 routes use '
                "OpenAI's error shape). With --api-token set, every route but /health and "
                "/openapi.json needs `Authorization: Bearer <token>`."
            ),
        },
        "paths": {**CORE_PATHS, **contract},
        "components": {
            "schemas": {**SCHEMAS, **CONTRACT_SCHEMAS},
            "responses": RESPONSES,
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
    return copy.deepcopy(document)


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


# The served document, built on first use (once every route is registered) and kept as text.
_SERVED = web.AppKey("openapi_served", dict)


async def openapi_document(request: web.Request) -> web.Response:
    served: dict[str, str] = request.app[_SERVED]
    if "text" not in served:
        served["text"] = json.dumps(build_document(route_operations(request.app)), indent=1)
    return web.Response(text=served["text"], content_type="application/json")


def setup_openapi_routes(app: web.Application) -> None:
    app[_SERVED] = {}
    app.router.add_get(OPENAPI_PATH, openapi_document, name="openapi")
