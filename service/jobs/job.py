"""The job record and its states, as the journal stores them and the API shows them."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

# Client-chosen ids become file names: a strict pattern rules out path tricks.
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


# Named priority levels; any integer in [MIN_PRIORITY, MAX_PRIORITY] is allowed too.
PRIORITIES = {"urgent": 10, "high": 5, "normal": 0, "low": -10}
MIN_PRIORITY, MAX_PRIORITY = -100, 100
# Ageing lifts a waiting job at most to just below this level, so urgent work always overtakes.
URGENT = PRIORITIES["urgent"]


class Task(StrEnum):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


def parse_priority(raw: str | None) -> int:
    """`urgent`, `high`, `normal`, `low`, or an integer in range; higher runs first."""
    from service.errors import BadRequest

    value = (raw or "").strip().lower()
    if value == "":
        return PRIORITIES["normal"]
    if value in PRIORITIES:
        return PRIORITIES[value]
    try:
        number = int(value)
    except ValueError:
        raise BadRequest(
            f"priority must be one of {', '.join(PRIORITIES)} or a whole number, not {raw!r}."
        ) from None
    if not MIN_PRIORITY <= number <= MAX_PRIORITY:
        raise BadRequest(f"priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {number}.")
    return number


def priority_name(value: int) -> str | None:
    return next((name for name, level in PRIORITIES.items() if level == value), None)


def effective_priority(priority: int, waited_s: float, aging_s: float) -> float:
    """Ageing: one level per `aging_s` waited, up to just below urgent; never lowers a job."""
    return max(float(priority), min(priority + waited_s / aging_s, URGENT - 1.0))


@dataclass(frozen=True)
class JobOptions:
    """Per-job extras beyond model, language and task; stored as JSON in the journal."""

    word_timestamps: bool = False
    diarize: bool = False
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    split_channels: bool = False  # stereo calls: one speaker per channel
    initial_prompt: str | None = None  # decoder context: vocabulary, names, style
    temperature: float | None = None  # first sampling temperature; None (or 0) is greedy/beam first

    def to_json(self) -> str | None:
        values = {k: v for k, v in asdict(self).items() if v not in (None, False)}
        return json.dumps(values, sort_keys=True) if values else None

    @classmethod
    def from_json(cls, raw: str | None) -> JobOptions:
        if not raw:
            return cls()
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in json.loads(raw).items() if k in known})

    def describe(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, False)}


@dataclass(frozen=True)
class NewJob:
    """What an accepted upload puts in the journal."""

    job_id: str
    audio_file: str  # name inside pending/
    audio_sha256: str
    audio_bytes: int
    original_filename: str | None
    model: str
    language: str | None
    task: Task
    callback_url: str | None
    duration_s: float | None
    options: JobOptions = field(default_factory=JobOptions)
    priority: int = 0
    # Audio hash, model and options: equal keys give equal transcripts (the transcript cache).
    cache_key: str | None = None


@dataclass(frozen=True)
class Job:
    job_id: str
    seq: int
    status: JobStatus
    audio_file: str
    audio_sha256: str
    audio_bytes: int
    original_filename: str | None
    model: str
    language: str | None
    task: Task
    callback_url: str | None
    duration_s: float | None
    progress: float
    error: str | None
    attempts: int
    created_at: float
    started_at: float | None
    completed_at: float | None
    note: str | None = None  # e.g. the model fell back to the default
    options: JobOptions = field(default_factory=JobOptions)
    priority: int = 0
    cache_key: str | None = None
    # How far into the recording the checkpointed transcript reaches (long jobs, while running).
    transcribed_s: float | None = None


def checkpoints_reach(checkpoints: Iterable[dict[str, Any]]) -> float:
    """How far into the recording a job's checkpoints reach, in seconds (0 with none)."""
    return max((float(c["end"]) for c in checkpoints), default=0.0)


def iso_time(timestamp: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC string, the form the API uses."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")
