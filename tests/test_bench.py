"""Smoke test of the benchmark harness: a quick run of its cheapest sections writes real numbers.

The full benchmark takes tens of minutes; this only proves the harness still drives the
service (start-up, uploads, status, RSS sampling) and writes its JSON and markdown.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import redis

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


def test_every_section_is_registered_and_titled() -> None:
    """bench.py's list, the section functions and the report titles name the same sections, in order."""
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    from bench import report, sections

    spec = importlib.util.spec_from_file_location("bench_cli", REPO / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    assert cli.ALL_SECTIONS == list(sections.SECTIONS) == list(report.TITLES)
    assert "scale" in cli.ALL_SECTIONS and "long" in cli.ALL_SECTIONS
    args = cli.parse_args(["--quick", "--only", "scale"])
    assert args.only == ["scale"] and args.scale_jobs == 8


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_quick_bench_of_scale(tmp_path: Path) -> None:
    """One and two instances on the machine's Redis: every job done once, jobs/min for both, keys removed."""
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "scripts" / "bench.py"),
            "--quick",
            "--only",
            "scale",
            "--engines",
            "faster-whisper",
            "--scale-jobs",
            "4",
            "--json",
            str(out),
            "--workdir",
            str(tmp_path),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=220,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    scale = json.loads(out.read_text())["sections"]["scale"]
    assert scale["status"] == "ok" and "Scale-out on one Redis queue" in proc.stdout
    data = scale["data"]
    assert data["jobs"] == 4 and data["cores"] >= 1 and _number(data["ratio_2_over_1"])
    assert _number(data["ratio_2_over_1_with_2_workers"])
    for name in ("1x1", "1x2", "2x1"):
        case = data["cases"][name]
        n = case["instances"]
        assert case["jobs_per_min"] > 0 and sum(case["jobs_run_by_instance"]) == 4
        assert case["threads_each"] == max(1, data["threads_total"] // n)
        assert len(case["jobs_run_by_instance"]) == n and case["workers_each"] == int(name[-1])
        prefix = case["flags"][case["flags"].index("--redis-prefix") + 1]
        client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
        try:
            assert not list(client.scan_iter(match=f"{prefix}:*")), "the section must remove its Redis keys"
        finally:
            client.close()
    assert not list(tmp_path.glob("bench-*")), "the harness must remove its work dir"
