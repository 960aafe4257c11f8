"""Running as a system service: the systemd units and launchd property list install-service
writes (checked by systemd-analyze verify), the sd_notify protocol spoken by a real server
(READY=1 after the model loads, WATCHDOG=1 only while healthy, STOPPING=1 and
EXTEND_TIMEOUT_USEC on SIGTERM), the self-check (a frozen inference process restarted and its
job completed, a full disk refusing uploads with 507, a stuck job, an unwritable storage), and
the supervisor that restarts a bare service after a crash, up to its start limit.

systemd-analyze comes from Debian's `systemd` package (.ci/run installs it): without it the
verify tests skip, or fail when $CI is set. Nothing here needs systemd running as PID 1.
"""

from __future__ import annotations

import asyncio
import errno
import os
import plistlib
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import requests
from conftest import REPO, FakeEngine, ServerProcess, eval_clip, free_port, wait_for_status
from test_api import ClientFactory, form, leftover_files
from test_packaging import cleanup_pid_file, run_script, service_env, wait_gone
from test_server_process import (
    LONG_JOB_ARGS,
    LONG_WAV_CLIPS,
    assert_transcript_matches,
    submit,
    wait_for_progress,
)

from service import system_service
from service.api.keys import SERVICES
from service.app import create_app
from service.inference.memory import MemoryReading, available_bytes, read_memory
from service.sdnotify import Notifier
from service.settings import Settings
from service.store.files import Layout

START = REPO / "scripts" / "start_transcription_service.sh"
SUPERVISE = REPO / "scripts" / "supervise.sh"
CLIP = eval_clip("LDC93S1.wav")
UNIT = "whisper-transcription.service"


# -- sd_notify ---------------------------------------------------------------------------------


def _bound(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(5)
    return sock


def test_notifier_sends_datagrams_to_a_path_or_an_abstract_socket(tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    with _bound(str(path)) as sock:
        notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "3000000"})
        assert notifier.enabled and notifier.watchdog_interval == 1.5
        assert notifier.ready("ready; idle; 0 queued")
        assert sock.recv(4096) == b"READY=1\nSTATUS=ready; idle; 0 queued"
        notifier.watchdog()
        notifier.extend_timeout(2.5)
        notifier.stopping("stopping")
        assert [sock.recv(4096) for _ in range(3)] == [
            b"WATCHDOG=1",
            b"EXTEND_TIMEOUT_USEC=2500000",
            b"STOPPING=1\nSTATUS=stopping",
        ]
        notifier.close()
    name = f"whisper-test-{uuid.uuid4().hex}"
    with _bound(b"\0" + name.encode()) as sock:
        abstract = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert abstract.status("hello")
        assert sock.recv(4096) == b"STATUS=hello"
        abstract.close()


def test_notifier_is_silent_outside_systemd_and_watchdog_only_for_its_own_pid() -> None:
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready("x") and quiet.watchdog_interval is None
    other = Notifier({"NOTIFY_SOCKET": "/nowhere", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}, pid=42)
    assert other.watchdog_interval is None  # the watchdog was meant for another process
    mine = Notifier({"NOTIFY_SOCKET": "/nowhere", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "42"}, pid=42)
    assert mine.watchdog_interval == 0.5
    assert not mine.send("WATCHDOG=1")  # nobody listens at /nowhere: reported, not raised
    mine.close()


# -- memory limits -------------------------------------------------------------------------------


def _fake_host(tmp_path: Path, cgroup_line: str, total_kib: int, available_kib: int) -> tuple[Path, Path]:
    proc, cgroup = tmp_path / "proc", tmp_path / "cgroup"
    (proc / "self").mkdir(parents=True)
    (proc / "meminfo").write_text(
        f"MemTotal: {total_kib} kB\nMemFree: 1 kB\nMemAvailable: {available_kib} kB\n"
    )
    (proc / "self" / "cgroup").write_text(cgroup_line + "\n")
    cgroup.mkdir()
    return cgroup, proc


def test_memory_is_measured_against_the_container_limit_when_tighter(tmp_path: Path) -> None:
    mib = 1024 * 1024
    cgroup, proc = _fake_host(tmp_path, "0::/app.slice/whisper", 16 * 1024 * 1024, 12 * 1024 * 1024)
    assert read_memory(cgroup, proc) == MemoryReading(4096 * mib, 16384 * mib, "host")
    assert available_bytes(cgroup, proc) == 12 * 1024 * mib
    group = cgroup / "app.slice" / "whisper"
    group.mkdir(parents=True)
    (group / "memory.max").write_text("max\n")  # unlimited here ...
    (group / "memory.current").write_text(str(900 * mib))
    (cgroup / "app.slice" / "memory.max").write_text(str(1024 * mib))  # ... but not above
    (cgroup / "app.slice" / "memory.current").write_text(str(1000 * mib))
    (cgroup / "app.slice" / "memory.stat").write_text(f"anon 1\ninactive_file {40 * mib}\n")
    reading = read_memory(cgroup, proc)
    assert reading == MemoryReading(960 * mib, 1024 * mib, "cgroup v2")  # page cache not counted
    # A model load sees the container's 64 MiB of room, not the host's 12 GiB (models._make_room).
    assert available_bytes(cgroup, proc) == 64 * mib
    # cgroup v1: the memory controller's own hierarchy; its "unlimited" is a huge number.
    cgroup1, proc1 = _fake_host(tmp_path / "v1", "4:memory:/docker/abc", 8 * 1024 * 1024, 6 * 1024 * 1024)
    limited = cgroup1 / "memory" / "docker" / "abc"
    limited.mkdir(parents=True)
    (cgroup1 / "memory" / "memory.limit_in_bytes").write_text("9223372036854771712\n")
    (cgroup1 / "memory" / "memory.usage_in_bytes").write_text(str(3 * 1024 * mib))
    (limited / "memory.limit_in_bytes").write_text(str(512 * mib))
    (limited / "memory.usage_in_bytes").write_text(str(500 * mib))
    (limited / "memory.stat").write_text(f"total_inactive_file {10 * mib}\n")
    assert read_memory(cgroup1, proc1) == MemoryReading(490 * mib, 512 * mib, "cgroup v1")


# -- the units -----------------------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        reason = "systemd-analyze is not installed; apt-get install -y systemd"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return path


def verify(unit: Path, tmp_path: Path, user: bool = False) -> None:
    """systemd's own check of the unit: no error and not one warning (unknown keys, bad values)."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    command = [systemd_analyze(), *(["--user"] if user else []), "verify", str(unit)]
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime), "SYSTEMD_LOG_COLOR": "0"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), result


def unit_entries(text: str) -> dict[str, dict[str, list[str]]]:
    """[section] -> key -> values, in order (keys like Environment= repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            current.setdefault(key, []).append(value)
    return sections


def install(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = system_service.main(["install-service", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def a_plain_account() -> str | None:
    """An account other than root and nobody, for User= (systemd warns about nobody)."""
    for name in ("daemon", "www-data", "mail"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    return None


def test_system_unit_is_notify_with_watchdog_start_limit_stop_timeout_and_sandbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    units, storage, models, env_file = (
        tmp_path / "units",
        tmp_path / "st",
        tmp_path / "models",
        tmp_path / "env",
    )
    account = a_plain_account()
    code, out, _ = install(
        capsys,
        "--unit-dir", units, "--env-file", env_file,
        *(["--run-as", account] if account else []),
        "--storage-dir", storage, "--port", "9123", "--model-dir", models, "--shutdown-grace", "20",
        "--self-check-seconds", "30", "--no-transcript-cache", "--api-token", "t0ken$with%odd\"chars",
    )  # fmt: skip
    assert code == 0, out
    path = units / UNIT
    text = path.read_text()
    unit = unit_entries(text)
    service = unit["Service"]
    assert shlex.split(service["ExecStart"][0]) == [
        sys.executable, "-m", "service", "serve", "--port", "9123", "--storage-dir", str(storage),
        "--model-dir", str(models), "--shutdown-grace", "20", "--no-transcript-cache",
        "--self-check-seconds", "30",
    ]  # fmt: skip
    assert (service["Type"], service["NotifyAccess"], service["Restart"]) == (
        ["notify"],
        ["main"],
        ["on-failure"],
    )
    assert (unit["Unit"]["StartLimitBurst"], unit["Unit"]["StartLimitIntervalSec"]) == (["3"], ["300"])
    assert service["RestartPreventExitStatus"] == ["2"]  # a usage error is not fixed by restarting
    assert service["WatchdogSec"] == ["90"]  # three self-check rounds
    assert service["WorkingDirectory"] == [str(storage)]
    assert service["EnvironmentFile"] == [f"-{env_file}"]
    assert f"PYTHONPATH={REPO}" in service["Environment"]
    assert service["NoNewPrivileges"] == ["yes"] and service["ProtectSystem"] == ["strict"]
    assert shlex.split(service["ReadWritePaths"][0]) == [str(storage), str(models)]
    # A private /tmp would hide a storage kept under /tmp (as pytest's usually is).
    under_tmp = str(storage).startswith(("/tmp/", "/var/tmp/"))
    assert service.get("PrivateTmp") == (None if under_tmp else ["yes"])
    assert service.get("User") == ([account] if account else None)
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]
    # The token: not in the unit, in the environment file (mode 600), and the output says so.
    assert "t0ken" not in text
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert 'SERVICE_API_TOKEN="t0ken$with%odd\\"chars"' not in env_file.read_text()  # $ escaped
    assert 'SERVICE_API_TOKEN="t0ken\\$with%odd\\"chars"' in env_file.read_text()
    assert f"SERVICE_API_TOKEN written to {env_file}" in out
    assert "--api-token is not written into the unit's command line" in out
    assert "systemctl enable --now whisper-transcription.service" in out
    assert storage.is_dir() and models.is_dir()  # writable paths must exist before it starts
    verify(path, tmp_path)

    # The stop timeout follows --shutdown-grace; a second install keeps the file's other lines.
    env_file.write_text(env_file.read_text() + "SERVICE_MODEL=base\n")
    code, _, _ = install(
        capsys, "--unit-dir", units, "--env-file", env_file, "--storage-dir", storage,
        "--shutdown-grace", "100", "--api-token", "new",
    )  # fmt: skip
    assert code == 0
    longer = unit_entries(path.read_text())["Service"]["TimeoutStopSec"][0]
    assert (
        int(longer) - int(service["TimeoutStopSec"][0]) == 100 + 2 - 30
    )  # grace + interrupt vs the 30 s wait
    assert "SERVICE_MODEL=base" in env_file.read_text() and "SERVICE_API_TOKEN=new" in env_file.read_text()


def test_print_shows_the_unit_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = Path("/srv") / f"whisper-test-{uuid.uuid4().hex}"
    code, out, err = install(
        capsys, "--print", "--unit-dir", tmp_path / "units", "--storage-dir", storage, "--api-token", "secret"
    )
    assert code == 0
    assert not (tmp_path / "units").exists() and not storage.exists()
    assert "secret" not in out + err and "would be written to" in err
    assert unit_entries(out)["Service"]["PrivateTmp"] == ["yes"]
    (tmp_path / UNIT).write_text(out)
    verify(tmp_path / UNIT, tmp_path)


def test_user_unit_installs_where_the_user_manager_looks_and_uninstalls(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    code, out, _ = install(capsys, "--user", "--port", "9124")
    assert code == 0, out
    path = tmp_path / "config" / "systemd" / "user" / UNIT
    unit = unit_entries(path.read_text())
    assert unit["Service"]["WorkingDirectory"] == [str(tmp_path / "data" / "whisper-transcription")]
    assert unit["Service"]["EnvironmentFile"] == [f"-{tmp_path / 'config' / 'whisper-transcription.env'}"]
    assert "User" not in unit["Service"] and "ProtectSystem" not in unit["Service"]
    assert "After" not in unit["Unit"] and unit["Install"]["WantedBy"] == ["default.target"]
    assert "systemctl --user enable --now" in out and "loginctl enable-linger" in out
    verify(path, tmp_path, user=True)

    # Named explicitly, so a machine running systemd is not asked to disable a real unit of that name.
    remove = ["uninstall-service", "--user", "--unit-dir", str(path.parent)]
    assert system_service.main(remove) == 0
    out = capsys.readouterr().out
    assert not path.exists() and f"removed {path}" in out and "kept the storage" in out
    assert system_service.main(remove) == 0
    assert "nothing to remove" in capsys.readouterr().out


def test_launchd_property_list(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    code, out, _ = install(capsys, "--launchd", "--user", "--port", "9125", "--api-token", "tok")
    assert code == 0, out
    path = tmp_path / "Library" / "LaunchAgents" / "local.whisper-transcription.plist"
    described = plistlib.loads(path.read_bytes())
    storage = tmp_path / "Library" / "Application Support" / "whisper-transcription"
    assert described["ProgramArguments"] == [
        sys.executable, "-m", "service", "serve", "--port", "9125", "--storage-dir", str(storage),
    ]  # fmt: skip
    assert described["RunAtLoad"] is True and described["KeepAlive"] == {"SuccessfulExit": False}
    assert described["StandardErrorPath"] == described["StandardOutPath"] == str(storage / "service.log")
    assert described["EnvironmentVariables"]["SERVICE_API_TOKEN"] == "tok"  # launchd has no env files
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert "launchctl bootstrap gui/$(id -u)" in out
    remove = ["uninstall-service", "--launchd", "--user", "--unit-dir", str(path.parent)]
    assert system_service.main(remove) == 0  # (named explicitly: no launchctl bootout of a real agent)
    assert not path.exists()


def test_bad_flags_are_refused_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args in (["--port", "http"], ["--bogus"], ["--name", "a/b"], ["--user", "--run-as", "root"]):
        with pytest.raises(SystemExit) as exc:
            system_service.main(["install-service", "--unit-dir", str(tmp_path / "u"), *args])
        assert exc.value.code == 2, args
        assert "error" in capsys.readouterr().err, args
    assert not (tmp_path / "u").exists()


def test_the_command_line_reaches_install_service(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "service", "install-service", "--print", "--storage-dir", str(tmp_path / "s")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"-m service serve --storage-dir {tmp_path / 's'}" in result.stdout
    helped = subprocess.run(
        [sys.executable, "-m", "service", "--help"], capture_output=True, text=True, timeout=120
    )
    assert "install-service" in helped.stdout


# -- the self-check, in process ------------------------------------------------------------------


async def _checked(client: Any, *names: str, timeout: float = 30.0) -> Any:
    """The /health answer once its checks include `names` (the first round ran)."""
    deadline = time.monotonic() + timeout
    while True:
        resp = await client.get("/health")
        body = await resp.json()
        if all(name in body["checks"] for name in names):
            return resp, body
        assert time.monotonic() < deadline, body
        await _sleep(0.05)


async def _sleep(seconds: float) -> None:
    await asyncio.sleep(seconds)


def metric(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert match, f"{name} not in the metrics"
    return float(match[1])


async def test_low_disk_refuses_uploads_with_507_and_health_reports_it(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", min_free_bytes=1 << 62)  # far above what is free
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    resp, health = await _checked(client, "disk")
    disk = health["checks"]["disk"]
    # Jobs already queued still run: /health stays 200, and says what is wrong.
    assert resp.status == 200 and health["status"] == "ok"
    assert disk["ok"] is False and disk["free_mb"] < disk["min_free_mb"]
    assert "below --min-free-mb" in disk["detail"] and "507" in disk["detail"]
    assert all(health["checks"][name]["ok"] for name in ("inference", "progress", "storage", "memory"))

    refused = await client.post("/transcribe", data=form(data=CLIP.read_bytes()))
    assert refused.status == 507
    error = (await refused.json())["error"]
    assert "nearly full" in error and "--min-free-mb" in error and "nothing was stored" in error
    openai = await client.post("/v1/audio/transcriptions", data=form(data=CLIP.read_bytes()))
    assert openai.status == 507
    assert (await openai.json())["error"]["code"] == "insufficient_storage"
    assert leftover_files(settings) == []
    metrics = await (await client.get("/metrics")).text()
    assert metric(metrics, 'whisper_self_check_ok{check="disk"}') == 0
    assert metric(metrics, 'whisper_self_check_ok{check="inference"}') == 1
    assert metric(metrics, 'whisper_uploads_rejected_total{reason="insufficient_storage"}') == 2
    assert metric(metrics, "whisper_worker_ready") == 1


async def test_unwritable_storage_makes_health_503_until_it_recovers(
    tmp_path: Path, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(self: Layout) -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    settings = Settings(storage_dir=tmp_path / "storage", self_check_seconds=0.1)
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    await _checked(client, "storage")
    with monkeypatch.context() as patch:
        patch.setattr(Layout, "probe_writable", read_only)
        await client.app[SERVICES].selfcheck.next_round()
        resp = await client.get("/health")
        body = await resp.json()
        assert resp.status == 503 and body["status"] == "unavailable", body  # the code and status agree
        assert body["checks"]["storage"] == {
            "ok": False,
            "detail": f"cannot write to {settings.storage_dir}: Read-only file system",
        }
        assert body["error"] == f"storage: cannot write to {settings.storage_dir}: Read-only file system"
        metrics = await (await client.get("/metrics")).text()
        assert metric(metrics, 'whisper_self_check_ok{check="storage"}') == 0
        assert metric(metrics, "whisper_worker_ready") == 0
    await client.app[SERVICES].selfcheck.next_round()
    resp = await client.get("/health")
    assert resp.status == 200 and (await resp.json())["checks"]["storage"]["ok"] is True


@dataclass
class SilentEngine(FakeEngine):
    """Decodes nothing and reports nothing until `release` is set: a stuck decode."""

    release: threading.Event = field(default_factory=threading.Event)

    def transcribe(self, model: Any, audio: np.ndarray, *args: Any, **kwargs: Any) -> Any:
        self.release.wait(30)
        return super().transcribe(model, audio, *args, **kwargs)


async def test_a_job_silent_past_its_limit_fails_the_progress_check(
    tmp_path: Path, aiohttp_client: ClientFactory
) -> None:
    engine = SilentEngine()
    settings = Settings(storage_dir=tmp_path / "storage", self_check_seconds=0.1, isolation="thread")
    client = await aiohttp_client(create_app(settings, engine=engine))
    selfcheck = client.app[SERVICES].selfcheck
    selfcheck.stall_seconds = 0.3
    try:
        assert (
            await client.post("/transcribe", data=form(data=CLIP.read_bytes(), job_id="stuck"))
        ).status == 202
        deadline = time.monotonic() + 20
        while True:
            resp = await client.get("/health")
            body = await resp.json()
            if not body["checks"].get("progress", {"ok": True})["ok"]:
                break
            assert time.monotonic() < deadline, body
            await _sleep(0.05)
        assert resp.status == 503 and body["status"] == "unavailable"
        progress = body["checks"]["progress"]
        # quiet_s is rounded to a tenth of a second: just past the limit reads as the limit.
        assert progress["job_id"] == "stuck" and progress["quiet_s"] >= progress["limit_s"] == 0.3
        assert "job stuck has reported no progress" in body["error"]
    finally:
        engine.release.set()
    deadline = time.monotonic() + 20
    while (body := await (await client.get("/status/stuck")).json())["status"] != "completed":
        assert time.monotonic() < deadline, body
        await _sleep(0.05)
    await selfcheck.next_round()
    assert (await client.get("/health")).status == 200


# -- a real server under the notify protocol -------------------------------------------------------


@dataclass
class Datagrams:
    """Every message sent to a notify socket, with when it arrived (monotonic)."""

    sock: socket.socket
    seen: list[tuple[float, str]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._collect, daemon=True)
        self._thread.start()

    def _collect(self) -> None:
        while not self._stop.is_set():
            try:
                message = self.sock.recv(65536).decode()
            except TimeoutError:
                continue
            self.seen.append((time.monotonic(), message))  # stamped on arrival, not before the wait

    def times(self, line: str, since: float = 0.0) -> list[float]:
        return [at for at, message in list(self.seen) if line in message.splitlines() and at >= since]

    def wait_for(
        self, predicate: Callable[[str], bool], timeout: float, what: str, since: float = 0.0
    ) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for at, message in list(self.seen):
                if at >= since and predicate(message):
                    return at
            time.sleep(0.05)
        raise AssertionError(f"no {what} within {timeout} s; got {self.seen[-10:]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[Path, Datagrams]]:
    path = Path(f"/tmp/whisper-notify-{uuid.uuid4().hex}.sock")  # short: AF_UNIX paths are ~100 bytes
    collector = Datagrams(_bound(str(path)))
    try:
        yield path, collector
    finally:
        collector.close()
        path.unlink(missing_ok=True)


def unit_command(storage: Path, port: int, *serve_args: str) -> tuple[list[str], dict[str, str], Path]:
    """ExecStart, Environment= and WorkingDirectory of the unit install-service prints."""
    printed = subprocess.run(
        [
            sys.executable, "-m", "service", "install-service", "--print",
            "--storage-dir", str(storage), "--port", str(port), *serve_args,
        ],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    service = unit_entries(printed.stdout)["Service"]
    environment = dict(shlex.split(entry)[0].split("=", 1) for entry in service["Environment"])
    return shlex.split(service["ExecStart"][0]), environment, Path(service["WorkingDirectory"][0])


def health(server: ServerProcess) -> tuple[int, dict[str, Any]]:
    resp = requests.get(server.url + "/health", timeout=5)
    return resp.status_code, resp.json()


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_notify_ready_watchdog_hung_inference_restarted_and_stopping(
    tmp_path: Path, notify_socket: tuple[Path, Datagrams], long_wav: Path
) -> None:
    path, messages = notify_socket
    storage = tmp_path / "storage"
    port = free_port()
    command, environment, workdir = unit_command(
        storage, port, *LONG_JOB_ARGS, "--self-check-seconds", "1", "--shutdown-grace", "3"
    )
    workdir.mkdir(parents=True)
    env = {
        **os.environ,
        **environment,
        "NOTIFY_SOCKET": str(path),
        "WATCHDOG_USEC": "2000000",  # a ping every second
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
    }
    server = ServerProcess(storage, port=port)
    server.log_path = tmp_path / "server.log"
    with open(server.log_path, "wb") as log:
        server.proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # READY=1 only once /health says the model is loaded (not when the port opens).
        while not messages.times("READY=1"):
            assert server.proc.poll() is None, server.log()
            checked = time.monotonic()
            try:
                code, body = health(server)
            except requests.ConnectionError:
                time.sleep(0.05)
                continue
            if not body["model_loaded"]:
                assert code == 503 and body["status"] == "unavailable", body
                assert not [at for at in messages.times("READY=1") if at < checked], (
                    "READY=1 before the model loaded"
                )
            time.sleep(0.05)
        code, body = health(server)
        assert code == 200 and body["model_loaded"] and body["status"] == "ok", body
        ready_at = messages.times("READY=1")[0]
        assert messages.times("STATUS=starting: loading model tiny.en")[0] < ready_at

        # WATCHDOG=1 about every second while healthy, with a STATUS line naming the queue.
        messages.wait_for(lambda m: len(messages.times("WATCHDOG=1")) >= 3, 15, "three watchdog pings")
        assert messages.wait_for(lambda m: m.startswith("STATUS=ready; idle; 0 queued"), 5, "an idle status")

        # A job; then its inference process frozen mid-decode.
        assert submit(server, long_wav, job_id="frozen").status_code == 202
        wait_for_progress(server, "frozen")
        messages.wait_for(lambda m: "running job frozen" in m, 10, "a status naming the running job")
        first_pid = body["worker_pid"]
        os.kill(first_pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        seen_hung = False
        try:
            deadline = time.monotonic() + 120
            while True:  # /health says so while it is frozen; the self-check kills it; it comes back
                code, body = health(server)
                inference = body["checks"].get("inference", {})
                if not inference.get("ok", True) and "ping" in inference["detail"]:
                    seen_hung = True
                    assert code == 503 and body["status"] == "unavailable", body
                    assert "inference: did not answer a ping" in body["error"], body
                if body["worker_restarts"] >= 1 and code == 200:
                    break
                assert time.monotonic() < deadline, body
                time.sleep(0.1)
        finally:
            if psutil.pid_exists(first_pid):
                os.kill(first_pid, signal.SIGCONT)
        back_at = time.monotonic()
        assert seen_hung, "health never reported the frozen inference process"
        assert body["worker_pid"] != first_pid, body
        # No watchdog ping from a round after the freeze until the new process answered.
        quiet = [at for at in messages.times("WATCHDOG=1", since=stopped_at + 1.5) if at < back_at - 0.5]
        assert not quiet and back_at - stopped_at > 4, (quiet, back_at - stopped_at)
        messages.wait_for(lambda m: m == "WATCHDOG=1", 10, "the watchdog again", since=back_at)
        log = server.log()
        assert f"inference process {first_pid} is hung" in log and "killing it" in log, log
        assert "self-check inference failed: did not answer a ping" in log, log

        done = wait_for_status(server.url, "frozen", {"completed", "failed"}, timeout=300)
        assert done["status"] == "completed" and done["attempts"] == 2, done  # requeued as after a crash
        assert_transcript_matches(done["transcript"], LONG_WAV_CLIPS, "frozen")

        # SIGTERM mid-job: STOPPING=1 at once, and more time asked for while the job may finish.
        assert submit(server, eval_clip("1272-128104-0004-8k.wav"), job_id="last").status_code == 202
        wait_for_progress(server, "last")
        term_at = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log()
        stopping = messages.wait_for(lambda m: m.startswith("STOPPING=1"), 5, "STOPPING=1", since=term_at)
        extended = [
            (at, int(m.split("=", 1)[1]))
            for at, m in list(messages.seen)
            if at >= term_at and m.startswith("EXTEND_TIMEOUT_USEC=")
        ]
        assert extended and extended[0][0] >= stopping, messages.seen[-10:]
        assert all(0 < usec <= (3 + 2 + 10) * 1_000_000 for _, usec in extended), extended
    finally:
        server.kill()


# -- the supervisor --------------------------------------------------------------------------------


def supervise(tmp_path: Path, script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """supervise.sh on a small Python program that counts its runs in tmp_path/runs."""
    program = tmp_path / "program.py"
    program.write_text(
        "import pathlib, sys\n"
        f"runs = pathlib.Path({str(tmp_path / 'runs')!r})\n"
        "runs.write_text(str(int(runs.read_text() or 0) + 1) if runs.exists() else '1')\n" + script
    )
    settings = {"SUPERVISE_BACKOFF": "0.1", "SUPERVISE_MAX_BACKOFF": "0.4", "SUPERVISE_INTERVAL": "60", **env}
    return subprocess.run(
        [str(SUPERVISE), "--pid-file", str(tmp_path / "child.pid"), "--", sys.executable, str(program)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **settings},
    )


def runs(tmp_path: Path) -> int:
    return int((tmp_path / "runs").read_text())


def test_supervisor_restarts_a_crash_with_backoff_and_gives_up_at_the_limit(tmp_path: Path) -> None:
    result = supervise(tmp_path, "sys.exit(3)")
    assert result.returncode == 1 and runs(tmp_path) == 4  # the first run and 3 restarts
    lines = [re.sub(r"after \d+s", "after Ns", line) for line in result.stderr.splitlines()]
    assert lines[:3] == [
        f"supervisor: the command exited with status 3 after Ns; restarting it in {pause}s "
        f"(restart {n} of at most 3 within 60s)"
        for n, pause in ((1, "0.1"), (2, "0.2"), (3, "0.4"))  # doubling, capped at 0.4
    ]
    assert lines[3].startswith(
        "supervisor: gave up: the command exited with status 3, its 3 restarts within 60s"
    )
    assert "left down" in lines[3]
    assert not (tmp_path / "child.pid").exists()


def test_supervisor_leaves_a_clean_exit_and_a_usage_error_alone(tmp_path: Path) -> None:
    for case in ("clean", "usage", "signal"):
        (tmp_path / case).mkdir()
    clean = supervise(tmp_path / "clean", "")
    assert clean.returncode == 0 and runs(tmp_path / "clean") == 1
    assert "exited cleanly; not restarting it" in clean.stderr
    usage = supervise(tmp_path / "usage", "sys.exit(2)")
    assert usage.returncode == 2 and runs(tmp_path / "usage") == 1
    assert "a usage or configuration error): not restarting it" in usage.stderr
    killed = supervise(
        tmp_path / "signal", "import os, signal\nif int(runs.read_text()) < 2: os.kill(os.getpid(), 9)"
    )
    assert killed.returncode == 0 and runs(tmp_path / "signal") == 2
    assert "the command was killed by SIGKILL" in killed.stderr


def test_supervisor_passes_sigterm_on_and_stops_with_the_command(tmp_path: Path) -> None:
    ready = tmp_path / "handler-set"
    program = (
        "import pathlib, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))\n"
        f"pathlib.Path({str(ready)!r}).write_text('ok')\n"
        "time.sleep(60)\n"
    )
    (tmp_path / "program.py").write_text(program)
    proc = subprocess.Popen(
        [
            str(SUPERVISE),
            "--pid-file",
            str(tmp_path / "child.pid"),
            "--",
            sys.executable,
            str(tmp_path / "program.py"),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 20
    while not ((tmp_path / "child.pid").is_file() and ready.is_file()):  # the handler is set
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int((tmp_path / "child.pid").read_text())
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "stopped (SIGTERM passed on; the command exited with status 0)" in err
    assert wait_gone(child) and not (tmp_path / "child.pid").exists()


def _new_service_pid(pid_file: Path, old: int, timeout: float = 60) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            pid = int(pid_file.read_text().strip() or 0)
        except (FileNotFoundError, ValueError):
            pid = 0
        if pid and pid != old and psutil.pid_exists(pid):
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no new service pid in {pid_file} after {timeout} s (was {old})")


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_bare_start_restarts_a_killed_service_and_gives_up_at_the_start_limit(tmp_path: Path) -> None:
    storage = tmp_path / "storage"
    port = free_port()
    url = f"http://localhost:{port}"
    env = {**service_env(), "SUPERVISE_BACKOFF": "0.2", "SUPERVISE_INTERVAL": "120"}
    pid_file = storage / "service.pid"
    with cleanup_pid_file(pid_file):
        started = run_script(
            [START, "--no-docker", "--port", str(port), "--storage-dir", storage, "--timeout", "120"],
            env,
            timeout=180,
        )
        assert started.returncode == 0, started
        assert "restarted after a crash (at most 3 times in 120s) by scripts/supervise.sh" in started.stdout
        supervisor = int((storage / "supervisor.pid").read_text())
        first = int(pid_file.read_text())

        # Killed: back within seconds, on the same port, with a new pid.
        os.kill(first, signal.SIGKILL)
        killed_at = time.monotonic()
        second = _new_service_pid(pid_file, first)
        deadline = time.monotonic() + 120
        while True:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, (storage / "service.log").read_text()
            time.sleep(0.1)
        print(f"back after {time.monotonic() - killed_at:.1f} s", end=" ")
        assert time.monotonic() - killed_at < 60

        # Killed again and again: restarts 2 and 3, then the next crash leaves it down.
        os.kill(second, signal.SIGKILL)
        third = _new_service_pid(pid_file, second)
        os.kill(third, signal.SIGKILL)
        fourth = _new_service_pid(pid_file, third)
        os.kill(fourth, signal.SIGKILL)
        assert wait_gone(supervisor, timeout=30), "the supervisor did not give up"
        log = (storage / "service.log").read_text()
        assert log.count("was killed by SIGKILL") == 4 and "restart 3 of at most 3 within 120s" in log, log
        assert "supervisor: gave up: the command was killed by SIGKILL, its 3 restarts within 120s" in log, (
            log
        )
        assert not pid_file.exists()
        down = run_script([START, "--no-docker", "--storage-dir", storage, "--stop"])
        assert down.stdout == f"transcription service is not running (storage {storage})\n"


# -- --systemd, against a stand-in systemctl -------------------------------------------------------

FAKE_SYSTEMCTL = r"""#!/usr/bin/env bash
# A stand-in for systemctl: runs the unit's ExecStart (with its Environment= lines) in the
# background for enable --now, and answers is-active and stop from its pid.
set -u
echo "$*" >>"$FAKE_STATE/calls"
unit_file="$SYSTEMD_UNIT_DIR/${!#}"
pid_file="$FAKE_STATE/pid"
alive() { [ -f "$pid_file" ] && kill -0 "$(cat "$pid_file")" 2>/dev/null; }
if [ "$1" = --user ]; then shift; fi
case "$1" in
    daemon-reload) exit 0 ;;
    enable)
        command=$(sed -n 's/^ExecStart=//p' "$unit_file")
        workdir=$(sed -n 's/^WorkingDirectory=//p' "$unit_file")
        mapfile -t environment < <(sed -n 's/^Environment=//p' "$unit_file")
        (cd "$workdir" && eval "exec env ${environment[*]} $command" >>"$FAKE_STATE/journal" 2>&1) &
        echo $! >"$pid_file"
        ;;
    is-active)
        if alive; then echo active; else echo inactive; exit 3; fi
        ;;
    stop)
        if alive; then
            kill -TERM "$(cat "$pid_file")"
            while alive; do sleep 0.1; done
        fi
        ;;
esac
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_systemd_mode_installs_the_unit_and_starts_it_with_systemctl(tmp_path: Path) -> None:
    state, units, storage = tmp_path / "state", tmp_path / "units", tmp_path / "storage"
    state.mkdir()
    fake = tmp_path / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    journal = tmp_path / "journalctl"
    journal.write_text(f'#!/usr/bin/env bash\ncat "{state}/journal"\n')
    journal.chmod(0o755)
    port = free_port()
    env = {
        **service_env(),
        "SYSTEMCTL": str(fake),
        "JOURNALCTL": str(journal),
        "SYSTEMD_UNIT_DIR": str(units),
        "FAKE_STATE": str(state),
    }
    try:
        started = run_script(
            [START, "--systemd", "--port", str(port), "--storage-dir", storage, "--timeout", "120"],
            env,
            timeout=180,
        )
        assert started.returncode == 0, started
        assert started.stdout.splitlines()[-1] == f"Transcription service ready at http://localhost:{port}"
        assert f"wrote {units / UNIT}" in started.stdout
        assert f"starting systemd unit {UNIT} on port {port} (storage {storage})" in started.stdout
        scope = "" if os.geteuid() == 0 else "--user "  # root gets a system unit, others their own
        assert (state / "calls").read_text().splitlines()[:3] == [
            f"{scope}is-active {UNIT}",
            f"{scope}daemon-reload",
            f"{scope}enable --now {UNIT}",
        ]
        unit = unit_entries((units / UNIT).read_text())["Service"]
        assert shlex.split(unit["ExecStart"][0])[4:] == ["--port", str(port), "--storage-dir", str(storage)]

        again = run_script([START, "--systemd", "--port", str(port)], env, timeout=60)
        assert again.returncode == 0 and f"already running (systemd unit {UNIT})" in again.stdout

        stopped = run_script([START, "--systemd", "--stop"], env, timeout=120)
        assert stopped.returncode == 0, stopped
        assert stopped.stdout.splitlines()[-1].startswith(f"stopped systemd unit {UNIT}")
        assert "stopping: signal received" in (state / "journal").read_text()
    finally:
        if (state / "pid").is_file():  # whatever failed, the service does not outlive the test
            pid = int((state / "pid").read_text())
            if psutil.pid_exists(pid):
                os.kill(pid, signal.SIGKILL)


def test_systemd_mode_without_systemctl_says_what_to_do_instead(tmp_path: Path) -> None:
    result = run_script([START, "--systemd"], {"SYSTEMCTL": str(tmp_path / "no-systemctl")})
    assert result.returncode == 1
    assert result.stderr.startswith(
        "error: systemctl is not installed: --systemd needs a Linux system run by systemd"
    )
    assert result.stdout == ""
