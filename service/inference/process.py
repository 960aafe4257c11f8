"""Inference in a supervised child process, so a crash there never takes the HTTP API down.

The parent talks to the child over a pipe: requests carry an id and get one answer; progress
reports and decoded segments flow back as they happen. A reader thread in the parent turns the
child's messages into future results on the event loop. When the pipe closes (segfault, OOM kill, `kill -9`),
every request in flight fails with `WorkerCrashed`, and the child is started again, with a
growing pause between restarts so a model that crashes at load cannot spin the CPU.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import logging
import multiprocessing
import os
import pickle
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from service import logs
from service.backoff import Backoff
from service.engines.base import JobInterrupted, Result
from service.inference.pipeline import GO_ON, STOP, TranscribeRequest, execute
from service.inference.runner import (
    ChunkSink,
    ProgressSink,
    SegmentSink,
    WorkerCrashed,
    idle_check_seconds,
)
from service.settings import Settings
from service.tasks import BackgroundTasks

log = logging.getLogger(__name__)

# Time for a fresh child to import its engine and say hello.
START_TIMEOUT_SECONDS = 120.0
# Pauses between failed restarts in a row; the count resets once a child has loaded its model
# (or lived this long).
RESTART_BACKOFF_SECONDS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
STABLE_AFTER_SECONDS = 60.0
_PR_SET_PDEATHSIG = 1


# -- the child ------------------------------------------------------------------------------


def _die_with_parent() -> None:
    """Linux: the kernel kills this process when the parent dies, even by SIGKILL."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _portable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def child_main(conn: Connection, settings: Settings, models_dir: str) -> None:
    """The inference process: owns the engine and models, runs what the parent asks."""
    _die_with_parent()
    # Ctrl-C in a terminal signals the whole process group; stopping is the parent's decision.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    send_lock = threading.Lock()

    def send(message: tuple[Any, ...]) -> None:
        with send_lock:
            conn.send(message)

    # The server writes this process's log lines, in its format, to its stderr or log file.
    logs.forward_to_parent(settings, lambda record: send(("log", record)))
    from service.engines import create_engine
    from service.inference.models import ModelManager

    engine = create_engine(settings, Path(models_dir))
    manager = ModelManager.for_settings(engine, settings)
    if settings.vad:  # before any model: its few buffers never sit among a model's pages
        from service.inference import vad

        vad.load()
    stop_flags: dict[str, threading.Event] = {}
    # Chunks sent to the parent to keep, by token: the decode waits for the verdict.
    verdicts: dict[int, list[Any]] = {}
    tokens = itertools.count(1)
    pool = ThreadPoolExecutor(max_workers=settings.workers + 1, thread_name_prefix="inference")

    def answer(request_id: int, fn: Any, *args: Any) -> None:
        try:
            send(("ok", request_id, fn(*args)))
        except BaseException as exc:
            send(("err", request_id, _portable(exc)))

    def checkpoint(job_id: str, chunk: dict[str, Any]) -> str:
        """Hand a decoded chunk to the parent and wait until it is kept (or refused)."""
        token = next(tokens)
        waiting = verdicts[token] = [threading.Event(), STOP]
        send(("chunk", job_id, token, chunk))
        waiting[0].wait()  # the parent always answers; if it dies, so does this process
        return str(verdicts.pop(token)[1])

    def transcribe(request_id: int, request: TranscribeRequest, flag: threading.Event) -> None:
        started = time.monotonic()
        try:
            with logs.job_context(request.job_id):  # model loads and engine lines name the job too
                log.info("job %s: decoding with model %s", request.job_id, request.model)
                answer(
                    request_id,
                    execute,
                    manager,
                    request,
                    flag.is_set,
                    lambda fraction: send(("progress", request.job_id, fraction)),
                    lambda segment: send(("segment", request.job_id, segment)),
                    lambda chunk: checkpoint(request.job_id, chunk),
                )
                log.info(
                    "job %s: decode ended after %.1f s%s",
                    request.job_id,
                    time.monotonic() - started,
                    " (interrupted)" if flag.is_set() else "",
                )
        finally:
            stop_flags.pop(request.job_id, None)

    def load(name: str) -> dict[str, Any]:
        return manager.load(name).describe(manager.default)

    send(("hello", os.getpid(), engine.device))
    check_every = idle_check_seconds(settings.model_idle_seconds)
    next_check = time.monotonic() + check_every
    while True:
        try:
            if time.monotonic() >= next_check:  # on a clock, however busy the pipe is
                pool.submit(manager.evict_idle)
                next_check = time.monotonic() + check_every
            if not conn.poll(check_every):
                continue
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone
        op = message[0]
        if op == "transcribe":
            # The flag exists before the job can run, so an interrupt right after is never lost.
            flag = stop_flags[message[2].job_id] = threading.Event()
            pool.submit(transcribe, message[1], message[2], flag)
        elif op == "verdict":
            if (waiting := verdicts.get(message[1])) is not None:
                waiting[1] = message[2]
                waiting[0].set()
        elif op == "interrupt":
            if (running := stop_flags.get(message[1])) is not None:
                running.set()
        elif op == "load":
            pool.submit(answer, message[1], load, message[2])
        elif op == "unload":
            pool.submit(answer, message[1], manager.unload, message[2])
        elif op == "models":
            answer(message[1], manager.loaded)
        elif op == "ping":  # answered by this loop itself: proof that the process is not stuck
            send(("ok", message[1], os.getpid()))
        elif op == "exit":
            os._exit(0)  # nothing here is durable: the parent's journal already has the truth


# -- the parent -----------------------------------------------------------------------------


class ProcessRunner:
    """Supervises the inference process: requests, progress, crash detection, restarts."""

    isolation = "process"

    def __init__(
        self,
        settings: Settings,
        models_dir: Path,
        on_progress: ProgressSink,
        on_segment: SegmentSink | None = None,
    ) -> None:
        self.settings = settings
        self.models_dir = models_dir
        self.pid: int | None = None
        self.restarts = 0
        self.state = "starting"
        self._on_progress = on_progress
        self._on_segment = on_segment
        self.on_chunk: ChunkSink | None = None
        self._keeping = BackgroundTasks(log)  # checkpoints being written, verdicts to send
        self._ctx = multiprocessing.get_context("spawn")
        self._proc: BaseProcess | None = None
        self._conn: Connection | None = None
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._ids = itertools.count(1)
        self._ready = asyncio.Event()
        self._hello: asyncio.Future[None] | None = None
        self._closing = False
        self._restart_pause = Backoff.stepped(RESTART_BACKOFF_SECONDS)  # counts crashes in a row
        self._started_at = 0.0
        self._restarting = BackgroundTasks(log)
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    async def wait_ready(self) -> None:
        await self._ready.wait()

    # -- life cycle -----------------------------------------------------------------------
    async def start(self) -> None:
        """Start the child and load the default model; raises if either fails the first time."""
        self._loop = asyncio.get_running_loop()
        await self._spawn()
        await self._load_default()

    async def _spawn(self) -> None:
        assert self._loop is not None
        parent_conn, child_conn = self._ctx.Pipe()
        proc = self._ctx.Process(
            target=child_main,
            args=(child_conn, self.settings, str(self.models_dir)),
            name="inference",
            daemon=True,
        )
        self._hello = self._loop.create_future()
        await self._loop.run_in_executor(None, proc.start)
        child_conn.close()
        self._proc, self._conn = proc, parent_conn
        self._started_at = time.monotonic()
        threading.Thread(
            target=self._read, args=(parent_conn, proc), name="inference-reader", daemon=True
        ).start()
        try:
            await asyncio.wait_for(asyncio.shield(self._hello), START_TIMEOUT_SECONDS)
        except TimeoutError:
            proc.kill()
            raise WorkerCrashed(
                f"the inference process did not start in {START_TIMEOUT_SECONDS:.0f} s"
            ) from None
        self.pid = proc.pid
        log.info("inference process %s started", proc.pid)

    async def _load_default(self) -> None:
        self.state = "loading_model"
        await self.load(self.settings.model)
        self.state = "ready"
        self._ready.set()

    def _read(self, conn: Connection, proc: BaseProcess) -> None:
        """Reader thread: one per child. Hands each message to the loop; reports the child's end."""
        assert self._loop is not None
        loop = self._loop
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                break
            if message[0] == "log":  # logging is thread-safe; the loop need not see these
                logs.handle_forwarded(message[1])
                continue
            try:
                loop.call_soon_threadsafe(self._dispatch, message)
            except RuntimeError:  # the loop is closed: the service is gone
                return
        proc.join(timeout=5)
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._child_ended, proc)

    def _dispatch(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "progress":
            self._on_progress(message[1], message[2])
        elif kind == "segment":
            if self._on_segment is not None:
                self._on_segment(message[1], message[2])
        elif kind == "chunk":
            self._keeping.spawn(self._keep_chunk(message[1], message[2], message[3]))
        elif kind == "hello":
            if self._hello is not None and not self._hello.done():
                self._hello.set_result(None)
        elif kind in ("ok", "err"):
            future = self._pending.pop(message[1], None)
            if future is None or future.done():
                return
            if kind == "ok":
                future.set_result(message[2])
            else:
                future.set_exception(message[2])

    async def _keep_chunk(self, job_id: str, token: int, chunk: dict[str, Any]) -> None:
        verdict = GO_ON
        if self.on_chunk is not None:
            try:
                verdict = await self.on_chunk(job_id, chunk)
            except Exception:
                log.exception("job %s: a checkpoint could not be kept", job_id)
                verdict = STOP
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("verdict", token, verdict))

    def _child_ended(self, proc: BaseProcess) -> None:
        if proc is not self._proc:
            return
        code = proc.exitcode
        self._ready.clear()
        self._proc = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        described = _describe_exit(code)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(WorkerCrashed(f"the inference process {described}"))
        self._pending.clear()
        if self._hello is not None and not self._hello.done():
            self._hello.set_exception(WorkerCrashed(f"the inference process {described} at start"))
        if self._closing:
            return
        log.error("inference process %s %s; restarting it", proc.pid, described)
        self.state = "restarting"
        self._restarting.spawn(self._restart())

    async def _restart(self) -> None:
        while not self._closing:
            lived = time.monotonic() - self._started_at
            if lived >= STABLE_AFTER_SECONDS:
                self._restart_pause.reset()
            await asyncio.sleep(self._restart_pause.next())
            if self._closing:
                return
            self.restarts += 1
            try:
                await self._spawn()
                await self._load_default()
                # Back and serving: the next crash starts the schedule afresh. Crash loops
                # still slow down, since each failed start or load counts without a reset.
                self._restart_pause.reset()
                log.info("inference process %s is back (restart %d)", self.pid, self.restarts)
                return
            except Exception as exc:  # the child died again, or the model would not load
                log.error("restart %d failed: %s", self.restarts, exc)
                if self._proc is not None:  # alive but useless: end it and try again
                    self._proc.kill()
                    return  # its end schedules the next restart

    async def kill(self) -> None:
        """Kill the child (a decode that ignores interruption); the supervisor restarts it."""
        proc = self._proc
        if proc is not None and proc.is_alive():
            log.warning("killing inference process %s", proc.pid)
            proc.kill()

    async def close(self) -> None:
        """End the child; requests in flight fail with WorkerCrashed. Safe to call twice."""
        self._closing = True
        await self._restarting.close()
        await self._keeping.close()
        proc, conn = self._proc, self._conn
        if proc is None:
            return
        with contextlib.suppress(OSError, ValueError):
            if conn is not None:
                conn.send(("exit",))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, proc.join, 2)
        if proc.is_alive():
            proc.kill()
            await loop.run_in_executor(None, proc.join, 5)
        # The reader thread reports the end; wait for it so no request is left hanging.
        for _ in range(100):
            if self._proc is not proc:
                break
            await asyncio.sleep(0.02)

    # -- requests -------------------------------------------------------------------------
    async def _call(self, op: str, *args: Any) -> Any:
        if self._conn is None:
            raise WorkerCrashed("the inference process is restarting")
        assert self._loop is not None
        request_id = next(self._ids)
        future: asyncio.Future[Any] = self._loop.create_future()
        self._pending[request_id] = future
        try:
            self._conn.send((op, request_id, *args))
        except (OSError, ValueError) as exc:
            self._pending.pop(request_id, None)
            raise WorkerCrashed(f"the inference process is gone ({exc})") from exc
        return await future

    async def load(self, name: str) -> dict[str, Any]:
        result: dict[str, Any] = await self._call("load", name)
        return result

    async def unload(self, name: str) -> bool:
        return bool(await self._call("unload", name))

    async def models(self) -> list[dict[str, Any]]:
        if self._conn is None:
            return []
        result: list[dict[str, Any]] = await self._call("models")
        return result

    async def ping(self, within: float) -> float:
        """A round trip over the pipe to the child's own loop, which no decode holds up."""
        started = time.monotonic()
        await asyncio.wait_for(self._call("ping"), within)
        return time.monotonic() - started

    async def transcribe(self, request: TranscribeRequest) -> Result:
        result = await self._call("transcribe", request)
        if not isinstance(result, Result):
            raise JobInterrupted
        return result

    def interrupt(self, job_id: str) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("interrupt", job_id))


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with code {code}"
