"""The service checking itself every --self-check-seconds, and telling systemd how it is.

A process can be up and still useless: an inference process stopped or deadlocked answers no
one but never dies, so the crash path never fires; a decode can stall without end; the disk
can fill or turn read-only; memory can run out under a container's limit. Each check here has
a result in `/health` (`checks`) and in `/metrics`, and a change is logged once:

- `inference`: the inference process answers a ping over its pipe within a deadline. Missed
  twice in a row, it is hung: it is killed, and the crash path requeues its job and starts a
  new one.
- `progress`: every running job reported progress (or a segment) within the time one
  decoding window may take, model load included; a job silent for longer is stuck, and its
  inference process is killed the same way.
- `storage`: a small file can be written at the storage's root.
- `disk`: free space is at least --min-free-mb (uploads get 507 below it: usecases/control.py).
- `memory`: use is below 95% of the tightest limit: the container's (cgroup v2 or v1) or the
  host's.

Failures of `inference`, `progress` or `storage` mean jobs cannot run: `/health` answers 503.
Low disk or memory leave the queue running and are only reported.

Under systemd (`Type=notify`, service/sdnotify.py) the same loop sends `READY=1` once the
default model is loaded, a `STATUS=` line each round, and `WATCHDOG=1` only while neither
`inference` nor `progress` fails: if the service is wedged beyond what restarting the
inference process fixes, the pings stop and systemd restarts the whole service. Storage,
disk and memory failures do not silence the watchdog: a restart would not fix them, and would
only spend the unit's start limit. On stop it sends `STOPPING=1`, and `EXTEND_TIMEOUT_USEC`
while a running job finishes within --shutdown-grace (which an environment file may have
changed without the unit's stop timeout following).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from service.errors import ServiceError
from service.inference.memory import MemoryReading, read_memory
from service.inference.runner import WorkerCrashed
from service.inference.worker import STOP_INTERRUPT_SECONDS, Worker, job_timeout
from service.jobs.job import JobStatus
from service.sdnotify import Notifier
from service.settings import Settings
from service.store.base import JobStore
from service.store.files import Layout
from service.tasks import BackgroundTasks

log = logging.getLogger(__name__)

T = TypeVar("T")

CHECKS = ("inference", "progress", "storage", "disk", "memory")
# A failure of one of these means no job can run: /health answers 503.
BLOCKING = frozenset({"inference", "progress", "storage"})
# A failure of one of these means the service is wedged: the systemd watchdog is not pinged.
WEDGING = frozenset({"inference", "progress"})
# The longest a ping may take; shorter when the checks run more often than this.
PING_TIMEOUT_SECONDS = 10.0
MIN_PING_TIMEOUT_SECONDS = 2.0
# Pings missed in a row before the inference process counts as hung and is killed.
HUNG_AFTER_MISSES = 2
# After a failed check, look again this soon (so a recovery shows, and the watchdog resumes).
RECHECK_SECONDS = 5.0
# How long a file-system or memory probe may take before it counts as failed (a hung mount).
PROBE_TIMEOUT_SECONDS = 10.0
# One decoding window: a running job reports at least once per window.
WINDOW_SECONDS = 30.0
# Memory use above this share of the limit fails the check: the OOM killer is close.
MEMORY_LIMIT_FRACTION = 0.95
# While stopping: how often the stop timeout is extended, and by how much beyond what is left.
EXTEND_EVERY_SECONDS = 1.0
EXTEND_SLACK_SECONDS = 10.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: `detail` says what was seen, `data` the numbers behind it."""

    ok: bool
    detail: str
    data: dict[str, Any] = field(default_factory=dict)

    def body(self) -> dict[str, Any]:
        return {"ok": self.ok, "detail": self.detail, **self.data}


# -- memory: the tightest of the container's and the host's limits ----------------------------


# -- the loop -----------------------------------------------------------------------------------


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


class SelfCheck:
    """Runs the checks, keeps their latest results, acts on a hung inference process, and
    speaks to systemd. Started and closed by the app's start-up context."""

    def __init__(
        self,
        settings: Settings,
        layout: Layout,
        store: JobStore,
        worker: Worker,
        notifier: Notifier | None = None,
        stall_seconds: float | None = None,
        memory: Callable[[], MemoryReading] = read_memory,
    ) -> None:
        self.settings = settings
        self.layout = layout
        self.store = store
        self.worker = worker
        self.notifier = notifier if notifier is not None else Notifier({})
        # How long a running job may go without a sign of life: one window, model load included.
        self.stall_seconds = job_timeout(settings, WINDOW_SECONDS) if stall_seconds is None else stall_seconds
        self._read_memory = memory
        self.results: dict[str, CheckResult] = {}
        self.rounds = 0
        self._misses = 0
        self._probes: dict[str, asyncio.Future[Any]] = {}
        self._tasks = BackgroundTasks(log)
        self._loop: asyncio.Task[None] | None = None
        self._stopping = False
        self._round_done = asyncio.Event()

    # -- what /health and /metrics read ---------------------------------------------------
    def failing(self, names: frozenset[str] = frozenset(CHECKS)) -> dict[str, CheckResult]:
        return {name: r for name, r in self.results.items() if name in names and not r.ok}

    @property
    def jobs_can_run(self) -> bool:
        return not self.failing(BLOCKING)

    @property
    def wedged(self) -> bool:
        return bool(self.failing(WEDGING))

    @property
    def interval(self) -> float:
        """Seconds between rounds: --self-check-seconds, or sooner for the watchdog or a failure."""
        seconds = self.settings.self_check_seconds
        if self.notifier.watchdog_interval:
            seconds = min(seconds, self.notifier.watchdog_interval)
        if self.failing():
            seconds = min(seconds, RECHECK_SECONDS)
        return seconds

    # -- life cycle -----------------------------------------------------------------------
    def start(self) -> None:
        self._loop = self._tasks.spawn(self._run(), name="self-check")

    def stopping(self) -> None:
        """SIGTERM (or a fatal error): no more checks or kills; tell systemd, and ask it for
        time while a running job finishes within the grace period."""
        if self._stopping:
            return
        self._stopping = True
        if self._loop is not None:
            self._loop.cancel()
        running = list(self.worker.active_jobs)
        grace = self.settings.shutdown_grace
        self.notifier.stopping(
            f"stopping: job {', '.join(running)} may finish within {grace:g} s" if running else "stopping"
        )
        if running and self.notifier.enabled:
            self._tasks.spawn(self._extend_while_finishing(grace), name="stop-extend")

    async def close(self) -> None:
        self._stopping = True
        await self._tasks.close()
        self.notifier.close()

    async def next_round(self) -> None:
        """For tests: wait until the next round of checks has finished."""
        self._round_done.clear()
        await self._round_done.wait()

    async def _run(self) -> None:
        self.notifier.status(f"starting: loading model {self.settings.model}")
        ready = asyncio.ensure_future(self.worker.ready.wait())
        fatal = asyncio.ensure_future(self.worker.fatal.wait())
        try:
            await asyncio.wait({ready, fatal}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            fatal.cancel()
        if not self.worker.ready.is_set():
            self.notifier.status(f"failed: {self.worker.fatal_error}")
            return
        while not self._stopping:
            await self.run_once()
            summary = await self._summary()
            if self.rounds == 1:  # the model is loaded: start-up is over, whatever the checks say
                self.notifier.ready(summary)
            else:
                self.notifier.status(summary)
            if self.notifier.watchdog_interval and not self.wedged:
                self.notifier.watchdog()
            await asyncio.sleep(self.interval)

    async def run_once(self) -> dict[str, CheckResult]:
        """One round: every check at once, results kept, changes logged."""
        checks: dict[str, Awaitable[CheckResult]] = {
            "inference": self._inference(),
            "progress": self._progress(),
            "storage": self._storage(),
            "disk": self._disk(),
            "memory": self._memory(),
        }
        results = dict(zip(checks, await asyncio.gather(*checks.values()), strict=True))
        for name, result in results.items():
            before = self.results.get(name)
            if not result.ok and (before is None or before.ok):
                log.warning("self-check %s failed: %s", name, result.detail)
            elif result.ok and before is not None and not before.ok:
                log.info("self-check %s ok again: %s", name, result.detail)
        self.results = results
        self.rounds += 1
        self._round_done.set()
        return results

    # -- the checks -----------------------------------------------------------------------
    async def _inference(self) -> CheckResult:
        runner = self.worker.runner
        if not runner.ready:
            self._misses = 0
            return CheckResult(False, "the inference process is restarting")
        timeout = min(PING_TIMEOUT_SECONDS, max(MIN_PING_TIMEOUT_SECONDS, self.interval))
        try:
            seconds = await runner.ping(timeout)
        except TimeoutError:
            self._misses += 1
            detail = f"did not answer a ping within {timeout:g} s ({self._misses} in a row)"
            if self._misses >= HUNG_AFTER_MISSES and not self._stopping:
                self._misses = 0
                log.error("inference process %s is hung (%s); killing it", runner.pid, detail)
                await runner.kill()  # the crash path requeues its job and starts a new process
                detail += "; killed, restarting"
            return CheckResult(False, detail)
        except (WorkerCrashed, OSError) as exc:
            self._misses = 0
            return CheckResult(False, f"the inference process is restarting ({exc})")
        self._misses = 0
        ms = seconds * 1000
        return CheckResult(True, f"answered in {ms:.0f} ms", {"round_trip_ms": round(ms, 1)})

    async def _progress(self) -> CheckResult:
        quiet = self.worker.quiet_seconds()
        limit = self.stall_seconds
        if not quiet:
            return CheckResult(True, "no job running", {"limit_s": limit})
        job_id, seconds = max(quiet.items(), key=lambda item: item[1])
        data = {"job_id": job_id, "quiet_s": round(seconds, 1), "limit_s": limit}
        if seconds <= limit:
            return CheckResult(True, f"job {job_id} last reported {seconds:.0f} s ago", data)
        detail = f"job {job_id} has reported no progress for {seconds:.0f} s (limit {limit:.0f} s)"
        if not self._stopping and self.worker.runner.isolation == "process":
            log.error("%s; killing the inference process", detail, extra={"job_id": job_id})
            await self.worker.runner.kill()
            detail += "; killed the inference process, the job goes back to the queue"
        return CheckResult(False, detail, data)

    async def _storage(self) -> CheckResult:
        root = self.layout.root
        try:
            await self._off_loop("storage", self.layout.probe_writable)
        except TimeoutError:
            return CheckResult(False, f"a write to {root} has not returned for {PROBE_TIMEOUT_SECONDS:g} s")
        except OSError as exc:
            return CheckResult(False, f"cannot write to {root}: {exc.strerror or exc}")
        return CheckResult(True, f"{root} takes writes")

    async def _disk(self) -> CheckResult:
        minimum, root = self.settings.min_free_bytes, self.layout.root
        try:
            free = await self._off_loop("disk", self.layout.free_bytes)
        except TimeoutError:
            return CheckResult(False, f"statvfs of {root} has not returned for {PROBE_TIMEOUT_SECONDS:g} s")
        except OSError as exc:
            return CheckResult(False, f"cannot read the free space of {root}: {exc.strerror or exc}")
        data = {"free_mb": round(free / MIB, 1), "min_free_mb": round(minimum / MIB, 1)}
        if free < minimum:
            below = f"below --min-free-mb {minimum / MIB:.0f}: uploads are refused (507)"
            return CheckResult(False, f"{free / MIB:.0f} MiB free, {below}", data)
        return CheckResult(True, f"{free / MIB:.0f} MiB free", data)

    async def _memory(self) -> CheckResult:
        try:
            reading = await self._off_loop("memory", self._read_memory)
        except (TimeoutError, OSError, ValueError) as exc:
            return CheckResult(False, f"cannot read memory use: {exc or type(exc).__name__}")
        data = {
            "used_mb": round(reading.used / MIB, 1),
            "limit_mb": round(reading.limit / MIB, 1),
            "source": reading.source,
        }
        detail = f"{reading.used / MIB:.0f} of {reading.limit / MIB:.0f} MiB ({reading.source}) in use"
        if reading.fraction >= MEMORY_LIMIT_FRACTION:
            return CheckResult(False, f"{detail}: above {MEMORY_LIMIT_FRACTION:.0%} of the limit", data)
        return CheckResult(True, detail, data)

    async def _off_loop(self, name: str, probe: Callable[[], T]) -> T:
        """Run a blocking probe in a thread. One that hangs (a dead network mount) is not
        started again until it returns: threads stuck in the kernel would only pile up."""
        pending = self._probes.get(name)
        if pending is not None and not pending.done():
            raise TimeoutError
        future = asyncio.get_running_loop().run_in_executor(None, probe)
        future.add_done_callback(_retrieve)  # a probe that fails after its deadline is not news
        self._probes[name] = future
        result: T = await asyncio.wait_for(asyncio.shield(future), PROBE_TIMEOUT_SECONDS)
        return result

    # -- systemd --------------------------------------------------------------------------
    async def _summary(self) -> str:
        """The STATUS= line: health, the job running, the queue."""
        try:
            queued = str(await self.store.count(JobStatus.QUEUED))
        except ServiceError:
            queued = "?"
        running = ", ".join(self.worker.active_jobs)
        failing = "; ".join(f"{name}: {r.detail}" for name, r in self.failing().items())
        head = f"unhealthy ({failing})" if failing else "ready"
        return f"{head}; {'running job ' + running if running else 'idle'}; {queued} queued"

    async def _extend_while_finishing(self, grace: float) -> None:
        deadline = time.monotonic() + grace + STOP_INTERRUPT_SECONDS
        while self.worker.active_jobs and (left := deadline - time.monotonic()) > 0:
            self.notifier.extend_timeout(left + EXTEND_SLACK_SECONDS)
            await asyncio.sleep(EXTEND_EVERY_SECONDS)
