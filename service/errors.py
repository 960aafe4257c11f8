"""Domain errors. Each carries the HTTP status it becomes; the app turns them into JSON once."""

from __future__ import annotations


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


class Unauthorized(ServiceError):
    """No or the wrong API token."""

    status = 401


class QueueFull(ServiceError):
    """Backpressure: the queue is at its limit; the client should come back after Retry-After."""

    status = 429


class InsufficientStorage(ServiceError):
    """The storage is below --min-free-mb: an upload could fill the disk the journal needs."""

    status = 507


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


class StoreUnavailable(ServiceUnavailable):
    """The shared job store (Redis) cannot be reached; nothing was changed."""
