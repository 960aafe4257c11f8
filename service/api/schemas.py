"""Every JSON body the API sends or takes, other than the job view (service.jobs.view), as
pydantic models; and the multipart forms of the upload routes, as models that say each field.

service/api/openapi.py builds the OpenAPI document from these, so the document says what the
code says: enums and limits come from where the code keeps them (worker states, priorities,
settings choices), never retyped here. The OpenAI-compatible routes' formats and the streams'
`state` message type are kept here, and their handlers check against them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Json, RootModel

from service.inference.selfcheck import CHECKS
from service.inference.worker import WorkerState
from service.jobs import events as ev
from service.jobs.job import MAX_PRIORITY, MIN_PRIORITY, JobStatus, Task
from service.jobs.view import (
    Absent,
    Body,
    Count,
    JobId,
    JobSummary,
    JobView,
    OneOf,
    PriorityName,
    QueuedJob,
    RunningJob,
    Seconds,
)
from service.settings import BACKENDS, ISOLATION

# Where the OpenAI-compatible routes live, and what they take; their handlers check requests against these.
OPENAI_PREFIX = "/v1/"
RESPONSE_FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
GRANULARITIES = ("segment", "word")
# The formats stream=true sends as text events, and what include[] may ask for.
STREAM_FORMATS = ("json", "text")
INCLUDES = ("logprobs",)
# OpenAI's model names; each means the service's default model (whisper-1 is the clients' default).
MODEL_ALIASES = ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe")
# A stream's message type for the job as GET /status shows it (not an event: it has no id).
STATE = "state"

# Where the document keeps its schemas: models refer to each other through it.
REF_TEMPLATE = "#/components/schemas/{model}"
EVENT_TYPES = (ev.STATUS, ev.PROGRESS, ev.SEGMENT, ev.END)


class Error(Body):
    """Every error this service answers (4xx and 5xx) has this body."""

    error: str = Field(description="What went wrong and what to do.")


class JobAccepted(Body):
    """An upload as a job: new, the same one again, or completed at once from the cache."""

    job_id: JobId
    status: JobStatus


class JobList(Body):
    """A page of GET /jobs, newest first."""

    jobs: list[JobSummary]
    count: Count
    next_cursor: str | None = Field(description="Pass as `cursor`; null on the last page.")


class Cancelled(Body):
    """DELETE /jobs/{job_id}'s answer."""

    job_id: JobId
    status: Literal[JobStatus.CANCELLED]
    previous_status: Literal[JobStatus.QUEUED, JobStatus.PROCESSING]
    message: str


class QueueView(Body):
    """The running jobs, the queued ones in run order, and estimates from recent jobs."""

    running: list[RunningJob]
    queued: list[QueuedJob] = Field(description="In the order they will run.")
    queue_length: Count
    workers: Annotated[int, Field(ge=1)]
    real_time_factor: float | None = Field(description="null before the first job.")
    estimated_wait_s: Seconds = Field(description="For a job uploaded now at normal priority.")
    max_queue: int | None = Field(description="null: no limit.")


class Check(Body):
    """One self-check's latest result (service/inference/selfcheck.py); the fields after
    `detail` are the numbers behind it, each where it applies."""

    ok: bool
    detail: str = Field(description="What was seen, in words.")
    round_trip_ms: Absent[float] = Field(default=None, description="inference: the ping's round trip.")
    job_id: Absent[str] = Field(default=None, description="progress: the running job heard from longest ago.")
    quiet_s: Absent[Seconds] = Field(default=None, description="progress: seconds since that job reported.")
    limit_s: Absent[Seconds] = Field(default=None, description="progress: how long a job may stay silent.")
    free_mb: Absent[float] = Field(default=None, description="disk: free space on the storage.")
    min_free_mb: Absent[float] = Field(default=None, description="disk: --min-free-mb.")
    used_mb: Absent[float] = Field(default=None, description="memory: in use (page cache not counted).")
    limit_mb: Absent[float] = Field(default=None, description="memory: the tightest limit.")
    source: Absent[Literal["cgroup v2", "cgroup v1", "host"]] = Field(
        default=None, description="memory: whose limit that is."
    )


class Health(Body):
    """Readiness and what runs: the model, the worker, the queue, the self-checks."""

    status: Literal["ok", "unavailable", "error"] = Field(
        description="ok with 200; unavailable with 503 (starting, restarting, stopping, a failed check); "
        "error with 503 after a fatal error."
    )
    model_loaded: bool
    model: str
    engine: str
    device: str
    worker: WorkerState
    isolation: Annotated[str, OneOf(ISOLATION)]
    worker_pid: int | None
    worker_restarts: Count
    processing: str | None
    active_jobs: list[str]
    workers: Annotated[int, Field(ge=1)]
    queue_size: Count | None = Field(description="null while the job store is unreachable.")
    backend: Annotated[str, OneOf(BACKENDS)]
    uptime_s: Seconds
    version: str
    instance: Absent[str] = Field(default=None, description="With --backend redis: this instance's id.")
    store: Absent[Literal["ok", "unreachable"]] = Field(
        default=None, description="With --backend redis: whether Redis answers."
    )
    instances: Absent[Count] = Field(
        default=None,
        description="With --backend redis: instances on the same queue seen alive within a lease.",
    )
    checks: dict[Annotated[str, OneOf(CHECKS)], Check] = Field(
        description="The self-checks' latest results, by name; empty until the model is first loaded. "
        "A failed inference, progress or storage check makes the answer 503."
    )
    error: Absent[str] = Field(
        default=None,
        description="After a fatal error, while the job store is unreachable, or which checks fail.",
    )


class ModelInfo(Body):
    """A model the engine knows, or one that is loaded (with what it reports about itself)."""

    name: str
    bundled: bool
    on_disk: bool
    offline: bool = Field(description="Loadable with no network.")
    default: Absent[bool] = None
    loaded: bool
    in_use: Absent[bool] = None
    approx_memory_mb: Absent[float] = None
    load_seconds: Absent[float] = None
    loaded_at: Absent[float] = Field(default=None, description="Unix time.")
    last_used: Absent[float] = Field(default=None, description="Unix time.")


class ModelList(Body):
    """Known models: which load offline, which are on disk, which are loaded."""

    default: str
    engine: str
    models: list[ModelInfo]


class ModelLoaded(Body):
    """A model now in memory, with what it reports about itself."""

    name: str
    loaded: Literal[True]
    default: Absent[bool] = None
    in_use: Absent[bool] = None
    approx_memory_mb: Absent[float] = None
    load_seconds: Absent[float] = None
    loaded_at: Absent[float] = Field(default=None, description="Unix time.")
    last_used: Absent[float] = Field(default=None, description="Unix time.")


class ModelUnloaded(Body):
    """A model no longer in memory."""

    name: str
    loaded: Literal[False]


class Word(Body):
    """One word, with word_timestamps; times in seconds."""

    start: float
    end: float
    word: str
    probability: Absent[float] = None
    speaker: Absent[str] = None


class Segment(Body):
    """One decoded segment; times in seconds."""

    id: int
    start: float
    end: float
    text: str
    avg_logprob: Absent[float] = None
    no_speech_prob: Absent[float] = None
    seek: Absent[int] = Field(default=None, description="The decoding window's start, in 10 ms frames.")
    tokens: Absent[list[int]] = Field(default=None, description="The decoder's token ids, timestamps too.")
    temperature: Absent[float] = Field(default=None, description="The temperature the window was decoded at.")
    compression_ratio: Absent[float] = Field(
        default=None, description="The text's gzip compression ratio; over 2.4 suggests repetition."
    )
    speaker: Absent[str] = Field(default=None, description="With diarize=true or channels=split.")
    channel: Absent[int] = Field(default=None, description="With channels=split (live segments).")
    words: Absent[list[Word]] = None


class Transcript(Body):
    """format=json: the stored result."""

    text: str
    language: str | None = None
    duration: Absent[float] = None
    segments: list[Segment]


class OpenAIDurationUsage(Body):
    """What OpenAI bills whisper-1 by: the audio's seconds, rounded up."""

    type: Literal["duration"]
    seconds: Annotated[int, Field(ge=0)]


class VerboseTranscript(Body):
    """format=verbose_json: the shape of OpenAI's transcription API."""

    task: Task
    language: str | None
    duration: float
    text: str
    segments: list[Segment]
    words: Absent[list[Word]] = None
    usage: Absent[OpenAIDurationUsage] = Field(default=None, description="On /v1 only.")


class StateEvent(BaseModel):
    """`state`: the job as GET /status shows it; no id (it is not an event to resume from)."""

    model_config = ConfigDict(extra="forbid")

    event: Annotated[str, OneOf((STATE,))]
    data: Json[JobView]


class JobEventFrame(BaseModel):
    """One of the job's events, with the id a client resumes after."""

    event: Annotated[str, OneOf(EVENT_TYPES)]
    data: Json[dict[str, Any]]
    id: Annotated[str, Field(pattern="^[0-9]+$")]


class ServerSentEvent(RootModel[StateEvent | JobEventFrame]):
    """One event of GET /events (the schema describes each event, as is usual before OpenAPI
    3.2's itemSchema): `event` is the message type, `data` its JSON, `id` the event id. Comment
    lines (`: keep-alive`) are not events."""


class StreamMessage(Body):
    """A WebSocket text message (the SSE `event:` is `type`, `data:` is `data`, `id:` is `id`).
    `state` carries a JobView and has no id; events are status, progress, segment, end."""

    type: Annotated[str, OneOf((STATE, *EVENT_TYPES))]
    data: dict[str, Any]
    id: Absent[Annotated[int, Field(ge=1)]] = None


# -- the OpenAI-compatible routes (docs/openai.md) ---------------------------------------------


class OpenAIErrorDetail(Body):
    """What OpenAI's clients read from an error."""

    message: str
    type: Literal["invalid_request_error", "server_error"]
    param: str | None = Field(description="The request field at fault.")
    code: str | None = Field(description="e.g. invalid_value, invalid_api_key.")


class OpenAIError(Body):
    """Every error on /v1 (the token check, unknown /v1 paths and methods included)."""

    error: OpenAIErrorDetail


class OpenAIModel(Body):
    """One entry of the OpenAI-compatible model list."""

    id: str
    object: Literal["model"]
    created: int = Field(description="When the service started (Unix time).")
    owned_by: str


class OpenAIModelList(Body):
    """whisper-1 (the default model), then every model loaded or loadable with no network."""

    object: Literal["list"]
    data: list[OpenAIModel]


class OpenAILogprob(Body):
    """include[]=logprobs: one per word, the log of Whisper's word probability."""

    token: str
    logprob: float | None
    bytes: list[int] = Field(description="The word's UTF-8 bytes.")


class OpenAITranscription(Body):
    """response_format=json: the text, its duration usage, and logprobs when asked."""

    text: str
    logprobs: Absent[list[OpenAILogprob]] = None
    usage: OpenAIDurationUsage


class OpenAITokenDetails(Body):
    audio_tokens: int
    text_tokens: int


class OpenAITokenUsage(Body):
    """Whisper's encoder positions (50 a second of audio) in, the decoder's tokens out."""

    type: Literal["tokens"]
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_token_details: OpenAITokenDetails


class OpenAITextDelta(Body):
    """More of the transcript; all the deltas joined are the final text."""

    type: Literal["transcript.text.delta"]
    delta: str
    logprobs: Absent[list[OpenAILogprob]] = None


class OpenAITextDone(Body):
    """The last event: the whole transcript, as the job stored it."""

    type: Literal["transcript.text.done"]
    text: str
    logprobs: Absent[list[OpenAILogprob]] = None
    usage: OpenAITokenUsage


class OpenAIStreamEvent(BaseModel):
    """One event of stream=true (`data:` only, OpenAI's way): a delta, the final `done`, or,
    when the job fails after the stream began, an error as OpenAI's clients read it."""

    model_config = ConfigDict(extra="forbid")

    data: Json[OpenAITextDelta | OpenAITextDone | OpenAIError]


# -- multipart forms: one model per upload route, for the request-body schema ------------------

PriorityField = Annotated[
    PriorityName | Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY)],
    Field(description=f"A level name, or {MIN_PRIORITY} to {MAX_PRIORITY}; higher runs first."),
]
CallbackUrl = Annotated[str, Field(json_schema_extra={"format": "uri"})]
Speakers = Annotated[int, Field(ge=1, description="With diarize=true.")]
Temperature = Annotated[float, Field(ge=0, le=1)]
Granularities = list[Annotated[str, OneOf(GRANULARITIES)]]


class UploadForm(BaseModel):
    """POST /transcribe's multipart form."""

    file: bytes = Field(description="The audio: WAV, MP3, M4A, FLAC, OGG, WebM, anything FFmpeg decodes.")
    job_id: Absent[JobId] = Field(
        default=None,
        description="Your id; a random hex id when absent. The same id and audio again is idempotent.",
    )
    model: Absent[str] = Field(
        default=None, description="A Whisper model name; the service's default when absent."
    )
    language: Absent[str] = Field(
        default=None, description="A language code or English name (`en`, `german`); detected when absent."
    )
    task: Task = Task.TRANSCRIBE
    callback_url: Absent[CallbackUrl] = Field(
        default=None,
        description="An http(s) URL that gets a signed POST when the job ends (docs/webhooks.md).",
    )
    word_timestamps: bool = False
    diarize: bool = Field(default=False, description="Label who spoke when.")
    num_speakers: Absent[Speakers] = None
    min_speakers: Absent[Speakers] = None
    max_speakers: Absent[Speakers] = None
    channels: Literal["mix", "split"] = Field(
        default="mix", description="split: each channel of a stereo recording is one speaker."
    )
    priority: PriorityField = "normal"
    prompt: Absent[str] = Field(
        default=None,
        description="Decoder context (Whisper's initial_prompt): spellings of names, terms, style.",
    )
    temperature: Temperature = Field(
        default=0, description="The temperature decoding starts at (hotter on fallback); 0: greedy first."
    )


class OpenAIAudioForm(BaseModel):
    """POST /v1/audio/transcriptions' and /v1/audio/translations' multipart form."""

    file: bytes = Field(description="The audio, up to --max-upload-mb: anything FFmpeg decodes.")
    model: Absent[str] = Field(
        default=None,
        description=(
            "A model name the engine knows (`tiny.en`, `base`, or a hub id for one such as "
            "`Systran/faster-whisper-tiny.en`) runs as given; `whisper-1`, `gpt-4o-transcribe`, "
            "`gpt-4o-mini-transcribe` or nothing mean the service's default; others are 404."
        ),
    )
    language: Absent[str] = Field(
        default=None,
        description=(
            "The spoken language (`en`, `fr`); detected when absent. An English-only model takes only `en`."
        ),
    )
    prompt: Absent[str] = Field(default=None, description="Decoder context: names, terms, style.")
    response_format: Annotated[str, OneOf(RESPONSE_FORMATS)] = "json"
    temperature: Temperature = Field(
        default=0, description="The sampling temperature decoding starts at; 0: greedy/beam first."
    )
    timestamp_granularities_list: Absent[Granularities] = Field(
        default=None,
        alias="timestamp_granularities[]",
        description="`word` with verbose_json adds the top-level `words` (and decodes with them).",
    )
    timestamp_granularities: Absent[Granularities] = Field(
        default=None, description="The same, under the name some clients send."
    )
    stream: bool = Field(
        default=False,
        description="json and text only: text/event-stream, `transcript.text.delta` events as "
        "segments are decoded, then `transcript.text.done`.",
    )
    include_list: Absent[list[Annotated[str, OneOf(INCLUDES)]]] = Field(
        default=None,
        alias="include[]",
        description="`logprobs`: per-word log probabilities in json and in stream events.",
    )
    priority: PriorityField = Field(
        default="normal", description="Extension (extra_body): as /transcribe's priority."
    )
    callback_url: Absent[CallbackUrl] = Field(
        default=None,
        description="Extension (extra_body): a signed POST when the job ends (docs/webhooks.md).",
    )


class ClientIndex(Body):
    """GET /client/: the light client's wheel this service hands out, and how to install it."""

    distribution: str = Field(description="`whisper-transcription-client`.")
    version: str = Field(description="The wheel's version: the client this service runs with.")
    service_version: str
    min_client_version: str = Field(description="Older clients get 426 (they send `X-Client-Version`).")
    wheel: str = Field(description="The wheel's file name; GET /client/{wheel} sends it.")
    url: str = Field(description="The wheel's URL, as the request reached this service.")
    sha256: Annotated[str, Field(pattern="^[0-9a-f]{64}$")]
    size: Count = Field(description="Bytes.")
    install: str = Field(description="The pip line that installs it.")
    uvx: str = Field(description="Runs the MCP tools with uv, nothing installed first.")
    pipx: str = Field(description="The same with pipx.")
    mcp_command: str = Field(description="The MCP server's command once installed (stdio).")
