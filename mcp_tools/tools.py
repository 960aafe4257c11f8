"""The two agent tools as plain functions: queue a file, then check on it and collect the transcript.

They never raise: every outcome is a dict with `success`, and failures carry an `error` that says
what to do. `server.py` exposes them over MCP; their docstrings are what an agent reads.

Files in `output_dir` share the job id's name:
    <job_id>.transcribing.txt   while the job is queued or processing ("QUEUED - ...",
                                "PROCESSING - ..."), or after it failed ("FAILED - <error>")
    <job_id>.txt                the transcript, written once the job is completed; the status file
                                is then removed
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from mcp_tools.client import (
    JOB_ID_PATTERN,
    JobNotFound,
    TranscriptionClient,
    TranscriptionError,
    check_audio_file,
)

DEFAULT_SERVICE_URL: Final = "http://host.docker.internal:8765"
DEFAULT_OUTPUT_DIR: Final = "/workspace/transcriptions"
SERVICE_URL_ENV: Final = "TRANSCRIPTION_SERVICE_URL"
STATUS_SUFFIX: Final = ".transcribing.txt"
TRANSCRIPT_SUFFIX: Final = ".txt"
# Longer transcripts stay in the file; the tool result carries the start, so it fits in a context.
MAX_RETURNED_TRANSCRIPT_CHARS: Final = 20_000
# A check may hold the call open while the job runs (the service caps a long-poll at 60 s).
MAX_WAIT_SECONDS: Final = 60.0

Result = dict[str, Any]


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
) -> Result:
    """Queue an audio file for transcription and return at once (it does not wait for the transcript).

    Call this once for each new recording. It uploads the file to the transcription service and
    returns `job_id`; then call `check_transcription_status(job_id)` to follow the job and, once it
    is completed, to save the transcript as `<output_dir>/<job_id>.txt` and get its text back.

    Any audio the service can decode is accepted (WAV, MP3, M4A, FLAC, OGG, WebM); a file that is
    not audio comes back as an error from the service. The job id is `<file stem>-<content hash>`,
    so calling this again for the same file is safe: it returns the same job instead of making a
    second one, and says `completed` if the transcript is already done.

    While the job waits, `<output_dir>/<job_id>.transcribing.txt` holds a `QUEUED - ...` line.
    How long a job takes depends on the service's model and hardware: seconds for a short clip
    with a small model, up to about the recording's own length (or more) for large-v3 on a CPU,
    plus any wait for jobs ahead in the queue. Check back every 10-30 s (30-60 s for recordings
    longer than about 10 minutes), or use check_transcription_status's `wait_seconds`.

    Args:
        filename: path of the audio file, as seen by this tool (absolute paths are safest).
        output_dir: where the status and transcript files go; created when missing.
        model: a Whisper model name such as "small" or "large-v3"; leave it out for the service's
            default model, which is already loaded (another model is loaded, or downloaded, first).
        transcription_service_url: leave it out to use $TRANSCRIPTION_SERVICE_URL or
            http://host.docker.internal:8765.

    Returns: `success`, `status` ("queued", or "processing"/"completed" for a file sent before),
    `job_id`, `service_url`, `message`, and `status_file` while the job is pending; on failure
    `success` is false and `error` says what went wrong and what to do.
    """
    url = service_url(transcription_service_url)
    model = (model or "").strip() or None
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
            submission = client.upload(audio, model=model)
            job_id = submission.job_id
            try:
                status = client.status(job_id)
            except TranscriptionError:
                status = {"status": submission.status}  # the job is queued; the details are a bonus
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url)

    # A new job is reported as the service accepted it ("queued"); for a file sent before, the
    # existing job's current state tells the agent whether there is anything left to wait for.
    state = submission.status if submission.created else str(status.get("status", submission.status))
    status_file = out / f"{job_id}{STATUS_SUFFIX}"
    result: Result = {
        "success": True,
        "status": state,
        "job_id": job_id,
        "service_url": url,
        "file": str(audio),
        "transcript_file": str(out / f"{job_id}{TRANSCRIPT_SUFFIX}"),
    }
    for key in ("queue_position", "duration_s"):
        if status.get(key) is not None and (key != "queue_position" or status.get("status") == "queued"):
            result[key] = status[key]
    check = f"check_transcription_status(job_id={job_id!r})"
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
            _write_status(status_file, f"FAILED - {error}", origin)
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
        _write_status(status_file, f"{state.upper()} - {origin}, at {_now()}")
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
        f"{audio.name}{again} is {state}{where} as job {job_id}. Call {check} in 10-30 s "
        f"(or with wait_seconds=30); the transcript will be saved to {result['transcript_file']}."
    )
    return result


def check_transcription_status(
    job_id: str,
    output_dir: str = DEFAULT_OUTPUT_DIR,
    transcription_service_url: str | None = None,
    wait_seconds: float = 0,
) -> Result:
    """Check a transcription job; once it is completed, save the transcript and return its text.

    Call this with the `job_id` that transcribe_wav returned, with the same output_dir.
    - `queued` / `processing`: not done yet; `progress` runs from 0 to 1 and `queue_position`
      says how many jobs run first. Call again in 10-30 s (longer for long recordings), or pass
      `wait_seconds` (up to 60) to have this call return as soon as the job finishes.
    - `completed`: the transcript is saved as `<output_dir>/<job_id>.txt` (returned as
      `transcript_file`), its text is returned as `transcript`, and the `.transcribing.txt`
      status file is removed. Calling again is harmless: it saves the file again.
    - `failed`: `success` is false, `error` holds the service's reason, and the status file is
      rewritten as `FAILED - <error>`. Calling transcribe_wav on the same file again retries it.

    Args:
        job_id: the id transcribe_wav returned (`<file stem>-<hash>`).
        output_dir: where transcribe_wav put the status file; the transcript goes here too.
        transcription_service_url: leave it out to use $TRANSCRIPTION_SERVICE_URL or
            http://host.docker.internal:8765.
        wait_seconds: hold the call up to this many seconds (max 60) while the job is unfinished.
    """
    url = service_url(transcription_service_url)
    job_id = (job_id or "").strip()
    if not JOB_ID_PATTERN.match(job_id):
        return _failure(
            f"{job_id!r} is not a job id: use the job_id that transcribe_wav returned "
            "(letters, digits, '.', '_' or '-').",
            service_url=url,
        )
    wait = max(0.0, min(float(wait_seconds or 0), MAX_WAIT_SECONDS))
    try:
        out = _output_dir(output_dir)
        status_file = out / f"{job_id}{STATUS_SUFFIX}"
        transcript_file = out / f"{job_id}{TRANSCRIPT_SUFFIX}"
        with make_client(url) as client:
            try:
                status = client.status(job_id, wait=wait or None)
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
                _write_atomic(transcript_file, transcript)
                status_file.unlink(missing_ok=True)
                return _completed(job_id, url, transcript_file, transcript, status)
    except TranscriptionError as exc:
        return _failure(str(exc), service_url=url, job_id=job_id)
    except OSError as exc:
        return _failure(
            f"Cannot write in output_dir {output_dir!r}: {exc.strerror or exc}.",
            service_url=url,
            job_id=job_id,
        )

    if state == "cancelled":
        with contextlib.suppress(OSError):
            _write_status(status_file, "CANCELLED - the job was cancelled", f"job {job_id}, service {url}")
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
            _write_status(status_file, f"FAILED - {error}", f"job {job_id}, service {url}")
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
    detail = status.get("message") or state
    result["message"] = f"{detail} Not finished yet: call check_transcription_status again in 10-30 s."
    with contextlib.suppress(OSError):
        _write_status(status_file, f"{state.upper()} - {detail} (job {job_id}, service {url}, at {_now()})")
    return result


# -- helpers --------------------------------------------------------------------------------------


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


def _write_status(path: Path, headline: str, detail: str | None = None) -> None:
    """A `STATE - ...` headline that a person or agent can read at a glance, then optional detail."""
    lines = [headline.replace("\n", " ")]
    if detail is not None:
        lines.append(f"{detail}, at {_now()}")
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
