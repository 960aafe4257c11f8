"""The agent tools as plain functions: queue a file, follow it and collect the transcript, cancel
it, list what the service holds.

They never raise: every outcome is a dict with `success`, and failures carry an `error` that says
what to do. `server.py` exposes them over MCP; their docstrings are what an agent reads.

Files in `output_dir` share the job id's name:
    <job_id>.transcribing.txt   while the job is queued or processing ("QUEUED - ...",
                                "PROCESSING - ..."), or after it failed or was cancelled
                                ("FAILED - <error>", "CANCELLED - ..."); a `format: srt` line
                                remembers a format other than txt for the check that saves it
    <job_id>.<format>           the transcript (txt unless another format was asked for),
                                written once the job is completed; the status file is then removed
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from mcp_tools.client import (
    FINISHED,
    JOB_ID_PATTERN,
    TASKS,
    JobConflict,
    JobNotFound,
    RejectedUpload,
    TranscriptionClient,
    TranscriptionError,
    check_audio_file,
    check_priority,
    priority_name,
)

DEFAULT_SERVICE_URL: Final = "http://host.docker.internal:8765"
DEFAULT_OUTPUT_DIR: Final = "/workspace/transcriptions"
SERVICE_URL_ENV: Final = "TRANSCRIPTION_SERVICE_URL"
STATUS_SUFFIX: Final = ".transcribing.txt"
TRANSCRIPT_SUFFIX: Final = ".txt"
# What transcribe_wav may save: plain text, subtitles, or the segments with their times.
TRANSCRIPT_FORMATS: Final = ("txt", "srt", "vtt", "json")
FORMAT_LINE: Final = "format: "
# Longer transcripts stay in the file; the tool result carries the start, so it fits in a context.
MAX_RETURNED_TRANSCRIPT_CHARS: Final = 20_000
# A check may hold the call open while the job runs (the service caps a long-poll at 60 s).
MAX_WAIT_SECONDS: Final = 60.0
# While a check waits and the caller wants progress, it asks this often so the progress moves.
PROGRESS_POLL_S: Final = 2.0
MAX_LISTED: Final = 100

Result = dict[str, Any]
# (fraction of the job done, 0 to 1; a line saying where it is), called while a check waits.
ProgressReport = Callable[[float, str], None]


def service_url(explicit: str | None = None) -> str:
    """The explicit URL, else $TRANSCRIPTION_SERVICE_URL, else the Docker host's port 8765."""
    for candidate in (explicit, os.environ.get(SERVICE_URL_ENV)):
        if candidate and candidate.strip():
            return candidate.strip().rstrip("/")
    return DEFAULT_SERVICE_URL


def make_client(url: str) -> TranscriptionClient:
    """A seam for tests and for tuning retries in one place."""
    return TranscriptionClient(url)


def transcribe_wav(
    filename: str,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    model: str | None = None,
    transcription_service_url: str | None = None,
    priority: str | int | None = None,
    language: str | None = None,
    task: str | None = None,
    diarize: bool = False,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    word_timestamps: bool = False,
    callback_url: str | None = None,
    format: str = "txt",
) -> Result:
    """Queue an audio file for transcription and return at once (it does not wait for the transcript).

    Call this once for each new recording. It uploads the file to the transcription service and
    returns `job_id`; then call `check_transcription_status(job_id)` to follow the job and, once it
    is completed, to save the transcript as `<output_dir>/<job_id>.txt` (or `.srt`, `.vtt`,
    `.json` with `format`) and get its text back.

    Any audio the service can decode is accepted (WAV, MP3, M4A, FLAC, OGG, WebM); a file that is
    not audio comes back as an error from the service. The job id is `<file stem>-<content hash>`
    (with the model and the options that change the transcript before the hash), so calling this
    again for the same file is safe: it returns the same job instead of making a second one, and
    says `completed` if the transcript is already done.

    Options: `priority="urgent"` puts a recording ahead of every queued normal one (also `high`,
    `low`, or a number from -100 to 100); `diarize=True` labels who spoke ("SPEAKER_1: ...", with
    `num_speakers`, or `min_speakers`/`max_speakers` when you know the count); `language` ("en",
    "de") skips detection; `task="translate"` gives English text; `word_timestamps=True` adds word
    times to json; `callback_url` gets a POST when the job ends.

    While the job waits, `<output_dir>/<job_id>.transcribing.txt` holds a `QUEUED - ...` line.
    How long a job takes depends on the service's model and hardware: seconds for a short clip
    with a small model, up to about the recording's own length (or more) for large-v3 on a CPU,
    plus any wait for jobs ahead in the queue (`estimated_wait_s`). Check back every 10-30 s
    (30-60 s for recordings longer than about 10 minutes), or use check_transcription_status's
    `wait_seconds`.

    Returns: `success`, `status` ("queued", or "processing"/"completed" for a file sent before),
    `job_id`, `service_url`, `message`, `transcript_file`, and while the job is pending
    `status_file`, `queue_position` and `estimated_wait_s`; on failure `success` is false and
    `error` says what went wrong and what to do.
    """
    url = service_url(transcription_service_url)
    model = (model or "").strip() or None
    language = (language or "").strip() or None
    task = (task or "").strip().lower() or None
    fmt = (format or "txt").strip().lower()
    problem = _check_options(priority, task, fmt, diarize, num_speakers, min_speakers, max_speakers)
    if problem:
        return _failure(problem, service_url=url)
    level = check_priority(priority) if priority not in (None, "") else None
    try:
        audio = check_audio_file(Path(filename)).absolute()
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url)
    try:
        out = _output_dir(output_dir)
    except OSError as exc:
        return _failure(f"Cannot create output_dir {output_dir!r}: {exc.strerror or exc}.", service_url=url)
    try:
        with make_client(url) as client:
            submission = client.upload(
                audio,
                model=model,
                language=language,
                task=task,
                callback_url=(callback_url or "").strip() or None,
                priority=level,
                diarize=diarize,
                num_speakers=num_speakers,
                min_speakers=min_speakers,
                max_speakers=max_speakers,
                word_timestamps=word_timestamps,
            )
            job_id = submission.job_id
            try:
                status = client.status(job_id)
            except TranscriptionError:
                status = {"status": submission.status}  # the job is queued; the details are a bonus
            estimate = _estimate(client, job_id, status)
    except RejectedUpload as exc:
        return _failure(_rejected_advice(exc), service_url=url)
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url)

    # A new job is reported as the service accepted it ("queued"); for a file sent before, the
    # existing job's current state tells the agent whether there is anything left to wait for.
    state = submission.status if submission.created else str(status.get("status", submission.status))
    status_file = out / f"{job_id}{STATUS_SUFFIX}"
    transcript_file = out / f"{job_id}.{fmt}"
    result: Result = {
        "success": True,
        "status": state,
        "job_id": job_id,
        "service_url": url,
        "file": str(audio),
        "transcript_file": str(transcript_file),
    }
    if fmt != "txt":
        result["format"] = fmt
    if status.get("priority") is not None:
        result["priority"] = _priority_text(status["priority"])
    for key in ("queue_position", "duration_s"):
        if status.get(key) is not None and (key != "queue_position" or status.get("status") == "queued"):
            result[key] = status[key]
    result.update(estimate)
    check = f"check_transcription_status(job_id={job_id!r}{'' if fmt == 'txt' else f', format={fmt!r}'})"
    origin = f"job {job_id}, file {audio}, service {url}"
    if state == "completed":
        result["message"] = (
            f"{audio.name} was transcribed before (job {job_id}). Call {check} now to save and read "
            "the transcript."
        )
        return result
    if state == "failed":
        error = status.get("error") or "no reason given"
        with contextlib.suppress(OSError):
            _write_status(status_file, f"FAILED - {error}", origin, fmt)
        return _failure(
            f"{audio.name} was sent before as job {job_id}, and that job failed: {error} "
            "Call transcribe_wav on the same file again to retry it, once the cause is fixed "
            "(for example choose another model).",
            service_url=url,
            status="failed",
            job_id=job_id,
            status_file=str(status_file),
        )

    try:
        _write_status(status_file, f"{state.upper()} - {origin}, at {_now()}", fmt=fmt)
    except OSError as exc:
        return _failure(
            f"Job {job_id} is {state}, but its status file could not be written in {out}: "
            f"{exc.strerror or exc}. Call {check} with a writable output_dir.",
            service_url=url,
            status=state,
            job_id=job_id,
        )
    result["status_file"] = str(status_file)
    where = f" (position {status['queue_position']} in the queue)" if status.get("queue_position") else ""
    again = " was already submitted and" if not submission.created else ""
    result["message"] = (
        f"{audio.name}{again} is {state}{where} as job {job_id}.{_wait_text(estimate)} Call {check} in "
        f"{_next_check_text(estimate)} (or with wait_seconds=30); the transcript will be saved to "
        f"{transcript_file}."
    )
    return result


def check_transcription_status(
    job_id: str,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    transcription_service_url: str | None = None,
    wait_seconds: float = 0,
    format: str | None = None,
    on_progress: ProgressReport | None = None,
    partial: bool = False,
) -> Result:
    """Check a transcription job; once it is completed, save the transcript and return its text.

    Call this with the `job_id` that transcribe_wav returned, with the same output_dir.
    - `queued` / `processing`: not done yet; `progress` runs from 0 to 1, `queue_position` says
      how many jobs run first and `estimated_wait_s` about how many seconds until it starts
      (queued) or ends (processing). Call again in 10-30 s (longer for long recordings), or pass
      `wait_seconds` (up to 60) to have this call return as soon as the job finishes; while it
      waits, it sends progress notifications.
    - `completed`: the transcript is saved as `<output_dir>/<job_id>.txt` (or the `format`
      transcribe_wav was given: srt, vtt, json), returned as `transcript_file`; its text is
      returned as `transcript` (with "SPEAKER_1: " labels for a diarized job), and the
      `.transcribing.txt` status file is removed. Calling again is harmless: it saves the file again.
    - `failed`: `success` is false, `error` holds the service's reason, and the status file is
      rewritten as `FAILED - <error>`. Calling transcribe_wav on the same file again retries it.
    - `cancelled`: `success` is false; calling transcribe_wav on the same file runs it again.

    Long recordings are transcribed piece by piece: while one runs, `transcribed_s` says how far
    into the recording the transcript reaches, and `partial=true` also returns that text as
    `transcript_so_far` (nothing is saved to a file until the job completes).
    """
    url = service_url(transcription_service_url)
    job_id = (job_id or "").strip()
    if not JOB_ID_PATTERN.match(job_id):
        return _failure(
            f"{job_id!r} is not a job id: use the job_id that transcribe_wav returned "
            "(letters, digits, '.', '_' or '-').",
            service_url=url,
        )
    asked_format = (format or "").strip().lower() or None
    if asked_format is not None and asked_format not in TRANSCRIPT_FORMATS:
        return _failure(_format_error(asked_format), service_url=url, job_id=job_id)
    try:
        wait = max(0.0, min(float(wait_seconds or 0), MAX_WAIT_SECONDS))
    except (TypeError, ValueError):
        return _failure(f"wait_seconds must be a number from 0 to 60, not {wait_seconds!r}.", service_url=url)
    estimate: Result = {}
    try:
        out = _output_dir(output_dir)
        status_file = out / f"{job_id}{STATUS_SUFFIX}"
        fmt = asked_format or _recorded_format(status_file)
        transcript_file = out / f"{job_id}.{fmt}"
        with make_client(url) as client:
            try:
                status = _follow(client, job_id, wait, on_progress)
            except JobNotFound as exc:
                return _failure(
                    f"The transcription service at {url} has no job {job_id!r} ({exc.service_error}). "
                    "Check the id and the service URL; if the service's storage was reset, queue the "
                    "file again with transcribe_wav.",
                    service_url=url,
                    job_id=job_id,
                )
            state = str(status.get("status"))
            if state == "completed":
                transcript = client.download(job_id, "txt")
                saved = transcript if fmt == "txt" else client.download(job_id, fmt)
                _write_atomic(transcript_file, saved)
                status_file.unlink(missing_ok=True)
                return _completed(job_id, url, transcript_file, transcript, status)
            if state not in FINISHED:
                estimate = _estimate(client, job_id, status)
                if partial:
                    with contextlib.suppress(TranscriptionError):  # a service without partial results
                        estimate["transcript_so_far"] = client.download(job_id, "txt", partial=True).strip()
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url, job_id=job_id)
    except OSError as exc:
        return _failure(
            f"Cannot write in output_dir {output_dir!r}: {exc.strerror or exc}.",
            service_url=url,
            job_id=job_id,
        )

    origin = f"job {job_id}, service {url}"
    if state == "cancelled":
        with contextlib.suppress(OSError):
            _write_status(status_file, "CANCELLED - the job was cancelled", origin, fmt)
        return _failure(
            f"Transcription job {job_id} was cancelled. Call transcribe_wav on the same file again to "
            "run it.",
            service_url=url,
            status="cancelled",
            job_id=job_id,
            status_file=str(status_file),
        )
    if state == "failed":
        error = status.get("error") or "no reason given"
        with contextlib.suppress(OSError):
            _write_status(status_file, f"FAILED - {error}", origin, fmt)
        return _failure(
            f"Transcription job {job_id} failed: {error} Fix the cause, then call transcribe_wav on the "
            "same file again to retry the job (or choose another model).",
            service_url=url,
            status="failed",
            job_id=job_id,
            status_file=str(status_file),
        )

    progress = float(status.get("progress") or 0.0)
    result: Result = {
        "success": True,
        "status": state,
        "job_id": job_id,
        "progress": progress,
        "service_url": url,
        "status_file": str(status_file),
    }
    if status.get("queue_position") is not None:
        result["queue_position"] = status["queue_position"]
    if status.get("transcribed_s") is not None:
        result["transcribed_s"] = status["transcribed_s"]
    result.update(estimate)
    detail = status.get("message") or state
    result["message"] = (
        f"{detail}{_wait_text(estimate)} Not finished yet: call check_transcription_status again in "
        f"{_next_check_text(estimate)} (or with wait_seconds=30)."
    )
    with contextlib.suppress(OSError):
        _write_status(status_file, f"{state.upper()} - {detail} ({origin}, at {_now()})", fmt=fmt)
    return result


def cancel_transcription(
    job_id: str,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    transcription_service_url: str | None = None,
) -> Result:
    """Cancel a queued or running transcription job that is no longer wanted.

    Use it when a recording was queued by mistake, or a newer file replaces it: a queued job is
    dropped at once, a running one stops within seconds, and the worker moves on to the next job.
    The status file becomes `CANCELLED - ...`. A job that already ended cannot be cancelled (the
    error says how it ended). To run a cancelled file again, call transcribe_wav on it.
    """
    url = service_url(transcription_service_url)
    job_id = (job_id or "").strip()
    if not JOB_ID_PATTERN.match(job_id):
        return _failure(
            f"{job_id!r} is not a job id: use the job_id that transcribe_wav returned.", service_url=url
        )
    try:
        with make_client(url) as client:
            try:
                body = client.cancel(job_id)
            except JobConflict as exc:
                return _failure(
                    f"Job {job_id} already ended, so there is nothing to cancel ({exc.service_error}). "
                    f"Call check_transcription_status(job_id={job_id!r}) to see how it ended and collect "
                    "its transcript.",
                    service_url=url,
                    job_id=job_id,
                )
            except JobNotFound as exc:
                return _failure(
                    f"The transcription service at {url} has no job {job_id!r} ({exc.service_error}). "
                    "Check the id and the service URL, or call list_transcriptions to see its jobs.",
                    service_url=url,
                    job_id=job_id,
                )
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url, job_id=job_id)
    result: Result = {
        "success": True,
        "status": "cancelled",
        "job_id": job_id,
        "previous_status": body.get("previous_status"),
        "service_url": url,
        "message": f"Job {job_id} is cancelled (it was {body.get('previous_status')}). Call "
        "transcribe_wav on the same file to run it again.",
    }
    # The status file, where transcribe_wav left one in this output_dir, says so too.
    status_file = Path(output_dir or DEFAULT_OUTPUT_DIR).expanduser().absolute() / f"{job_id}{STATUS_SUFFIX}"
    if status_file.is_file():
        with contextlib.suppress(OSError):
            _write_status(
                status_file,
                "CANCELLED - cancelled with cancel_transcription",
                f"job {job_id}, service {url}",
                _recorded_format(status_file),
            )
            result["status_file"] = str(status_file)
    return result


def list_transcriptions(
    status: str | None = None,
    limit: int = 20,
    transcription_service_url: str | None = None,
) -> Result:
    """List the service's jobs, newest first, with what runs now and how long a new job would wait.

    Use it to find a job_id you lost, to see what is still queued or running before queuing more,
    or to check how busy the service is (`estimated_wait_s`: seconds before a job queued now at
    normal priority would start). `status` keeps only some states, comma-separated
    ("queued,processing", "failed"); queued jobs carry their `queue_position` and
    `estimated_start_s`.
    """
    url = service_url(transcription_service_url)
    states = (status or "").replace(" ", "").lower() or None
    try:
        count = int(limit)
    except (TypeError, ValueError):
        return _failure(
            f"limit must be a whole number from 1 to {MAX_LISTED}, not {limit!r}.", service_url=url
        )
    if not 1 <= count <= MAX_LISTED:
        return _failure(f"limit must be from 1 to {MAX_LISTED}, not {count}.", service_url=url)
    try:
        with make_client(url) as client:
            page = client.jobs(status=states, limit=count)
            queue = client.queue()
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url)
    places = {entry.get("job_id"): entry for entry in queue.get("queued") or []}
    remaining = {entry.get("job_id"): entry for entry in queue.get("running") or []}
    jobs = []
    for job in page.get("jobs") or []:
        item = {
            key: job[key]
            for key in (
                "job_id",
                "status",
                "progress",
                "filename",
                "model",
                "duration_s",
                "created_at",
                "error",
            )
            if job.get(key) is not None
        }
        if job.get("priority") is not None:
            item["priority"] = _priority_text(job["priority"])
        if job.get("job_id") in places:
            item["queue_position"] = places[job["job_id"]].get("position")
            item["estimated_start_s"] = places[job["job_id"]].get("estimated_start_s")
        elif job.get("job_id") in remaining:
            item["estimated_remaining_s"] = remaining[job["job_id"]].get("estimated_remaining_s")
        jobs.append(item)
    result: Result = {
        "success": True,
        "service_url": url,
        "jobs": jobs,
        "running": [entry.get("job_id") for entry in queue.get("running") or []],
        "queue_length": queue.get("queue_length"),
        "estimated_wait_s": queue.get("estimated_wait_s"),
    }
    more = " More are listed with a higher limit." if page.get("next_cursor") else ""
    result["message"] = (
        f"{len(jobs)} job(s){' with status ' + states if states else ''}, newest first; "
        f"{result['queue_length']} queued, {len(result['running'])} running. A job queued now would "
        f"start in about {_seconds_text(result['estimated_wait_s'])}.{more}"
    )
    return result


# -- helpers --------------------------------------------------------------------------------------


def _check_options(
    priority: str | int | None,
    task: str | None,
    fmt: str,
    diarize: bool,
    num_speakers: int | None,
    min_speakers: int | None,
    max_speakers: int | None,
) -> str | None:
    """The first option an upload would be refused for, said before anything is sent."""
    if priority not in (None, ""):
        try:
            check_priority(str(priority))
        except ValueError as exc:
            return f"priority: {exc}."
    if task is not None and task not in TASKS:
        return f"task must be 'transcribe' or 'translate' (to English), not {task!r}."
    if fmt not in TRANSCRIPT_FORMATS:
        return _format_error(fmt)
    if not diarize and any(count is not None for count in (num_speakers, min_speakers, max_speakers)):
        return "num_speakers, min_speakers and max_speakers label speakers: set diarize=true with them."
    return None


def _format_error(fmt: str) -> str:
    return f"format must be one of {', '.join(TRANSCRIPT_FORMATS)}, not {fmt!r}."


def _rejected_advice(exc: RejectedUpload) -> str:
    if exc.status_code == 415:
        return (
            f"{exc} Check that the file is a recording (WAV, MP3, M4A, FLAC, OGG, WebM) and not damaged; "
            "sending it again as it is will fail the same way."
        )
    return str(exc)


def _follow(
    client: TranscriptionClient, job_id: str, wait: float, on_progress: ProgressReport | None
) -> dict[str, Any]:
    """The job's status, after waiting up to `wait` seconds for it to end. Without a progress
    report, one long-poll; with one, short long-polls, reporting whenever the job moved on."""
    if on_progress is None or wait <= 0:
        return client.status(job_id, wait=wait or None)
    deadline = time.monotonic() + wait
    status = client.status(job_id)
    reported: float | None = None
    while True:
        reported = _report(on_progress, status, reported)
        remaining = deadline - time.monotonic()
        if status.get("status") in FINISHED or remaining < 0.1:
            return status
        asked = time.monotonic()
        status = client.status(job_id, wait=min(PROGRESS_POLL_S, remaining))
        if status.get("status") not in FINISHED and time.monotonic() - asked < 0.1:
            time.sleep(min(PROGRESS_POLL_S / 4, max(0.0, deadline - time.monotonic())))  # no long-poll


def _report(on_progress: ProgressReport, status: dict[str, Any], last: float | None) -> float | None:
    """MCP wants progress to rise with each notification: send the first, then each rise."""
    state = str(status.get("status"))
    fraction = 1.0 if state == "completed" else min(1.0, max(0.0, float(status.get("progress") or 0.0)))
    if last is not None and fraction <= last:
        return last
    if state == "queued" and status.get("queue_position"):
        line = f"queued, position {status['queue_position']}"
    elif state == "processing":
        line = f"processing, {fraction:.0%} done"
    else:
        line = state
    on_progress(fraction, f"{status.get('job_id')}: {line}")
    return fraction


def _estimate(client: TranscriptionClient, job_id: str, status: dict[str, Any]) -> Result:
    """`estimated_wait_s` from /queue: until a queued job starts, or until a running one ends.
    Best effort: an older service or a failed call leaves it out."""
    state = status.get("status")
    if state not in ("queued", "processing"):
        return {}
    try:
        queue = client.queue()
    except TranscriptionError:
        return {}
    key, field = (
        ("queued", "estimated_start_s") if state == "queued" else ("running", "estimated_remaining_s")
    )
    for entry in queue.get(key) or []:
        if entry.get("job_id") == job_id and entry.get(field) is not None:
            return {
                "estimated_wait_s": round(float(entry[field]), 1),
                "waiting_for": "start" if state == "queued" else "end",
            }
    return {}


def _wait_text(estimate: Result) -> str:
    if "estimated_wait_s" not in estimate:
        return ""
    what = "start" if estimate.get("waiting_for") == "start" else "finish"
    return f" Expected to {what} in about {_seconds_text(estimate['estimated_wait_s'])}."


def _next_check_text(estimate: Result) -> str:
    """When to look again: soon for a short wait, not before the estimate for a long one."""
    wait = estimate.get("estimated_wait_s")
    if wait is None:
        return "10-30 s"
    return f"{max(10, min(60, round(float(wait))))} s"


def _seconds_text(value: Any) -> str:
    if value is None:
        return "an unknown time"
    seconds = float(value)
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.0f} min"


def _priority_text(value: Any) -> Any:
    """The level's name where it has one ('urgent'), else the number."""
    return (priority_name(value) or value) if isinstance(value, int) else value


def _completed(job_id: str, url: str, transcript_file: Path, transcript: str, status: Result) -> Result:
    result: Result = {
        "success": True,
        "status": "completed",
        "job_id": job_id,
        "service_url": url,
        "transcript_file": str(transcript_file),
        "transcript": transcript,
        "message": f"Transcript saved to {transcript_file}.",
    }
    if status.get("duration_s") is not None:
        result["duration_s"] = status["duration_s"]
    if status.get("language"):
        result["language"] = status["language"]
    if len(transcript) > MAX_RETURNED_TRANSCRIPT_CHARS:
        result["transcript"] = transcript[:MAX_RETURNED_TRANSCRIPT_CHARS]
        result["transcript_truncated"] = True
        result["message"] += (
            f" It is {len(transcript)} characters long; only the first {MAX_RETURNED_TRANSCRIPT_CHARS} "
            "are returned here, so read the file for the rest."
        )
    return result


def _failure(error: str, **extra: Any) -> Result:
    return {"success": False, **{k: v for k, v in extra.items() if v is not None}, "error": error}


def _output_dir(output_dir: str) -> Path:
    out = Path(output_dir or DEFAULT_OUTPUT_DIR).expanduser().absolute()
    out.mkdir(parents=True, exist_ok=True)
    return out


def _now() -> str:
    return datetime.now(tz=UTC).isoformat(timespec="seconds")


def _recorded_format(status_file: Path) -> str:
    """The format transcribe_wav wrote into the status file, so a later check saves that one."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        for line in status_file.read_text(encoding="utf-8").splitlines()[1:]:
            value = line.removeprefix(FORMAT_LINE).strip()
            if line.startswith(FORMAT_LINE) and value in TRANSCRIPT_FORMATS:
                return value
    return "txt"


def _write_status(path: Path, headline: str, detail: str | None = None, fmt: str = "txt") -> None:
    """A `STATE - ...` headline that a person or agent can read at a glance, then optional detail,
    then the transcript's format when it is not txt."""
    lines = [headline.replace("\n", " ")]
    if detail is not None:
        lines.append(f"{detail}, at {_now()}")
    if fmt != "txt":
        lines.append(f"{FORMAT_LINE}{fmt}")
    _write_atomic(path, "\n".join(lines) + "\n")


def _write_atomic(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder and rename it over the target: readers never
    see half a transcript, and a crash leaves the old file or the new one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fp:
            fp.write(text)
            fp.flush()
            os.fsync(fp.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
