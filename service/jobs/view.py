"""The one view of a job, as pydantic models: GET /status bodies (and live streams' `state`
messages), the entries of GET /jobs and GET /queue, and webhook payloads.

Handlers answer with these models and the OpenAPI document takes its schemas from the same
classes, so what the API sends and what the document says cannot drift apart. Enums, the job-id
pattern and the priority levels come from service.jobs.job. The builders are pure: whatever
needs I/O (the queue position, the transcript text) is passed in.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    Field,
    GetCoreSchemaHandler,
    GetJsonSchemaHandler,
    SerializerFunctionWrapHandler,
    WithJsonSchema,
    model_serializer,
)
from pydantic_core import CoreSchema, core_schema

from service.jobs.job import (
    JOB_ID_PATTERN,
    MAX_PRIORITY,
    MIN_PRIORITY,
    PRIORITIES,
    Job,
    JobOptions,
    JobStatus,
    Task,
    iso_time,
    priority_name,
)

T = TypeVar("T")
JsonSchema = dict[str, Any]


class _LeftOut:
    """`Absent` metadata: the schema is the value's alone, since None is never sent as null."""

    def __get_pydantic_json_schema__(self, schema: CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchema:
        json_schema = handler(schema)
        branches = [b for b in json_schema.get("anyOf", []) if b != {"type": "null"}]
        if len(branches) != 1:
            return json_schema
        rest = {key: value for key, value in json_schema.items() if key != "anyOf"}
        return {**branches[0], **rest}

    def __repr__(self) -> str:
        return "LEFT_OUT"


LEFT_OUT = _LeftOut()
# A key that is there only when it applies: None leaves it out of the body (Body drops it).
Absent = Annotated[T | None, LEFT_OUT]


@dataclass(frozen=True)
class OneOf:
    """Annotated metadata for a str that must be one of `values`: a set kept in the code (as a
    tuple or dict keys), so validation and the schema's enum both follow it."""

    values: tuple[str, ...]

    def __get_pydantic_core_schema__(self, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.literal_schema(list(self.values))


JobId = Annotated[str, Field(pattern=JOB_ID_PATTERN.pattern)]
# ISO 8601 UTC as iso_time writes it; kept a str so the body is byte for byte what it was.
IsoTime = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]
Progress = Annotated[float, Field(ge=0, le=1)]
Priority = Annotated[int, Field(ge=MIN_PRIORITY, le=MAX_PRIORITY, description="Higher runs first.")]
PriorityName = Annotated[str, OneOf(tuple(PRIORITIES))]
Count = Annotated[int, Field(ge=0)]
Seconds = Annotated[float, Field(ge=0)]
# The webhook event of each way a job ends, "job.<status>".
WEBHOOK_EVENTS = {status: f"job.{status.value}" for status in JobStatus if status.finished}


@functools.cache
def _left_out_fields(model: type[BaseModel]) -> tuple[str, ...]:
    return tuple(name for name, info in model.model_fields.items() if LEFT_OUT in info.metadata)


class Body(BaseModel):
    """A JSON body the API sends. Every field is always there (null included) except `Absent`
    ones, which are left out while None: the rule each hand-built dict used to follow."""

    @model_serializer(mode="wrap")
    def _leave_out_absent(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for name in _left_out_fields(type(self)):
            if name in data and data[name] is None:
                del data[name]
        return data

    def body(self) -> dict[str, Any]:
        """What a handler answers with (json.dumps-ready)."""
        return self.model_dump(mode="json")


class JobOptionsView(Body):
    """The job's options that differ from the defaults (unset ones are left out)."""

    word_timestamps: Absent[bool] = None
    diarize: Absent[bool] = None
    num_speakers: Absent[int] = None
    min_speakers: Absent[int] = None
    max_speakers: Absent[int] = None
    split_channels: Absent[bool] = None
    initial_prompt: Absent[str] = Field(default=None, description="The upload's `prompt`.")
    temperature: Absent[Annotated[float, Field(gt=0, le=1)]] = None


class JobView(Body):
    """A job as GET /status shows it; live streams send the same as `state` messages."""

    job_id: JobId
    status: JobStatus
    progress: Progress
    message: str
    model: str
    language: str | None
    task: Task
    duration_s: float | None
    attempts: Count
    priority: Priority
    options: JobOptionsView
    created_at: IsoTime
    started_at: IsoTime | None
    completed_at: IsoTime | None
    queue_position: Absent[Annotated[int, Field(ge=1)]] = Field(
        default=None, description="Queued jobs: 1 runs next."
    )
    transcript: Absent[str] = Field(default=None, description="Completed jobs: the text.")
    transcribed_s: Absent[Annotated[float, Field(ge=0)]] = Field(
        default=None,
        description="Unfinished jobs with checkpointed chunks: how far into the recording the "
        "transcript reaches (GET /download/{job_id}?partial=true returns it).",
    )
    error: Absent[str] = Field(default=None, description="Failed jobs: why.")
    note: Absent[str] = Field(default=None, description="e.g. the model fell back to the default.")


class JobSummary(Body):
    """A job as lists and the queue view show it."""

    job_id: JobId
    status: JobStatus
    progress: Progress
    priority: Priority
    model: str
    language: str | None
    task: Task
    duration_s: float | None
    filename: str | None = Field(description="The uploaded file's name.")
    attempts: Count
    created_at: IsoTime
    started_at: IsoTime | None
    completed_at: IsoTime | None
    priority_name: Absent[PriorityName] = Field(default=None, description="When the priority is a level.")
    error: Absent[str] = None
    note: Absent[str] = None


class RunningJob(JobSummary):
    """A running job in GET /queue."""

    estimated_remaining_s: Seconds


class QueuedJob(JobSummary):
    """A queued job in GET /queue."""

    position: Annotated[int, Field(ge=1, description="1 runs next.")]
    estimated_start_s: Seconds


class WebhookSegment(Body):
    """A segment as webhooks send it; times in seconds."""

    id: int
    start: float
    end: float
    text: str


class WebhookSnapshot(Body):
    """The job's part of a webhook payload, fixed when the job ends (the job may change later)."""

    event: Annotated[str, OneOf(tuple(WEBHOOK_EVENTS.values()))]
    job_id: JobId
    status: JobStatus
    model: str
    language: str | None
    duration_s: float | None
    created_at: IsoTime
    completed_at: IsoTime = Field(description="When the job ended.")
    error: Absent[str] = Field(default=None, description="job.failed only.")


class WebhookPayload(WebhookSnapshot):
    """What a callback URL receives (docs/webhooks.md)."""

    delivery_id: str = Field(description="The same on every attempt of this delivery.")
    attempt: Annotated[int, Field(ge=1)]
    transcript: Absent[str] = Field(default=None, description="job.completed only.")
    segments: Absent[list[WebhookSegment]] = Field(default=None, description="job.completed only.")


def _seconds(value: float | None) -> float | None:
    return round(value, 3) if value is not None else None


def _when(job: Job, timestamp: float | None) -> str:
    """A time the job must have (created_at; completed_at once it ended)."""
    text = iso_time(timestamp)
    if text is None:
        raise ValueError(f"job {job.job_id} has no time where one is needed")
    return text


def status_message(job: Job, position: int | None = None) -> str:
    """The one-line `message` of a job's status."""
    if job.status is JobStatus.QUEUED:
        return "Waiting in the queue" + (f" (position {position})" if position else "") + "."
    if job.status is JobStatus.PROCESSING:
        reached = ""
        if job.transcribed_s and job.duration_s:
            reached = f" ({clock(job.transcribed_s)} of {clock(job.duration_s)} transcribed)"
        return f"Transcribing: {job.progress:.0%} done{reached}."
    if job.status is JobStatus.COMPLETED:
        took = (job.completed_at or 0) - (job.started_at or job.created_at)
        return f"Completed in {took:.1f} s; download the transcript from /download/{job.job_id}."
    if job.status is JobStatus.CANCELLED:
        return "Cancelled; submit the audio again to run it."
    return f"Failed: {job.error}"


def clock(seconds: float) -> str:
    """Seconds as m:ss or h:mm:ss, as people read a recording's position."""
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def options_view(options: JobOptions) -> JobOptionsView:
    return JobOptionsView(**options.describe())


def job_view(job: Job, position: int | None = None, transcript: str | None = None) -> JobView:
    """GET /status's body. `position`: the queue position of a queued job; `transcript`: the text
    of a completed one (required then). Both are ignored for jobs in other states."""
    queued = job.status is JobStatus.QUEUED
    completed = job.status is JobStatus.COMPLETED
    if completed and transcript is None:
        raise ValueError(f"job {job.job_id}: a completed job's view needs its transcript text")
    return JobView(
        job_id=job.job_id,
        status=job.status,
        progress=round(job.progress, 4),
        message=status_message(job, position if queued else None),
        model=job.model,
        language=job.language,
        task=job.task,
        duration_s=_seconds(job.duration_s),
        attempts=job.attempts,
        priority=job.priority,
        options=options_view(job.options),
        created_at=_when(job, job.created_at),
        started_at=iso_time(job.started_at),
        completed_at=iso_time(job.completed_at),
        queue_position=position if queued else None,
        transcript=transcript if completed else None,
        transcribed_s=_seconds(job.transcribed_s) if not job.status.finished else None,
        error=job.error if job.status is JobStatus.FAILED else None,
        note=job.note or None,
    )


def _summary_fields(job: Job) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": job.status,
        "progress": round(job.progress, 4),
        "priority": job.priority,
        "model": job.model,
        "language": job.language,
        "task": job.task,
        "duration_s": _seconds(job.duration_s),
        "filename": job.original_filename,
        "attempts": job.attempts,
        "created_at": _when(job, job.created_at),
        "started_at": iso_time(job.started_at),
        "completed_at": iso_time(job.completed_at),
        "priority_name": priority_name(job.priority),
        "error": job.error or None,
        "note": job.note or None,
    }


def job_summary(job: Job) -> JobSummary:
    """An entry of GET /jobs."""
    return JobSummary(**_summary_fields(job))


def running_job(job: Job, remaining_s: float) -> RunningJob:
    """A running entry of GET /queue; the estimate is rounded to a tenth of a second."""
    return RunningJob(**_summary_fields(job), estimated_remaining_s=round(remaining_s, 1))


def queued_job(job: Job, position: int, start_s: float) -> QueuedJob:
    """A queued entry of GET /queue (position 1 runs next); the estimate is rounded to 0.1 s."""
    return QueuedJob(**_summary_fields(job), position=position, estimated_start_s=round(start_s, 1))


def webhook_snapshot(job: Job) -> WebhookSnapshot:
    """The job's part of its webhook payload, taken when it ends."""
    if not job.status.finished:
        raise ValueError(f"job {job.job_id} is {job.status.value}: webhooks are for ended jobs")
    return WebhookSnapshot(
        event=WEBHOOK_EVENTS[job.status],
        job_id=job.job_id,
        status=job.status,
        model=job.model,
        language=job.language,
        duration_s=_seconds(job.duration_s),
        created_at=_when(job, job.created_at),
        completed_at=_when(job, job.completed_at),
        error=job.error if job.status is JobStatus.FAILED else None,
    )


def webhook_payload(
    snapshot: Mapping[str, Any],
    delivery_id: str,
    attempt: int,
    result: Mapping[str, Any] | None = None,
) -> WebhookPayload:
    """One attempt's payload: the stored snapshot (a WebhookSnapshot's body), this attempt, and
    for a completed job the text and segments of `result` (the stored transcript, required then)."""
    extra: dict[str, Any] = {"delivery_id": delivery_id, "attempt": attempt}
    if snapshot["status"] == JobStatus.COMPLETED.value:
        if result is None:
            raise ValueError(f"job {snapshot['job_id']}: a completed job's payload needs its transcript")
        extra["transcript"] = result.get("text", "")
        extra["segments"] = [
            {
                **{key: segment.get(key) for key in WebhookSegment.model_fields},
                "text": segment.get("text") or "",
            }
            for segment in result.get("segments", [])
        ]
    return WebhookPayload.model_validate({**snapshot, **extra})
