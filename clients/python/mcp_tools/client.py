"""A small synchronous client for the transcription service's HTTP API.

Everything in `mcp_tools` talks to the service through `TranscriptionClient`. It streams uploads
from disk (memory stays flat for any file size), retries what is safe to retry, and turns every
failure into a `TranscriptionError` whose message says what happened and what to do next.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import random
import re
import time
import unicodedata
import uuid
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote, urlsplit

import requests

from mcp_tools import __version__

# The service's rule for job ids (service/jobs/job.py): ids become file names on both sides.
JOB_ID_PATTERN: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
JOB_ID_MAX_LENGTH: Final = 128
HASH_CHARS: Final = 10
# What /download renders (service/jobs/formats.py); rttm needs a diarized job.
FORMATS: Final = ("txt", "srt", "vtt", "tsv", "json", "verbose_json", "rttm")
FINISHED: Final = frozenset({"completed", "failed", "cancelled"})
# The service's priority levels (service/jobs/job.py); any whole number in the range is allowed too.
PRIORITIES: Final = {"urgent": 10, "high": 5, "normal": 0, "low": -10}
MIN_PRIORITY: Final = -100
MAX_PRIORITY: Final = 100
TASKS: Final = ("transcribe", "translate")
# Every request says which client sent it; the service refuses one it no longer works with (426).
VERSION_HEADER: Final = "X-Client-Version"
DISTRIBUTION: Final = "whisper-transcription-client"
# The API token, when the service requires one (`--api-token` there).
TOKEN_ENV: Final = "TRANSCRIPTION_SERVICE_TOKEN"
CHUNK_BYTES: Final = 1024 * 1024
# The service caps one long-poll at 60 s; asking for more is pointless.
MAX_LONG_POLL_S: Final = 60.0
START_HINT: Final = (
    "start it with scripts/start_transcription_service.sh on the machine it runs on (or "
    "`docker compose up -d` in the service's checkout)"
)


# -- errors -------------------------------------------------------------------------------------


class TranscriptionError(Exception):
    """Base class: `str(exc)` is a complete, actionable message; `service_error` is the service's own text."""

    def __init__(self, message: str, *, status_code: int | None = None, service_error: str | None = None):
        super().__init__(message)
        self.message = message
        self.status_code = status_code
        self.service_error = service_error


class ServiceUnreachable(TranscriptionError):
    """No answer at all: nothing listening, name not resolving, or a timeout."""


class ServiceFailure(TranscriptionError):
    """The service answered with a 5xx (after retries)."""


class AudioFileError(TranscriptionError):
    """The local audio file is missing or unreadable; nothing was sent."""


class RejectedUpload(TranscriptionError):
    """The service refused the upload (400, 413 or 415): bad audio or bad fields."""


class JobConflict(TranscriptionError):
    """409: the job id exists with different audio."""


class JobNotFound(TranscriptionError):
    """404: the service has no job with that id."""


class TranscriptNotReady(TranscriptionError):
    """404 from /download: the job exists but is queued, processing or failed."""


class JobFailed(TranscriptionError):
    """The job ended in `failed`; `status` is the service's last status body."""

    def __init__(self, message: str, status: Mapping[str, Any]):
        super().__init__(message, service_error=status.get("error"))
        self.status = dict(status)


class Unauthorized(TranscriptionError):
    """The service wants an API token, or another one."""


class ServiceBusy(TranscriptionError):
    """The service's queue stayed full through every retry (HTTP 429)."""


class ClientOutdated(TranscriptionError):
    """426: the service no longer works with this client's version; the message says how to upgrade."""


class WaitTimeout(TranscriptionError):
    """The job did not finish in time; `status` is the last status seen. The job itself keeps running."""

    def __init__(self, message: str, status: Mapping[str, Any]):
        super().__init__(message)
        self.status = dict(status)


# -- job ids --------------------------------------------------------------------------------------


def file_sha256(path: Path, chunk_bytes: int = CHUNK_BYTES) -> str:
    """Hex sha256 of a file, read in chunks so a large file is never held in memory."""
    digest = hashlib.sha256()
    with open(path, "rb") as fp:
        while chunk := fp.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def sanitize_stem(stem: str, max_length: int) -> str:
    """Fold a file stem into the service's job-id alphabet: 'Réunion 3 (final)' -> 'Reunion-3-final'."""
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_stem)
    cleaned = re.sub(r"-{2,}", "-", cleaned)
    cleaned = cleaned.lstrip("._-")[:max_length].rstrip("._-")
    return cleaned or "audio"


def derive_job_id(path: str | Path, model: str | None = None, variant: Sequence[str] = ()) -> str:
    """`<stem>-<first 10 hex of sha256(file)>`, with `-<model>` and then the `variant` words before
    the hash when they are given.

    The same file always gets the same id, so submitting it again is a safe retry (the service
    answers 200 with the existing job) rather than a second job. Choosing another model or other
    options that change the transcript (`variant_of`) makes another id, since the service would
    otherwise refuse the upload as a conflict, or hand back the first job.
    """
    digest = file_sha256(Path(path))[:HASH_CHARS]
    suffix = f"-{digest}"
    words = [sanitize_stem(word, 40) for word in variant if word]
    if words:
        suffix = f"-{'-'.join(words)}{suffix}"
    if model:
        suffix = f"-{sanitize_stem(model, 40)}{suffix}"
    job_id = f"{sanitize_stem(Path(path).stem, JOB_ID_MAX_LENGTH - len(suffix))}{suffix}"
    assert JOB_ID_PATTERN.match(job_id), job_id
    return job_id


def variant_of(
    *,
    language: str | None = None,
    task: str | None = None,
    diarize: bool = False,
    num_speakers: int | None = None,
    min_speakers: int | None = None,
    max_speakers: int | None = None,
    word_timestamps: bool = False,
) -> list[str]:
    """Readable words for the options that change a transcript: `de`, `translate`, `diarize`,
    `n2` / `min2` / `max4` (speakers), `words`. Priority and callback_url change none, so a
    file sent again with another priority is still the same job."""
    words = []
    if language:
        words.append(language.strip().lower())
    if task and task != "transcribe":
        words.append(task)
    if diarize:
        words.append("diarize")
        for prefix, count in (("n", num_speakers), ("min", min_speakers), ("max", max_speakers)):
            if count is not None:
                words.append(f"{prefix}{count}")
    if word_timestamps:
        words.append("words")
    return words


def priority_name(value: int) -> str | None:
    """'urgent' for 10, None for a level that has no name."""
    return next((name for name, level in PRIORITIES.items() if level == value), None)


def check_priority(raw: str | int) -> str:
    """A priority as the service takes it (a level's name or a whole number in range); raises
    ValueError with a message to show when it is neither, before anything is uploaded."""
    value = str(raw).strip().lower()
    if value in PRIORITIES:
        return value
    try:
        number = int(value)
    except ValueError:
        raise ValueError(f"use {', '.join(PRIORITIES)} or a whole number, not {raw!r}") from None
    if not MIN_PRIORITY <= number <= MAX_PRIORITY:
        raise ValueError(f"a number must be between {MIN_PRIORITY} and {MAX_PRIORITY}, not {number}")
    return str(number)


# -- streamed multipart body ----------------------------------------------------------------------


def _header_safe(value: str) -> str:
    """A value for a quoted multipart header parameter: ASCII, no quotes, backslashes or line breaks."""
    return "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in value)


class MultipartFile:
    """A multipart/form-data body with the file read from disk chunk by chunk.

    requests' own `files=` builds the whole body in memory. This object has a length (so requests
    sends a Content-Length rather than chunked encoding) and yields the body in `CHUNK_BYTES`
    pieces. Text fields come first, so the service checks them before it stores a large file.
    Iterating again starts over, so a retry re-sends the whole body.
    """

    def __init__(self, path: Path, fields: Mapping[str, str], chunk_bytes: int = CHUNK_BYTES):
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.boundary = f"mcp-tools-{uuid.uuid4().hex}"
        self.file_size = path.stat().st_size
        parts = [
            f'--{self.boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
            for name, value in fields.items()
        ]
        mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        parts.append(
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{_header_safe(path.name)}"\r\n'
            f"Content-Type: {mime}\r\n\r\n"
        )
        self._head = "".join(parts).encode("utf-8")
        self._tail = f"\r\n--{self.boundary}--\r\n".encode("ascii")
        self._chunks: Generator[bytes, None, None] | None = None

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.file_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        self.close()
        self._chunks = self._generate()
        return self._chunks

    def _generate(self) -> Generator[bytes, None, None]:
        yield self._head
        with open(self.path, "rb") as fp:
            remaining = self.file_size
            while remaining > 0:
                chunk = fp.read(min(self.chunk_bytes, remaining))
                if not chunk:
                    raise AudioFileError(f"{self.path} shrank while it was being uploaded; try again.")
                remaining -= len(chunk)
                yield chunk
        yield self._tail

    def close(self) -> None:
        """Close the file if an upload stopped part-way (the generator's `with` closes it)."""
        if self._chunks is not None:
            self._chunks.close()
            self._chunks = None


# -- the client -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """The service's answer to an upload. `created` is False when the job already existed (a retry)."""

    job_id: str
    status: str
    created: bool


class TranscriptionClient:
    """The service's HTTP API: upload, status, wait, download, cancel, jobs, queue, models, health.

    Connection errors, timeouts and 5xx answers are retried with exponential backoff for calls
    that are safe to repeat: every GET, and an upload with a job id (the service answers a repeat
    with the existing job). Use it as a context manager, or call `close()`.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout: float = 30.0,
        connect_timeout: float = 5.0,
        upload_timeout: float = 300.0,
        retries: int = 3,
        backoff: float = 0.5,
        max_backoff: float = 8.0,
        session: requests.Session | None = None,
        api_token: str | None = None,
    ):
        base_url = base_url.strip().rstrip("/")
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise TranscriptionError(
                f"Invalid transcription service URL {base_url!r}: use the form http://host:8765."
            )
        self.base_url = base_url
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.upload_timeout = upload_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._owns_session = session is None
        self._session = session or requests.Session()
        token = api_token if api_token is not None else os.environ.get(TOKEN_ENV, "")
        self._headers = {
            VERSION_HEADER: __version__,
            "User-Agent": f"{DISTRIBUTION}/{__version__} {requests.utils.default_user_agent()}",
        }
        if token.strip():
            self._headers["Authorization"] = f"Bearer {token.strip()}"

    def __enter__(self) -> TranscriptionClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool (a session passed in stays the caller's to close)."""
        if self._owns_session:
            self._session.close()

    # -- public calls ---------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """`GET /health`: is the service up, is the model loaded, how long is the queue."""
        # 503 is an answer here: the service says it is loading, restarting or stopping.
        return self._json(self._request("GET", "/health", accept=(503,)), "/health")

    def upload(
        self,
        path: str | Path,
        *,
        job_id: str | None = None,
        model: str | None = None,
        language: str | None = None,
        task: str | None = None,
        callback_url: str | None = None,
        priority: str | int | None = None,
        diarize: bool = False,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        word_timestamps: bool = False,
    ) -> Submission:
        """Queue a file. Without `job_id` the id is derived from the file and the options that
        change its transcript (`derive_job_id`, `variant_of`), so this call is always safe to retry
        and a second call for the same file and options returns the same job.
        """
        audio = check_audio_file(Path(path))
        options: dict[str, Any] = {
            "language": language,
            "task": task,
            "diarize": diarize,
            "num_speakers": num_speakers,
            "min_speakers": min_speakers,
            "max_speakers": max_speakers,
            "word_timestamps": word_timestamps,
        }
        if job_id is None:
            job_id = derive_job_id(audio, model, variant_of(**options))
        fields = {"job_id": job_id}
        for name, value in (
            ("model", model),
            ("callback_url", callback_url),
            ("priority", None if priority is None else str(priority)),
            *options.items(),
        ):
            if value is True:
                fields[name] = "true"
            elif value is not None and value is not False and value != "":
                fields[name] = str(value)
        body = MultipartFile(audio, fields)
        response = self._request(
            "POST",
            "/transcribe",
            body=body,
            headers={"Content-Type": body.content_type},
            timeout=self.upload_timeout,
        )
        if response.status_code in (200, 202):
            data = self._json(response, "/transcribe")
            return Submission(
                job_id=str(data.get("job_id", job_id)),
                status=str(data.get("status", "queued")),
                created=response.status_code == 202,
            )
        error = _service_error(response)
        if response.status_code in (400, 413, 415):
            raise RejectedUpload(
                f"The transcription service rejected {audio.name}: {error}",
                status_code=response.status_code,
                service_error=error,
            )
        if response.status_code == 409:
            raise JobConflict(
                f"Job {job_id!r} already exists with different audio: {error}",
                status_code=409,
                service_error=error,
            )
        raise self._unexpected(response, "/transcribe", error)

    def status(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        """`GET /status/<id>`. With `wait`, the service holds the answer until the job finishes or
        `wait` seconds pass (servers without long-polling answer at once)."""
        params: dict[str, str] = {}
        timeout = self.timeout
        if wait is not None and wait > 0:
            wait = min(wait, MAX_LONG_POLL_S)
            params["wait"] = f"{wait:g}"
            timeout = self.timeout + wait
        path = f"/status/{quote(job_id, safe='')}"
        response = self._request("GET", path, params=params, timeout=timeout)
        if response.status_code == 404:
            error = _service_error(response)
            raise JobNotFound(
                f"The transcription service at {self.base_url} has no job {job_id!r}: {error} "
                "Check the id, or submit the audio again.",
                status_code=404,
                service_error=error,
            )
        if response.status_code != 200:
            raise self._unexpected(response, path, _service_error(response))
        return self._json(response, path)

    def wait(self, job_id: str, timeout: float = 600.0, poll_interval: float = 1.0) -> dict[str, Any]:
        """Block until the job is completed or failed and return its status body.

        Long-polls with `?wait=`, so it returns as soon as the job finishes. Against a server that
        answers at once instead, it sleeps `poll_interval` between polls. Raises `WaitTimeout`
        (the job keeps running) after `timeout` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            asked = max(0.0, min(remaining, MAX_LONG_POLL_S))
            started = time.monotonic()
            body = self.status(job_id, wait=asked if asked >= 0.5 else None)
            if body.get("status") in FINISHED:
                return body
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise WaitTimeout(
                    f"Job {job_id!r} is still {body.get('status')} after {timeout:g} s "
                    f"({body.get('message', '')}); it keeps running, so wait again or poll later.",
                    body,
                )
            if time.monotonic() - started < asked * 0.9:
                time.sleep(min(poll_interval, remaining))  # the server did not long-poll

    def cancel(self, job_id: str) -> dict[str, Any]:
        """`DELETE /jobs/<id>`: a queued job ends at once, a running one within seconds."""
        path = f"/jobs/{quote(job_id, safe='')}"
        response = self._request("DELETE", path)
        if response.status_code == 200:
            return self._json(response, path)
        error = _service_error(response)
        if response.status_code == 404:
            raise JobNotFound(f"No job {job_id!r} to cancel: {error}", status_code=404, service_error=error)
        if response.status_code == 409:
            raise JobConflict(
                f"Job {job_id!r} cannot be cancelled: {error}", status_code=409, service_error=error
            )
        raise self._unexpected(response, path, error)

    def jobs(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """`GET /jobs`: newest first; `status` is one or more states, comma-separated."""
        params = {
            name: str(value)
            for name, value in (("status", status), ("limit", limit), ("cursor", cursor))
            if value is not None
        }
        return self._get_json("/jobs", params)

    def queue(self) -> dict[str, Any]:
        """`GET /queue`: running jobs, queued ones in run order, and wait estimates."""
        return self._get_json("/queue")

    def models(self) -> dict[str, Any]:
        """`GET /models`: the model names the service knows, which load offline, which are loaded."""
        return self._get_json("/models")

    def download(self, job_id: str, fmt: str = "txt", partial: bool = False) -> str:
        """`GET /download/<id>?format=`: the transcript as text in one of `FORMATS`.

        `partial`: an unfinished job's transcript so far (what its finished chunks hold)."""
        if fmt not in FORMATS:
            raise ValueError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
        path = f"/download/{quote(job_id, safe='')}"
        params = {"format": fmt, **({"partial": "true"} if partial else {})}
        response = self._request("GET", path, params=params)
        if response.status_code == 200:
            return response.content.decode("utf-8")
        error = _service_error(response)
        if response.status_code == 404:
            if error.startswith("No job with id"):
                raise JobNotFound(
                    f"The transcription service at {self.base_url} has no job {job_id!r}: {error}",
                    status_code=404,
                    service_error=error,
                )
            raise TranscriptNotReady(
                f"Job {job_id!r} has no transcript to download: {error}", status_code=404, service_error=error
            )
        raise self._unexpected(response, path, error)

    def transcribe(
        self, path: str | Path, fmt: str = "txt", timeout: float = 3600.0, model: str | None = None
    ) -> str:
        """Upload, wait and download in one call; raises `JobFailed` if the job fails."""
        submission = self.upload(path, model=model)
        status = self.wait(submission.job_id, timeout=timeout)
        if status["status"] == "failed":
            raise JobFailed(f"Job {submission.job_id!r} failed: {status.get('error')}", status)
        if status["status"] == "cancelled":
            raise JobFailed(f"Job {submission.job_id!r} was cancelled.", status)
        return self.download(submission.job_id, fmt)

    # -- plumbing -------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, str] | None = None,
        body: MultipartFile | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        accept: tuple[int, ...] = (),
    ) -> requests.Response:
        """One call with retries. Only idempotent calls reach here: GETs, and uploads with a job id.

        `accept` lists 5xx codes that are answers rather than failures.
        """
        url = self.base_url + path
        read_timeout = timeout if timeout is not None else self.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    data=body,
                    headers={**self._headers, **(headers or {})},
                    timeout=(self.connect_timeout, read_timeout),
                )
            except (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
            ) as exc:
                if attempt <= self.retries:
                    self._sleep_before_retry(attempt, None)
                    continue
                raise self._unreachable(exc, attempt) from exc
            except requests.RequestException as exc:  # a malformed URL or the like: retrying cannot help
                raise TranscriptionError(f"Request to {url} failed: {exc}") from exc
            finally:
                if body is not None:
                    body.close()
            if response.status_code in accept:
                return response
            busy = response.status_code == 429  # backpressure: a full queue
            if (response.status_code >= 500 or busy) and attempt <= self.retries:
                retry_after = response.headers.get("Retry-After")
                response.close()
                self._sleep_before_retry(attempt, retry_after)
                continue
            if busy:
                error = _service_error(response)
                raise ServiceBusy(
                    f"The transcription service at {self.base_url} is at its queue limit "
                    f"({attempt} attempts): {error} Send the file again later.",
                    status_code=429,
                    service_error=error,
                )
            if response.status_code == 426:
                error = _service_error(response)
                where = "" if "/client/" in error else f" The wheel to install is at {self.base_url}/client/."
                raise ClientOutdated(
                    f"Upgrade the client: the transcription service at {self.base_url} refused "
                    f"{DISTRIBUTION} {__version__}: {error}{where}",
                    status_code=426,
                    service_error=error,
                )
            if response.status_code == 401:
                error = _service_error(response)
                raise Unauthorized(
                    f"The transcription service at {self.base_url} needs an API token: {error} "
                    f"Set {TOKEN_ENV} to the token the service was started with (--api-token).",
                    status_code=401,
                    service_error=error,
                )
            if response.status_code >= 500:
                error = _service_error(response)
                response.close()
                raise ServiceFailure(
                    f"The transcription service at {self.base_url} failed with HTTP {response.status_code} "
                    f"on {method} {path} ({attempt} attempts): {error} "
                    f"Check {self.base_url}/health and the service's log.",
                    status_code=response.status_code,
                    service_error=error,
                )
            return response

    def _sleep_before_retry(self, attempt: int, retry_after: str | None) -> None:
        delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1))
        delay += random.uniform(0, delay / 10)  # spread out clients that failed together
        if retry_after is not None and retry_after.strip().isdigit():
            delay = min(self.max_backoff, max(delay, float(retry_after)))
        time.sleep(delay)

    def _unreachable(self, exc: requests.RequestException, attempts: int) -> ServiceUnreachable:
        if isinstance(exc, requests.Timeout) and not isinstance(exc, requests.ConnectTimeout):
            return ServiceUnreachable(
                f"The transcription service at {self.base_url} did not answer in time ({attempts} attempts). "
                f"It may be overloaded; check {self.base_url}/health, or {START_HINT} if it is not running."
            )
        hint = ""
        if "host.docker.internal" in self.base_url:
            hint = (
                " Inside a Linux container, host.docker.internal needs "
                "`--add-host=host.docker.internal:host-gateway` (extra_hosts in compose); "
                "or set TRANSCRIPTION_SERVICE_URL to an address that reaches the service."
            )
        return ServiceUnreachable(
            f"Transcription service not reachable at {self.base_url} ({_reason(exc)}, {attempts} attempts): "
            f"{START_HINT}, then check that `curl {self.base_url}/health` answers.{hint}"
        )

    def _get_json(self, path: str, params: Mapping[str, str] | None = None) -> dict[str, Any]:
        """A GET whose only good answer is 200 with a JSON object; a 400 names the bad parameter."""
        response = self._request("GET", path, params=params)
        if response.status_code == 200:
            return self._json(response, path)
        error = _service_error(response)
        if response.status_code == 400:
            raise TranscriptionError(
                f"The transcription service refused {path}: {error}", status_code=400, service_error=error
            )
        raise self._unexpected(response, path, error)

    def _unexpected(self, response: requests.Response, path: str, error: str) -> TranscriptionError:
        return TranscriptionError(
            f"Unexpected HTTP {response.status_code} from {self.base_url}{path}: {error}",
            status_code=response.status_code,
            service_error=error,
        )

    def _json(self, response: requests.Response, path: str) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TranscriptionError(
                f"{self.base_url}{path} did not answer with a JSON object (HTTP {response.status_code}); "
                "is that URL the transcription service?"
            )
        return data


# -- helpers --------------------------------------------------------------------------------------


def check_audio_file(path: Path) -> Path:
    """Fail before any network call when the file is missing or unreadable."""
    path = path.expanduser()
    if not path.exists():
        raise AudioFileError(f"Audio file not found: {path.absolute()}. Give the path of an existing file.")
    if not path.is_file():
        raise AudioFileError(f"{path.absolute()} is not a regular file; give the path of an audio file.")
    try:
        with open(path, "rb"):
            pass
    except OSError as exc:
        raise AudioFileError(f"Cannot read {path.absolute()}: {exc.strerror or exc}.") from exc
    return path


def _service_error(response: requests.Response) -> str:
    """The service's JSON `error` text, or the start of whatever else came back."""
    try:
        data = response.json()
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("error"), str):
        return str(data["error"])
    text = response.text.strip()
    return text[:300] if text else f"HTTP {response.status_code} {response.reason}"


def _reason(exc: BaseException) -> str:
    """'Connection refused' rather than urllib3's three nested reprs."""
    text = str(exc)
    found = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    if found:
        return found.group(1).strip()
    if "NameResolution" in text or "getaddrinfo" in text:
        return "host name does not resolve"
    return type(exc).__name__
