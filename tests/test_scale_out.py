"""Several real service processes on one Redis and one storage directory (`--backend redis`).

Through the real path: `python -m service` processes on loopback, the real tiny.en model, real
recorded speech, `requests` as the client, and real Redis servers: the machine's own on
127.0.0.1:6379 (a fresh key prefix per test, removed afterwards) and, where Redis itself is
crashed and restarted, a private `redis-server` with an append-only file in the test's folder.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from conftest import ENGLISH_CLIPS, ServerProcess, eval_clip, free_port
from test_server_process import (
    LONG_JOB_ARGS,
    LONG_WAV_CLIPS,
    assert_transcript_matches,
    submit,
    wait_for_progress,
)

SHARED_REDIS = "redis://127.0.0.1:6379/0"
LEASE_SECONDS = 3
# Each instance decodes with one thread: three of them share this machine's two cores.
INSTANCE_ARGS = [*LONG_JOB_ARGS, "--threads", "1", "--lease-seconds", str(LEASE_SECONDS)]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture
def prefix() -> Iterator[str]:
    name = f"test-{uuid.uuid4().hex[:10]}"
    yield name
    client = redis.Redis.from_url(SHARED_REDIS)
    keys = list(client.scan_iter(match=f"{name}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


@dataclass
class Cluster:
    """Service instances sharing one storage directory and one Redis prefix."""

    storage: Path
    redis_url: str
    prefix: str
    make: Callable[..., ServerProcess]
    instances: list[ServerProcess] = field(default_factory=list)

    def start(self, count: int, extra: list[str] | None = None) -> list[ServerProcess]:
        args = [
            "--backend",
            "redis",
            "--redis-url",
            self.redis_url,
            "--redis-prefix",
            self.prefix,
            *INSTANCE_ARGS,
            *(extra or []),
        ]
        new = [self.make(self.storage, list(args)) for _ in range(count)]
        for server in new:
            server.start(wait_ready=False)
        for server in new:
            server.wait_ready(180)
        self.instances += new
        return new

    def logs(self) -> str:
        return "\n".join(server.log() for server in self.instances)


def completions(log: str, job_id: str) -> int:
    """Runs of the job that recorded a transcript (the worker logs this only after it wins)."""
    return len(re.findall(rf"job {re.escape(job_id)}: completed [\d.]+ s of audio", log))


def runner_of(servers: list[ServerProcess], job_id: str, timeout: float = 120.0) -> ServerProcess:
    """The instance whose worker started the job (from its log)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for server in servers:
            if f"job {job_id}: started" in server.log():
                return server
        time.sleep(0.05)
    raise AssertionError(f"no instance started {job_id}")


def long_job_on_two(
    make: Callable[..., ServerProcess], storage: Path, prefix: str, long_wav: Path
) -> tuple[Cluster, ServerProcess, ServerProcess]:
    """Two instances, the long job uploaded to the first: (cluster, the one running it, the other)."""
    cluster = Cluster(storage, SHARED_REDIS, prefix, make)
    servers = cluster.start(2)
    assert submit(servers[0], long_wav, "long").status_code == 202
    owner = runner_of(servers, "long")
    return cluster, owner, next(s for s in servers if s is not owner)


def wait_status(
    server: ServerProcess, job_id: str, statuses: set[str], timeout: float = 300
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = requests.get(f"{server.url}/status/{job_id}", params={"wait": 10}, timeout=30)
        if response.status_code == 200:
            body = response.json()
            if body["status"] in statuses:
                return body
        else:
            time.sleep(0.2)  # 503 while the store is away
    raise AssertionError(f"{job_id} never reached {statuses}; last {body}")


def pending_files(storage: Path) -> set[str]:
    return {p.name for p in (storage / "pending").iterdir()} | {p.name for p in (storage / "tmp").iterdir()}


class _Receiver(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append({"id": self.headers["X-Webhook-Id"], **json.loads(body)})
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def webhook_receiver() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    received: list[dict[str, Any]] = []
    handler = type("Receiver", (_Receiver,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    server.shutdown()
    server.server_close()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_burst_is_spread_across_instances_and_each_job_completes_once(
    server_factory: Callable[..., ServerProcess],
    tmp_path: Path,
    prefix: str,
    webhook_receiver: tuple[str, list[dict[str, Any]]],
) -> None:
    hook_url, received = webhook_receiver
    cluster = Cluster(tmp_path / "shared", SHARED_REDIS, prefix, server_factory)
    servers = cluster.start(3, ["--no-transcript-cache", "--webhook-allow-private"])
    deadline = time.monotonic() + 2 * LEASE_SECONDS
    while requests.get(f"{servers[0].url}/health", timeout=5).json()["instances"] != 3:
        assert time.monotonic() < deadline, "the instances never saw each other"
        time.sleep(0.1)
    clips = [ENGLISH_CLIPS[i % 8] for i in range(12)]
    for i, clip in enumerate(clips):
        server = servers[i % 3]
        files = {"file": (clip, eval_clip(clip).read_bytes(), "application/octet-stream")}
        response = requests.post(
            f"{server.url}/transcribe",
            files=files,
            data={"job_id": f"burst-{i:02d}", "callback_url": hook_url},
            timeout=60,
        )
        assert response.status_code == 202, response.text

    for i, clip in enumerate(clips):
        body = wait_status(
            servers[(i + 1) % 3], f"burst-{i:02d}", {"completed", "failed"}
        )  # another instance
        assert body["status"] == "completed", body
        assert body["attempts"] == 1
        assert_transcript_matches(body["transcript"], [clip], f"burst-{i:02d}")
        text = requests.get(f"{servers[(i + 2) % 3].url}/download/burst-{i:02d}", timeout=10)
        assert text.status_code == 200 and text.text.split() == body["transcript"].split()

    logs = cluster.logs()
    for i in range(12):
        assert completions(logs, f"burst-{i:02d}") == 1, f"burst-{i:02d} did not complete exactly once"
    workers = [sum(completions(s.log(), f"burst-{i:02d}") for i in range(12)) for s in servers]
    assert sum(workers) == 12 and sum(1 for n in workers if n) >= 2, f"jobs per instance: {workers}"

    listing = requests.get(f"{servers[0].url}/jobs", params={"limit": 50}, timeout=10).json()
    assert {job["job_id"] for job in listing["jobs"]} == {f"burst-{i:02d}" for i in range(12)}
    queue = requests.get(f"{servers[1].url}/queue", timeout=10).json()
    assert queue["queued"] == [] and queue["running"] == []

    deadline = time.monotonic() + 30
    while len({r["job_id"] for r in received}) < 12 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert sorted(r["job_id"] for r in received) == [f"burst-{i:02d}" for i in range(12)]  # once each
    assert all(r["status"] == "completed" and r["transcript"] for r in received)
    assert len({r["id"] for r in received}) == 12


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_an_instance_killed_mid_job_has_its_job_finished_by_another(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, prefix: str, long_wav: Path
) -> None:
    _, owner, survivor = long_job_on_two(server_factory, tmp_path / "shared", prefix, long_wav)
    wait_for_progress(survivor, "long", timeout=120)  # mid-decode, as seen from the other instance
    owner.kill()  # SIGKILL: no shutdown code runs; the inference child dies with it

    body = wait_status(survivor, "long", {"completed", "failed"}, timeout=600)
    assert body["status"] == "completed", body
    assert body["attempts"] == 1  # the instance was killed from outside: not charged to the job
    assert_transcript_matches(body["transcript"], LONG_WAV_CLIPS, "job finished after a SIGKILL")
    log = survivor.log()
    assert "requeued 1 job(s) whose instance stopped: long" in log
    assert requests.get(f"{survivor.url}/health", timeout=5).json()["instances"] == 1
    assert completions(log, "long") == 1 and completions(owner.log(), "long") == 0


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_a_cancel_and_live_progress_cross_instances(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, prefix: str, long_wav: Path
) -> None:
    cluster, owner, other = long_job_on_two(server_factory, tmp_path / "shared", prefix, long_wav)
    servers = cluster.instances
    seen: list[str] = []
    with requests.get(f"{other.url}/events/long", stream=True, timeout=60) as stream:
        lines = stream.iter_lines(decode_unicode=True)
        for line in lines:  # the owner's progress, relayed to the other instance
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if "progress" in seen:
                break
        response = requests.delete(f"{other.url}/jobs/long", timeout=10)
        assert response.status_code == 200, response.text
        assert response.json()["previous_status"] == "processing"
        assert "stops within a few seconds" in response.json()["message"]
        for line in lines:
            if line.startswith("event: "):
                seen.append(line.removeprefix("event: "))
            if line.startswith("data: ") and seen[-1] in ("end", "state") and "cancelled" in line:
                break
    deadline = time.monotonic() + 30
    while "job long: cancelled while processing; stopped" not in owner.log():
        assert time.monotonic() < deadline, owner.log()
        time.sleep(0.1)
    health = requests.get(f"{owner.url}/health", timeout=5).json()
    assert health["active_jobs"] == []
    for server in servers:
        assert requests.get(f"{server.url}/status/long", timeout=5).json()["status"] == "cancelled"
    assert completions(cluster.logs(), "long") == 0


@dataclass
class PrivateRedis:
    """A redis-server of the test's own, which persists every write (appendfsync always)."""

    folder: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        assert binary, "redis-server is not installed (.ci/run installs it)"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [
                *(binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder)),
                *("--appendonly", "yes", "--appendfsync", "always", "--save", ""),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    if redis.Redis(port=self.port).ping():
                        return
            except (OSError, redis.exceptions.RedisError):
                time.sleep(0.05)
        raise AssertionError("redis-server did not start")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    server.start()
    yield server
    if server.proc is not None and server.proc.poll() is None:
        server.crash()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_redis_crashing_and_restarting_mid_run_loses_nothing(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, private_redis: PrivateRedis
) -> None:
    storage = tmp_path / "shared"
    cluster = Cluster(storage, private_redis.url, "svc", server_factory)
    servers = cluster.start(2)
    clips = ENGLISH_CLIPS[2:6]
    for i, clip in enumerate(clips):
        assert submit(servers[i % 2], eval_clip(clip), f"r{i}").status_code == 202
    runner_of(servers, "r0")

    private_redis.crash()
    before = pending_files(storage)
    response = submit(servers[0], eval_clip(ENGLISH_CLIPS[0]), "during-outage")
    assert response.status_code == 503, response.text
    assert "Redis" in response.json()["error"] and response.headers.get("Retry-After")
    assert pending_files(storage) == before  # nothing half-written
    health = requests.get(f"{servers[1].url}/health", timeout=10)
    assert health.status_code == 503 and health.json()["store"] == "unreachable"
    status = requests.get(f"{servers[1].url}/status/r1", timeout=10)
    assert status.status_code == 503 and "error" in status.json()
    time.sleep(2 * LEASE_SECONDS)  # longer than a lease: renewals failed meanwhile

    private_redis.start()  # same port, same append-only file
    for i, clip in enumerate(clips):
        body = wait_status(servers[(i + 1) % 2], f"r{i}", {"completed", "failed"}, timeout=600)
        assert body["status"] == "completed", body
        assert_transcript_matches(body["transcript"], [clip], f"r{i}")
    logs = cluster.logs()
    for i in range(len(clips)):
        assert completions(logs, f"r{i}") == 1, f"r{i} did not complete exactly once:\n{logs}"
    assert all(s.proc is not None and s.proc.poll() is None for s in servers)  # no instance died
    assert submit(servers[0], eval_clip(ENGLISH_CLIPS[0]), "after").status_code == 202
    assert wait_status(servers[1], "after", {"completed", "failed"})["status"] == "completed"
    assert "Redis is reachable again" in logs


def test_a_sqlite_instance_cannot_join_a_shared_directory(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, prefix: str
) -> None:
    storage = tmp_path / "shared"
    cluster = Cluster(storage, SHARED_REDIS, prefix, server_factory)
    cluster.start(1)
    loner = server_factory(storage, INSTANCE_ARGS).start(wait_ready=False)
    assert loner.proc is not None
    code = loner.proc.wait(60)
    assert code != 0
    assert "instances share a directory only with --backend redis" in loner.log()
    assert os.path.exists(storage / "service.lock")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_stalled_instance_that_comes_back_does_not_complete_the_job_twice(
    server_factory: Callable[..., ServerProcess], tmp_path: Path, prefix: str, long_wav: Path
) -> None:
    """SIGSTOP freezes the owner's HTTP process past its lease; another instance takes the job
    over; SIGCONT wakes the owner, whose decode went on meanwhile. One result is recorded."""
    storage = tmp_path / "shared"
    cluster, owner, other = long_job_on_two(server_factory, storage, prefix, long_wav)
    assert owner.proc is not None
    owner.proc.send_signal(signal.SIGSTOP)
    try:
        deadline = time.monotonic() + 120
        while "job long: started (attempt" not in other.log():
            assert time.monotonic() < deadline, other.log()
            time.sleep(0.1)
    finally:
        owner.proc.send_signal(signal.SIGCONT)
    body = wait_status(other, "long", {"completed", "failed"}, timeout=600)
    assert body["status"] == "completed" and body["attempts"] == 1, body
    assert_transcript_matches(body["transcript"], LONG_WAV_CLIPS, "job taken over from a stalled instance")
    deadline = time.monotonic() + 30
    while "another instance" not in owner.log():  # the woken owner noticed and stood down
        assert time.monotonic() < deadline, owner.log()
        time.sleep(0.1)
    logs = cluster.logs()
    assert completions(logs, "long") == 1, logs
    assert [p.name for p in (storage / "pending").iterdir() if p.name.startswith("long.")]  # audio kept
    download = requests.get(f"{owner.url}/download/long", timeout=10).text
    assert download.split() == body["transcript"].split()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_instance_started_before_redis_waits_for_it(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """Start order does not matter (compose restarts, a Redis that comes up late)."""
    later = PrivateRedis(tmp_path / "redis")
    cluster = Cluster(tmp_path / "shared", later.url, "svc", server_factory)
    (server,) = cluster.start(1)  # ready means the model is loaded; Redis is not there yet
    try:
        health = requests.get(f"{server.url}/health", timeout=10)
        assert health.status_code == 503 and health.json()["store"] == "unreachable"
        assert "Redis" in health.json()["error"]
        later.start()
        deadline = time.monotonic() + 30
        while requests.get(f"{server.url}/health", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, server.log()
            time.sleep(0.2)
        clip = ENGLISH_CLIPS[2]
        assert submit(server, eval_clip(clip), "late").status_code == 202
        body = wait_status(server, "late", {"completed", "failed"})
        assert body["status"] == "completed", body
        assert_transcript_matches(body["transcript"], [clip], "job after Redis came up")
    finally:
        if later.proc is not None:
            later.crash()
