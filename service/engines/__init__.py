"""Speech-to-text engines behind one seam (see base.Engine)."""

from __future__ import annotations

from pathlib import Path

from service.cpus import threads_per_worker
from service.engines.base import Engine, ModelCatalog
from service.settings import Settings


def default_models_dir(settings: Settings) -> Path:
    """Where checkpoints live when the caller names no directory: --model-dir, else <storage>/models.

    Worked out here because engines sit below the store and may not import it; store.files.Layout
    gives the same answer (tests/test_architecture.py checks that the two agree).
    """
    return settings.model_dir if settings.model_dir is not None else settings.storage_dir / "models"


def create_engine(settings: Settings, models_dir: Path | None = None) -> Engine:
    """Import lazily: torch and CTranslate2 are heavy, and only the chosen engine is needed."""
    if models_dir is None:
        models_dir = default_models_dir(settings)
    threads = threads_per_worker(settings.threads, settings.workers)
    if settings.engine == "openai-whisper":
        from service.engines.openai_whisper import OpenAIWhisperEngine

        return OpenAIWhisperEngine(models_dir, device=settings.device, threads=threads)
    if settings.engine == "faster-whisper":
        from service.engines.faster_whisper import FasterWhisperEngine

        return FasterWhisperEngine(
            models_dir,
            device=settings.device,
            compute_type=settings.compute_type,
            threads=threads,
            workers=settings.workers,
        )
    raise ValueError(f"unknown engine {settings.engine!r}")


def create_catalog(settings: Settings, models_dir: Path | None = None) -> ModelCatalog:
    """The engine's answers about model names and its device, for a process that loads no models.

    openai-whisper's engine imports torch, which the HTTP process has no use for: it gets the
    torch-free catalog that engine is built on. faster-whisper's engine imports its libraries
    (none of them torch) only when it lists or loads models, so it is its own catalog.
    """
    if models_dir is None:
        models_dir = default_models_dir(settings)
    if settings.engine == "openai-whisper":
        from service.engines.openai_whisper_catalog import OpenAIWhisperCatalog

        return OpenAIWhisperCatalog(models_dir, device=settings.device)
    return create_engine(settings, models_dir)
