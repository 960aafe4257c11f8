"""Domain errors. Each carries the HTTP status it becomes; the app turns them into JSON once."""

from __future__ import annotations


class ServiceError(Exception):
    """An error whose message a client can act on."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ServiceError):
    status = 400


class InvalidAudio(BadRequest):
    """The file is audio, but there is nothing in it to transcribe."""


class UnsupportedAudio(ServiceError):
    """The bytes are not audio that can be decoded."""

    status = 415


class UploadTooLarge(ServiceError):
    status = 413


class JobNotFound(ServiceError):
    status = 404


class TranscriptNotReady(ServiceError):
    status = 404


class JobConflict(ServiceError):
    status = 409


class ModelUnavailable(ServiceError):
    """A model name that cannot be resolved or loaded on this machine."""

    status = 400


class ModelBusy(ServiceError):
    """The model cannot be unloaded now: it is the default, or a job is using it."""

    status = 409


class ServiceUnavailable(ServiceError):
    """The service cannot take this request now (shutting down); retrying later will work."""

    status = 503
