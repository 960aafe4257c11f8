"""`python -m service <subcommand>`: the real CLI, run as a person would, against a real server.

Each command is a subprocess (`sys.executable -m service ...` in the repository); the servers
come from `server_factory` (real tiny.en, greedy decoding, one torch thread), started with flags
only, so every test here also checks that `python -m service --port N --storage-dir D` serves.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import srt
from conftest import (
    REPO,
    ServerProcess,
    eval_clip,
    free_port,
    reference_text,
    wait_for_status,
    word_error_rate,
)

from mcp_tools.client import TOKEN_ENV, derive_job_id
from service.cli import SUBCOMMANDS, URL_ENV, Progress

CLIP = "sense_and_sensibility_01_austen_64kb-0870.wav"  # 7 s of read speech
OTHERS = ("LDC93S1.wav", "sense_and_sensibility_01_austen_64kb-0880.wav")
MAX_WER = 0.35

Cli = Callable[..., subprocess.CompletedProcess[str]]


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """One CLI call with neither the URL nor the token inherited from the caller's environment."""
    base = {k: v for k, v in os.environ.items() if k not in (URL_ENV, TOKEN_ENV)}
    return subprocess.run(
        [sys.executable, "-m", "service", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**base, **(env or {})},
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """Failures are a single `error: ...` line on stderr, never a traceback."""
    assert "Traceback" not in result.stderr, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def start_server(
    server_factory: Callable[..., ServerProcess], monkeypatch: pytest.MonkeyPatch
) -> Callable[..., ServerProcess]:
    """A real server, greedy and on one torch thread, so it shares two cores politely."""
    if "OMP_NUM_THREADS" not in os.environ:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")

    def start(*extra: str) -> ServerProcess:
        return server_factory(extra_args=["--beam-size", "1", *extra]).start()

    return start


# -- no server needed ---------------------------------------------------------------------------


def test_help_lists_the_subcommands_and_serve_keeps_the_server_flags() -> None:
    result = run_cli("--help")
    assert result.returncode == 0, result.stderr
    for name in SUBCOMMANDS:
        assert f"    {name} " in result.stdout, (name, result.stdout)
    assert "Exit codes" in result.stdout
    served = run_cli("serve", "--help")
    assert served.returncode == 0 and "--storage-dir" in served.stdout and "--api-token" in served.stdout


def test_usage_errors_exit_2_before_anything_is_sent(tmp_path: Path) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # nothing listens: a usage error must not get that far
    missing = run_cli("submit", tmp_path / "nope.wav", "--url", nowhere)
    assert missing.returncode == 2 and "Audio file not found" in one_line_error(missing)
    assert run_cli("submit", "--url", nowhere).returncode == 2  # no FILE
    bad_priority = run_cli("submit", eval_clip(CLIP), "--priority", "asap", "--url", nowhere)
    assert bad_priority.returncode == 2 and "--priority" in bad_priority.stderr
    two_with_one_id = run_cli("submit", eval_clip(CLIP), eval_clip(OTHERS[0]), "--job-id", "x")
    assert two_with_one_id.returncode == 2 and "--job-id" in two_with_one_id.stderr
    bad_url = run_cli("jobs", "--url", "ftp://somewhere")
    assert bad_url.returncode == 2 and "--url" in one_line_error(bad_url)
    assert run_cli("no-such-command").returncode == 2


def test_unreachable_service_exits_2_and_says_what_to_do() -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"
    for result in (run_cli("health", "--url", nowhere), run_cli("jobs", env={URL_ENV: nowhere})):
        assert result.returncode == 2, result
        line = one_line_error(result)
        assert f"not reachable at {nowhere}" in line and "start it with" in line and "--url" in line, line
        assert result.stdout == ""


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_redrawn_bar_on_a_terminal_and_lines_elsewhere() -> None:
    tty = _Terminal()
    bar = Progress("job-1", tty)
    bar.update({"status": "queued", "progress": 0.0, "queue_position": 2})
    bar.update({"status": "processing", "progress": 0.5})
    bar.finish({"status": "completed", "progress": 1.0})
    drawn = tty.getvalue()
    assert drawn.count("\r") == 3 and "position 2" in drawn and " 50% processing" in drawn
    assert "[" + "#" * 30 + "] 100% completed\n" in drawn and "job-1: completed after" in drawn

    plain = io.StringIO()
    lines = Progress("job-2", plain)
    for fraction in (0.0, 0.0, 0.25, 0.25):
        lines.update({"status": "processing", "progress": fraction})
    lines.finish({"status": "completed", "progress": 1.0})
    assert "\r" not in plain.getvalue()
    assert plain.getvalue().splitlines()[:2] == ["job-2: processing 0%", "job-2: processing 25%"]


# -- against a real server -------------------------------------------------------------------


@pytest.mark.slow
def test_submit_wait_status_download_jobs_and_the_listings(
    start_server: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    server = start_server()
    url = ("--url", server.url)
    clip = eval_clip(CLIP)
    job_id = derive_job_id(clip)

    waited = run_cli("submit", clip, "--wait", *url)
    assert waited.returncode == 0, waited.stderr
    wer = word_error_rate(reference_text(CLIP), waited.stdout)
    assert wer < MAX_WER, f"WER {wer:.2f}: {waited.stdout!r}"
    assert f"job {job_id} queued" in waited.stderr  # what was submitted ...
    assert f"{job_id}: " in waited.stderr and "%" in waited.stderr  # ... how it went ...
    assert f"{job_id}: completed after" in waited.stderr  # ... and how it ended, all on stderr

    shown = run_cli("status", job_id, *url)
    assert shown.returncode == 0 and "completed" in shown.stdout and "tiny.en" in shown.stdout, shown
    as_json = json.loads(run_cli("status", job_id, "--json", *url).stdout)
    assert as_json["status"] == "completed" and as_json["job_id"] == job_id

    srt_path = tmp_path / "out.srt"
    downloaded = run_cli("download", job_id, "--format", "srt", "-o", srt_path, *url)
    assert downloaded.returncode == 0, downloaded.stderr
    cues = list(srt.parse(srt_path.read_text(encoding="utf-8")))
    assert cues and cues[0].start.total_seconds() >= 0
    assert word_error_rate(reference_text(CLIP), " ".join(c.content for c in cues)) < MAX_WER

    finished = run_cli("cancel", job_id, *url)  # nothing to cancel: the service's 409, exit 1
    assert finished.returncode == 1 and "already completed" in one_line_error(finished)
    assert run_cli("status", "never-made", *url).returncode == 1

    # Two files at once: submitted, then listed; then waited on into a folder, one file each.
    clips = [eval_clip(name) for name in OTHERS]
    submitted = run_cli("submit", *clips, *url)
    assert submitted.returncode == 0, submitted.stderr
    ids = submitted.stdout.split()
    assert ids == [derive_job_id(c) for c in clips]
    listed = run_cli("jobs", *url)
    assert listed.returncode == 0 and all(i in listed.stdout for i in [*ids, job_id]), listed.stdout
    assert listed.stdout.startswith("JOB ")
    listing = json.loads(run_cli("jobs", "--json", "--limit", "2", *url).stdout)
    assert listing["count"] == 2 and listing["next_cursor"] is not None
    assert {job["job_id"] for job in listing["jobs"]} == set(ids)  # newest first

    out_dir = tmp_path / "transcripts"
    collected = run_cli("submit", *clips, "--format", "vtt", "--output", out_dir, *url)  # a safe retry
    assert collected.returncode == 0, collected.stderr
    assert "already submitted" in collected.stderr
    for job in ids:
        assert (out_dir / f"{job}.vtt").read_text(encoding="utf-8").startswith("WEBVTT"), job
    assert collected.stdout.split() == [str(out_dir / f"{job}.vtt") for job in ids]

    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("this is a text file, not audio\n" * 50)
    rejected = run_cli("submit", not_audio, "--wait", *url)  # the service's 415: exit 1
    assert rejected.returncode == 1
    line = one_line_error(rejected)
    assert "notes.wav" in line and "not audio" in line, line

    models = run_cli("models", *url)
    assert models.returncode == 0 and models.stdout.startswith("MODEL ")
    row = next(line for line in models.stdout.splitlines() if line.startswith("tiny.en "))
    assert row.split()[1:3] == ["yes", "yes"], row  # the default, and loaded
    assert json.loads(run_cli("models", "--json", *url).stdout)["default"] == "tiny.en"

    queue = run_cli("queue", *url)
    assert queue.returncode == 0 and "nothing running, nothing queued" in queue.stdout, queue.stdout
    assert json.loads(run_cli("queue", "--json", *url).stdout)["queue_length"] == 0

    health = run_cli("health", *url)
    assert health.returncode == 0 and f"{server.url}: ready" in health.stdout, health.stdout
    assert json.loads(run_cli("health", "--json", *url).stdout)["model_loaded"] is True


@pytest.mark.slow
def test_cancel_a_queued_job_and_urgent_priority_jumps_the_queue(
    start_server: Callable[..., ServerProcess], long_wav: Path
) -> None:
    server = start_server()
    url = ("--url", server.url)
    long_id = run_cli("submit", long_wav, *url).stdout.strip()
    wait_for_status(server.url, long_id, {"processing"})  # the worker is busy for a while now

    routine, rush = (eval_clip(name) for name in OTHERS)
    routine_id = run_cli("submit", routine, *url).stdout.strip()
    urgent = run_cli("submit", rush, "--priority", "urgent", *url)
    assert urgent.returncode == 0, urgent.stderr
    rush_id = urgent.stdout.strip()

    queue = json.loads(run_cli("queue", "--json", *url).stdout)
    assert [job["job_id"] for job in queue["running"]] == [long_id]
    assert [job["job_id"] for job in queue["queued"]] == [rush_id, routine_id], queue
    assert queue["queued"][0]["priority_name"] == "urgent"
    table = run_cli("queue", *url).stdout
    assert "running:" in table and "queued, in run order:" in table and "10 (urgent)" in table, table
    queued = run_cli("jobs", "--status", "queued", *url).stdout
    assert routine_id in queued and rush_id in queued and long_id not in queued

    cancelled = run_cli("cancel", routine_id, *url)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "cancelled (was queued)" in cancelled.stdout
    status = run_cli("status", routine_id, *url)  # a cancelled job: shown, and exit 1
    assert status.returncode == 1 and "cancelled" in status.stdout, status

    stopped = run_cli("cancel", long_id, *url)  # the running one stops within seconds
    assert stopped.returncode == 0 and "was processing" in stopped.stdout, stopped
    done = run_cli("status", rush_id, "--wait", "120", "--json", *url)
    assert done.returncode == 0 and json.loads(done.stdout)["status"] == "completed", done.stdout
    ended = run_cli("status", long_id, "--wait", "60", "--json", *url)
    assert ended.returncode == 1 and json.loads(ended.stdout)["status"] == "cancelled"


@pytest.mark.slow
def test_token_from_the_flag_or_the_environment(start_server: Callable[..., ServerProcess]) -> None:
    server = start_server("--api-token", "s3cret")
    url = ("--url", server.url)
    refused = run_cli("jobs", *url)
    assert refused.returncode == 2
    line = one_line_error(refused)
    assert "needs an API token" in line and "--token" in line and TOKEN_ENV in line, line
    assert run_cli("jobs", "--token", "wrong", *url).returncode == 2
    assert run_cli("jobs", "--token", "s3cret", *url).returncode == 0
    assert run_cli("jobs", *url, env={TOKEN_ENV: "s3cret"}).returncode == 0
    assert run_cli("health", *url).returncode == 0  # /health stays open
    clip = eval_clip(OTHERS[0])
    waited = run_cli("submit", clip, "--wait", "--format", "json", "--token", "s3cret", *url)
    assert waited.returncode == 0, waited.stderr
    assert json.loads(waited.stdout)["segments"]
