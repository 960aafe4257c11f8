"""The storage directory's layout and streamed uploads (atomic writes: service.atomic).

    <storage>/jobs.db                     the journal (SQLite, WAL)
    <storage>/pending/<job_id>.<ext>      uploaded audio, renamed into place when complete
    <storage>/transcripts/<job_id>.json   results
    <storage>/models/                     imported or downloaded checkpoints
    <storage>/tmp/                        uploads in flight; emptied at start-up

A job row is inserted only after its audio has been renamed into place, so a file in tmp/
or an unreferenced file in pending/ is garbage that start-up removes.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from service.atomic import fsync_dir
from service.errors import UploadTooLarge, storage_fault

log = logging.getLogger(__name__)

UPLOAD_CHUNK_BYTES = 1 << 20  # one disk write and hash update per MiB keeps hops few
# Written and removed by the self-check to see that the storage still takes writes.
SELF_CHECK_PROBE = ".self-check"


def human_size(num_bytes: int) -> str:
    """1536 -> '1.5 KiB': limits in error messages a person reads."""
    size = float(num_bytes)
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "bytes" or size.is_integer() else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def too_large(max_bytes: int) -> UploadTooLarge:
    return UploadTooLarge(
        f"The upload is larger than the limit of {human_size(max_bytes)}; "
        "split the audio or raise --max-upload-mb."
    )


class StorageLocked(RuntimeError):
    """Another service process already owns this storage directory."""


@dataclass(frozen=True)
class Layout:
    root: Path
    model_dir: Path | None = None  # a separate volume in containers; default <root>/models

    @property
    def journal(self) -> Path:
        return self.root / "jobs.db"

    @property
    def pending(self) -> Path:
        return self.root / "pending"

    @property
    def transcripts(self) -> Path:
        return self.root / "transcripts"

    @property
    def models(self) -> Path:
        return self.model_dir if self.model_dir is not None else self.root / "models"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    def audio_path(self, audio_file: str) -> Path:
        return self.pending / audio_file

    def transcript_path(self, job_id: str) -> Path:
        return self.transcripts / f"{job_id}.json"

    def create(self) -> None:
        for path in (self.root, self.pending, self.transcripts, self.models, self.tmp):
            path.mkdir(parents=True, exist_ok=True)

    def remove_job_files(self, audio_file: str | None, transcript_of: str | None = None) -> None:
        """The one place a job's files leave the disk: its audio and, when `transcript_of` names
        the job, its transcript. Blocking (an unlink each): call it off the event loop."""
        if audio_file:
            self.audio_path(audio_file).unlink(missing_ok=True)
        if transcript_of is not None:
            self.transcript_path(transcript_of).unlink(missing_ok=True)

    async def remove_job_files_async(self, audio_file: str | None, transcript_of: str | None = None) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, self.remove_job_files, audio_file, transcript_of
        )

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer may still use on the storage's file system. Blocking
        (statvfs can stall on a network mount): call it off the event loop."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def probe_writable(self) -> None:
        """Create, write and remove a small file at the storage's root; raises OSError when it
        cannot (read-only remount, full disk, lost permissions). Blocking: off the event loop."""
        probe = self.root / f"{SELF_CHECK_PROBE}.{os.getpid()}"  # instances may share the directory
        try:
            with open(probe, "wb") as fp:
                fp.write(b"ok\n")
                fp.flush()
        finally:
            probe.unlink(missing_ok=True)


# With a shared store, leftovers younger than this may be another instance's upload in flight.
SHARED_LEFTOVER_AGE_SECONDS = 3600.0


def lock_storage(layout: Layout, shared: bool = False) -> IO[bytes]:
    """Hold a lock on the storage dir for the life of the process.

    Exclusive for the SQLite journal (one process owns the directory); shared for instances of
    one Redis-backed cluster, so they can use it together but no SQLite instance can join.
    (flock works across hosts only on file systems that support it; NFS v4 does.)
    """
    handle = open(layout.root / "service.lock", "a+b")  # noqa: SIM115 - held until exit
    try:
        fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        hint = (
            "a service process with --backend sqlite owns it"
            if shared
            else "another service process is already using it"
        )
        raise StorageLocked(
            f"{layout.root}: {hint}; stop it or choose another --storage-dir "
            "(instances share a directory only with --backend redis)"
        ) from None
    return handle


def clean_start(layout: Layout, referenced_audio: set[str], min_age_s: float = 0.0) -> int:
    """Remove half-written uploads and audio that no job refers to, if older than `min_age_s`.

    Returns the files removed.
    """
    cutoff = time.time() - min_age_s
    removed = 0

    def remove(path: Path) -> None:
        nonlocal removed
        try:
            if min_age_s and path.stat().st_mtime > cutoff:
                return
            path.unlink()
            removed += 1
        except FileNotFoundError:
            pass

    for path in layout.tmp.iterdir():
        remove(path)
    for path in layout.pending.iterdir():
        if path.name not in referenced_audio:
            remove(path)
    for path in layout.transcripts.glob(".*.tmp"):
        remove(path)
    return removed


@dataclass
class ReceivedUpload:
    """An upload fully on disk under tmp/, not yet a job."""

    path: Path
    size: int
    sha256: str

    def discard(self) -> None:
        self.path.unlink(missing_ok=True)


class _UploadWriter:
    """Writes and hashes chunks in a worker thread; the event loop only hands them over."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fp = open(path, "xb")  # noqa: SIM115 - closed in finish/abort
        self._hash = hashlib.sha256()

    def write(self, chunk: bytes) -> None:
        self._fp.write(chunk)
        self._hash.update(chunk)

    def finish(self) -> str:
        self._fp.flush()
        os.fsync(self._fp.fileno())
        self._fp.close()
        return self._hash.hexdigest()

    def abort(self) -> None:
        try:
            self._fp.close()  # may fail flushing onto a full disk; the file goes either way
        except OSError:
            pass
        finally:
            self.path.unlink(missing_ok=True)


async def receive_upload(chunks: AsyncIterator[bytes], tmp_dir: Path, max_bytes: int) -> ReceivedUpload:
    """Stream `chunks` to a file under `tmp_dir`; nothing is left behind if anything fails."""
    loop = asyncio.get_running_loop()
    path = tmp_dir / f"{uuid.uuid4().hex}.upload"
    try:
        writer = await loop.run_in_executor(None, _UploadWriter, path)
    except OSError as exc:
        raise storage_fault(exc, "the upload") or exc from exc
    size = 0
    try:
        async for chunk in chunks:
            size += len(chunk)
            if size > max_bytes:
                raise too_large(max_bytes)
            await loop.run_in_executor(None, writer.write, chunk)
        digest = await loop.run_in_executor(None, writer.finish)
    except OSError as exc:  # the disk filled (or failed) mid-body: 507, nothing kept
        await asyncio.shield(loop.run_in_executor(None, writer.abort))
        raise storage_fault(exc, "the upload") or exc from exc
    except BaseException:
        await asyncio.shield(loop.run_in_executor(None, writer.abort))
        raise
    return ReceivedUpload(path=path, size=size, sha256=digest)


def commit_upload(upload: ReceivedUpload, target: Path) -> None:
    """Rename a received upload into pending/ durably."""
    os.replace(upload.path, target)
    fsync_dir(target.parent)
