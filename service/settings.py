"""Service settings: one frozen dataclass, built from flags with environment-variable defaults."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENGINES = ("openai-whisper", "faster-whisper")
ISOLATION = ("process", "thread")
COMPUTE_TYPES = ("auto", "int8", "int8_float16", "float16", "float32")
DEVICES = ("auto", "cpu", "cuda")
LOG_FORMATS = ("text", "json")
BACKENDS = ("sqlite", "redis")


@dataclass(frozen=True)
class Settings:
    """Everything the service can be told. Tests build it directly."""

    host: str = "127.0.0.1"
    port: int = 8765
    storage_dir: Path = field(default_factory=lambda: Path("service-storage"))
    # Model checkpoints (downloaded or imported); None means <storage_dir>/models.
    model_dir: Path | None = None
    model: str = "tiny.en"
    engine: str = "openai-whisper"
    device: str = "auto"
    # faster-whisper's weight precision; auto is int8 on CPU and float16 on CUDA.
    compute_type: str = "auto"
    # Intra-op threads for inference in total; 0 means the cores this process may use.
    threads: int = 0
    # Jobs decoded at the same time (faster-whisper only); the threads are split between them.
    workers: int = 1
    # Largest accepted upload. 2 GiB covers a few hours of WAV at 16 kHz 16-bit stereo.
    max_upload_bytes: int = 2 * 1024**3
    # Beam search like the whisper CLI: a few points of word error rate for ~2x decode time.
    beam_size: int = 5
    # A job whose worker died this many times is failed instead of being retried forever.
    max_attempts: int = 3
    # Inference in a supervised child process (a crash there leaves the API up) or a thread.
    isolation: str = "process"
    # Models kept in memory at once, the default included; and their memory budget (0: none).
    max_models: int = 2
    model_memory_mb: int = 0
    # Models other than the default are unloaded after this long unused; -1 keeps them.
    model_idle_seconds: float = 300.0
    # When a job's model cannot be loaded, run it on the default model (and say so) instead.
    model_fallback: bool = False
    # Longest a job may run; 0 scales with the audio (see worker.job_timeout).
    job_timeout: float = 0.0
    # On SIGTERM, how long a running job may take to finish before it is put back in the queue.
    shutdown_grace: float = 5.0
    log_level: str = "INFO"
    # Log lines as readable text or one JSON object each; to stderr, or to a file rotated at
    # log_max_mb (0: never) keeping log_backups old files.
    log_format: str = "text"
    log_file: Path | None = None
    log_max_mb: float = 50.0
    log_backups: int = 5
    # When set, every endpoint but /health and /openapi.json needs `Authorization: Bearer <token>`.
    api_token: str | None = None
    # Queued jobs past which uploads are refused with 429 and Retry-After (0: no limit).
    max_queue: int = 1000
    # A waiting job gains one priority level per this many seconds, up to just below urgent,
    # so low-priority work is never starved and urgent work still overtakes any backlog.
    priority_aging_seconds: float = 60.0
    # Finished jobs (row, audio, transcript) are removed this long after they end (0: never).
    retention_seconds: float = 7 * 86400.0
    # Remove a job's audio as soon as it completes (the transcript stays).
    delete_audio_on_complete: bool = False
    # The same audio with the same model and options is transcribed once; later uploads reuse it.
    transcript_cache: bool = True
    # Webhooks: HMAC-SHA256 key for the signature header (unsigned when unset), the hosts
    # callback URLs may name (any when empty), how long failed deliveries are retried,
    # and each attempt's timeout.
    webhook_secret: str | None = None
    webhook_allowed_hosts: tuple[str, ...] = ()
    webhook_retry_seconds: float = 3600.0
    webhook_timeout: float = 10.0
    # Where job state and the queue live: the embedded SQLite journal (one instance), or Redis,
    # shared by every instance pointed at the same URL, prefix and storage directory.
    backend: str = "sqlite"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "whisper"
    # A running job's claim lasts this long unless renewed (every third of it); an instance
    # that dies has its jobs taken over by another about this long after.
    lease_seconds: float = 30.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "storage_dir", Path(self.storage_dir))
        if self.model_dir is not None:
            object.__setattr__(self, "model_dir", Path(self.model_dir))
        if self.log_file is not None:
            object.__setattr__(self, "log_file", Path(self.log_file))
        if self.log_format not in LOG_FORMATS:
            raise ValueError(f"unknown log format {self.log_format!r}; choose text or json")
        if self.log_max_mb < 0:
            raise ValueError("log_max_mb cannot be negative (0 never rotates)")
        if self.log_backups < 1:
            raise ValueError("log_backups must be at least 1")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.device not in DEVICES:
            raise ValueError(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.compute_type not in COMPUTE_TYPES:
            raise ValueError(
                f"unknown compute type {self.compute_type!r}; choose one of {', '.join(COMPUTE_TYPES)}"
            )
        if self.threads < 0:
            raise ValueError("threads must be 0 (automatic) or more")
        if self.workers < 1:
            raise ValueError("workers must be at least 1")
        if self.workers > 1 and self.engine != "faster-whisper":
            raise ValueError(
                "workers > 1 needs --engine faster-whisper: openai-whisper decodes one file at a time"
            )
        if self.isolation not in ISOLATION:
            raise ValueError(f"unknown isolation {self.isolation!r}; choose one of {', '.join(ISOLATION)}")
        if self.max_models < 1:
            raise ValueError("max_models must be at least 1")
        if self.model_memory_mb < 0 or self.job_timeout < 0 or self.shutdown_grace < 0:
            raise ValueError("model_memory_mb, job_timeout and shutdown_grace cannot be negative")
        if self.max_upload_bytes <= 0:
            raise ValueError("max_upload_bytes must be positive")
        if self.beam_size < 1:
            raise ValueError("beam_size must be at least 1")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.max_queue < 0 or self.retention_seconds < 0 or self.webhook_retry_seconds < 0:
            raise ValueError("max_queue, retention and webhook retry time cannot be negative")
        if self.priority_aging_seconds <= 0 or self.webhook_timeout <= 0:
            raise ValueError("priority_aging_seconds and webhook_timeout must be positive")
        object.__setattr__(
            self,
            "webhook_allowed_hosts",
            tuple(h.strip().lower() for h in self.webhook_allowed_hosts if h.strip()),
        )
        if self.backend not in BACKENDS:
            raise ValueError(f"unknown backend {self.backend!r}; choose one of {', '.join(BACKENDS)}")
        if not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("redis_url must start with redis://, rediss:// or unix://")
        if not self.redis_prefix or any(c.isspace() for c in self.redis_prefix):
            raise ValueError("redis_prefix must be a non-empty word")
        if self.lease_seconds < 1:
            raise ValueError("lease_seconds must be at least 1")
        if self.api_token == "":
            object.__setattr__(self, "api_token", None)
        if self.webhook_secret == "":
            object.__setattr__(self, "webhook_secret", None)


def _env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise SystemExit(f"{name} must be an integer, got {raw!r}") from None


def _env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name} must be a number, got {raw!r}") from None


def _env_flag(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip().lower()
    if raw == "":
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise SystemExit(f"{name} must be true or false, got {raw!r}")


def parse_settings(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read flags; each flag's default comes from its environment variable, then the built-in."""
    env = os.environ if env is None else env
    base = Settings()
    parser = argparse.ArgumentParser(
        prog="python -m service",
        description="Persistent Whisper transcription service: upload audio, poll, download.",
    )
    parser.add_argument(
        "--host",
        default=env.get("SERVICE_HOST", base.host),
        help="address to listen on [SERVICE_HOST] (default %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=_env_int(env, "SERVICE_PORT", base.port),
        help="port to listen on [SERVICE_PORT] (default %(default)s)",
    )
    parser.add_argument(
        "--storage-dir",
        type=Path,
        default=Path(env.get("SERVICE_STORAGE_DIR", str(base.storage_dir))),
        help="jobs, audio, transcripts and models live here [SERVICE_STORAGE_DIR] (default %(default)s)",
    )
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=Path(env["SERVICE_MODEL_DIR"]) if env.get("SERVICE_MODEL_DIR") else None,
        help="model checkpoints are cached here [SERVICE_MODEL_DIR] (default <storage-dir>/models)",
    )
    parser.add_argument(
        "--model",
        default=env.get("SERVICE_MODEL", base.model),
        help="default model: a Whisper name or a path to a .pt checkpoint [SERVICE_MODEL] "
        "(default %(default)s, bundled and offline)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=env.get("SERVICE_ENGINE", base.engine),
        help="inference engine [SERVICE_ENGINE] (default %(default)s)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default=env.get("SERVICE_DEVICE", base.device),
        help="where the model runs; auto picks CUDA when present [SERVICE_DEVICE]",
    )
    parser.add_argument(
        "--compute-type",
        choices=COMPUTE_TYPES,
        default=env.get("SERVICE_COMPUTE_TYPE", base.compute_type),
        help="faster-whisper precision; auto is int8 on CPU, float16 on CUDA [SERVICE_COMPUTE_TYPE]",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=_env_int(env, "SERVICE_THREADS", base.threads),
        help="inference threads in total; 0 uses the cores this process may run on "
        "(CPU affinity and cgroup quota) [SERVICE_THREADS] (default %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=_env_int(env, "SERVICE_WORKERS", base.workers),
        help="jobs decoded at once, sharing the threads (faster-whisper only) [SERVICE_WORKERS] "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=int,
        default=_env_int(env, "SERVICE_MAX_UPLOAD_MB", base.max_upload_bytes // 1024**2),
        help="largest accepted upload in MiB [SERVICE_MAX_UPLOAD_MB] (default %(default)s)",
    )
    parser.add_argument(
        "--beam-size",
        type=int,
        default=_env_int(env, "SERVICE_BEAM_SIZE", base.beam_size),
        help="beam width for decoding; 1 is greedy [SERVICE_BEAM_SIZE] (default %(default)s)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=_env_int(env, "SERVICE_MAX_ATTEMPTS", base.max_attempts),
        help="runs of one job interrupted by crashes before it is failed [SERVICE_MAX_ATTEMPTS]",
    )
    parser.add_argument(
        "--isolation",
        choices=ISOLATION,
        default=env.get("SERVICE_ISOLATION", base.isolation),
        help="run inference in a supervised child process, or a thread of the server "
        "[SERVICE_ISOLATION] (default %(default)s)",
    )
    parser.add_argument(
        "--max-models",
        type=int,
        default=_env_int(env, "SERVICE_MAX_MODELS", base.max_models),
        help="models in memory at once, the default included [SERVICE_MAX_MODELS] (default %(default)s)",
    )
    parser.add_argument(
        "--model-memory-mb",
        type=int,
        default=_env_int(env, "SERVICE_MODEL_MEMORY_MB", base.model_memory_mb),
        help="memory budget for loaded models; 0 means only free memory limits it "
        "[SERVICE_MODEL_MEMORY_MB] (default %(default)s)",
    )
    parser.add_argument(
        "--model-idle-seconds",
        type=float,
        default=_env_float(env, "SERVICE_MODEL_IDLE_SECONDS", base.model_idle_seconds),
        help="unload a non-default model unused this long; -1 never [SERVICE_MODEL_IDLE_SECONDS] "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--model-fallback",
        action=argparse.BooleanOptionalAction,
        default=env.get("SERVICE_MODEL_FALLBACK", "").lower() in ("1", "true", "yes", "on"),
        help="run a job on the default model when its own cannot be loaded [SERVICE_MODEL_FALLBACK]",
    )
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=_env_float(env, "SERVICE_JOB_TIMEOUT", base.job_timeout),
        help="seconds a job may run before it is stopped and failed; 0 scales with the audio's "
        "length [SERVICE_JOB_TIMEOUT] (default %(default)s)",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=float,
        default=_env_float(env, "SERVICE_SHUTDOWN_GRACE", base.shutdown_grace),
        help="on SIGTERM, seconds a running job may take to finish before it is requeued "
        "[SERVICE_SHUTDOWN_GRACE] (default %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        default=env.get("SERVICE_LOG_LEVEL", base.log_level),
        help="logging level [SERVICE_LOG_LEVEL] (default %(default)s)",
    )
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=env.get("SERVICE_LOG_FORMAT", base.log_format),
        help="log lines as readable text or one JSON object each [SERVICE_LOG_FORMAT] (default %(default)s)",
    )
    parser.add_argument(
        "--log-file",
        type=Path,
        default=Path(env["SERVICE_LOG_FILE"]) if env.get("SERVICE_LOG_FILE") else None,
        help="write the log to this file, rotated by size, instead of stderr [SERVICE_LOG_FILE]",
    )
    parser.add_argument(
        "--log-max-mb",
        type=float,
        default=_env_float(env, "SERVICE_LOG_MAX_MB", base.log_max_mb),
        help="rotate the log file when it reaches this many MiB; 0 never [SERVICE_LOG_MAX_MB] "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--log-backups",
        type=int,
        default=_env_int(env, "SERVICE_LOG_BACKUPS", base.log_backups),
        help="rotated log files kept (service.log.1 ...) [SERVICE_LOG_BACKUPS] (default %(default)s)",
    )
    parser.add_argument(
        "--api-token",
        default=env.get("SERVICE_API_TOKEN") or None,
        help="require `Authorization: Bearer <token>` on every endpoint but /health and /openapi.json "
        "[SERVICE_API_TOKEN]",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=_env_int(env, "SERVICE_MAX_QUEUE", base.max_queue),
        help="queued jobs past which uploads get 429 and Retry-After; 0 no limit [SERVICE_MAX_QUEUE] "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--priority-aging-seconds",
        type=float,
        default=_env_float(env, "SERVICE_PRIORITY_AGING_SECONDS", base.priority_aging_seconds),
        help="a queued job gains one priority level per this many seconds waited, up to just below "
        "urgent [SERVICE_PRIORITY_AGING_SECONDS] (default %(default)s)",
    )
    parser.add_argument(
        "--retention-days",
        type=float,
        default=_env_float(env, "SERVICE_RETENTION_DAYS", base.retention_seconds / 86400),
        help="remove finished jobs, their audio and transcripts this many days after they end; "
        "0 keeps them [SERVICE_RETENTION_DAYS] (default %(default)s)",
    )
    parser.add_argument(
        "--delete-audio-on-complete",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env, "SERVICE_DELETE_AUDIO_ON_COMPLETE", base.delete_audio_on_complete),
        help="remove a job's audio as soon as it completes [SERVICE_DELETE_AUDIO_ON_COMPLETE]",
    )
    parser.add_argument(
        "--transcript-cache",
        action=argparse.BooleanOptionalAction,
        default=_env_flag(env, "SERVICE_TRANSCRIPT_CACHE", base.transcript_cache),
        help="reuse the transcript of identical audio with identical model and options "
        "[SERVICE_TRANSCRIPT_CACHE] (default on)",
    )
    parser.add_argument(
        "--webhook-secret",
        default=env.get("SERVICE_WEBHOOK_SECRET") or None,
        help="sign webhook bodies with HMAC-SHA256 under this key [SERVICE_WEBHOOK_SECRET]",
    )
    parser.add_argument(
        "--webhook-allowed-hosts",
        default=env.get("SERVICE_WEBHOOK_ALLOWED_HOSTS", ""),
        help="comma-separated hosts callback_url may name; empty allows any [SERVICE_WEBHOOK_ALLOWED_HOSTS]",
    )
    parser.add_argument(
        "--webhook-retry-seconds",
        type=float,
        default=_env_float(env, "SERVICE_WEBHOOK_RETRY_SECONDS", base.webhook_retry_seconds),
        help="keep retrying a failed webhook delivery this long [SERVICE_WEBHOOK_RETRY_SECONDS] "
        "(default %(default)s)",
    )
    parser.add_argument(
        "--webhook-timeout",
        type=float,
        default=_env_float(env, "SERVICE_WEBHOOK_TIMEOUT", base.webhook_timeout),
        help="seconds one webhook request may take [SERVICE_WEBHOOK_TIMEOUT] (default %(default)s)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default=env.get("SERVICE_BACKEND", base.backend),
        help="where jobs and the queue live: sqlite (this instance only) or redis (shared by "
        "many instances) [SERVICE_BACKEND] (default %(default)s)",
    )
    parser.add_argument(
        "--redis-url",
        default=env.get("SERVICE_REDIS_URL", base.redis_url),
        help="Redis for --backend redis [SERVICE_REDIS_URL] (default %(default)s)",
    )
    parser.add_argument(
        "--redis-prefix",
        default=env.get("SERVICE_REDIS_PREFIX", base.redis_prefix),
        help="key prefix in Redis; instances with the same prefix share one queue "
        "[SERVICE_REDIS_PREFIX] (default %(default)s)",
    )
    parser.add_argument(
        "--lease-seconds",
        type=float,
        default=_env_float(env, "SERVICE_LEASE_SECONDS", base.lease_seconds),
        help="with redis: a running job is taken over by another instance this long after its "
        "instance stops renewing it [SERVICE_LEASE_SECONDS] (default %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        return Settings(
            host=args.host,
            port=args.port,
            storage_dir=args.storage_dir,
            model_dir=args.model_dir,
            model=args.model,
            engine=args.engine,
            device=args.device,
            compute_type=args.compute_type,
            threads=args.threads,
            workers=args.workers,
            max_upload_bytes=args.max_upload_mb * 1024**2,
            beam_size=args.beam_size,
            max_attempts=args.max_attempts,
            isolation=args.isolation,
            max_models=args.max_models,
            model_memory_mb=args.model_memory_mb,
            model_idle_seconds=args.model_idle_seconds,
            model_fallback=args.model_fallback,
            job_timeout=args.job_timeout,
            shutdown_grace=args.shutdown_grace,
            log_level=args.log_level.upper(),
            log_format=args.log_format,
            log_file=args.log_file,
            log_max_mb=args.log_max_mb,
            log_backups=args.log_backups,
            api_token=args.api_token,
            max_queue=args.max_queue,
            priority_aging_seconds=args.priority_aging_seconds,
            retention_seconds=args.retention_days * 86400,
            delete_audio_on_complete=args.delete_audio_on_complete,
            transcript_cache=args.transcript_cache,
            webhook_secret=args.webhook_secret,
            webhook_allowed_hosts=tuple(args.webhook_allowed_hosts.split(",")),
            webhook_retry_seconds=args.webhook_retry_seconds,
            webhook_timeout=args.webhook_timeout,
            backend=args.backend,
            redis_url=args.redis_url,
            redis_prefix=args.redis_prefix,
            lease_seconds=args.lease_seconds,
        )
    except ValueError as exc:
        parser.error(str(exc))
        raise  # unreachable: parser.error exits
