"""The journal: every job's state in SQLite (WAL), the one source of truth.

One thread owns the connection; every call hops to it, so the event loop never waits on
disk. Commits use `synchronous=FULL`: a job the API has acknowledged survives a power cut.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.jobs import Job, JobOptions, JobStatus, NewJob, Task

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    audio_file TEXT NOT NULL,
    audio_sha256 TEXT NOT NULL,
    audio_bytes INTEGER NOT NULL,
    original_filename TEXT,
    model TEXT NOT NULL,
    language TEXT,
    task TEXT NOT NULL,
    callback_url TEXT,
    duration_s REAL,
    progress REAL NOT NULL DEFAULT 0,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    note TEXT,
    options TEXT,
    priority INTEGER NOT NULL DEFAULT 0,
    cache_key TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
"""
# Indexes on columns that older journals gain at open, so created after the migration.
_LATE_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_cache_key ON jobs (cache_key) WHERE cache_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status_completed ON jobs (status, completed_at);
"""

_COLUMNS = (
    "job_id, seq, status, audio_file, audio_sha256, audio_bytes, original_filename, model, "
    "language, task, callback_url, duration_s, progress, error, attempts, created_at, "
    "started_at, completed_at, note, options, priority, cache_key"
)
# Columns added after the first release, created on older journals at open.
_ADDED_COLUMNS = {
    "note": "TEXT",
    "options": "TEXT",
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "cache_key": "TEXT",
}
_CRASHED = (
    "The worker crashed on this job {attempts} times; giving up. "
    "The audio may be malformed or too large for this machine."
)


def _row_to_job(row: tuple[Any, ...]) -> Job:
    values = list(row)
    values[2] = JobStatus(values[2])
    values[9] = Task(values[9])
    values[19] = JobOptions.from_json(values[19])
    return Job(*values)


def _fetch(conn: sqlite3.Connection, job_id: str) -> Job | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
    return _row_to_job(row) if row else None


def _insert(conn: sqlite3.Connection, new: NewJob) -> Job:
    conn.execute(
        "INSERT INTO jobs (job_id, status, audio_file, audio_sha256, audio_bytes, "
        "original_filename, model, language, task, callback_url, duration_s, created_at, options, "
        "priority, cache_key) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            new.job_id,
            JobStatus.QUEUED.value,
            new.audio_file,
            new.audio_sha256,
            new.audio_bytes,
            new.original_filename,
            new.model,
            new.language,
            new.task.value,
            new.callback_url,
            new.duration_s,
            time.time(),
            new.options.to_json(),
            new.priority,
            new.cache_key,
        ),
    )
    job = _fetch(conn, new.job_id)
    assert job is not None  # inserted just above, in this transaction
    return job


def _requeue_or_fail(conn: sqlite3.Connection, job_id: str, attempts: int, limit: int, now: float) -> bool:
    if attempts >= limit:
        conn.execute(
            "UPDATE jobs SET status = ?, completed_at = ?, error = ? WHERE job_id = ?",
            (JobStatus.FAILED.value, now, _CRASHED.format(attempts=attempts), job_id),
        )
        return True
    conn.execute(
        "UPDATE jobs SET status = ?, progress = 0, started_at = NULL WHERE job_id = ?",
        (JobStatus.QUEUED.value, job_id),
    )
    return False


class Journal:
    """Async facade over the SQLite journal."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None

    # -- plumbing -----------------------------------------------------------------------
    async def run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run `fn(conn)` on the journal's thread in one transaction (for modules with own tables)."""
        return await self._run(fn)

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        if self._conn is None:
            raise RuntimeError("journal is closed")
        with self._conn:  # one transaction per call
            return fn(self._conn)

    def _connect(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=5000")
        conn.isolation_level = "DEFERRED"
        conn.executescript(_SCHEMA)
        present = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
        for column, kind in _ADDED_COLUMNS.items():
            if column not in present:
                conn.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        conn.executescript(_LATE_INDEXES)
        conn.commit()
        self._conn = conn

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, self._connect)

    async def close(self) -> None:
        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._executor, _close)
        self._executor.shutdown(wait=True)

    # -- reads --------------------------------------------------------------------------
    async def get(self, job_id: str) -> Job | None:
        def op(conn: sqlite3.Connection) -> Job | None:
            return _fetch(conn, job_id)

        return await self._run(op)

    async def queue_position(self, job: Job) -> int:
        """1 for the job that runs next."""

        def op(conn: sqlite3.Connection) -> int:
            (ahead,) = conn.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = ? AND seq < ?",
                (JobStatus.QUEUED.value, job.seq),
            ).fetchone()
            return int(ahead) + 1

        return await self._run(op)

    async def count(self, status: JobStatus) -> int:
        def op(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,)).fetchone()
            return int(n)

        return await self._run(op)

    async def audio_files(self) -> set[str]:
        def op(conn: sqlite3.Connection) -> set[str]:
            return {row[0] for row in conn.execute("SELECT audio_file FROM jobs")}

        return await self._run(op)

    async def active_jobs(self) -> list[Job]:
        """Queued and processing jobs, in run order."""

        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status IN (?, ?) ORDER BY seq",
                (JobStatus.QUEUED.value, JobStatus.PROCESSING.value),
            ).fetchall()
            return [_row_to_job(row) for row in rows]

        return await self._run(op)

    # -- writes -------------------------------------------------------------------------
    async def insert(self, new: NewJob) -> Job:
        """Add a queued job. Raises sqlite3.IntegrityError if the id is taken."""
        return await self._run(lambda conn: _insert(conn, new))

    async def replace_failed(self, new: NewJob) -> Job:
        """Queue a failed job afresh, at the back of the queue with its attempts reset."""

        def op(conn: sqlite3.Connection) -> Job:
            deleted = conn.execute(
                "DELETE FROM jobs WHERE job_id = ? AND status = ?", (new.job_id, JobStatus.FAILED.value)
            ).rowcount
            if deleted != 1:
                raise sqlite3.IntegrityError(f"job {new.job_id} is not failed")
            return _insert(conn, new)

        return await self._run(op)

    async def claim_next(self, prefer: Collection[str] = (), patience_s: float = 0.0) -> Job | None:
        """Move the next queued job to processing and count the attempt.

        The oldest job goes first, except that a job for a model in `prefer` (the loaded ones)
        may overtake it while the oldest has waited less than `patience_s`: mixed queues then
        do not reload models back and forth, and no job waits on that account for long.
        """

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                "SELECT job_id, model, created_at FROM jobs WHERE status = ? ORDER BY seq LIMIT 1",
                (JobStatus.QUEUED.value,),
            ).fetchone()
            if row is None:
                return None
            if prefer and row[1] not in prefer and time.time() - row[2] < patience_s:
                marks = ", ".join("?" for _ in prefer)
                row = (
                    conn.execute(
                        f"SELECT job_id FROM jobs WHERE status = ? AND model IN ({marks}) "
                        "ORDER BY seq LIMIT 1",
                        (JobStatus.QUEUED.value, *prefer),
                    ).fetchone()
                    or row
                )
            conn.execute(
                "UPDATE jobs SET status = ?, started_at = ?, progress = 0, attempts = attempts + 1 "
                "WHERE job_id = ?",
                (JobStatus.PROCESSING.value, time.time(), row[0]),
            )
            return _fetch(conn, row[0])

        return await self._run(op)

    async def set_progress(self, job_id: str, progress: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET progress = ? WHERE job_id = ? AND status = ?",
                (progress, job_id, JobStatus.PROCESSING.value),
            )

        await self._run(op)

    async def complete(self, job_id: str, language: str | None, duration_s: float) -> bool:
        """Mark a processing job completed; False when it is no longer processing (cancelled)."""

        def op(conn: sqlite3.Connection) -> bool:
            return (
                conn.execute(
                    "UPDATE jobs SET status = ?, progress = 1, completed_at = ?, "
                    "language = COALESCE(?, language), duration_s = ?, error = NULL "
                    "WHERE job_id = ? AND status = ?",
                    (
                        JobStatus.COMPLETED.value,
                        time.time(),
                        language,
                        duration_s,
                        job_id,
                        JobStatus.PROCESSING.value,
                    ),
                ).rowcount
                == 1
            )

        return await self._run(op)

    async def fail(self, job_id: str, error: str) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status = ?, completed_at = ?, error = ? "
                "WHERE job_id = ? AND status IN (?, ?)",
                (
                    JobStatus.FAILED.value,
                    time.time(),
                    error,
                    job_id,
                    JobStatus.PROCESSING.value,
                    JobStatus.QUEUED.value,
                ),
            )

        await self._run(op)

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or processing job; returns the job as it was before, or None if absent.

        The caller tells a finished job (returned unchanged) from a cancelled one by its status.
        """

        def op(conn: sqlite3.Connection) -> Job | None:
            job = _fetch(conn, job_id)
            if job is not None and not job.status.finished:
                conn.execute(
                    "UPDATE jobs SET status = ?, completed_at = ?, error = NULL WHERE job_id = ?",
                    (JobStatus.CANCELLED.value, time.time(), job_id),
                )
            return job

        return await self._run(op)

    async def recover_interrupted(self, max_attempts: int) -> tuple[list[str], list[str]]:
        """After a crash: jobs left `processing` go back to the queue, or fail past the limit.

        Only safe while this process is the journal's sole user (the storage lock ensures it).
        Returns (requeued ids, failed ids).
        """

        def op(conn: sqlite3.Connection) -> tuple[list[str], list[str]]:
            rows = conn.execute(
                "SELECT job_id, attempts FROM jobs WHERE status = ? ORDER BY seq",
                (JobStatus.PROCESSING.value,),
            ).fetchall()
            requeued, failed = [], []
            now = time.time()
            for job_id, attempts in rows:
                if _requeue_or_fail(conn, job_id, attempts, max_attempts, now):
                    failed.append(job_id)
                else:
                    requeued.append(job_id)
            return requeued, failed

        return await self._run(op)

    async def requeue_crashed(self, job_id: str, max_attempts: int) -> bool:
        """The worker died holding this job: back to the queue, or failed past the limit (True)."""

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT attempts FROM jobs WHERE job_id = ? AND status = ?",
                (job_id, JobStatus.PROCESSING.value),
            ).fetchone()
            return row is not None and _requeue_or_fail(conn, job_id, row[0], max_attempts, time.time())

        return await self._run(op)

    async def set_note(self, job_id: str, note: str) -> None:
        await self._run(
            lambda conn: conn.execute("UPDATE jobs SET note = ? WHERE job_id = ?", (note, job_id))
        )

    async def release(self, job_id: str) -> None:
        """Put an interrupted job back at its place in the queue without counting the attempt."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE jobs SET status = ?, progress = 0, started_at = NULL, "
                "attempts = MAX(attempts - 1, 0) WHERE job_id = ? AND status = ?",
                (JobStatus.QUEUED.value, job_id, JobStatus.PROCESSING.value),
            )

        await self._run(op)
