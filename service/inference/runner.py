"""Where inference runs: a supervised child process (the default) or a thread (tests, small installs).

Both runners give the worker the same async interface, so the queue logic above them does not
care whether a segfault would take down only the child or the whole service.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from service.diarization import DiarizationOptions, Diarizer, merge_channel_results
from service.engines.base import DecodeOptions, JobInterrupted, Result, Segment
from service.inference import audio
from service.inference.models import ModelManager
from service.jobs.job import JobOptions
from service.tasks import BackgroundTasks

ProgressSink = Callable[[str, float], None]
# Each decoded segment, as a dict (the shape /download's json has), for live streams.
SegmentSink = Callable[[str, dict[str, Any]], None]
# How often idle models are looked for.
IDLE_CHECK_SECONDS = 15.0


def idle_check_seconds(idle_seconds: float) -> float:
    """Look for idle models often enough that one leaves close to its deadline."""
    if idle_seconds < 0:
        return IDLE_CHECK_SECONDS
    return max(0.5, min(IDLE_CHECK_SECONDS, idle_seconds / 2))


class WorkerCrashed(Exception):
    """The inference process died while it held the job (segfault, OOM kill, kill -9)."""


@dataclass(frozen=True)
class TranscribeRequest:
    job_id: str
    audio_path: str
    model: str
    options: DecodeOptions
    job_options: JobOptions = field(default_factory=JobOptions)


_diarizer: Diarizer | None = None
_diarizer_lock = threading.Lock()


def _warm_diarizer() -> Diarizer:
    """One speaker encoder per process, loaded on the first diarized job and kept."""
    global _diarizer
    with _diarizer_lock:
        if _diarizer is None:
            diarizer = Diarizer()
            diarizer.load()
            _diarizer = diarizer
        return _diarizer


def execute(
    manager: ModelManager,
    request: TranscribeRequest,
    should_stop: Callable[[], bool],
    report: Callable[[float], None],
    emit: Callable[[dict[str, Any]], None] | None = None,
) -> Result:
    """One job's inference: decode the audio once, transcribe (each channel, when split), and
    put speakers on the result when asked, with the model pinned throughout.

    `emit` hears each segment as it is decoded: before diarization (no speakers yet), and when
    split by channel with `channel` and `speaker` set and ids counted across channels, so they
    stay distinct (the final result renumbers them in time order).
    """
    extras = request.job_options
    span = [0, 1]  # channels done, channels in all: progress runs 0..1 over every channel
    emitted = [0]

    def on_segment(segment: Segment) -> None:
        if emit is None:
            return
        live = segment.as_dict()
        if extras.split_channels:
            channel = span[0] + 1
            live.update(id=emitted[0], channel=channel, speaker=f"CHANNEL_{channel}")
        emitted[0] += 1
        emit(live)

    def on_progress(fraction: float) -> None:
        overall = (span[0] + fraction) / span[1]
        if extras.diarize:
            overall *= 0.95  # the speaker pass comes after the last window
        if overall < 1.0 and should_stop():  # the last window done: keep the result
            raise JobInterrupted
        report(overall)

    options = request.options
    if extras.word_timestamps or extras.diarize:
        options = replace(options, word_timestamps=True)
    with manager.using(request.model) as model:
        path = Path(request.audio_path)
        if extras.split_channels:
            channels = audio.decode_channels(path)
            span[1] = len(channels)
            results = []
            for index, pcm in enumerate(channels):
                span[0] = index
                results.append(
                    manager.engine.transcribe(model, pcm, options, on_progress, on_segment, should_stop)
                )
            return merge_channel_results(results)
        pcm = audio.decode(path)
        if should_stop():
            raise JobInterrupted
        result = manager.engine.transcribe(model, pcm, options, on_progress, on_segment, should_stop)
    if not extras.diarize:
        return result
    speakers = DiarizationOptions(extras.num_speakers, extras.min_speakers, extras.max_speakers)
    result = _warm_diarizer()(pcm, result, speakers)
    report(1.0)
    return result


class Runner(Protocol):
    pid: int | None
    restarts: int
    isolation: str  # "process" or "thread", for metrics

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None:
        """Start inference and load the default model; raises if that fails."""

    async def wait_ready(self) -> None:
        """Return once inference can take a job (at once, unless the process is restarting)."""

    async def load(self, name: str) -> dict[str, Any]: ...

    async def unload(self, name: str) -> bool: ...

    async def models(self) -> list[dict[str, Any]]: ...

    async def transcribe(self, request: TranscribeRequest) -> Result: ...

    def interrupt(self, job_id: str) -> None: ...

    async def kill(self) -> None:
        """Stop a decode that ignores interruption: restarts the process (threads cannot be killed)."""

    async def close(self) -> None: ...


class ThreadRunner:
    """Inference on threads of this process: no isolation, no start-up cost."""

    isolation = "thread"

    def __init__(
        self,
        manager: ModelManager,
        workers: int,
        on_progress: ProgressSink,
        on_segment: SegmentSink | None = None,
    ) -> None:
        self.manager = manager
        self.pid: int | None = None
        self.restarts = 0
        self._on_progress = on_progress
        self._on_segment = on_segment
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._stop_flags: dict[str, threading.Event] = {}
        self._idle = BackgroundTasks()  # evicts idle models, once started

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        await self.load(self.manager.default)
        self._idle.spawn(self._evict_idle_models())

    async def wait_ready(self) -> None:
        return None

    async def _evict_idle_models(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(idle_check_seconds(self.manager.idle_seconds))
            await loop.run_in_executor(None, self.manager.evict_idle)

    async def load(self, name: str) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        entry = await loop.run_in_executor(self._executor, self.manager.load, name)
        return entry.describe(self.manager.default)

    async def unload(self, name: str) -> bool:
        return await asyncio.get_running_loop().run_in_executor(None, self.manager.unload, name)

    async def models(self) -> list[dict[str, Any]]:
        return self.manager.loaded()

    async def transcribe(self, request: TranscribeRequest) -> Result:
        loop = asyncio.get_running_loop()
        flag = self._stop_flags.setdefault(request.job_id, threading.Event())

        def report(fraction: float) -> None:
            loop.call_soon_threadsafe(self._on_progress, request.job_id, fraction)

        def emit(segment: dict[str, Any]) -> None:
            if self._on_segment is not None:
                loop.call_soon_threadsafe(self._on_segment, request.job_id, segment)

        try:
            return await loop.run_in_executor(
                self._executor, execute, self.manager, request, flag.is_set, report, emit
            )
        finally:
            self._stop_flags.pop(request.job_id, None)

    def interrupt(self, job_id: str) -> None:
        flag = self._stop_flags.get(job_id)
        if flag is not None:
            flag.set()

    async def kill(self) -> None:
        return None

    async def close(self) -> None:
        await self._idle.close()
        for flag in self._stop_flags.values():
            flag.set()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True, cancel_futures=True)
        )
