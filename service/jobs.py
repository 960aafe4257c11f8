"""The job record and its states, as the journal stores them and the API shows them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

# Client-chosen ids become file names: a strict pattern rules out path tricks.
JOB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED)


class Task(StrEnum):
    TRANSCRIBE = "transcribe"
    TRANSLATE = "translate"


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


def iso_time(timestamp: float | None) -> str | None:
    """Seconds since the epoch as an ISO 8601 UTC string, the form the API uses."""
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=UTC).isoformat(timespec="milliseconds")
