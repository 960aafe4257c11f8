"""The journal: every job's state in SQLite (WAL), the one source of truth.

One thread owns the connection; every call hops to it, so the event loop never waits on
disk. Commits use `synchronous=FULL`: a job the API has acknowledged survives a power cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from service.errors import ServiceError, StorageFull, StoreUnavailable
from service.jobs.job import URGENT, Job, JobOptions, JobStatus, NewJob, Task
from service.store.base import JobExists, QueueAtLimit

log = logging.getLogger(__name__)

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
-- Checkpoints: each decoded chunk of a running job, kept until the job ends.
CREATE TABLE IF NOT EXISTS checkpoints (
    job_id TEXT NOT NULL,
    channel INTEGER NOT NULL,
    start_s REAL NOT NULL,
    data TEXT NOT NULL,
    PRIMARY KEY (job_id, channel, start_s)
);
CREATE TRIGGER IF NOT EXISTS checkpoints_end AFTER UPDATE OF status ON jobs
WHEN NEW.status IN ('completed', 'failed', 'cancelled')
BEGIN DELETE FROM checkpoints WHERE job_id = NEW.job_id; END;
CREATE TRIGGER IF NOT EXISTS checkpoints_delete AFTER DELETE ON jobs
BEGIN DELETE FROM checkpoints WHERE job_id = OLD.job_id; END;
"""
# Indexes on columns that older journals gain at open, so created after the migration.
_LATE_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_cache_key ON jobs (cache_key) WHERE cache_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_status_completed ON jobs (status, completed_at);
"""

_COLUMNS = (
    "job_id, seq, status, audio_file, audio_sha256, audio_bytes, original_filename, model, "
    "language, task, callback_url, duration_s, progress, error, attempts, created_at, "
    "started_at, completed_at, note, options, priority, cache_key, transcribed_s"
)
# Columns added after the first release, created on older journals at open.
_ADDED_COLUMNS = {
    "note": "TEXT",
    "options": "TEXT",
    "priority": "INTEGER NOT NULL DEFAULT 0",
    "cache_key": "TEXT",
    "transcribed_s": "REAL",
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


def _check_room(conn: sqlite3.Connection, max_queued: int) -> None:
    """Just after the insert, in its transaction (the journal has one writer, so nothing comes
    between): past the limit, the exception rolls the insert back."""
    if not max_queued:
        return
    (queued,) = conn.execute(
        "SELECT COUNT(*) FROM jobs WHERE status = ?", (JobStatus.QUEUED.value,)
    ).fetchone()
    if queued > max_queued:
        raise QueueAtLimit(queued - 1)


def _requeue_or_fail(
    conn: sqlite3.Connection, job_id: str, attempts: int, limit: int, now: float, detail: str = ""
) -> bool:
    if attempts >= limit:
        conn.execute(
            "UPDATE jobs SET status = ?, completed_at = ?, error = ? WHERE job_id = ?",
            (JobStatus.FAILED.value, now, _CRASHED.format(attempts=attempts) + detail, job_id),
        )
        return True
    conn.execute(
        "UPDATE jobs SET status = ?, progress = 0, started_at = NULL WHERE job_id = ?",
        (JobStatus.QUEUED.value, job_id),
    )
    return False


# SQLite's primary result codes that describe the storage's state, not the statement: they
# clear by themselves (space freed, a lock released, a disk remounted).
_FULL = {sqlite3.SQLITE_FULL}
_TRANSIENT = {
    sqlite3.SQLITE_BUSY,
    sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_IOERR,
    sqlite3.SQLITE_READONLY,
    sqlite3.SQLITE_CANTOPEN,
    sqlite3.SQLITE_NOMEM,
    sqlite3.SQLITE_PROTOCOL,
}


def journal_fault(exc: sqlite3.OperationalError) -> ServiceError | None:
    """The domain error for a journal call that failed because of the storage, if it did."""
    code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
    if code in _FULL:
        return StorageFull(
            "The storage is full: the job journal cannot take writes, and nothing was changed. "
            "Free some space; the service resumes by itself."
        )
    if code in _TRANSIENT:
        return StoreUnavailable(
            f"The job journal cannot take writes right now ({exc}); nothing was changed. "
            "Try again in a few seconds."
        )
    return None


class SqliteJobStore:
    """Async facade over the SQLite journal: the single-instance `JobStore`."""

    shared = False

    def __init__(self, path: Path, priority_aging_s: float = 60.0) -> None:
        self.path = path
        self.priority_aging_s = priority_aging_s
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="journal")
        self._conn: sqlite3.Connection | None = None
        self._fault: str | None = None  # the last storage error, until a call succeeds

    def describe(self) -> dict[str, Any]:
        """Nothing to add to /health: one instance, its own journal."""
        return {}

    def location(self) -> str:
        return f"jobs in SQLite at {self.path}"

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
        try:
            with self._conn:  # one transaction per call, rolled back if it fails
                result = fn(self._conn)
        except sqlite3.OperationalError as exc:
            fault = journal_fault(exc)
            if fault is None:
                raise  # a bug (a bad statement), not the storage's state
            if self._fault is None:
                log.error("the job journal refuses writes: %s", exc)
            self._fault = str(exc)
            raise fault from exc
        if self._fault is not None:
            log.warning("the job journal works again")
            self._fault = None
        return result

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
            effective = "MAX(priority, MIN(priority + (:now - created_at) / :aging, :ceiling))"
            args = {"queued": JobStatus.QUEUED.value, "now": time.time(), "seq": job.seq, **self._order_args}
            (ahead,) = conn.execute(
                f"WITH mine AS (SELECT {effective} AS e FROM jobs WHERE seq = :seq) "
                f"SELECT COUNT(*) FROM jobs, mine WHERE status = :queued AND seq != :seq "
                f"AND ({effective} > mine.e OR ({effective} = mine.e AND seq < :seq))",
                args,
            ).fetchone()
            return int(ahead) + 1

        return await self._run(op)

    async def count(self, status: JobStatus) -> int:
        def op(conn: sqlite3.Connection) -> int:
            (n,) = conn.execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status.value,)).fetchone()
            return int(n)

        return await self._run(op)

    async def counts_by_status(self) -> dict[str, int]:
        def op(conn: sqlite3.Connection) -> dict[str, int]:
            rows = conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall()
            return {str(status): int(count) for status, count in rows}

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
    async def insert(self, new: NewJob, max_queued: int = 0) -> Job:
        """Add a queued job. Raises JobExists if the id is taken, QueueAtLimit if the queue is."""

        def op(conn: sqlite3.Connection) -> Job:
            job = _insert(conn, new)  # a taken id fails first: the same upload again is no overflow
            _check_room(conn, max_queued)
            return job

        try:
            return await self._run(op)
        except sqlite3.IntegrityError:
            raise JobExists(new.job_id) from None

    async def replace_failed(self, new: NewJob, max_queued: int = 0) -> Job:
        """Queue a failed job afresh, at the back of the queue with its attempts reset."""

        def op(conn: sqlite3.Connection) -> Job:
            deleted = conn.execute(
                "DELETE FROM jobs WHERE job_id = ? AND status IN (?, ?)",
                (new.job_id, JobStatus.FAILED.value, JobStatus.CANCELLED.value),
            ).rowcount
            if deleted != 1:
                raise JobExists(new.job_id)
            job = _insert(conn, new)
            _check_room(conn, max_queued)
            return job

        return await self._run(op)

    async def claim_next(self, prefer: Collection[str] = (), patience_s: float = 0.0) -> Job | None:
        """Move the next queued job to processing and count the attempt.

        Highest effective priority first (see `jobs.effective_priority`), oldest first within
        a level. A job for a model in `prefer` (the loaded ones) and of the same priority may
        overtake it while the first has waited less than `patience_s`: mixed queues then do not
        reload models back and forth, and no job waits on that account for long.
        """

        def op(conn: sqlite3.Connection) -> Job | None:
            now = time.time()
            order = self._order_sql()
            row = conn.execute(
                f"SELECT job_id, model, created_at, priority FROM jobs WHERE status = :queued "
                f"ORDER BY {order} LIMIT 1",
                {"queued": JobStatus.QUEUED.value, "now": now, **self._order_args},
            ).fetchone()
            if row is None:
                return None
            if prefer and row[1] not in prefer and now - row[2] < patience_s:
                marks = ", ".join(f":m{i}" for i in range(len(prefer)))
                row = (
                    conn.execute(
                        f"SELECT job_id FROM jobs WHERE status = :queued AND priority >= :priority "
                        f"AND model IN ({marks}) ORDER BY {order} LIMIT 1",
                        {
                            "queued": JobStatus.QUEUED.value,
                            "priority": row[3],
                            "now": now,
                            **self._order_args,
                            **{f"m{i}": m for i, m in enumerate(prefer)},
                        },
                    ).fetchone()
                    or row
                )
            conn.execute(
                "UPDATE jobs SET status = ?, started_at = ?, progress = 0, attempts = attempts + 1 "
                "WHERE job_id = ?",
                (JobStatus.PROCESSING.value, now, row[0]),
            )
            return _fetch(conn, row[0])

        return await self._run(op)

    def _order_sql(self) -> str:
        """Run order of queued jobs: effective priority (with ageing) down, then arrival."""
        return "MAX(priority, MIN(priority + (:now - created_at) / :aging, :ceiling)) DESC, seq ASC"

    @property
    def _order_args(self) -> dict[str, float]:
        return {"aging": self.priority_aging_s, "ceiling": URGENT - 1.0}

    async def queued_in_order(self, limit: int | None = None) -> list[Job]:
        """Queued jobs in the order they will run (as far as the queue alone decides)."""

        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status = :queued ORDER BY {self._order_sql()} "
                "LIMIT :limit",
                {
                    "queued": JobStatus.QUEUED.value,
                    "now": time.time(),
                    "limit": limit or -1,
                    **self._order_args,
                },
            ).fetchall()
            return [_row_to_job(row) for row in rows]

        return await self._run(op)

    async def list_jobs(
        self, statuses: Collection[JobStatus] = (), limit: int = 50, before_seq: int | None = None
    ) -> list[Job]:
        """Newest first; `before_seq` pages on from the last job of the previous page."""

        def op(conn: sqlite3.Connection) -> list[Job]:
            where: list[str] = []
            args: list[object] = []
            if statuses:
                where.append(f"status IN ({', '.join('?' for _ in statuses)})")
                args += [s.value for s in statuses]
            if before_seq is not None:
                where.append("seq < ?")
                args.append(before_seq)
            clause = f"WHERE {' AND '.join(where)}" if where else ""
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs {clause} ORDER BY seq DESC LIMIT ?", (*args, limit)
            ).fetchall()
            return [_row_to_job(row) for row in rows]

        return await self._run(op)

    async def recent_speeds(self, count: int = 20) -> list[tuple[float, float]]:
        """(audio seconds, processing seconds) of the last completed runs, for wait estimates."""

        def op(conn: sqlite3.Connection) -> list[tuple[float, float]]:
            rows = conn.execute(
                "SELECT duration_s, completed_at - started_at FROM jobs WHERE status = ? "
                "AND started_at IS NOT NULL AND duration_s > 0 ORDER BY completed_at DESC LIMIT ?",
                (JobStatus.COMPLETED.value, count),
            ).fetchall()
            return [(float(a), float(p)) for a, p in rows if p is not None and p > 0]

        return await self._run(op)

    async def find_cached(self, cache_key: str) -> Job | None:
        """The newest completed job with this cache key."""

        def op(conn: sqlite3.Connection) -> Job | None:
            row = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE cache_key = ? AND status = ? ORDER BY seq DESC LIMIT 1",
                (cache_key, JobStatus.COMPLETED.value),
            ).fetchone()
            return _row_to_job(row) if row else None

        return await self._run(op)

    async def insert_completed(self, new: NewJob, source: Job, note: str) -> Job:
        """A job answered from the transcript cache: completed the moment it is accepted."""

        def op(conn: sqlite3.Connection) -> Job:
            conn.execute(
                "DELETE FROM jobs WHERE job_id = ? AND status IN (?, ?)",
                (new.job_id, JobStatus.FAILED.value, JobStatus.CANCELLED.value),
            )
            _insert(conn, new)
            now = time.time()
            conn.execute(
                "UPDATE jobs SET status = ?, progress = 1, started_at = ?, completed_at = ?, "
                "language = ?, duration_s = COALESCE(?, duration_s), note = ? WHERE job_id = ?",
                (
                    JobStatus.COMPLETED.value,
                    now,
                    now,
                    source.language,
                    source.duration_s,
                    note,
                    new.job_id,
                ),
            )
            job = _fetch(conn, new.job_id)
            assert job is not None
            return job

        return await self._run(op)

    async def expired(self, ended_before: float, limit: int = 500) -> list[Job]:
        """Finished jobs that ended before the given time (retention); never queued or running."""

        def op(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE status IN (?, ?, ?) AND completed_at < ? "
                "ORDER BY completed_at LIMIT ?",
                (
                    JobStatus.COMPLETED.value,
                    JobStatus.FAILED.value,
                    JobStatus.CANCELLED.value,
                    ended_before,
                    limit,
                ),
            ).fetchall()
            return [_row_to_job(row) for row in rows]

        return await self._run(op)

    async def delete_finished(self, job_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            deleted = conn.execute(
                "DELETE FROM jobs WHERE job_id = ? AND status IN (?, ?, ?)",
                (job_id, JobStatus.COMPLETED.value, JobStatus.FAILED.value, JobStatus.CANCELLED.value),
            ).rowcount
            return bool(deleted == 1)

        return await self._run(op)

    async def outranked(self, job: Job) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            effective = "MAX(priority, MIN(priority + (:now - created_at) / :aging, :ceiling))"
            mine = "MAX(:priority, MIN(:priority + (:now - :created) / :aging, :ceiling))"
            row = conn.execute(
                f"SELECT 1 FROM jobs WHERE status = :queued AND ({effective} > {mine} "
                f"OR ({effective} = {mine} AND seq < :seq)) LIMIT 1",
                {
                    "queued": JobStatus.QUEUED.value,
                    "now": time.time(),
                    "priority": job.priority,
                    "created": job.created_at,
                    "seq": job.seq,
                    **self._order_args,
                },
            ).fetchone()
            return row is not None

        return await self._run(op)

    async def checkpoints(self, job_id: str) -> list[dict[str, Any]]:
        def op(conn: sqlite3.Connection) -> list[str]:
            rows = conn.execute(
                "SELECT data FROM checkpoints WHERE job_id = ? ORDER BY channel, start_s", (job_id,)
            ).fetchall()
            return [row[0] for row in rows]

        return [json.loads(raw) for raw in await self._run(op)]

    async def save_checkpoint(self, job_id: str, checkpoint: dict[str, Any]) -> bool:
        data = json.dumps(checkpoint, separators=(",", ":"))

        def op(conn: sqlite3.Connection) -> bool:
            running = conn.execute(
                "UPDATE jobs SET transcribed_s = ? WHERE job_id = ? AND status = ?",
                (checkpoint.get("transcribed_s"), job_id, JobStatus.PROCESSING.value),
            ).rowcount
            if running != 1:
                return False
            conn.execute(
                "INSERT OR REPLACE INTO checkpoints (job_id, channel, start_s, data) VALUES (?, ?, ?, ?)",
                (job_id, int(checkpoint.get("channel", 0)), float(checkpoint["start"]), data),
            )
            return True

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

    async def recover_interrupted(
        self, max_attempts: int, charge: bool = True
    ) -> tuple[list[str], list[str]]:
        """After a crash: jobs left `processing` go back to the queue, or fail past the limit.

        `charge=False`: the run does not count as an attempt (the service was killed from
        outside while inference ran in its own process, which is not the job's doing), so the
        job is requeued whatever its count.
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
                if not charge:
                    conn.execute(
                        "UPDATE jobs SET status = ?, progress = 0, started_at = NULL, "
                        "attempts = MAX(attempts - 1, 0) WHERE job_id = ?",
                        (JobStatus.QUEUED.value, job_id),
                    )
                    requeued.append(job_id)
                elif _requeue_or_fail(conn, job_id, attempts, max_attempts, now):
                    failed.append(job_id)
                else:
                    requeued.append(job_id)
            return requeued, failed

        return await self._run(op)

    async def requeue_crashed(self, job_id: str, max_attempts: int, detail: str = "") -> bool:
        """The worker died holding this job: back to the queue, or failed past the limit (True)."""

        def op(conn: sqlite3.Connection) -> bool:
            row = conn.execute(
                "SELECT attempts FROM jobs WHERE job_id = ? AND status = ?",
                (job_id, JobStatus.PROCESSING.value),
            ).fetchone()
            return row is not None and _requeue_or_fail(
                conn, job_id, row[0], max_attempts, time.time(), detail
            )

        return await self._run(op)

    async def set_note(self, job_id: str, note: str, cacheable: bool = True) -> None:
        """`cacheable=False`: the result will not be what the job's cache key promises (fallback)."""
        await self._run(
            lambda conn: conn.execute(
                "UPDATE jobs SET note = ?, cache_key = CASE WHEN ? THEN cache_key END WHERE job_id = ?",
                (note, cacheable, job_id),
            )
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
