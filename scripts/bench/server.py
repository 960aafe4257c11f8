"""Real service processes and an HTTP client that times what a user of the API waits for."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
import requests

from bench.common import REPO

FINAL_STATES = ("completed", "failed")
# Seconds asked of GET /status/{id}?wait=; the service caps it at 60.
LONG_POLL_S = 30
# When the service ignores ?wait= (an older build), the client falls back to polling this often.
FALLBACK_POLL_S = 0.02


# -- what this build of the service offers ----------------------------------------------------


@dataclass(frozen=True)
class ServiceHelp:
    """Flags and engines parsed from `python -m service serve --help`, so the bench adapts to the build."""

    text: str
    flags: frozenset[str]
    engines: tuple[str, ...]

    def has(self, flag: str) -> bool:
        return flag in self.flags

    def choices(self, flag: str) -> tuple[str, ...]:
        match = re.search(re.escape(flag) + r"\s+\{([^}]*)\}", self.text)
        return tuple(c.strip() for c in match.group(1).split(",")) if match else ()

    def default(self, flag: str) -> str | None:
        """The '(default X)' in the flag's help, where argparse wrapped it over lines or not."""
        text = " ".join(self.text.split())
        match = re.search(r"\s" + re.escape(flag) + r"[ =]\S.*?\(default ([^)\s]+)\)", text)
        return match.group(1) if match else None

    def other_choices(self, flag: str) -> list[str]:
        """The choices of `flag` besides its default: the variants worth measuring too."""
        default = self.default(flag)
        return [c for c in self.choices(flag) if c != default]


@functools.cache
def service_help() -> ServiceHelp:
    out = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        env={**clean_env(), "COLUMNS": "200"},
        check=True,
    ).stdout
    flags = frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", out))
    match = re.search(r"--engine \{([^}]*)\}", out)
    engines = tuple(e.strip() for e in match.group(1).split(",")) if match else ("openai-whisper",)
    return ServiceHelp(out, flags, engines)


def clean_env(threads: int | None = None) -> dict[str, str]:
    """The environment for child processes: no SERVICE_* surprises, thread pools pinned to `threads`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SERVICE_")}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    if threads is not None:
        for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
            env[name] = str(threads)
    return env


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def seed_models(storage_dir: Path, models_cache: Path | None) -> None:
    """Hard-link the already imported checkpoint into a fresh storage dir: no re-import per start."""
    if models_cache is None or not models_cache.is_dir():
        return
    target = storage_dir / "models"
    target.mkdir(parents=True, exist_ok=True)
    for src in models_cache.iterdir():
        dst = target / src.name
        if src.is_file() and not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)


# -- a service process ------------------------------------------------------------------------


@dataclass
class ServiceProcess:
    """`python -m service` on loopback; times start-up to listening and to model_loaded."""

    storage_dir: Path
    args: list[str] = field(default_factory=list)
    threads: int | None = None
    models_cache: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None
    listening_s: float | None = None
    ready_s: float | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def flags(self) -> list[str]:
        """The flags that configure the service (everything but port and storage)."""
        args = list(self.args)
        if self.threads is not None and service_help().has("--threads") and "--threads" not in args:
            args += ["--threads", str(self.threads)]
        # Clips are sent many times: each must really be transcribed, not answered from the cache.
        if service_help().has("--transcript-cache") and "--transcript-cache" not in args:
            args += ["--no-transcript-cache"]
        return args

    @property
    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "service",
            "--port",
            str(self.port),
            "--storage-dir",
            str(self.storage_dir),
            *self.flags,
        ]

    def start(self, timeout: float = 180.0) -> ServiceProcess:
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        seed_models(self.storage_dir, self.models_cache)
        self.log_path = self.storage_dir.parent / f"{self.storage_dir.name}-{self.port}.log"
        with open(self.log_path, "ab") as log:
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                self.command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=clean_env(self.threads)
            )
        self._wait_ready(started, timeout)
        return self

    def _wait_ready(self, started: float, timeout: float) -> None:
        """Poll /health every 10 ms: the first answer is 'listening', model_loaded is 'ready'."""
        session = requests.Session()
        deadline = started + timeout
        try:
            while time.perf_counter() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"service exited with {self.proc.returncode}: {self.log_tail()}")
                try:
                    health = session.get(self.url + "/health", timeout=5).json()
                except requests.ConnectionError:
                    time.sleep(0.01)
                    continue
                now = time.perf_counter() - started
                if self.listening_s is None:
                    self.listening_s = now
                if health.get("model_loaded"):
                    self.ready_s = now
                    return
                time.sleep(0.01)
        finally:
            session.close()
        raise RuntimeError(f"service not ready after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def rss_bytes(self, include_children: bool = True) -> int:
        assert self.proc is not None
        proc = psutil.Process(self.proc.pid)
        total = proc.memory_info().rss
        if include_children:
            for child in proc.children(recursive=True):
                with contextlib.suppress(psutil.Error):
                    total += child.memory_info().rss
        return int(total)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then SIGKILL: never leave a service behind."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # Children first (a worker pool, if the build has one), then the server itself.
            with contextlib.suppress(psutil.Error):
                for child in psutil.Process(self.proc.pid).children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        child.kill()
            self.proc.kill()
            self.proc.wait(timeout=30)

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(self, *_: object) -> None:
        self.kill()


@contextlib.contextmanager
def running_service(
    storage_dir: Path, args: list[str], threads: int | None, models_cache: Path | None
) -> Iterator[ServiceProcess]:
    service = ServiceProcess(storage_dir, args=args, threads=threads, models_cache=models_cache)
    try:
        yield service.start()
    finally:
        service.kill()


# -- the client ---------------------------------------------------------------------------------


@dataclass
class EndToEnd:
    """One file through the API: upload, wait for the job, download the text."""

    job_id: str
    wall_s: float
    upload_s: float
    wait_s: float
    download_s: float
    text: str
    status: str
    processing_s: float | None  # completed_at - started_at as the service recorded it
    queued_s: float | None  # started_at - created_at


def _iso(value: Any) -> float | None:
    return datetime.fromisoformat(value).timestamp() if isinstance(value, str) else None


class Client:
    """A keep-alive session against one service. One per thread: requests sessions are not thread-safe."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.long_poll_seen = False  # a ?wait= request that really waited

    def close(self) -> None:
        self.session.close()

    def health(self) -> dict[str, Any]:
        body: dict[str, Any] = self.session.get(self.url + "/health", timeout=30).json()
        return body

    def submit(self, path: Path, job_id: str | None = None) -> str:
        data = {"job_id": job_id} if job_id else {}
        with open(path, "rb") as fp:
            resp = self.session.post(
                self.url + "/transcribe", files={"file": (path.name, fp)}, data=data, timeout=600
            )
        if resp.status_code not in (200, 202):
            raise RuntimeError(f"upload of {path.name} answered {resp.status_code}: {resp.text[:300]}")
        return str(resp.json()["job_id"])

    def status(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        params = {"wait": f"{wait:g}"} if wait else None
        resp = self.session.get(f"{self.url}/status/{job_id}", params=params, timeout=(wait or 0) + 60)
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        return body

    def wait(self, job_id: str, timeout: float = 3600.0) -> dict[str, Any]:
        """Long-poll until the job ends; poll briskly instead when the build ignores ?wait=."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"job {job_id} did not finish in {timeout:.0f} s")
            asked = time.perf_counter()
            body = self.status(job_id, wait=min(LONG_POLL_S, max(1.0, left)))
            if body.get("status") in FINAL_STATES:
                return body
            if time.perf_counter() - asked >= 0.5:
                self.long_poll_seen = True
            else:
                time.sleep(FALLBACK_POLL_S)

    def download(self, job_id: str, fmt: str = "txt") -> str:
        resp = self.session.get(f"{self.url}/download/{job_id}", params={"format": fmt}, timeout=60)
        resp.raise_for_status()
        return resp.text

    def transcribe(self, path: Path) -> EndToEnd:
        started = time.perf_counter()
        job_id = self.submit(path, job_id=f"bench-{uuid.uuid4().hex[:12]}")
        uploaded = time.perf_counter()
        body = self.wait(job_id)
        done = time.perf_counter()
        text = self.download(job_id) if body["status"] == "completed" else ""
        end = time.perf_counter()
        if body["status"] != "completed":
            raise RuntimeError(f"job {job_id} for {path.name} failed: {body.get('error')}")
        created, begun, finished = (_iso(body.get(k)) for k in ("created_at", "started_at", "completed_at"))
        return EndToEnd(
            job_id=job_id,
            wall_s=end - started,
            upload_s=uploaded - started,
            wait_s=done - uploaded,
            download_s=end - done,
            text=text,
            status=body["status"],
            processing_s=finished - begun if finished and begun else None,
            queued_s=begun - created if begun and created else None,
        )


def timed_get(session: requests.Session, url: str) -> float:
    started = time.perf_counter()
    resp = session.get(url, timeout=30)
    elapsed = time.perf_counter() - started
    resp.raise_for_status()
    return elapsed


# -- uploads that never sit in memory -------------------------------------------------------------


class StreamedMultipart:
    """A multipart/form-data body read from disk in chunks, with a known length.

    requests sends an iterable with `__len__` under Content-Length without buffering it, so
    the client's memory stays flat however big the file is.
    """

    def __init__(self, path: Path, field_name: str = "file", chunk_bytes: int = 1 << 20) -> None:
        self.path = path
        self.chunk_bytes = chunk_bytes
        self.boundary = f"bench-{uuid.uuid4().hex}"
        self._head = (
            f"--{self.boundary}\r\n"
            f'Content-Disposition: form-data; name="{field_name}"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self._tail = f"\r\n--{self.boundary}--\r\n".encode()
        self.sent = 0

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    def __len__(self) -> int:
        return len(self._head) + self.path.stat().st_size + len(self._tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        with open(self.path, "rb") as fp:
            while chunk := fp.read(self.chunk_bytes):
                self.sent += len(chunk)
                yield chunk
        yield self._tail


class RssSampler:
    """Samples a process tree's RSS on a thread every `interval` seconds; keeps the peak."""

    def __init__(self, pid: int, interval: float = 0.02, include_children: bool = True) -> None:
        self.proc = psutil.Process(pid)
        self.interval = interval
        self.include_children = include_children
        self.samples: list[int] = []
        self.main_samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                main = self.proc.memory_info().rss
                total = main
                if self.include_children:
                    for child in self.proc.children(recursive=True):
                        with contextlib.suppress(psutil.Error):
                            total += child.memory_info().rss
            except psutil.Error:
                return
            self.main_samples.append(main)
            self.samples.append(total)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    @property
    def peak(self) -> int:
        return max(self.samples, default=0)

    @property
    def peak_main(self) -> int:
        return max(self.main_samples, default=0)
