"""The SQLite journal on real disk: order, claims, crash recovery, durability across reopen."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from service.jobs.job import JobStatus, NewJob, Task
from service.store.base import JobExists
from service.store.sqlite import SqliteJobStore


def new_job(job_id: str, priority: int = 0) -> NewJob:
    return NewJob(
        job_id=job_id,
        audio_file=f"{job_id}.wav",
        audio_sha256="0" * 64,
        audio_bytes=10,
        original_filename="a.wav",
        model="tiny.en",
        language=None,
        task=Task.TRANSCRIBE,
        callback_url=None,
        duration_s=1.0,
        priority=priority,
    )


@pytest.fixture
async def journal(tmp_path: Path) -> SqliteJobStore:
    j = SqliteJobStore(tmp_path / "jobs.db")
    await j.open()
    yield j  # type: ignore[misc]
    await j.close()


async def test_claims_oldest_first_and_counts_attempts(journal: SqliteJobStore) -> None:
    for job_id in ("a", "b", "c"):
        await journal.insert(new_job(job_id))
    first = await journal.claim_next()
    assert first is not None and first.job_id == "a"
    assert first.status is JobStatus.PROCESSING and first.attempts == 1 and first.started_at
    b = await journal.get("b")
    c = await journal.get("c")
    assert b is not None and c is not None
    assert await journal.queue_position(b) == 1
    assert await journal.queue_position(c) == 2
    assert await journal.count(JobStatus.QUEUED) == 2


async def test_duplicate_id_is_refused(journal: SqliteJobStore) -> None:
    await journal.insert(new_job("a"))
    with pytest.raises(JobExists):
        await journal.insert(new_job("a"))


async def test_progress_only_moves_while_processing(journal: SqliteJobStore) -> None:
    await journal.insert(new_job("a"))
    await journal.set_progress("a", 0.5)  # queued: ignored
    assert (await journal.get("a")).progress == 0  # type: ignore[union-attr]
    await journal.claim_next()
    await journal.set_progress("a", 0.5)
    assert (await journal.get("a")).progress == 0.5  # type: ignore[union-attr]
    await journal.complete("a", "en", 3.0)
    await journal.set_progress("a", 0.7)  # a late update after completion is dropped
    done = await journal.get("a")
    assert done is not None and done.status is JobStatus.COMPLETED and done.progress == 1.0


async def test_recovery_requeues_then_fails_past_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    for attempt in (1, 2, 3):
        journal = SqliteJobStore(path)
        await journal.open()
        if attempt == 1:
            await journal.insert(new_job("poison"))
            await journal.insert(new_job("later"))
        requeued, failed = await journal.recover_interrupted(max_attempts=3)
        assert (requeued, failed) == (([], []) if attempt == 1 else (["poison"], []))
        claimed = await journal.claim_next()
        assert claimed is not None and claimed.job_id == "poison"  # keeps its place at the front
        assert claimed.attempts == attempt
        await journal.close()  # the "crash": closed with the job still processing

    journal = SqliteJobStore(path)
    await journal.open()
    requeued, failed = await journal.recover_interrupted(max_attempts=3)
    assert (requeued, failed) == ([], ["poison"])
    poison = await journal.get("poison")
    assert poison is not None and poison.status is JobStatus.FAILED
    assert "crashed on this job 3 times" in (poison.error or "")
    later = await journal.claim_next()
    assert later is not None and later.job_id == "later"
    await journal.close()


async def test_release_refunds_the_attempt(journal: SqliteJobStore) -> None:
    await journal.insert(new_job("a"))
    await journal.claim_next()
    await journal.release("a")
    job = await journal.get("a")
    assert job is not None and job.status is JobStatus.QUEUED and job.attempts == 0


async def test_journal_is_wal_and_survives_reopen(tmp_path: Path) -> None:
    path = tmp_path / "jobs.db"
    journal = SqliteJobStore(path)
    await journal.open()
    await journal.insert(new_job("kept"))
    await journal.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = SqliteJobStore(path)
    await reopened.open()
    assert (await reopened.get("kept")) is not None
    await reopened.close()


async def test_loaded_model_jobs_overtake_only_within_patience(journal: SqliteJobStore) -> None:
    from dataclasses import replace

    await journal.insert(replace(new_job("other-model"), model="base"))
    await journal.insert(new_job("loaded-model"))
    picked = await journal.claim_next(prefer={"tiny.en"}, patience_s=60)
    assert picked is not None and picked.job_id == "loaded-model"  # no reload for one job
    await journal.insert(new_job("loaded-2"))
    picked = await journal.claim_next(prefer={"tiny.en"}, patience_s=0)  # patience spent
    assert picked is not None and picked.job_id == "other-model"


async def test_crash_requeues_until_the_limit_then_fails(journal: SqliteJobStore) -> None:
    await journal.insert(new_job("p"))
    for attempt in (1, 2):
        claimed = await journal.claim_next()
        assert claimed is not None and claimed.attempts == attempt
        failed = await journal.requeue_crashed("p", max_attempts=2)
        job = await journal.get("p")
        assert job is not None
        assert failed is (attempt == 2)
        assert job.status is (JobStatus.FAILED if attempt == 2 else JobStatus.QUEUED)
    job = await journal.get("p")
    assert job is not None and job.error is not None and "crashed on this job 2 times" in job.error


async def test_journal_from_before_the_note_column_gains_it(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:  # the first release's table, without `note`
        conn.execute(
            "CREATE TABLE jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL UNIQUE, "
            "status TEXT NOT NULL, audio_file TEXT NOT NULL, audio_sha256 TEXT NOT NULL, "
            "audio_bytes INTEGER NOT NULL, original_filename TEXT, model TEXT NOT NULL, language TEXT, "
            "task TEXT NOT NULL, callback_url TEXT, duration_s REAL, progress REAL NOT NULL DEFAULT 0, "
            "error TEXT, attempts INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, "
            "started_at REAL, completed_at REAL)"
        )
        conn.execute(
            "INSERT INTO jobs (job_id, status, audio_file, audio_sha256, audio_bytes, model, task, "
            "created_at) VALUES ('old', 'queued', 'old.wav', 'x', 1, 'tiny.en', 'transcribe', 1.0)"
        )
    journal = SqliteJobStore(path)
    await journal.open()
    try:
        job = await journal.get("old")
        assert job is not None and job.note is None
        await journal.set_note("old", "fell back")
        job = await journal.get("old")
        assert job is not None and job.note == "fell back"
    finally:
        await journal.close()
