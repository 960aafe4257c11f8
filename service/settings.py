"""Service settings: every option declared once, as one field of a frozen pydantic dataclass.

A field reads `name: Annotated[type, Field(bounds), OneOf(choices), Flag(help)] = default`. From
that single declaration:

- `Settings(...)` converts and checks the value (types, bounds, choices) and raises a
  `ValueError` (pydantic's `ValidationError`) when it is wrong. It never reads the environment,
  so tests and code that build it directly get the same result wherever they run.
- `parse_settings(argv, env)` builds the command line: the flag is `--` and the field's name
  with dashes (or `Flag.name`, for the two options counted in other units: MiB, days), its
  environment variable is `SERVICE_` and the flag's name in capitals, and `--help` shows the
  help, the variable and the default. A flag beats its variable, which beats the default; an
  empty variable counts as unset. Any bad value exits with one line naming the flag or the
  variable and what it accepts.

Why a pydantic dataclass and not pydantic-settings' `BaseSettings`: callers and tests copy
settings with `dataclasses.replace` (which re-validates here) and read defaults off the class
(`Settings.engine`); `BaseSettings` reads `os.environ` itself when built directly, where tests
must not depend on the environment; and its command line would change this service's flags,
help and error messages.
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass as plain_dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import (
    BeforeValidator,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    ValidationError,
    model_validator,
)
from pydantic.dataclasses import dataclass, is_pydantic_dataclass
from pydantic_core import ErrorDetails, core_schema

ENGINES = ("openai-whisper", "faster-whisper")
ISOLATION = ("process", "thread")
COMPUTE_TYPES = ("auto", "int8", "int8_float16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
LOG_FORMATS = ("text", "json")
BACKENDS = ("sqlite", "redis")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
ENV_PREFIX = "SERVICE_"
MIB = 1024**2
DAY = 86400.0


@plain_dataclass(frozen=True)
class Flag:
    """How one setting is given from outside, and its line in `--help`."""

    help: str
    # The flag without "--", when it is not the field's name: it counts in other units.
    name: str = ""
    # One flag unit in the setting's units (MiB -> bytes, days -> seconds).
    unit: int | float = 1
    # What --help calls the default when the value alone would not say (None, a derived path).
    default_text: str = ""
    # Its value (a token, a key) is never echoed in --help, even when set in the environment.
    secret: bool = False


@plain_dataclass(frozen=True)
class OneOf:
    """A string setting that takes one of a few words; the command line offers them as choices."""

    choices: tuple[str, ...]

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: str) -> str:
        if value not in self.choices:
            raise ValueError(f"must be one of {', '.join(self.choices)}")
        return value


@plain_dataclass(frozen=True)
class Check:
    """A rule on a string setting that bounds cannot say, with the words that explain it."""

    holds: Callable[[str], bool]
    requirement: str

    def __get_pydantic_core_schema__(
        self, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_after_validator_function(self._check, handler(source))

    def _check(self, value: str) -> str:
        if not self.holds(value):
            raise ValueError(self.requirement)
        return value


def _none_if_empty(value: object) -> object:
    return value or None


def _upper(value: object) -> object:
    return value.upper() if isinstance(value, str) else value


def _host_list(value: object) -> object:
    """Comma-separated text (a flag, a variable) or a sequence; trimmed, lowercased, no blanks."""
    items = value.split(",") if isinstance(value, str) else value
    if isinstance(items, list | tuple):
        return tuple(str(h).strip().lower() for h in items if str(h).strip())
    return value


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Tests build it directly."""

    host: Annotated[str, Flag("address to listen on")] = "127.0.0.1"
    port: Annotated[int, Flag("port to listen on")] = 8765
    storage_dir: Annotated[Path, Flag("jobs, audio, transcripts and models live here")] = Path(
        "service-storage"
    )
    model_dir: Annotated[
        Path | None, Flag("model checkpoints are cached here", default_text="<storage-dir>/models")
    ] = None
    model: Annotated[
        str, Flag("default model: a Whisper name or a path to a .pt checkpoint; tiny.en is bundled, offline")
    ] = "tiny.en"
    engine: Annotated[str, OneOf(ENGINES), Flag("inference engine")] = "openai-whisper"
    device: Annotated[str, OneOf(DEVICES), Flag("where the model runs; auto picks CUDA when present")] = (
        "auto"
    )
    compute_type: Annotated[
        str,
        OneOf(COMPUTE_TYPES),
        Flag("faster-whisper precision; auto is int8 on CPU, float16 on CUDA"),
    ] = "auto"
    threads: Annotated[
        int,
        Field(ge=0),
        Flag(
            "inference threads in total; 0 uses the cores this process may run on "
            "(CPU affinity and cgroup quota)"
        ),
    ] = 0
    workers: Annotated[
        int, Field(ge=1), Flag("jobs decoded at once, sharing the threads (faster-whisper only)")
    ] = 1
    # 2 GiB covers a few hours of WAV at 16 kHz 16-bit stereo.
    max_upload_bytes: Annotated[
        int, Field(gt=0), Flag("largest accepted upload in MiB", name="max-upload-mb", unit=MIB)
    ] = 2048 * MIB
    # Like the whisper CLI: a few points of word error rate for ~2x decode time.
    beam_size: Annotated[int, Field(ge=1), Flag("beam width for decoding; 1 is greedy")] = 5
    # So one poison file cannot be retried forever.
    max_attempts: Annotated[
        int, Field(ge=1), Flag("runs of one job interrupted by crashes before it is failed")
    ] = 3
    # A crash in the child process leaves the API up.
    isolation: Annotated[
        str,
        OneOf(ISOLATION),
        Flag("run inference in a supervised child process, or a thread of the server"),
    ] = "process"
    max_models: Annotated[int, Field(ge=1), Flag("models in memory at once, the default included")] = 2
    model_memory_mb: Annotated[
        int, Field(ge=0), Flag("memory budget for loaded models; 0 means only free memory limits it")
    ] = 0
    model_idle_seconds: Annotated[float, Flag("unload a non-default model unused this long; -1 never")] = (
        300.0
    )
    vad: Annotated[
        bool,
        Flag(
            "find speech before decoding: silence, noise and music are skipped, never transcribed "
            "(off: everything is decoded, in 30 s chunks cut at the quietest moments)"
        ),
    ] = True
    model_fallback: Annotated[
        bool, Flag("run a job on the default model when its own cannot be loaded, and say so")
    ] = False
    # 0: see worker.job_timeout.
    job_timeout: Annotated[
        float,
        Field(ge=0),
        Flag("seconds a job may run before it is stopped and failed; 0 scales with the audio's length"),
    ] = 0.0
    shutdown_grace: Annotated[
        float,
        Field(ge=0),
        Flag("on SIGTERM, seconds a running job may take to finish before it is requeued"),
    ] = 5.0
    log_level: Annotated[
        str,
        BeforeValidator(_upper),
        Check(lambda v: v in logging.getLevelNamesMapping(), f"must be one of {', '.join(LOG_LEVELS)}"),
        Flag(f"logging level: {', '.join(LOG_LEVELS)}"),
    ] = "INFO"
    log_format: Annotated[
        str, OneOf(LOG_FORMATS), Flag("log lines as readable text or one JSON object each")
    ] = "text"
    log_file: Annotated[
        Path | None,
        Flag("write the log to this file, rotated by size, instead of stderr", default_text="stderr"),
    ] = None
    log_max_mb: Annotated[
        float, Field(ge=0), Flag("rotate the log file when it reaches this many MiB; 0 never")
    ] = 50.0
    log_backups: Annotated[int, Field(ge=1), Flag("rotated log files kept (service.log.1 ...)")] = 5
    # "" means none, as an empty variable does.
    api_token: Annotated[
        str | None,
        BeforeValidator(_none_if_empty),
        Flag(
            "require `Authorization: Bearer <token>` on every endpoint but /health and /openapi.json",
            secret=True,
        ),
    ] = None
    max_queue: Annotated[
        int, Field(ge=0), Flag("queued jobs past which uploads get 429 and Retry-After; 0 no limit")
    ] = 1000
    # Low-priority work is never starved, and urgent work still overtakes any backlog.
    priority_aging_seconds: Annotated[
        float,
        Field(gt=0),
        Flag("a queued job gains one priority level per this many seconds waited, up to just below urgent"),
    ] = 60.0
    retention_seconds: Annotated[
        float,
        Field(ge=0),
        Flag(
            "remove finished jobs, their audio and transcripts this many days after they end; 0 keeps them",
            name="retention-days",
            unit=DAY,
        ),
    ] = 7 * DAY
    delete_audio_on_complete: Annotated[
        bool, Flag("remove a job's audio as soon as it completes; the transcript stays")
    ] = False
    transcript_cache: Annotated[
        bool, Flag("reuse the transcript of identical audio with identical model and options")
    ] = True
    webhook_secret: Annotated[
        str | None,
        BeforeValidator(_none_if_empty),
        Flag("sign webhook bodies with HMAC-SHA256 under this key; unsigned when unset", secret=True),
    ] = None
    webhook_allowed_hosts: Annotated[
        tuple[str, ...],
        BeforeValidator(_host_list),
        Flag("comma-separated hosts callback_url may name; empty allows any", default_text="any"),
    ] = ()
    webhook_retry_seconds: Annotated[
        float, Field(ge=0), Flag("keep retrying a failed webhook delivery this long")
    ] = 3600.0
    webhook_timeout: Annotated[float, Field(gt=0), Flag("seconds one webhook request may take")] = 10.0
    backend: Annotated[
        str,
        OneOf(BACKENDS),
        Flag(
            "where jobs and the queue live: sqlite (this instance only) or redis (shared by many instances)"
        ),
    ] = "sqlite"
    redis_url: Annotated[
        str,
        Check(lambda v: v.startswith(REDIS_SCHEMES), "must start with redis://, rediss:// or unix://"),
        Flag("Redis for --backend redis"),
    ] = "redis://127.0.0.1:6379/0"
    redis_prefix: Annotated[
        str,
        Check(lambda v: bool(v) and not any(c.isspace() for c in v), "must be a non-empty word"),
        Flag("key prefix in Redis; instances with the same prefix share one queue"),
    ] = "whisper"
    # Renewed every third of it.
    lease_seconds: Annotated[
        float,
        Field(ge=1),
        Flag(
            "with redis: a running job is taken over by another instance this long after its "
            "instance stops renewing it"
        ),
    ] = 30.0

    # Often enough to notice a hung inference process within a minute or two; cheap either way.
    self_check_seconds: Annotated[
        float,
        Field(gt=0),
        Flag(
            "check inference (a ping), progress of the running job, storage and memory this often; "
            "more often when systemd's watchdog asks"
        ),
    ] = 60.0
    # Room for a few long uploads and their transcripts; below it the disk is nearly full.
    min_free_bytes: Annotated[
        int,
        Field(ge=0),
        Flag(
            "uploads get 507 while the storage has less free space than this many MiB; 0 never",
            name="min-free-mb",
            unit=MIB,
        ),
    ] = 500 * MIB

    # Well past a day-long conference recording; a forged header claiming more is refused.
    max_audio_seconds: Annotated[
        float,
        Field(ge=0),
        Flag(
            "longest recording accepted, in seconds of audio: checked at upload (413) and again "
            "while decoding; 0 no limit"
        ),
    ] = 12 * 3600.0
    max_uploads: Annotated[
        int,
        Field(ge=0),
        Flag("uploads received at once; more get 503 with Retry-After; 0 no limit"),
    ] = 32
    # Slow links still send something every few seconds; a stalled client does not.
    upload_timeout: Annotated[
        float,
        Field(gt=0),
        Flag("seconds an upload may go without sending a byte before it is dropped (408)"),
    ] = 60.0
    webhook_allow_private: Annotated[
        bool,
        Flag(
            "let callback_url reach loopback, private, link-local and reserved addresses "
            "(refused by default, checked on the address connected to)"
        ),
    ] = False
    allowed_hosts: Annotated[
        tuple[str, ...],
        BeforeValidator(_host_list),
        Flag(
            "comma-separated names the Host header may carry besides IP addresses, single-label "
            "names, *.localhost, *.internal and this machine's name; * allows any",
            default_text="IPs and local names",
        ),
    ] = ()
    allowed_origins: Annotated[
        tuple[str, ...],
        BeforeValidator(_host_list),
        Flag(
            "comma-separated origins (https://app.example) whose pages may send state-changing "
            "requests; other cross-site ones get 403; * allows any",
            default_text="same origin",
        ),
    ] = ()
    # 0: faster-whisper picks by device (see engines/faster_whisper.py); openai-whisper always 1.
    batch_size: Annotated[
        int,
        Field(ge=0),
        Flag(
            "speech chunks of a job decoded together (faster-whisper); 1 decodes them one by one, "
            "0 chooses by device"
        ),
    ] = 0

    @model_validator(mode="after")
    def _fits_together(self) -> Settings:
        if self.workers > 1 and self.engine != "faster-whisper":
            raise ValueError(
                "workers > 1 needs --engine faster-whisper: openai-whisper decodes one file at a time"
            )
        return self


@plain_dataclass(frozen=True)
class Option:
    """One declared setting as the command line and the environment see it."""

    field: str
    annotation: Any
    default: Any
    flag_spec: Flag
    choices: tuple[str, ...]

    @property
    def flag(self) -> str:
        return "--" + (self.flag_spec.name or self.field.replace("_", "-"))

    @property
    def env(self) -> str:
        return ENV_PREFIX + self.flag[2:].upper().replace("-", "_")

    @property
    def is_switch(self) -> bool:
        return self.annotation is bool

    def shown_default(self, from_env: str | None) -> str:
        """The default --help names: the environment's value, else the built-in one."""
        spec = self.flag_spec
        if spec.secret:
            return ""
        if from_env is not None:
            return from_env
        if self.is_switch:
            return "on" if self.default else "off"
        if spec.default_text or self.default is None or self.default == ():
            return spec.default_text
        if spec.unit != 1:
            unit = spec.unit
            return str(self.default // unit if isinstance(unit, int) else self.default / unit)
        return str(self.default)

    def from_text(self, text: str) -> Any:
        """A flag's or variable's text as the setting's value (pydantic converts the rest)."""
        if self.flag_spec.unit != 1:
            return TypeAdapter(self.annotation).validate_python(text) * self.flag_spec.unit
        if self.is_switch:
            return text.strip()
        return text


def _options(cls: type[object]) -> tuple[Option, ...]:
    """The declarations, read back from pydantic's record of the fields."""
    if not is_pydantic_dataclass(cls):
        raise TypeError(f"{cls.__name__} is not a pydantic dataclass")
    found = []
    for name, info in cls.__pydantic_fields__.items():
        specs = [m for m in info.metadata if isinstance(m, Flag)]
        choices = [m.choices for m in info.metadata if isinstance(m, OneOf)]
        if len(specs) != 1:
            raise TypeError(f"Settings.{name} needs exactly one Flag(...) in its declaration")
        found.append(Option(name, info.annotation, info.default, specs[0], choices[0] if choices else ()))
    return tuple(found)


OPTIONS = _options(Settings)
OPTIONS_BY_FIELD = {option.field: option for option in OPTIONS}


def build_parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    """The server's command line, one flag per declared option; defaults shown from `env`."""
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Persistent Whisper transcription service: upload audio, poll, download. "
        "Each flag's environment variable is in brackets; a flag beats its variable.",
        argument_default=argparse.SUPPRESS,  # only flags actually given land in the namespace
    )
    for option in OPTIONS:
        shown = option.shown_default(env.get(option.env) or None)
        help_ = f"{option.flag_spec.help} [{option.env}]" + (f" (default {shown})" if shown else "")
        help_ = help_.replace("%", "%%")
        if option.is_switch:
            parser.add_argument(
                option.flag, dest=option.field, action=argparse.BooleanOptionalAction, help=help_
            )
        elif option.choices:
            parser.add_argument(option.flag, dest=option.field, choices=option.choices, help=help_)
        else:
            metavar = option.flag[2:].upper().replace("-", "_")
            parser.add_argument(option.flag, dest=option.field, metavar=metavar, help=help_)
    return parser


_REQUIREMENTS = {
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "int_type": "must be an integer",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "bool_parsing": "must be true or false (1/0, yes/no, on/off)",
    "bool_type": "must be true or false (1/0, yes/no, on/off)",
}


def _requirement(error: ErrorDetails, unit: int | float = 1) -> str:
    """What the value must be, in words, with bounds counted in the flag's units."""
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "greater_than_equal":
        bound = ctx["ge"] / unit
        return "must be 0 or more" if bound == 0 else f"must be at least {bound:g}"
    if kind == "greater_than":
        return f"must be more than {ctx['gt'] / unit:g}"
    if kind == "value_error":
        return str(ctx["error"])
    return _REQUIREMENTS.get(kind, error["msg"])


def _explain(errors: list[ErrorDetails], given: Mapping[str, tuple[str, str]], field: str = "") -> list[str]:
    """One line per error: where the value came from, what it must be, and what it was."""
    lines = []
    for error in errors:
        name = str(error["loc"][0]) if error["loc"] else field
        if name not in given:  # a rule across settings, e.g. workers and engine
            lines.append(_requirement(error))
            continue
        where, text = given[name]
        requirement = _requirement(error, OPTIONS_BY_FIELD[name].flag_spec.unit)
        lines.append(f"{where} {requirement}, got {text!r} (setting {name})")
    return lines


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Settings from flags, then the environment's SERVICE_* variables, then the declared defaults.

    Exits (status 2, through argparse) with one message when any value is wrong."""
    env = os.environ if env is None else env
    parser = build_parser(env)
    flags = vars(parser.parse_args(argv))
    given: dict[str, tuple[str, str]] = {}  # field -> (the flag or variable, its text)
    values: dict[str, Any] = {}
    for option in OPTIONS:
        if option.field in flags:
            value = flags[option.field]
            if option.is_switch:
                values[option.field] = value
                continue
            given[option.field] = (option.flag, value)
        elif env.get(option.env):
            given[option.field] = (option.env, env[option.env])
    problems: list[str] = []
    for field, (_, text) in given.items():
        try:
            values[field] = OPTIONS_BY_FIELD[field].from_text(text)
        except ValidationError as exc:
            problems += _explain(exc.errors(), given, field)
    if not problems:
        try:
            return Settings(**values)
        except ValidationError as exc:
            problems = _explain(exc.errors(), given)
    parser.error("; ".join(problems))
