"""The reliability campaign (scripts/chaos.py) in its short form: every part must hold.

It starts real servers (a SIGKILL loop, inference kills, a full disk, hostile input, a burst
against --max-queue, hundreds of progress streams), so it is slow; the table it prints is
what is checked, row by row, besides its exit status.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EVAL_DIR, REPO

pytestmark = pytest.mark.slow

PARTS = ("kill", "inference", "disk", "malformed", "queue", "streams")
ROW = re.compile(r"^\| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (.*) \|$")


@pytest.mark.timeout(900)
def test_the_quick_campaign_loses_nothing_and_never_answers_5xx(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "chaos.py"), "--quick", "--work-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=880,
        env={**os.environ, "EVAL_DIR": str(EVAL_DIR)},
    )
    output = done.stdout + done.stderr
    rows = {m.group(1): m.groups() for line in output.splitlines() if (m := ROW.match(line))}
    assert set(rows) == set(PARTS), output[-4000:]
    for part, (_, tried, survived, lost, errors_5xx, note) in rows.items():
        assert lost == "0", f"{part}: {note}"
        assert errors_5xx == "0", f"{part}: {note}"
        if not note.startswith("skipped"):
            assert int(tried) > 0 and survived == tried, f"{part}: {note}"
    assert done.returncode == 0, output[-4000:]
