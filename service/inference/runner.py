"""Where inference runs: a supervised child process (the default) or a thread (tests, small installs).

Both runners give the worker the same async interface, so the queue logic above them does not
care whether a segfault would take down only the child or the whole service.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from service.engines.base import Result
from service.inference.models import ModelManager
from service.inference.pipeline import STOP, TranscribeRequest, execute
from service.tasks import BackgroundTasks

ProgressSink = Callable[[str, float], None]
# Each decoded segment, as a dict (the shape /download's json has), for live streams.
SegmentSink = Callable[[str, dict[str, Any]], None]
# Each decoded chunk, kept durably before the decode goes on; answers the pipeline's verdict.
ChunkSink = Callable[[str, dict[str, Any]], Coroutine[Any, Any, str]]
# How often idle models are looked for.
IDLE_CHECK_SECONDS = 15.0


def idle_check_seconds(idle_seconds: float) -> float:
    """Look for idle models often enough that one leaves close to its deadline."""
    if idle_seconds < 0:
        return IDLE_CHECK_SECONDS
    return max(0.5, min(IDLE_CHECK_SECONDS, idle_seconds / 2))


class WorkerCrashed(Exception):
    """The inference process died while it held the job (segfault, OOM kill, kill -9)."""


class Runner(Protocol):
    pid: int | None
    restarts: int
    isolation: str  # "process" or "thread", for metrics
    on_chunk: ChunkSink | None  # set by the worker, which keeps the checkpoints

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

    async def ping(self, within: float) -> float:
        """Seconds inference took to answer; TimeoutError when no answer came `within` that many
        seconds (a hung process), WorkerCrashed when it is gone or restarting."""

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
        self.on_chunk: ChunkSink | None = None
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="inference")
        self._stop_flags: dict[str, threading.Event] = {}
        self._evicting = BackgroundTasks()  # evicts idle models, once started

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        await self.load(self.manager.default)
        self._evicting.spawn(self._evict_idle_models())

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

        def checkpoint(chunk: dict[str, Any]) -> str:
            if self.on_chunk is None:
                return "go"
            kept = asyncio.run_coroutine_threadsafe(self.on_chunk(request.job_id, chunk), loop)
            try:
                return kept.result()
            except Exception:  # the store could not keep it: stop, the run's outcome is unknown
                return STOP

        try:
            return await loop.run_in_executor(
                self._executor, execute, self.manager, request, flag.is_set, report, emit, checkpoint
            )
        finally:
            self._stop_flags.pop(request.job_id, None)

    def interrupt(self, job_id: str) -> None:
        flag = self._stop_flags.get(job_id)
        if flag is not None:
            flag.set()

    async def kill(self) -> None:
        return None

    async def ping(self, within: float) -> float:
        """Always answers: inference shares this process, whose event loop is running this."""
        return 0.0

    async def close(self) -> None:
        await self._evicting.close()
        for flag in self._stop_flags.values():
            flag.set()
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: self._executor.shutdown(wait=True, cancel_futures=True)
        )
