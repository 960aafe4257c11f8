"""Smoke test of the benchmark harness: a quick run of its cheapest sections writes real numbers.

The full benchmark takes tens of minutes; this only proves the harness still drives the
service (start-up, uploads, status, RSS sampling) and writes its JSON and markdown.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_of_memory_and_journal(tmp_path: Path) -> None:
    out, md = tmp_path / "bench.json", tmp_path / "bench.md"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--only",
            "memory,journal",
            "--engines",
            "faster-whisper",
            "--upload-mb",
            "20",
            "--journal-jobs",
            "200",
            "--json",
            str(out),
            "--markdown",
            str(md),
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    memory, journal = results["sections"]["memory"], results["sections"]["journal"]
    assert memory["status"] == journal["status"] == "ok"

    upload = memory["data"]["upload"]
    assert upload["status"] == 202
    assert upload["bytes"] >= 20 * 1024 * 1024 - 64
    assert _number(upload["peak_above_idle_mib"])
    assert memory["data"]["faster-whisper"]["idle_rss_mib"] > 50  # a loaded model, not an empty process

    startup = journal["data"]["faster-whisper"]["startup 200 jobs"]
    assert 0 < startup["listening_s"] <= startup["model_loaded_s"]
    status = journal["data"]["faster-whisper"]["/status/{id}"]
    assert status["n"] > 0 and status["p50_ms"] > 0 and status["p99_ms"] >= status["p50_ms"]

    for section in (memory, journal):
        assert section["targets"] and all(t["result"] in ("PASS", "MISS") for t in section["targets"])
    text = md.read_text()
    assert "### 6. Memory" in text and "### 7. Journal scale" in text and "| CPU |" in text
    assert not list(tmp_path.glob("bench-*")), "the harness must remove its work dir"
