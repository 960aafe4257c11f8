"""Logging set-up: readable text or one JSON object per line, to stderr or a rotating file.

Every line about a job carries its id: call sites pass `extra={"job_id": ...}`, and code that
works on one job for a while (the worker's run of a job, a webhook delivery, the inference
process's decode) sets `job_context(job_id)`, which a filter copies onto every record logged
meanwhile, from any module.

The inference process does not write the log itself: `forward_to_parent` sends its records up
the pipe it already shares with the server, which hands them to its own handlers. So one
process owns the log file (two processes rotating one file lose lines), and both processes'
lines come out in the same format, JSON ones with `"source": "inference"`.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import json
import logging
import logging.handlers
import sys
import traceback
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from service.settings import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s%(source_tag)s: %(message)s"
INFERENCE = "inference"  # the `source` of records from the inference process

# The job the current task or thread works on; None outside one.
current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_job", default=None)

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime", "taskName"}
_OWN_ATTRS = frozenset({"job_id", "source", "source_tag"})
# The root handlers configure_logging installed, replaced by the next call.
_installed: list[logging.Handler] = []


@contextlib.contextmanager
def job_context(job_id: str) -> Iterator[None]:
    """Tag every record logged in this task or thread, until the block ends, with `job_id`."""
    token = current_job.set(job_id)
    try:
        yield
    finally:
        current_job.reset(token)


class JobContextFilter(logging.Filter):
    """Copies the current job id onto records that do not name one themselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "job_id", None) is None:
            job_id = current_job.get()
            if job_id is not None:
                record.job_id = job_id
        return True


class TextFormatter(logging.Formatter):
    """Today's lines: `<time> <LEVEL> <logger>: <message>`, with `[inference]` after the logger
    for the inference process, and `[job <id>]` appended when the message does not name it."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        source = getattr(record, "source", None)
        record.source_tag = f"[{source}]" if source else ""
        line = super().format(record)
        job_id = getattr(record, "job_id", None)
        if job_id and job_id not in record.getMessage():
            head, newline, rest = line.partition("\n")  # before a traceback, if any
            line = f"{head} [job {job_id}]{newline}{rest}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (ISO 8601, UTC), level, logger, message, job_id, the
    record's `extra` fields, and exc (the traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")[:-6] + "Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job_id = getattr(record, "job_id", None)
        if job_id is not None:
            entry["job_id"] = job_id
        source = getattr(record, "source", None)
        if source:
            entry["source"] = source
        entry["pid"] = record.process
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in _OWN_ATTRS and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # formatted already (a record from the inference process)
            entry["exc"] = record.exc_text
        if record.stack_info:
            entry["stack"] = record.stack_info
        return json.dumps(entry, ensure_ascii=False, default=str)


def make_formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    return TextFormatter()


def _service_handler(handler: logging.Handler, settings: Settings) -> logging.Handler:
    handler.setFormatter(make_formatter(settings.log_format))
    handler.addFilter(JobContextFilter())
    return handler


def _install(handler: logging.Handler, level: str) -> None:
    """Replace the handlers an earlier call installed; leave others (pytest's) alone."""
    root = logging.getLogger()
    while _installed:
        old = _installed.pop()
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(level)


def configure_logging(settings: Settings) -> logging.Handler:
    """The server's logging: a rotating file with --log-file (and then nothing on stderr), else
    stderr; text or JSON. Returns the handler it installed."""
    handler: logging.Handler
    if settings.log_file is not None:
        settings.log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.handlers.RotatingFileHandler(
            settings.log_file,
            maxBytes=int(settings.log_max_mb * 1024 * 1024),
            backupCount=settings.log_backups,
            encoding="utf-8",
        )
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler = _service_handler(handler, settings)
    _install(handler, settings.log_level)
    return handler


class ParentHandler(logging.Handler):
    """In the inference process: sends each record to the server, which writes it.

    The record is flattened first (message formatted, traceback as text) so it pickles. When the
    pipe is gone, the line goes to stderr instead of being lost.
    """

    def __init__(self, send: Callable[[logging.LogRecord], None], fallback: logging.Handler) -> None:
        super().__init__()
        self._send = send
        self._fallback = fallback

    def emit(self, record: logging.LogRecord) -> None:
        flat = copy.copy(record)
        flat.msg = record.getMessage()
        flat.args = None
        if record.exc_info:
            flat.exc_text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
        flat.exc_info = None
        flat.source = INFERENCE
        try:
            self._send(flat)
        except Exception:  # the pipe is closed, or an `extra` value does not pickle
            self._fallback.handle(flat)


def forward_to_parent(settings: Settings, send: Callable[[logging.LogRecord], None]) -> None:
    """The inference process's logging: every record goes up the pipe to the server."""
    fallback = _service_handler(logging.StreamHandler(sys.stderr), settings)
    handler = ParentHandler(send, fallback)
    handler.addFilter(JobContextFilter())
    _install(handler, settings.log_level)


def handle_forwarded(record: logging.LogRecord) -> None:
    """In the server: a record from the inference process goes to the server's handlers."""
    logger = logging.getLogger(record.name)
    if logger.isEnabledFor(record.levelno):
        logger.handle(record)
