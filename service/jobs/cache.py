"""The transcript cache: the same audio bytes with the same model and options are decoded once.

The key covers everything that changes the transcript: the audio's hash, the model, language,
task and per-job options, and the engine settings that shape decoding (engine, beam size,
precision). A hit is a completed job in the journal with the same key whose transcript is still
on disk; the new job gets its own copy (a hard link where the file system allows).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from service.jobs.job import JobOptions, Task
from service.settings import Settings

# Bump when a change to decoding makes earlier transcripts unfit to reuse.
CACHE_VERSION = 1


def cache_key(
    settings: Settings, audio_sha256: str, model: str, language: str | None, task: Task, options: JobOptions
) -> str:
    parts = {
        "v": CACHE_VERSION,
        "audio": audio_sha256,
        "model": model,
        "language": language,
        "task": task.value,
        "options": options.describe(),
        "engine": settings.engine,
        "beam_size": settings.beam_size,
        "compute_type": settings.compute_type,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


def copy_transcript(source: Path, target: Path) -> bool:
    """Give the new job the earlier job's transcript; False when the source is gone."""
    if not source.is_file():
        return False
    tmp = target.with_name(f".{target.name}.cache-tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        try:
            shutil.copyfile(source, tmp)
        except FileNotFoundError:
            return False
    os.replace(tmp, target)
    return True
