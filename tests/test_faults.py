"""Storage faults through a real server: a full disk never ends the worker nor loses a job.

The storage lives on a small tmpfs mounted for the test (root can mount one here and in CI);
filling it makes every write fail with ENOSPC or SQLITE_FULL, as on a real full volume.
"""

from __future__ import annotations

import contextlib
import errno
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import (
    ServerProcess,
    eval_clip,
    reference_text,
    wait_for_status,
    word_error_rate,
)

pytestmark = pytest.mark.slow

LONG = "1272-128104-0004-8k.wav"  # 29 s: still decoding when the disk fills
CLIP = "61-70968-0000.flac"


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 48 MiB tmpfs: room for the journal and a few uploads, quick to fill."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs for the full-disk tests: {done.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    """Write zeros until the file system says it is full."""
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fp:
        while True:
            try:
                fp.write(block)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
                break
    with contextlib.suppress(OSError), open(path, "ab", buffering=0) as fp:
        while True:  # the last partial megabyte
            fp.write(b"\0" * 4096)


def upload(url: str, path: Path, **fields: str) -> requests.Response:
    with open(path, "rb") as fp:
        return requests.post(f"{url}/transcribe", files={"file": (path.name, fp)}, data=fields, timeout=60)


def health(url: str) -> tuple[int, dict[str, Any]]:
    answer = requests.get(f"{url}/health", timeout=10)
    return answer.status_code, answer.json()


def wait_health(url: str, code: int, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        status, body = health(url)
        if status == code:
            return body
        time.sleep(0.2)
    raise AssertionError(f"/health never answered {code}; last {body}")


def test_a_full_disk_makes_jobs_wait_and_they_finish_once_space_is_freed(
    small_disk: Path, tmp_path: Path
) -> None:
    storage = small_disk / "storage"
    server = ServerProcess(
        storage,
        extra_args=["--model-dir", str(tmp_path / "models"), "--min-free-mb", "0", "--no-transcript-cache"],
    ).start()
    try:
        url = server.url
        pid = server.proc.pid if server.proc else None
        restarts = health(url)[1]["worker_restarts"]

        # A long job occupies the worker; a short one waits behind it.
        long_job = upload(url, eval_clip(LONG), job_id="long-meeting")
        assert long_job.status_code == 202, long_job.text
        wait_for_status(url, "long-meeting", {"processing"}, timeout=60)
        short_job = upload(url, eval_clip(CLIP), job_id="short-clip")
        assert short_job.status_code == 202, short_job.text

        # The disk fills while the long job decodes.
        filler = small_disk / "filler.bin"
        fill(filler)

        # An upload now gets 507 with advice, and leaves nothing behind.
        refused = upload(url, eval_clip(CLIP), job_id="refused")
        assert refused.status_code == 507, refused.text
        assert "full" in refused.json()["error"].lower()
        assert list((storage / "tmp").iterdir()) == []
        assert requests.get(f"{url}/status/refused", timeout=10).status_code == 404

        # The long job cannot write its transcript: it waits, /health names the storage.
        sick = wait_health(url, 503, timeout=120)
        assert sick["status"] == "unavailable"
        assert "storage" in sick["error"] and "full" in sick["error"].lower(), sick
        assert requests.get(f"{url}/status/long-meeting", timeout=10).json()["status"] == "processing"
        assert requests.get(f"{url}/status/short-clip", timeout=10).json()["status"] == "queued"

        # Space comes back: both jobs finish, with no restart of anything.
        filler.unlink()
        long_done = wait_for_status(url, "long-meeting", {"completed", "failed"}, timeout=240)
        short_done = wait_for_status(url, "short-clip", {"completed", "failed"}, timeout=120)
        assert long_done["status"] == "completed", long_done
        assert short_done["status"] == "completed", short_done
        text = requests.get(f"{url}/download/short-clip?format=txt", timeout=10).text
        assert word_error_rate(reference_text(CLIP), text) < 0.2
        long_text = requests.get(f"{url}/download/long-meeting?format=txt", timeout=10).text
        assert word_error_rate(reference_text(LONG), long_text) < 0.2
        well = wait_health(url, 200, timeout=30)
        assert well["status"] == "ok"
        assert well["worker_restarts"] == restarts
        assert server.proc is not None and server.proc.poll() is None and server.proc.pid == pid
        assert "the storage takes writes again" in server.log()
    finally:
        server.kill()
