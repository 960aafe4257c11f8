"""Atomic file writes: a reader sees the old file or the whole new one, never half of either.

A base module, so that every layer can write durably: the store its transcripts, the engines
the checkpoints they import or join into the model cache.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO


def fsync_dir(path: Path) -> None:
    """Make a rename or new entry in `path` survive a crash (the file's own fsync does not)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, fill: Callable[[BinaryIO], object]) -> None:
    """Write via `fill` to a temp name, fsync, rename: readers see the old file or the whole new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fp:
            fill(fp)
            fp.flush()
            os.fsync(fp.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: Path, data: Any) -> None:
    write_atomic(path, lambda fp: fp.write(json.dumps(data, ensure_ascii=False).encode("utf-8")))
