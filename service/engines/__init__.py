"""Speech-to-text engines behind one seam (see base.Engine)."""

from __future__ import annotations

from service.engines.base import Engine
from service.settings import Settings


def create_engine(settings: Settings) -> Engine:
    """Import lazily: torch and whisper are heavy, and only the chosen engine is needed."""
    if settings.engine == "openai-whisper":
        from service.engines.openai_whisper import OpenAIWhisperEngine

        return OpenAIWhisperEngine(settings.storage_dir / "models", device=settings.device)
    raise ValueError(f"unknown engine {settings.engine!r}")
