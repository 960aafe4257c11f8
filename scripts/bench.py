#!/usr/bin/env python
"""Benchmark the service against the ways Whisper was run without it, on real speech.

    python scripts/bench.py [--quick]
                            [--only cold,overhead,engines,burst,responsiveness,memory,journal,scale,long,
                                    batched]
                            [--json PATH] [--markdown PATH] [--threads N] [--repeat N] [--redis-url URL]

Sections (scripts/bench/sections.py says exactly what each one times):
  cold            a fresh process per file (import, load, transcribe) vs the warm service end to end
  overhead        the service end to end vs the same engine called in-process, same options
  engines         openai-whisper vs faster-whisper int8 / float32: speed and word error rate
  burst           many short clips at once: the service's concurrency options vs sequential in-process
  responsiveness  /health and /status latency while a long job runs
  memory          HTTP-process RSS while a big upload streams in; idle RSS per engine
  journal         start-up time and /status latency with thousands of jobs in the journal
  scale           jobs per minute with one and with two instances on one Redis queue (needs Redis)
  long            long recordings: memory vs length (10 min / 3 h), kill -9 and resume, chunked vs
                  whole-file decode (speed, WER, non-speech, start times), urgent wait; ~25 min alone
  batched         --batch-size 1 vs 8 (speed, WER), memory batched (10 min / 3 h), diarization memory,
                  time and DER at 1 / 10 / 60 min; ~35 min alone

Every service process and in-process model gets the same thread count (--threads, also exported
as OMP_NUM_THREADS) and beam size. A failing section is recorded in the JSON and the run goes on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

SCRIPTS = Path(__file__).resolve().parent
REPO = SCRIPTS.parent
for _path in (str(REPO), str(SCRIPTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

ALL_SECTIONS = [
    "cold",
    "overhead",
    "engines",
    "burst",
    "responsiveness",
    "memory",
    "journal",
    "scale",
    "long",
    "batched",
]
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def _available_cores() -> int:
    """The service's own idea of the cores it may use (affinity and cgroup quota), when it has one."""
    try:
        from service.cpus import available_cpus

        return available_cpus()
    except ImportError:
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python scripts/bench.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--quick", action="store_true", help="3 clips, 1 repetition, small sizes: a smoke run"
    )
    parser.add_argument(
        "--only",
        default=",".join(ALL_SECTIONS),
        help=f"comma-separated sections to run (default all: {', '.join(ALL_SECTIONS)})",
    )
    parser.add_argument("--json", type=Path, default=Path("bench-results.json"), help="results file (JSON)")
    parser.add_argument(
        "--markdown", type=Path, help="also write the tables and the machine as markdown here"
    )
    parser.add_argument(
        "--threads", type=int, default=0, help="inference threads for everything (0: the cores available)"
    )
    parser.add_argument("--repeat", type=int, help="repetitions per measurement (default 3, 1 with --quick)")
    parser.add_argument(
        "--beam-size", type=int, default=5, help="beam size for every engine (default 5, the service's)"
    )
    parser.add_argument("--burst-size", type=int, help="clips in the burst (default 32, 8 with --quick)")
    parser.add_argument(
        "--upload-mb", type=int, help="size of the big upload in MiB (default 1024, 100 with --quick)"
    )
    parser.add_argument(
        "--journal-jobs", type=int, help="jobs in the journal (default 10000, 1000 with --quick)"
    )
    parser.add_argument(
        "--scale-jobs", type=int, help="clips per batch in the scale section (default 16, 8 with --quick)"
    )
    parser.add_argument(
        "--redis-url",
        default="redis://127.0.0.1:6379/0",
        help="Redis the scale section's instances share (a fresh key prefix per case, removed afterwards)",
    )
    parser.add_argument(
        "--burst-variants",
        help="service flags to try in the burst, ';' between configurations, e.g. '--workers 1;--workers 2' "
        "(default: what the build's --help offers)",
    )
    parser.add_argument(
        "--engines",
        help="comma-separated service engines for the sections that run each one (default: every engine "
        "the build offers); the engines section always compares all three",
    )
    parser.add_argument(
        "--workdir", type=Path, help="where temporary storage dirs go (default: a new temp dir)"
    )
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep the temp dir (service logs) afterwards"
    )
    args = parser.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = [s for s in only if s not in ALL_SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}; choose from {', '.join(ALL_SECTIONS)}")
    args.only = [s for s in ALL_SECTIONS if s in only]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    if args.burst_size is None:
        args.burst_size = 8 if args.quick else 32
    if args.upload_mb is None:
        args.upload_mb = 100 if args.quick else 1024
    if args.journal_jobs is None:
        args.journal_jobs = 1000 if args.quick else 10_000
    if args.scale_jobs is None:
        args.scale_jobs = 8 if args.quick else 16
    if args.threads <= 0:
        args.threads = _available_cores()
    if (
        min(args.repeat, args.burst_size, args.upload_mb, args.journal_jobs, args.scale_jobs, args.beam_size)
        < 1
    ):
        parser.error(
            "--repeat, --burst-size, --upload-mb, --journal-jobs, --scale-jobs and --beam-size "
            "must be at least 1"
        )
    return args


def _raise_on_sigterm(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` kills the services this run started."""
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Before torch or CTranslate2 load: their pools size themselves once, from these.
    for name in THREAD_VARIABLES:
        os.environ[name] = str(args.threads)
    signal.signal(signal.SIGTERM, _raise_on_sigterm)

    import torch

    torch.set_num_threads(args.threads)

    from bench import common, report

    started = time.perf_counter()
    workdir = Path(tempfile.mkdtemp(prefix="bench-", dir=args.workdir))
    results: dict[str, Any] = {
        "meta": {
            "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "threads": args.threads,
            "repeat": args.repeat,
            "beam_size": args.beam_size,
            "burst_size": args.burst_size,
            "upload_mb": args.upload_mb,
            "journal_jobs": args.journal_jobs,
            "scale_jobs": args.scale_jobs,
            "sections": args.only,
            "machine": common.machine_info(),
            # Thread-pool knobs change CPU numbers a lot (OpenMP spin-waiting on a shared host, above all).
            "environment": {
                k: v for k, v in os.environ.items() if k.startswith(("OMP_", "MKL_", "GOMP_", "KMP_"))
            },
            "load_average_start": common.load_average(),
            "workdir": str(workdir),
        },
        "sections": {},
    }

    def log(message: str) -> None:
        print(message, flush=True)

    try:
        ctx = _context(args, workdir, results["meta"], log)
        log(
            f"bench: {', '.join(args.only)}; {args.threads} threads, {args.repeat} repetition(s), "
            f"engines {', '.join(ctx.engines())}; work dir {workdir}"
        )
        for name in args.only:
            results["sections"][name] = _run_section(name, ctx, log)
            report.write_json(args.json, results)  # after every section: an interrupted run keeps its results
    except KeyboardInterrupt:
        log("interrupted; writing what was measured")
        results["meta"]["interrupted"] = True
    except Exception as exc:  # the set-up failed, so nothing could run: say why in the results
        log(traceback.format_exc())
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        results["meta"]["wall_s"] = round(time.perf_counter() - started, 1)
        results["meta"]["load_average_end"] = common.load_average()
        report.write_json(args.json, results)
        if args.markdown is not None:
            args.markdown.write_text(report.markdown(results), encoding="utf-8")
        if args.keep_workdir:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    log("\n" + report.summary_text(results))
    log(f"results: {args.json}" + (f", {args.markdown}" if args.markdown else ""))
    failed = [n for n, s in results["sections"].items() if s.get("status") != "ok"]
    return 1 if failed or results["meta"].get("interrupted") or results.get("error") else 0


def _context(
    args: argparse.Namespace, workdir: Path, meta: dict[str, Any], log: Callable[[str], None]
) -> Any:
    """Discover what the service build offers, decode the clips, and bundle the run's settings."""
    from bench import common, sections
    from bench.server import service_help

    help_ = service_help()
    meta["service_flags"] = sorted(help_.flags)
    meta["service_engines"] = list(help_.engines)
    clip_names = common.QUICK_CLIPS if args.quick else common.ENGLISH_CLIPS
    clips = [common.load_clip(name) for name in clip_names]
    english = {c.name: c for c in clips}
    for name in common.ENGLISH_CLIPS:
        if name not in english:
            english[name] = common.load_clip(name)
    short = [c for c in english.values() if c.duration_s <= common.SHORT_CLIP_MAX_S]
    long_names = common.QUICK_LONG_PARTS if args.quick else common.LONG_PARTS
    variants = (
        [v.split() for v in args.burst_variants.split(";")] if args.burst_variants is not None else None
    )
    ctx = sections.Context(
        quick=args.quick,
        threads=args.threads,
        repeat=args.repeat,
        beam_size=args.beam_size,
        workdir=workdir,
        clips=clips,
        short_clips=short,
        long_parts=[english[name] for name in long_names],
        burst_size=args.burst_size,
        upload_mb=args.upload_mb,
        journal_jobs=args.journal_jobs,
        burst_variants=variants,
        log=log,
        only_engines=args.engines.split(",") if args.engines else None,
        scale_jobs=args.scale_jobs,
        redis_url=args.redis_url,
    )
    if not ctx.engines():
        raise RuntimeError(f"none of the engines {args.engines} is offered by this build: {help_.engines}")
    return ctx


def _run_section(name: str, ctx: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """One section; its failure is recorded, never raised, so the run goes on."""
    from bench import common, report, sections

    log(f"\n== {name}: {report.TITLES[name]}")
    started = time.perf_counter()
    load_before = common.load_average()
    entry: dict[str, Any]
    try:
        result = sections.SECTIONS[name](ctx)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        log(traceback.format_exc())
        entry = {
            "status": "error",
            "error": f"{type(exc).__name__}: {exc}",
            "traceback": traceback.format_exc(),
        }
    else:
        entry = report.section_entry(result, "ok" if not result.errors else "error")
        log(report.section_text(result))
    entry["wall_s"] = round(time.perf_counter() - started, 2)
    entry["load_average_before"] = load_before
    entry["load_average_after"] = common.load_average()
    log(f"({name} took {entry['wall_s']:.0f} s)")
    return entry


if __name__ == "__main__":
    sys.exit(main())
