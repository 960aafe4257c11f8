"""service.jobs.view: the builders give, key for key and in the same order, the bodies the
handlers built by hand (GET /status, /jobs and /queue entries, webhook payloads), and every
body they give is valid against its model's own JSON schema."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from service.jobs import view
from service.jobs.job import Job, JobOptions, JobStatus, Task

CREATED, STARTED, ENDED = 1_700_000_000.0, 1_700_000_002.5, 1_700_000_010.25
CREATED_ISO = "2023-11-14T22:13:20.000+00:00"
STARTED_ISO = "2023-11-14T22:13:22.500+00:00"
ENDED_ISO = "2023-11-14T22:13:30.250+00:00"


def make_job(status: JobStatus, **changes: Any) -> Job:
    job = Job(
        job_id="meeting-1",
        seq=7,
        status=status,
        audio_file="meeting-1.wav",
        audio_sha256="ab" * 32,
        audio_bytes=1234,
        original_filename="meeting.wav",
        model="tiny.en",
        language="en",
        task=Task.TRANSCRIBE,
        callback_url=None,
        duration_s=93.41234,
        progress=0.0,
        error=None,
        attempts=0,
        created_at=CREATED,
        started_at=None,
        completed_at=None,
    )
    return dataclasses.replace(job, **changes)


QUEUED = make_job(JobStatus.QUEUED, priority=5, note="Model base is not loaded; ran on tiny.en.")
PROCESSING = make_job(
    JobStatus.PROCESSING, progress=0.123456, attempts=1, started_at=STARTED, priority=3, language=None
)
COMPLETED = make_job(
    JobStatus.COMPLETED,
    progress=1.0,
    attempts=1,
    started_at=STARTED,
    completed_at=ENDED,
    options=JobOptions(word_timestamps=True, temperature=0.2, initial_prompt="Names: Ada."),
)
FAILED = make_job(
    JobStatus.FAILED,
    progress=0.5,
    attempts=2,
    started_at=STARTED,
    completed_at=ENDED,
    error="the decode crashed",
    duration_s=None,
    original_filename=None,
    priority=-10,
)
CANCELLED = make_job(JobStatus.CANCELLED, completed_at=ENDED, task=Task.TRANSLATE, language=None)


def _valid(model: type[BaseModel], body: dict[str, Any]) -> dict[str, Any]:
    """The body conforms to the model's schema and reads back as the same model."""
    Draft202012Validator(model.model_json_schema()).validate(body)
    assert model.model_validate(body).body() == body
    return body


def _status(job: Job, **extra: Any) -> dict[str, Any]:
    """The fields of a status body every job has, in the handler's order."""
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "progress": extra.pop("progress"),
        "message": extra.pop("message"),
        "model": job.model,
        "language": job.language,
        "task": job.task.value,
        "duration_s": extra.pop("duration_s", 93.412),
        "attempts": job.attempts,
        "priority": job.priority,
        "options": extra.pop("options", {}),
        "created_at": CREATED_ISO,
        "started_at": extra.pop("started_at", None),
        "completed_at": extra.pop("completed_at", None),
        **extra,
    }


STATUS_BODIES = {
    "queued": (
        QUEUED,
        {"position": 3},
        _status(
            QUEUED,
            progress=0.0,
            message="Waiting in the queue (position 3).",
            queue_position=3,
            note="Model base is not loaded; ran on tiny.en.",
        ),
    ),
    "processing": (
        PROCESSING,
        {},
        _status(PROCESSING, progress=0.1235, message="Transcribing: 12% done.", started_at=STARTED_ISO),
    ),
    "completed": (
        COMPLETED,
        {"transcript": "She had your dark suit."},
        _status(
            COMPLETED,
            progress=1.0,
            message="Completed in 7.8 s; download the transcript from /download/meeting-1.",
            options={"initial_prompt": "Names: Ada.", "temperature": 0.2, "word_timestamps": True},
            started_at=STARTED_ISO,
            completed_at=ENDED_ISO,
            transcript="She had your dark suit.",
        ),
    ),
    "failed": (
        FAILED,
        {},
        _status(
            FAILED,
            progress=0.5,
            message="Failed: the decode crashed",
            duration_s=None,
            started_at=STARTED_ISO,
            completed_at=ENDED_ISO,
            error="the decode crashed",
        ),
    ),
    "cancelled": (
        CANCELLED,
        {},
        _status(
            CANCELLED,
            progress=0.0,
            message="Cancelled; submit the audio again to run it.",
            completed_at=ENDED_ISO,
        ),
    ),
}


@pytest.mark.parametrize("name", list(STATUS_BODIES))
def test_status_body(name: str) -> None:
    job, inputs, expected = STATUS_BODIES[name]
    body = view.job_view(job, **inputs).body()
    assert body == expected
    assert list(body) == list(expected)  # the same key order: the same JSON text
    _valid(view.JobView, body)


def test_status_ignores_what_does_not_apply() -> None:
    """A position for a job that is not queued, or a transcript for one not completed, is not shown."""
    body = view.job_view(PROCESSING, position=2, transcript="x").body()
    assert "queue_position" not in body and "transcript" not in body
    assert view.job_view(QUEUED).body()["message"] == "Waiting in the queue."
    with pytest.raises(ValueError, match="transcript"):
        view.job_view(COMPLETED)


def _summary(job: Job, **extra: Any) -> dict[str, Any]:
    return {
        "job_id": job.job_id,
        "status": job.status.value,
        "progress": extra.pop("progress", 0.0),
        "priority": job.priority,
        "model": job.model,
        "language": job.language,
        "task": job.task.value,
        "duration_s": extra.pop("duration_s", 93.412),
        "filename": job.original_filename,
        "attempts": job.attempts,
        "created_at": CREATED_ISO,
        "started_at": extra.pop("started_at", None),
        "completed_at": extra.pop("completed_at", None),
        **extra,
    }


SUMMARIES = {
    "queued": (QUEUED, _summary(QUEUED, priority_name="high", note=QUEUED.note)),
    "processing": (PROCESSING, _summary(PROCESSING, progress=0.1235, started_at=STARTED_ISO)),
    "completed": (
        COMPLETED,
        _summary(
            COMPLETED, progress=1.0, started_at=STARTED_ISO, completed_at=ENDED_ISO, priority_name="normal"
        ),
    ),
    "failed": (
        FAILED,
        _summary(
            FAILED,
            progress=0.5,
            duration_s=None,
            started_at=STARTED_ISO,
            completed_at=ENDED_ISO,
            priority_name="low",
            error="the decode crashed",
        ),
    ),
    "cancelled": (CANCELLED, _summary(CANCELLED, completed_at=ENDED_ISO, priority_name="normal")),
}


@pytest.mark.parametrize("name", list(SUMMARIES))
def test_job_summary(name: str) -> None:
    job, expected = SUMMARIES[name]
    body = view.job_summary(job).body()
    assert body == expected
    assert list(body) == list(expected)
    _valid(view.JobSummary, body)


def test_queue_entries_add_their_estimates_after_the_summary() -> None:
    running = view.running_job(PROCESSING, 12.345).body()
    assert running == {**SUMMARIES["processing"][1], "estimated_remaining_s": 12.3}
    assert list(running)[-1] == "estimated_remaining_s"
    _valid(view.RunningJob, running)
    queued = view.queued_job(QUEUED, 1, 0.04).body()
    assert queued == {**SUMMARIES["queued"][1], "position": 1, "estimated_start_s": 0.0}
    assert list(queued)[-2:] == ["position", "estimated_start_s"]
    _valid(view.QueuedJob, queued)


WEBHOOKS = {
    "completed": (
        COMPLETED,
        {
            "event": "job.completed",
            "job_id": "meeting-1",
            "status": "completed",
            "model": "tiny.en",
            "language": "en",
            "duration_s": 93.412,
            "created_at": CREATED_ISO,
            "completed_at": ENDED_ISO,
        },
    ),
    "failed": (
        FAILED,
        {
            "event": "job.failed",
            "job_id": "meeting-1",
            "status": "failed",
            "model": "tiny.en",
            "language": "en",
            "duration_s": None,
            "created_at": CREATED_ISO,
            "completed_at": ENDED_ISO,
            "error": "the decode crashed",
        },
    ),
    "cancelled": (
        CANCELLED,
        {
            "event": "job.cancelled",
            "job_id": "meeting-1",
            "status": "cancelled",
            "model": "tiny.en",
            "language": None,
            "duration_s": 93.412,
            "created_at": CREATED_ISO,
            "completed_at": ENDED_ISO,
        },
    ),
}


@pytest.mark.parametrize("name", list(WEBHOOKS))
def test_webhook_snapshot_and_payload(name: str) -> None:
    job, expected = WEBHOOKS[name]
    snapshot = view.webhook_snapshot(job).body()
    assert snapshot == expected and list(snapshot) == list(expected)
    _valid(view.WebhookSnapshot, snapshot)
    result = {
        "text": "She had your dark suit.",
        "segments": [{"id": 0, "seek": 0, "start": 0.0, "end": 2.9, "text": " She had", "words": []}],
    }
    payload = view.webhook_payload(snapshot, "d" * 32, 2, result).body()
    wanted = {**expected, "delivery_id": "d" * 32, "attempt": 2}
    if job.status is JobStatus.COMPLETED:  # only a completed job's payload carries its text
        wanted["transcript"] = "She had your dark suit."
        wanted["segments"] = [{"id": 0, "start": 0.0, "end": 2.9, "text": " She had"}]
    assert payload == wanted and list(payload) == list(wanted)
    _valid(view.WebhookPayload, payload)


def test_webhooks_are_for_ended_jobs() -> None:
    with pytest.raises(ValueError, match="ended"):
        view.webhook_snapshot(QUEUED)
    with pytest.raises(ValueError, match="transcript"):
        view.webhook_payload(WEBHOOKS["completed"][1], "d", 1)


def test_options_view_mirrors_job_options() -> None:
    """JobOptionsView has a field for every JobOptions field, so no option goes unshown."""
    assert set(view.JobOptionsView.model_fields) == {f.name for f in dataclasses.fields(JobOptions)}
    every = JobOptions(True, True, 2, 1, 3, True, "p", 0.5)
    assert view.options_view(every).body() == every.describe()


def test_the_models_refuse_what_the_code_does_not_allow() -> None:
    with pytest.raises(ValidationError):
        view.job_view(make_job(JobStatus.QUEUED, job_id="../etc"))
    with pytest.raises(ValidationError):
        view.job_summary(make_job(JobStatus.QUEUED, priority=1000))
    with pytest.raises(ValidationError):
        view.job_summary(make_job(JobStatus.QUEUED, progress=1.5))
