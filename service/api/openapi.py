"""The OpenAPI 3.1 description of the HTTP API, served at `GET /openapi.json`.

The document is built here as plain dicts: `PATHS` describes every route this service
registers (the job API, the OpenAI-compatible /v1 routes, /metrics and the dashboard).
tests/test_openapi.py checks both ways that the document and `app.router` agree, and runs
schemathesis against a live server.
"""

from __future__ import annotations

import copy
import json
from typing import Any

from aiohttp import web

from service import __version__
from service.api.auth import OPEN_PATHS, OPEN_PREFIXES
from service.api.openai_compat import GRANULARITIES, RESPONSE_FORMATS
from service.jobs import formats
from service.jobs.job import MAX_PRIORITY, MIN_PRIORITY, PRIORITIES

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
    """Every route but the open ones (auth.OPEN_PATHS) can answer 401 (with a token set) and 500."""
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
            "initial_prompt": {"type": "string", "description": "The upload's `prompt`."},
            "temperature": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
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
            "backend",
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
            "queue_size": _nullable(
                {"type": "integer", "minimum": 0, "description": "null while the job store is unreachable."}
            ),
            "backend": {"type": "string", "enum": ["sqlite", "redis"]},
            "instance": {"type": "string", "description": "With --backend redis: this instance's id."},
            "instances": {
                "type": "integer",
                "minimum": 0,
                "description": "With --backend redis: instances on the same queue seen alive within a lease.",
            },
            "store": {
                "type": "string",
                "enum": ["ok", "unreachable"],
                "description": "With --backend redis: whether Redis answers.",
            },
            "uptime_s": {"type": "number", "minimum": 0},
            "version": {"type": "string"},
            "error": {
                "type": "string",
                "description": "After a fatal error, or while the job store is unreachable.",
            },
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
    # The OpenAI-compatible routes (docs/openai.md).
    "OpenAIError": {
        "type": "object",
        "description": "Every error on /v1 (the token check, unknown /v1 paths and methods included).",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["message", "type", "param", "code"],
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string", "enum": ["invalid_request_error", "server_error"]},
                    "param": _nullable({"type": "string", "description": "The request field at fault."}),
                    "code": _nullable(
                        {"type": "string", "description": "e.g. invalid_value, invalid_api_key."}
                    ),
                },
            }
        },
    },
    "OpenAIModel": {
        "type": "object",
        "required": ["id", "object", "created", "owned_by"],
        "properties": {
            "id": {"type": "string"},
            "object": {"type": "string", "const": "model"},
            "created": {"type": "integer", "description": "When the service started (Unix time)."},
            "owned_by": {"type": "string"},
        },
    },
    "OpenAIModelList": {
        "type": "object",
        "required": ["object", "data"],
        "properties": {
            "object": {"type": "string", "const": "list"},
            "data": {"type": "array", "items": _ref("OpenAIModel")},
        },
    },
    "OpenAITranscription": {
        "type": "object",
        "description": "response_format=json: just the text.",
        "required": ["text"],
        "properties": {"text": {"type": "string"}},
    },
}

RESPONSES: dict[str, Schema] = {
    "Unauthorized": _error(
        "The service has an API token and the request did not send it (`Authorization: Bearer <token>`).",
        {"WWW-Authenticate": _header('`Bearer realm="transcription"`')},
    ),
    "InternalError": _error("An unexpected failure; the service log has the details."),
    "JobNotFound": _error("No job with that id."),
    "OpenAIUnauthorized": _json(
        _ref("OpenAIError"),
        "The service has an API token and the request did not send it as the API key "
        "(`Authorization: Bearer <token>`); `code: invalid_api_key`.",
        {"WWW-Authenticate": _header('`Bearer realm="transcription"`')},
    ),
    "OpenAIInternalError": _json(
        _ref("OpenAIError"), "An unexpected failure; the service log has the details."
    ),
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
        "prompt": {
            "type": "string",
            "description": "Decoder context (Whisper's initial_prompt): spellings of names, terms, style.",
        },
        "temperature": {
            "type": "number",
            "minimum": 0,
            "maximum": 1,
            "default": 0,
            "description": "The temperature decoding starts at (hotter on fallback); 0: greedy first.",
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


PATHS: dict[str, dict[str, Any]] = {
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

PATHS[OPENAPI_PATH] = {
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

PATHS["/metrics"] = {
    "get": {
        "operationId": "metrics",
        "summary": "Prometheus metrics",
        "description": (
            "Counters and histograms of finished jobs, processing time, real-time factor, audio "
            "transcribed and refused uploads; gauges of jobs by status, queue depth, running jobs, "
            "loaded models, restarts, readiness and uptime (docs/metrics.md). Needs the token "
            "when one is set: give the scraper a bearer token."
        ),
        "responses": _with_auth_errors(
            {
                "200": {
                    "description": "Prometheus text exposition format (`text/plain; version=...`).",
                    "content": {"text/plain": {"schema": {"type": "string"}}},
                }
            }
        ),
    }
}


# -- the dashboard: open without a token (auth.OPEN_PATHS, auth.OPEN_PREFIXES) ----------------

_ASSET_HEADERS = {
    "Content-Security-Policy": _header("Same-origin only; no inline script; no framing."),
    "X-Content-Type-Options": _header("`nosniff`"),
    "Cache-Control": _header("`no-cache`: revalidated (ETag) on each load."),
}
_NOT_MODIFIED = {"description": "If-None-Match matched the ETag: the cached copy is current."}

PATHS["/"] = {
    "get": {
        "operationId": "dashboard",
        "summary": "The web dashboard",
        "description": (
            "A static page; what it shows comes from this API, fetched by its script (with the "
            "token it asks for, when one is needed). Open without a token: it holds no data."
        ),
        "security": [],
        "responses": {
            "200": {
                "description": "The page.",
                "headers": _ASSET_HEADERS,
                "content": {"text/html": {"schema": {"type": "string"}}},
            },
            "304": _NOT_MODIFIED,
            "500": _response_ref("InternalError"),
        },
    }
}

PATHS["/static/{name}"] = {
    "get": {
        "operationId": "dashboardAsset",
        "summary": "The dashboard's script, style sheet and icon",
        "description": "Only the dashboard's own files, by plain name (no folders). Open without a token.",
        "security": [],
        "parameters": [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "description": "A file name such as `dashboard.js`, `dashboard.css`, `icon.svg`.",
                "schema": {"type": "string"},
            }
        ],
        "responses": {
            "200": {
                "description": "The file.",
                "headers": _ASSET_HEADERS,
                "content": {
                    "text/css": {"schema": {"type": "string"}},
                    "text/javascript": {"schema": {"type": "string"}},
                    "image/svg+xml": {"schema": {"type": "string"}},
                },
            },
            "304": _NOT_MODIFIED,
            "404": _error("No asset by that name."),
            "500": _response_ref("InternalError"),
        },
    }
}


# -- the OpenAI-compatible API (docs/openai.md): OpenAI's error shape on every /v1 answer ----------


def _openai_error(description: str, headers: dict[str, Any] | None = None) -> Schema:
    return _json(_ref("OpenAIError"), description, headers)


def _with_openai_auth_errors(responses: dict[str, Any]) -> dict[str, Any]:
    """As _with_auth_errors, in OpenAI's shape (the token check answers it on /v1 too)."""
    return {
        **responses,
        "401": _response_ref("OpenAIUnauthorized"),
        "500": responses.get("500", _response_ref("OpenAIInternalError")),
    }


_NO_RETRY = "`false`: sending the same request again would only repeat the outcome."


def _openai_audio(operation_id: str, summary: str, task: str) -> dict[str, Any]:
    form: Schema = {
        "type": "object",
        "required": ["file"],
        "properties": {
            "file": {
                "type": "string",
                "format": "binary",
                "description": "The audio, up to --max-upload-mb: anything FFmpeg decodes.",
            },
            "model": {
                "type": "string",
                "description": (
                    "A model name the engine knows (`tiny.en`, `base`) runs as given; anything else "
                    "(`whisper-1`, `gpt-4o-transcribe`) or nothing means the service's default."
                ),
            },
            "language": {
                "type": "string",
                "description": (
                    "The spoken language (`en`, `fr`); detected when absent. An English-only model "
                    "takes only `en`."
                ),
            },
            "prompt": {"type": "string", "description": "Decoder context: names, terms, style."},
            "response_format": {"type": "string", "enum": list(RESPONSE_FORMATS), "default": "json"},
            "temperature": {
                "type": "number",
                "minimum": 0,
                "maximum": 1,
                "default": 0,
                "description": "The sampling temperature decoding starts at; 0: greedy/beam first.",
            },
            "timestamp_granularities[]": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANULARITIES)},
                "description": "`word` with verbose_json adds the top-level `words` (and decodes with them).",
            },
            "timestamp_granularities": {
                "type": "array",
                "items": {"type": "string", "enum": list(GRANULARITIES)},
                "description": "The same, under the name some clients send.",
            },
            "priority": {
                **_UPLOAD_FORM["properties"]["priority"],
                "description": "Extension (extra_body): as /transcribe's priority.",
            },
            "callback_url": {
                **_UPLOAD_FORM["properties"]["callback_url"],
                "description": "Extension (extra_body): a signed POST when the job ends (docs/webhooks.md).",
            },
        },
    }
    job_headers = {
        "X-Job-Id": _header(
            "The job behind the answer (`oai-` and 32 hex digits): /status/{id}, /download/{id}.",
            {"type": "string", "pattern": "^oai-[0-9a-f]{32}$"},
        ),
        "X-Model": _header("The model that ran."),
    }
    return {
        "post": {
            "operationId": operation_id,
            "summary": summary,
            "description": (
                "OpenAI-compatible, answered when the transcript is ready. The upload is an ordinary "
                "job (journal, queue order, --max-queue, cache, webhooks, restarts); the request "
                "holds until it ends. Other OpenAI fields are accepted and ignored."
            ),
            "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": form}}},
            "responses": _with_openai_auth_errors(
                {
                    "200": {
                        "description": (
                            "json: `{text}`; verbose_json: VerboseTranscript; text: one string and a "
                            "newline; srt and vtt: subtitles."
                        ),
                        "headers": job_headers,
                        "content": {
                            "application/json": {
                                "schema": {"anyOf": [_ref("OpenAITranscription"), _ref("VerboseTranscript")]}
                            },
                            "text/plain": {"schema": {"type": "string"}, "x-formats": ["text"]},
                            "application/x-subrip": {"schema": {"type": "string"}, "x-formats": ["srt"]},
                            "text/vtt": {"schema": {"type": "string"}, "x-formats": ["vtt"]},
                        },
                    },
                    "400": _openai_error(
                        "A bad field (`param` names it), not multipart, no, empty or sample-less audio"
                        + (", or an English-only model." if task == "translate" else ".")
                    ),
                    "409": _openai_error(
                        "The job was cancelled (DELETE /jobs/{id}) while the request waited.",
                        {"x-should-retry": _header(_NO_RETRY)},
                    ),
                    "413": _openai_error("Larger than --max-upload-mb."),
                    "415": _openai_error("The bytes are not decodable audio."),
                    "429": _openai_error(
                        "The queue is at --max-queue; the body was not read.",
                        {"Retry-After": _header("Seconds, estimated from recent jobs.")},
                    ),
                    "500": _openai_error(
                        "The job failed (its error is the message, with `x-should-retry: false`), or an "
                        "unexpected failure.",
                        {"x-should-retry": _header(_NO_RETRY + " Sent when the job failed.", required=False)},
                    ),
                    "503": _openai_error(
                        "The service is stopping; a job already accepted is kept and runs after the restart.",
                        _RETRY_AFTER,
                    ),
                    "504": _openai_error(
                        "The job is still running past its time limit; its result will be at /status/{id}."
                    ),
                }
            ),
        }
    }


PATHS["/v1/audio/transcriptions"] = _openai_audio(
    "openaiTranscriptions", "OpenAI-compatible transcription", "transcribe"
)
PATHS["/v1/audio/translations"] = _openai_audio(
    "openaiTranslations", "OpenAI-compatible translation to English", "translate"
)
PATHS["/v1/models"] = {
    "get": {
        "operationId": "openaiModels",
        "summary": "OpenAI-compatible model list",
        "description": "whisper-1 (the default model), then every model loaded or loadable with no network.",
        "responses": _with_openai_auth_errors({"200": _json(_ref("OpenAIModelList"), "The models.")}),
    }
}
PATHS["/v1/models/{model}"] = {
    "get": {
        "operationId": "openaiModel",
        "summary": "One entry of the OpenAI-compatible model list",
        "parameters": [
            {
                "name": "model",
                "in": "path",
                "required": True,
                "description": "An id from GET /v1/models.",
                "schema": {"type": "string"},
            }
        ],
        "responses": _with_openai_auth_errors(
            {
                "200": _json(_ref("OpenAIModel"), "The model."),
                "404": _openai_error("Not a model listed by GET /v1/models (`code: model_not_found`)."),
            }
        ),
    }
}


def operations(paths: dict[str, dict[str, Any]]) -> set[tuple[str, str]]:
    """(METHOD, path) for every operation in a `paths` mapping."""
    return {(method.upper(), path) for path, item in paths.items() for method in item if method in METHODS}


def build_document() -> dict[str, Any]:
    """The whole document, a fresh copy."""
    open_routes = ", ".join(sorted(OPEN_PATHS) + [f"{prefix}*" for prefix in OPEN_PREFIXES])
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Whisper transcription service",
            "version": __version__,
            "description": (
                "Upload audio, follow the job, download the transcript; the model stays loaded. "
                'Every error is JSON `{"error": "..."}`, except under /v1/ (the OpenAI-compatible '
                "routes), where every error, 401, 404 and 405 included, has OpenAI's shape "
                '`{"error": {"message", "type", "param", "code"}}`. With --api-token set, every '
                f"route but {open_routes} needs `Authorization: Bearer <token>`."
            ),
        },
        "paths": PATHS,
        "components": {
            "schemas": SCHEMAS,
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


# The served document, built on first use and kept as text.
_SERVED = web.AppKey("openapi_served", dict)


async def openapi_document(request: web.Request) -> web.Response:
    served: dict[str, str] = request.app[_SERVED]
    if "text" not in served:
        served["text"] = json.dumps(build_document(), indent=1)
    return web.Response(text=served["text"], content_type="application/json")


def setup_openapi_routes(app: web.Application) -> None:
    app[_SERVED] = {}
    app.router.add_get(OPENAPI_PATH, openapi_document, name="openapi")
