"""The `long` section: long recordings, chunked at pauses and checkpointed, measured side by side.

Seven measurements on recordings built from the eval clips by `long_audio.build` (speech with
varied pauses, and every few minutes 40-90 s of silence or noise):

1. memory vs length: a fresh faster-whisper service per recording (10 min and 3 h; --quick 2 and
   20 min); peak RSS of the HTTP process and of the inference child, as VmHWM from
   /proc/<pid>/status (exact, the whole life of that server: model load and the one job) and as
   sampled every 0.2 s while the job runs; the 3 h peak should be within 150 MiB of the short one.
2. kill and resume: a 60 min recording (--quick 10 min); the service is killed with SIGKILL once
   `transcribed_s` passes 60 % of it, its checkpoints are read from jobs.db, and a new server on
   the same storage finishes the job. The audio decoded twice (the chunk in flight at the kill),
   and the resumed transcript's WER against an uninterrupted run's.
3. throughput: a 30 min recording (--quick 5 min) in-process, the chunked pipeline
   (`pipeline.execute`) against the whole-file decode the service did before (`audio.decode`, then
   one `engine.transcribe`), for faster-whisper int8 and openai-whisper: time, x real time, WER.
4. non-speech: 60 s of digital silence, white noise at -50 dBFS, pink noise at -30 dBFS and sine
   chords through both paths: words produced and seconds taken.
5. start times: in the 30 min run, for every clip of >= 2 s, the distance from its start to the
   nearest segment start; clips with no segment start within 1 s, and clips no segment overlaps.
6. urgent wait: a short clip uploaded with priority=urgent while the service decodes a 60 min
   job (--quick 10 min): seconds from upload to its started_at, against the per-chunk decode time
   (the gaps between `transcribed_s` changes seen when polling every 0.1 s).
7. the 30 min chunked transcript's WER against the same clips transcribed one by one.

Runtime on 2 cores (faster-whisper tiny.en ~25x real time, openai-whisper ~12x on a whole file,
about as fast chunked: one 30 s window per chunk): about 30 min at full size on a quiet machine.
The 3 h memory run is the one long part (about 8 min, nearly all of it the job); the 30 min
in-process runs take about 12 min for both engines and paths, the 60 min kill/resume runs about
6 min. The whole-file baselines on non-speech can take minutes with openai-whisper (it loops on
noise and chords through its temperature fallbacks): that is part of what is measured.
--quick: 11 and 23 min measured next to a running test suite (openai-whisper 5x slower there).
Each long recording is decoded once per path (no repetitions), so the times are single runs.
"""

from __future__ import annotations

import contextlib
import gc
import itertools
import json
import math
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil
import requests

from bench import long_audio
from bench.common import EVAL_DIR, SectionResult, Table, median, ratio, target
from bench.server import Client, ServiceProcess, StreamedMultipart, service_help

if TYPE_CHECKING:
    from bench.sections import Context
    from service.engines.base import DecodeOptions, Result
    from service.inference.models import ModelManager

MIB = 1024 * 1024
SERVICE_ENGINE = "faster-whisper"
MEMORY_TARGET_MIB = 150.0
KILL_AT = 0.6  # of the recording's duration, by transcribed_s
KILL_DELAY_CAP_S = 10.0  # the kill comes half a chunk's decode time after that, at most this late
START_MIN_CLIP_S = 2.0
START_WINDOW_S = 1.0
URGENT_CLIP = "LDC93S1.wav"
CHUNK_INTERVALS = 4  # transcribed_s changes timed before the urgent upload, and again after
MAX_CHUNK_S = 30.0  # ChunkingOptions().max_chunk_s: the most a kill can cost
NON_SPEECH_S = 60.0
NON_SPEECH: dict[str, Callable[[], np.ndarray]] = {
    "digital silence": lambda: long_audio.silence(NON_SPEECH_S),
    "white noise -50 dBFS": lambda: long_audio.white_noise(NON_SPEECH_S, -50.0),
    "pink noise -30 dBFS": lambda: long_audio.pink_noise(NON_SPEECH_S, -30.0),
    "sine chords": lambda: long_audio.sine_chords(NON_SPEECH_S),
}


@dataclass(frozen=True)
class Sizes:
    """Recording lengths in seconds."""

    memory_short: float
    memory_long: float
    kill: float
    throughput: float
    urgent: float


FULL = Sizes(memory_short=600, memory_long=3 * 3600, kill=3600, throughput=1800, urgent=3600)
QUICK = Sizes(memory_short=120, memory_long=1200, kill=600, throughput=300, urgent=600)


def clock(seconds: float) -> str:
    """'1 h 05 min', '20 min', '45 s': recording lengths in labels."""
    if seconds >= 3600:
        h, m = divmod(round(seconds / 60), 60)
        return f"{h} h" + (f" {m:02d} min" if m else "")
    if seconds >= 60:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


class Recordings:
    """`long_audio.build` recordings, built once per length and shared between the measurements."""

    def __init__(self, directory: Path, log: Callable[[str], None]) -> None:
        self.directory = directory
        self.log = log
        self._built: dict[int, long_audio.Recording] = {}

    def get(self, seconds: float) -> long_audio.Recording:
        key = round(seconds)
        if key not in self._built:
            self.directory.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            rec = long_audio.build(EVAL_DIR, self.directory / f"long-{key}s.wav", seconds)
            self.log(
                f"  built a {clock(rec.duration_s)} recording ({rec.speech_s:.0f} s of speech, "
                f"{len(rec.clips)} clips) in {time.perf_counter() - started:.1f} s"
            )
            self._built[key] = rec
        return self._built[key]


# -- service side: uploads, status, memory ----------------------------------------------------


def _upload(url: str, path: Path) -> str:
    """A big file as a streamed multipart body (the client never holds it); the new job's id."""
    body = StreamedMultipart(path)
    resp = requests.post(
        url + "/transcribe", data=body, headers={"Content-Type": body.content_type}, timeout=1800
    )
    if resp.status_code not in (200, 202):
        raise RuntimeError(f"upload of {path.name} answered {resp.status_code}: {resp.text[:300]}")
    return str(resp.json()["job_id"])


def _upload_small(url: str, path: Path, **fields: str) -> str:
    with open(path, "rb") as fp:
        resp = requests.post(url + "/transcribe", files={"file": (path.name, fp)}, data=fields, timeout=120)
    if resp.status_code not in (200, 202):
        raise RuntimeError(f"upload of {path.name} answered {resp.status_code}: {resp.text[:300]}")
    return str(resp.json()["job_id"])


def _poll(
    client: Client,
    job_id: str,
    until: Callable[[dict[str, Any]], bool],
    timeout: float,
    what: str,
    interval: float = 0.1,
    each: Callable[[dict[str, Any]], None] | None = None,
    svc: ServiceProcess | None = None,
) -> dict[str, Any]:
    """GET /status every `interval` until `until(body)`; a failed job or a dead server raises."""
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        if svc is not None and svc.proc is not None and svc.proc.poll() is not None:
            raise RuntimeError(f"{what}: the service exited: {svc.log_tail()}")
        body = client.status(job_id)
        if each is not None:
            each(body)
        if until(body):
            return body
        if body.get("status") == "failed":
            raise RuntimeError(f"{what}: job {job_id} failed: {body.get('error')}")
        time.sleep(interval)
    raise TimeoutError(f"{what}: not seen in {timeout:.0f} s; last status {body}")


def _completed(body: dict[str, Any]) -> bool:
    return body.get("status") == "completed"


def _job_timeout(audio_s: float) -> float:
    """How long the bench waits for a job: far beyond tiny.en's pace on two busy cores."""
    return 300.0 + audio_s


def _inference_child(pid: int) -> psutil.Process | None:
    """The spawned inference process (not multiprocessing's resource tracker); the largest, if several."""
    found: list[tuple[int, psutil.Process]] = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if "spawn_main" in " ".join(child.cmdline()):
                    found.append((child.memory_info().rss, child))
    return max(found, key=lambda f: f[0])[1] if found else None


def _vm_hwm(pid: int) -> int | None:
    """The process's resident high-water mark (bytes), from /proc/<pid>/status."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class RolePeaks:
    """RSS of the HTTP process and of its inference child, sampled on a thread; the peak of each."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid = pid
        self.interval = interval
        self.peak = {"http": 0, "inference": 0}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-roles", daemon=True)

    def _run(self) -> None:
        server = psutil.Process(self.pid)
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak["http"] = max(self.peak["http"], server.memory_info().rss)
                child = _inference_child(self.pid)
                if child is not None:
                    self.peak["inference"] = max(self.peak["inference"], child.memory_info().rss)
                self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RolePeaks:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def _memory_run(ctx: Context, rec: long_audio.Recording) -> dict[str, Any]:
    """A fresh service, one job on `rec`: per-process idle RSS, sampled peak and VmHWM."""
    with ctx.service(f"long-memory-{round(rec.duration_s)}s", ctx.args(SERVICE_ENGINE)) as svc:
        assert svc.proc is not None
        time.sleep(1.0)
        child = _inference_child(svc.proc.pid)
        if child is None:
            raise RuntimeError("no inference child process found (is --isolation process the default?)")
        idle = {"http": svc.rss_bytes(include_children=False), "inference": child.memory_info().rss}
        client = Client(svc.url)
        started = time.perf_counter()
        with RolePeaks(svc.proc.pid) as peaks:
            job_id = _upload(svc.url, rec.path)
            uploaded = time.perf_counter()
            body = _poll(client, job_id, _completed, _job_timeout(rec.duration_s), "memory job", 0.5, svc=svc)
        wall = time.perf_counter() - started
        child = _inference_child(svc.proc.pid)
        hwm = {
            "http": _vm_hwm(svc.proc.pid),
            "inference": _vm_hwm(child.pid) if child is not None else None,
        }
        text = client.download(job_id)
        client.close()
    return {
        "audio_s": rec.duration_s,
        "upload_s": uploaded - started,
        "job_wall_s": wall,
        "x_real_time": ratio(rec.duration_s, wall),
        "attempts": body.get("attempts"),
        "wer": long_audio.wer(rec.reference, text),
        "idle_mib": {k: v / MIB for k, v in idle.items()},
        "sampled_peak_mib": {k: v / MIB for k, v in peaks.peak.items()},
        "vm_hwm_mib": {k: (v / MIB if v is not None else math.nan) for k, v in hwm.items()},
        "samples": peaks.samples,
    }


def _checkpoints(storage: Path, job_id: str) -> list[dict[str, Any]]:
    """The job's checkpoints in jobs.db, read as another process would."""
    with closing(sqlite3.connect(storage / "jobs.db", timeout=10)) as conn:
        rows = conn.execute(
            "SELECT data FROM checkpoints WHERE job_id = ? ORDER BY channel, start_s", (job_id,)
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


def _chunk_after(path: Path, seconds: float) -> tuple[float, float] | None:
    """The first speech chunk of the recording ending after `seconds` (the one a kill interrupts)."""
    from service.inference import audio
    from service.inference.chunking import speech_chunks
    from service.inference.pipeline import READ_BLOCK_SECONDS

    for chunk in speech_chunks(audio.AudioStream(path, READ_BLOCK_SECONDS)):
        if chunk.end_s > seconds + 1e-3:
            return max(chunk.start_s, seconds), chunk.end_s
    return None


def _kill_and_resume(ctx: Context, rec: long_audio.Recording) -> dict[str, Any]:
    args = ctx.args(SERVICE_ENGINE)
    storage = ctx.storage("long-kill")
    seen = {"progress_s": 0.0, "transcribed_s": 0.0}
    changes: list[float] = []  # when transcribed_s moved (perf_counter): a chunk was checkpointed

    def watch(body: dict[str, Any]) -> None:
        duration = float(body.get("duration_s") or rec.duration_s)
        seen["progress_s"] = max(seen["progress_s"], float(body.get("progress") or 0.0) * duration)
        transcribed = float(body.get("transcribed_s") or 0.0)
        if transcribed > seen["transcribed_s"]:
            changes.append(time.perf_counter())
            seen["transcribed_s"] = transcribed

    first_started = time.perf_counter()
    with ctx.service("long-kill: first run", args, storage=storage) as first:
        client = Client(first.url)
        job_id = _upload(first.url, rec.path)
        _poll(
            client,
            job_id,
            lambda b: float(b.get("transcribed_s") or 0.0) >= KILL_AT * rec.duration_s,
            _job_timeout(rec.duration_s),
            f"{KILL_AT:.0%} transcribed",
            each=watch,
            svc=first,
        )
        partial = client.session.get(
            f"{first.url}/download/{job_id}", params={"partial": "true", "format": "json"}, timeout=60
        )
        # Land the kill inside a chunk, as a crash at a random moment would: right after a
        # checkpoint nothing is lost. Half a chunk's decode time on, polling meanwhile.
        gaps = [b - a for a, b in itertools.pairwise(changes)]
        delay = min(KILL_DELAY_CAP_S, median(gaps) / 2) if gaps else 0.0
        kill_time = time.perf_counter() + delay
        _poll(
            client,
            job_id,
            lambda b: time.perf_counter() >= kill_time or _completed(b),
            delay + 60,
            "the moment to kill",
            each=watch,
            svc=first,
        )
        first.kill()  # SIGKILL: the inference child first, then the server
        killed_at = time.perf_counter()
        client.close()
    before = _checkpoints(storage, job_id)
    last_end = max((float(c["end"]) for c in before), default=0.0)
    partial_words = len(partial.json().get("text", "").split()) if partial.status_code == 200 else None
    # The resumed run starts at the first chunk past the last checkpoint: the chunk the first
    # run was decoding (a chunk is one window, its audio encoded at once) is all decoded twice.
    in_flight = _chunk_after(rec.path, last_end)
    decoded_twice = (in_flight[1] - in_flight[0]) if in_flight is not None else 0.0

    with ctx.service("long-kill: restarted on the same storage", args, storage=storage) as second:
        client = Client(second.url)
        restarted = time.perf_counter()
        body = _poll(client, job_id, _completed, _job_timeout(rec.duration_s), "resumed job", svc=second)
        resumed_s = time.perf_counter() - restarted
        text = client.download(job_id)
        client.close()
        log = second.log_path.read_text(errors="replace") if second.log_path else ""
    resumed_line = next((line for line in log.splitlines() if "resuming after" in line), None)
    after = _checkpoints(storage, job_id)

    with ctx.service("long-kill: uninterrupted", args) as whole:
        client = Client(whole.url)
        started = time.perf_counter()
        whole_id = _upload(whole.url, rec.path)
        _poll(client, whole_id, _completed, _job_timeout(rec.duration_s), "uninterrupted job", 0.5, svc=whole)
        uninterrupted_s = time.perf_counter() - started
        whole_text = client.download(whole_id)
        client.close()

    return {
        "audio_s": rec.duration_s,
        "killed_at_transcribed_s": seen["transcribed_s"],
        "progress_at_kill_s": seen["progress_s"],
        "checkpoints_at_kill": len(before),
        "checkpoint_attempts": sorted({int(c.get("attempt", 0)) for c in before}),
        "last_checkpoint_end_s": last_end,
        "in_flight_chunk_s": list(in_flight) if in_flight else None,
        "decoded_twice_s": decoded_twice,
        # The first run's furthest progress past its last checkpoint (progress moves only as a
        # window's segments arrive, so inside a one-window chunk it mostly stays at 0).
        "progress_past_checkpoint_s": max(0.0, seen["progress_s"] - last_end),
        "kill_delay_s": delay,
        "decode_time_lost_s": killed_at - changes[-1] if changes else math.nan,
        "median_chunk_decode_s": median(gaps),
        "partial_download_status": partial.status_code,
        "partial_words_at_kill": partial_words,
        "first_run_s": killed_at - first_started,
        "resumed_run_s": resumed_s,
        "resume_logged": resumed_line is not None,
        "resume_log_line": resumed_line,
        "attempts": body.get("attempts"),
        "checkpoints_left_after": len(after),
        "wer_resumed": long_audio.wer(rec.reference, text),
        "uninterrupted_s": uninterrupted_s,
        "wer_uninterrupted": long_audio.wer(rec.reference, whole_text),
        "same_text": text.split() == whole_text.split(),
    }


def _urgent_wait(ctx: Context, rec: long_audio.Recording) -> dict[str, Any]:
    changes: list[tuple[float, float]] = []  # (perf_counter, transcribed_s) when it moved
    last = {"value": -1.0}

    def watch(body: dict[str, Any]) -> None:
        value = body.get("transcribed_s")
        if value is not None and float(value) != last["value"]:
            last["value"] = float(value)
            changes.append((time.perf_counter(), float(value)))

    def intervals(points: list[tuple[float, float]]) -> list[float]:
        return [b[0] - a[0] for a, b in itertools.pairwise(points)]

    with ctx.service("long-urgent", ctx.args(SERVICE_ENGINE)) as svc:
        client = Client(svc.url)
        long_id = _upload(svc.url, rec.path)
        limit = _job_timeout(rec.duration_s)
        _poll(client, long_id, lambda _: len(changes) > CHUNK_INTERVALS, limit, "chunks", each=watch, svc=svc)
        before = intervals(changes)
        uploaded_at = time.time()
        urgent_id = _upload_small(
            svc.url, EVAL_DIR / URGENT_CLIP, priority="urgent", job_id=f"bench-urgent-{uuid.uuid4().hex[:8]}"
        )
        upload_s = time.time() - uploaded_at
        long_at_upload = client.status(long_id)
        started = _poll(
            client, urgent_id, lambda b: b.get("started_at") is not None, 300, "urgent start", 0.05
        )
        done = _poll(client, urgent_id, _completed, 300, "urgent job done", 0.05)
        urgent_done_s = time.time() - uploaded_at
        long_when_done = client.status(long_id)
        mark = len(changes)
        changes.clear()  # timed again from the next change on: the urgent job sat in between
        last["value"] = float(long_when_done.get("transcribed_s") or -1.0)
        _poll(
            client,
            long_id,
            lambda b: len(changes) > CHUNK_INTERVALS or _completed(b),
            limit,
            "chunks after",
            each=watch,
            svc=svc,
        )
        after = intervals(changes)
        log = svc.log_path.read_text(errors="replace") if svc.log_path else ""
        client.close()
    started_at = datetime.fromisoformat(started["started_at"]).timestamp()
    created_at = datetime.fromisoformat(done["created_at"]).timestamp()
    chunk_times = before + after
    return {
        "long_audio_s": rec.duration_s,
        "long_transcribed_s_at_upload": long_at_upload.get("transcribed_s"),
        "upload_request_s": upload_s,
        "upload_to_started_s": started_at - uploaded_at,
        "created_to_started_s": started_at - created_at,
        "upload_to_completed_s": urgent_done_s,
        "long_status_when_urgent_done": long_when_done.get("status"),
        "stepped_aside": "stepped aside" in log,
        "chunk_decode_s": chunk_times,
        "chunk_changes_seen": mark,
        "median_chunk_s": median(chunk_times),
        "max_chunk_s": max(chunk_times, default=math.nan),
    }


# -- in-process side: the chunked pipeline against the whole-file decode ----------------------


@dataclass
class Pipeline:
    """One service engine in-process, with a model manager, as the inference process builds it."""

    label: str
    manager: ModelManager
    model: str
    options: DecodeOptions
    flags: list[str] = field(default_factory=list)

    @classmethod
    def build(cls, ctx: Context, engine: str) -> Pipeline:
        from service.engines import create_engine
        from service.engines.base import DecodeOptions
        from service.inference.models import ModelManager
        from service.settings import parse_settings

        extra = ["--compute-type", "int8"] if engine == "faster-whisper" else []
        if extra and not service_help().has("--compute-type"):
            extra = []
        flags = ctx.args(engine, extra)
        settings = parse_settings(["--storage-dir", str(ctx.inprocess_storage()), *flags], env={})
        manager = ModelManager(create_engine(settings), settings.model, max_models=1, idle_seconds=-1)
        manager.load(settings.model)
        options = DecodeOptions(language=None, task="transcribe", beam_size=settings.beam_size)
        label = f"{engine} int8" if extra else engine
        return cls(label, manager, settings.model, options, flags)

    def chunked(self, path: Path) -> tuple[float, Result]:
        """What the service runs now: stream, cut at pauses, decode chunk by chunk."""
        from service.inference.pipeline import TranscribeRequest, execute

        request = TranscribeRequest(f"bench-{uuid.uuid4().hex[:8]}", str(path), self.model, self.options)
        started = time.perf_counter()
        result = execute(self.manager, request, lambda: False, lambda _: None)
        return time.perf_counter() - started, result

    def whole(self, path: Path) -> tuple[float, Result]:
        """What the service did before: decode the whole file, one transcribe call on it."""
        from service.inference import audio

        started = time.perf_counter()
        pcm = audio.decode(path)
        with self.manager.using(self.model) as model:
            result = self.manager.engine.transcribe(model, pcm, self.options, lambda _: None)
        return time.perf_counter() - started, result

    def pcm(self, pcm: np.ndarray) -> str:
        with self.manager.using(self.model) as model:
            return str(self.manager.engine.transcribe(model, pcm, self.options, lambda _: None).text)


def start_errors(rec: long_audio.Recording, segments: list[tuple[float, float]]) -> dict[str, Any]:
    """For each clip of >= 2 s after a pause of a second or more (where a new segment should
    begin): how far the nearest segment start is from the clip's first speech; and, for every
    clip of >= 2 s, whether any segment overlaps it at all (none: its words were dropped)."""
    starts = [start for start, _ in segments]
    distances = []
    missed = []
    unheard = []
    previous_end = 0.0
    for clip in rec.clips:
        pause = clip.start_s - previous_end
        previous_end = clip.end_s
        if clip.end_s - clip.start_s < START_MIN_CLIP_S:
            continue
        if not any(start < clip.end_s and end > clip.start_s for start, end in segments):
            unheard.append({"clip": clip.name, "start_s": clip.start_s, "end_s": clip.end_s})
        if pause < 1.0:
            continue
        onset = clip.speech_start_s
        nearest = min(starts, key=lambda t: abs(t - onset), default=math.inf)
        distances.append(abs(nearest - onset))
        if distances[-1] > START_WINDOW_S:
            missed.append({"clip": clip.name, "speech_start_s": onset, "nearest_segment_start_s": nearest})
        if not any(start < clip.end_s and end > clip.start_s for start, end in segments):
            unheard.append({"clip": clip.name, "start_s": clip.start_s, "end_s": clip.end_s})
    finite = [d for d in distances if math.isfinite(d)]
    return {
        "clips": len(distances),
        "median_s": median(finite),
        "max_s": max(distances, default=math.nan),
        "dropped": len(missed),
        "missed": missed,
        "no_segment": len(unheard),
        "no_segment_clips": unheard,
    }


def _words(text: str) -> int:
    return len(text.split())


def _in_process(
    ctx: Context, engine: str, rec: long_audio.Recording, noise: dict[str, Path]
) -> dict[str, Any]:
    pipe = Pipeline.build(ctx, engine)
    try:
        ctx.log(f"  {pipe.label}: warm-up")
        pipe.chunked(EVAL_DIR / URGENT_CLIP)
        pipe.whole(EVAL_DIR / URGENT_CLIP)
        out: dict[str, Any] = {"label": pipe.label, "flags": pipe.flags}
        for path_name, run in (("chunked", pipe.chunked), ("whole", pipe.whole)):
            ctx.log(f"  {pipe.label}: {clock(rec.duration_s)} recording, {path_name}")
            seconds, result = run(rec.path)
            out[path_name] = {
                "wall_s": seconds,
                "x_real_time": ratio(rec.duration_s, seconds),
                "wer": long_audio.wer(rec.reference, result.text),
                "words": _words(result.text),
                "segments": len(result.segments),
                "starts": start_errors(rec, [(s.start, s.end) for s in result.segments if s.text.strip()]),
            }
            ctx.log(
                f"    {seconds:.1f} s ({out[path_name]['x_real_time']:.1f}x real time), "
                f"WER {out[path_name]['wer'] * 100:.1f} %"
            )
        out["chunked_over_whole"] = ratio(out["chunked"]["wall_s"], out["whole"]["wall_s"])
        out["non_speech"] = {}
        for kind, path in noise.items():
            entry: dict[str, Any] = {}
            for path_name, run in (("chunked", pipe.chunked), ("whole", pipe.whole)):
                seconds, result = run(path)
                entry[path_name] = {
                    "words": _words(result.text),
                    "wall_s": seconds,
                    "text": result.text[:200],
                }
            out["non_speech"][kind] = entry
            ctx.log(
                f"  {pipe.label}: {kind}: chunked {entry['chunked']['words']} words, "
                f"whole file {entry['whole']['words']} words"
            )
        ctx.log(f"  {pipe.label}: the clips one by one")
        texts = {}
        for name in sorted({c.name for c in rec.clips}):
            pcm, _ = long_audio.load_clip(EVAL_DIR, name)
            texts[name] = pipe.pcm(pcm)
        joined = " ".join(texts[c.name] for c in rec.clips)
        out["clips_one_by_one_wer"] = long_audio.wer(rec.reference, joined)
        return out
    finally:
        del pipe
        gc.collect()


# -- the section ----------------------------------------------------------------------------------


def long(ctx: Context) -> SectionResult:
    sizes = QUICK if ctx.quick else FULL
    engines = ctx.engines()
    res = SectionResult(
        "long",
        f"Long recordings built from the eval clips (pauses of 0.4-8 s, and 40-90 s of silence or "
        f"noise every few minutes). Memory: a fresh {SERVICE_ENGINE} service per recording "
        f"({clock(sizes.memory_short)} and {clock(sizes.memory_long)}), VmHWM of the HTTP process and "
        f"of its inference child (model load included) and their RSS sampled every 0.2 s during the job. "
        f"Kill: SIGKILL once transcribed_s passes {KILL_AT:.0%} of a {clock(sizes.kill)} job, then a "
        "restart on the same storage, against an uninterrupted run. In-process on a "
        f"{clock(sizes.throughput)} recording, per engine: the chunked pipeline (pipeline.execute) "
        "against the whole-file decode the service did before (audio.decode, one engine.transcribe); "
        f"{NON_SPEECH_S:.0f} s of non-speech through both; segment start times against the clips' "
        f"starts; and the clips transcribed one by one. Urgent: a {URGENT_CLIP} upload with "
        f"priority=urgent while a {clock(sizes.urgent)} job runs. One run of each (no repetitions).",
    )
    recordings = Recordings(ctx.workdir / "long-audio", ctx.log)
    noise_dir = ctx.workdir / "long-audio"
    noise_dir.mkdir(parents=True, exist_ok=True)
    noise = {kind: noise_dir / f"{kind.replace(' ', '-')}.wav" for kind in NON_SPEECH}
    for kind, path in noise.items():
        long_audio.write_wav(path, iter([NON_SPEECH[kind]()]))

    # 3, 4, 5, 7: in-process, per engine.
    rec = recordings.get(sizes.throughput)
    per_engine: dict[str, dict[str, Any]] = {}
    for engine in engines:
        per_engine[engine] = _in_process(ctx, engine, rec, noise)
    res.data["in_process"] = {"recording_s": rec.duration_s, "speech_s": rec.speech_s, "engines": per_engine}

    throughput = Table(
        f"Throughput on a {clock(rec.duration_s)} recording, in-process ({rec.speech_s:.0f} s of speech)",
        ["engine", "path", "wall s", "x real time", "WER %", "chunked / whole (time)"],
    )
    starts = Table(
        f"Segment starts against the first speech of clips after a pause of 1 s or more "
        f"({clock(rec.duration_s)} recording, clips >= {START_MIN_CLIP_S:g} s)",
        [
            "engine",
            "path",
            "clips after a pause",
            "median |d| s",
            "max |d| s",
            f"no start within {START_WINDOW_S:g} s",
            "no segment overlapping",
        ],
    )
    non_speech = Table(
        f"{NON_SPEECH_S:.0f} s of non-speech: words produced and seconds taken",
        ["input", "engine", "chunked words", "chunked s", "whole-file words", "whole-file s"],
    )
    clips = Table(
        f"WER of the {clock(rec.duration_s)} recording chunked vs its clips one by one (%)",
        ["engine", "chunked recording", "clips one by one", "difference pt"],
    )
    for e in per_engine.values():
        for path_name, title in (("chunked", "chunked pipeline"), ("whole", "whole file")):
            p = e[path_name]
            throughput.rows.append(
                [
                    e["label"],
                    title,
                    p["wall_s"],
                    p["x_real_time"],
                    p["wer"] * 100,
                    e["chunked_over_whole"] if path_name == "chunked" else None,
                ]
            )
            s = p["starts"]
            starts.rows.append(
                [e["label"], title, s["clips"], s["median_s"], s["max_s"], s["dropped"], s["no_segment"]]
            )
        for kind, entry in e["non_speech"].items():
            non_speech.rows.append(
                [
                    kind,
                    e["label"],
                    entry["chunked"]["words"],
                    entry["chunked"]["wall_s"],
                    entry["whole"]["words"],
                    entry["whole"]["wall_s"],
                ]
            )
        diff = (e["chunked"]["wer"] - e["clips_one_by_one_wer"]) * 100
        clips.rows.append([e["label"], e["chunked"]["wer"] * 100, e["clips_one_by_one_wer"] * 100, diff])
        res.targets.append(
            target(
                f"{e['label']}: non-speech words, chunked (all four inputs)",
                sum(x["chunked"]["words"] for x in e["non_speech"].values()),
                "<=",
                0,
            )
        )
        res.targets.append(
            target(
                f"{e['label']}: non-speech seconds, chunked (slowest input)",
                max(x["chunked"]["wall_s"] for x in e["non_speech"].values()),
                "<",
                5,
                " s",
            )
        )
        res.targets.append(
            target(f"{e['label']}: chunked WER - clips one by one WER", diff, "<=", 1.0, " pt")
        )
        res.targets.append(
            target(
                f"{e['label']}: median segment start error after a pause, chunked",
                e["chunked"]["starts"]["median_s"],
                "<=",
                0.5,
                " s",
            )
        )
        res.targets.append(
            target(
                f"{e['label']}: clips >= {START_MIN_CLIP_S:g} s after a pause with no segment start "
                f"within {START_WINDOW_S:g} s, chunked",
                e["chunked"]["starts"]["dropped"],
                "<=",
                0,
            )
        )
        res.targets.append(
            target(
                f"{e['label']}: clips >= {START_MIN_CLIP_S:g} s with no segment at all, chunked",
                e["chunked"]["starts"]["no_segment"],
                "<=",
                0,
            )
        )

    # 1: memory against length, a fresh service per recording.
    memory_runs: dict[str, dict[str, Any]] = {}
    for seconds in (sizes.memory_short, sizes.memory_long):
        mrec = recordings.get(seconds)
        ctx.log(f"  memory: {clock(mrec.duration_s)} recording")
        memory_runs[clock(seconds)] = _memory_run(ctx, mrec)
    short, longer = memory_runs[clock(sizes.memory_short)], memory_runs[clock(sizes.memory_long)]
    memory_table = Table(
        f"Peak RSS by recording length, {SERVICE_ENGINE} service (MiB; a fresh service per recording)",
        [
            "recording",
            "job s",
            "x real time",
            "HTTP idle",
            "HTTP VmHWM",
            "HTTP sampled peak",
            "inference idle",
            "inference VmHWM",
            "inference sampled peak",
        ],
    )
    for label, m in memory_runs.items():
        memory_table.rows.append(
            [
                label,
                m["job_wall_s"],
                m["x_real_time"],
                m["idle_mib"]["http"],
                m["vm_hwm_mib"]["http"],
                m["sampled_peak_mib"]["http"],
                m["idle_mib"]["inference"],
                m["vm_hwm_mib"]["inference"],
                m["sampled_peak_mib"]["inference"],
            ]
        )
    delta = {
        f"{role} {kind}": longer[kind][role] - short[kind][role]
        for role in ("http", "inference")
        for kind in ("vm_hwm_mib", "sampled_peak_mib")
    }
    memory_table.rows.append(
        [
            f"{clock(sizes.memory_long)} - {clock(sizes.memory_short)}",
            None,
            None,
            longer["idle_mib"]["http"] - short["idle_mib"]["http"],
            delta["http vm_hwm_mib"],
            delta["http sampled_peak_mib"],
            longer["idle_mib"]["inference"] - short["idle_mib"]["inference"],
            delta["inference vm_hwm_mib"],
            delta["inference sampled_peak_mib"],
        ]
    )
    res.data["memory"] = {"runs": memory_runs, "long_minus_short_mib": delta}
    for role, title in (("http", "HTTP process"), ("inference", "inference process")):
        res.targets.append(
            target(
                f"{title} VmHWM, {clock(sizes.memory_long)} - {clock(sizes.memory_short)}",
                delta[f"{role} vm_hwm_mib"],
                "<=",
                MEMORY_TARGET_MIB,
                " MiB",
            )
        )

    # 2: kill -9 and resume.
    krec = recordings.get(sizes.kill)
    ctx.log(f"  kill and resume: {clock(krec.duration_s)} recording")
    k = _kill_and_resume(ctx, krec)
    res.data["kill_resume"] = k
    kill_table = Table(
        f"SIGKILL at {KILL_AT:.0%} of a {clock(krec.duration_s)} job, restart on the same storage",
        [
            "run",
            "wall s",
            "WER %",
            "checkpoints at kill",
            "last checkpoint end s",
            "progress at kill s",
            "progress past checkpoint s",
            "decoded twice s",
            "decode time lost s",
            "resume logged",
        ],
    )
    kill_table.rows.append(
        [
            "killed, then resumed",
            k["first_run_s"] + k["resumed_run_s"],
            k["wer_resumed"] * 100,
            k["checkpoints_at_kill"],
            k["last_checkpoint_end_s"],
            k["progress_at_kill_s"],
            k["progress_past_checkpoint_s"],
            k["decoded_twice_s"],
            k["decode_time_lost_s"],
            k["resume_logged"],
        ]
    )
    kill_table.rows.append(
        [
            "uninterrupted",
            k["uninterrupted_s"],
            k["wer_uninterrupted"] * 100,
            None,
            None,
            None,
            None,
            None,
            None,
            None,
        ]
    )
    wer_gap = abs(k["wer_resumed"] - k["wer_uninterrupted"]) * 100
    res.targets.append(target("resumed WER vs uninterrupted WER, |difference|", wer_gap, "<=", 0.5, " pt"))
    res.targets.append(
        target("audio decoded twice after SIGKILL", k["decoded_twice_s"], "<=", MAX_CHUNK_S, " s")
    )
    if not k["resume_logged"]:
        res.errors.append("the restarted service did not log 'resuming after': the job started over")

    # 6: an urgent clip while a long job runs.
    urec = recordings.get(sizes.urgent)
    ctx.log(f"  urgent wait: {clock(urec.duration_s)} job under way")
    u = _urgent_wait(ctx, urec)
    res.data["urgent"] = u
    urgent_table = Table(
        f"{URGENT_CLIP} with priority=urgent while a {clock(urec.duration_s)} job runs",
        [
            "upload -> started_at s",
            "created_at -> started_at s",
            "upload -> completed s",
            "median chunk decode s",
            "max chunk decode s",
            "chunks timed",
            "wait / median chunk",
            "long job stepped aside",
        ],
    )
    urgent_table.rows.append(
        [
            u["upload_to_started_s"],
            u["created_to_started_s"],
            u["upload_to_completed_s"],
            u["median_chunk_s"],
            u["max_chunk_s"],
            len(u["chunk_decode_s"]),
            ratio(u["upload_to_started_s"], u["median_chunk_s"]),
            u["stepped_aside"],
        ]
    )
    res.tables += [memory_table, kill_table, throughput, non_speech, starts, urgent_table, clips]
    res.notes.append(
        "VmHWM is the process's resident high-water mark over its whole life (a fresh service per "
        "recording, so model load and that one job); the sampled peak is RSS every 0.2 s from the upload "
        "to the job's end. The kill comes half a median chunk decode time after transcribed_s passes "
        f"{KILL_AT:.0%}, so it lands inside a chunk. 'decoded twice' is the chunk in flight at the kill "
        "(from the first chunk boundary past the last checkpoint to its end, as the pipeline's VAD cuts it): "
        f"the resumed run decodes it again from its start, and it is at most {MAX_CHUNK_S:g} s. 'progress "
        "past checkpoint' is the first run's furthest /status progress beyond its last checkpoint; progress "
        "moves only as a window's segments arrive, so inside a chunk (one window) it says little. 'decode "
        "time lost' is the time from the last checkpoint seen to the kill. "
        "Chunk decode times are the gaps between transcribed_s changes seen when polling /status every "
        "0.1 s; an urgent job waits for at most the chunk being decoded. A clip with no segment start "
        f"within {START_WINDOW_S:g} s is not always a dropped utterance: a clip that opens with a second "
        "or more of its own silence, or follows the previous one by a short pause and shares its segment, "
        "counts too (the data lists each such clip); 'no segment overlapping' counts clips none of whose "
        "time any segment covers."
    )
    return res
