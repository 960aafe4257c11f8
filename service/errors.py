"""Domain errors. Each carries the HTTP status it becomes; the app turns them into JSON once."""

from __future__ import annotations

import errno


class ServiceError(Exception):
    """An error whose message a client can act on."""

    status = 500

    def __init__(self, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(ServiceError):
    status = 400


class InvalidAudio(BadRequest):
    """The file is audio, but there is nothing in it to transcribe."""


class UnsupportedAudio(ServiceError):
    """The bytes are not audio that can be decoded."""

    status = 415


class UploadTooLarge(ServiceError):
    status = 413


class UploadStalled(ServiceError):
    """The client stopped sending the body for --upload-timeout; what it sent was dropped."""

    status = 408


class UnsupportedEncoding(ServiceError):
    """A compressed request body: it could inflate far past the size checked before reading."""

    status = 415


class MisdirectedRequest(ServiceError):
    """The Host header names a server this is not (a DNS-rebinding page, a wrong proxy rule)."""

    status = 421


class CrossSiteRequest(ServiceError):
    """A state-changing request sent by a page of another origin."""

    status = 403


class AudioTooLong(UploadTooLarge):
    """The recording runs past --max-audio-seconds: at upload (its header), or while decoding."""


class Unauthorized(ServiceError):
    """No or the wrong API token."""

    status = 401


class QueueFull(ServiceError):
    """Backpressure: the queue is at its limit; the client should come back after Retry-After."""

    status = 429


class InsufficientStorage(ServiceError):
    """The storage is below --min-free-mb: an upload could fill the disk the journal needs."""

    status = 507


class StorageFull(InsufficientStorage):
    """A write failed for want of space (ENOSPC, a full SQLite database); nothing was kept.

    It clears by itself once space is freed: uploads get 507, the worker waits and retries."""


class JobNotFound(ServiceError):
    status = 404


class TranscriptNotReady(ServiceError):
    status = 404


class JobConflict(ServiceError):
    status = 409


class JobFinished(JobConflict):
    """Cancelling a job that already ended."""


class ModelUnavailable(ServiceError):
    """A model name that cannot be resolved or loaded on this machine."""

    status = 400


class ModelBusy(ServiceError):
    """The model cannot be unloaded now: it is the default, or a job is using it."""

    status = 409


class ServiceUnavailable(ServiceError):
    """The service cannot take this request now (shutting down); retrying later will work."""

    status = 503


class TooManyUploads(ServiceUnavailable):
    """--max-uploads bodies are being received already; refused before this one is read."""


class StoreUnavailable(ServiceUnavailable):
    """The job store cannot be reached or refuses writes for now (Redis down or out of memory,
    SQLite locked or failing I/O); nothing was changed."""


# Faults of the storage itself, not of a request or a job: the worker waits them out and
# retries, /health turns 503 while one lasts, and no job is failed because of one.
STORAGE_FAULTS: tuple[type[ServiceError], ...] = (StoreUnavailable, StorageFull)

# OSError numbers meaning "the disk cannot take this write now", as opposed to a bad path.
_NO_ROOM_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def storage_fault(exc: OSError, what: str) -> ServiceError | None:
    """The domain error for an OSError from writing `what`, if it is the storage's fault."""
    if exc.errno in _NO_ROOM_ERRNOS:
        return StorageFull(
            f"The storage is full: {what} could not be written, and nothing was kept. "
            "Free some space (or raise the volume's size); retry once there is room."
        )
    if exc.errno in (errno.EROFS, errno.EIO):
        return StoreUnavailable(f"The storage refused to write {what} ({exc.strerror}); nothing was kept.")
    return None
