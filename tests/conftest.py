"""Shared fixtures: eval audio, the real engine (loaded once), a fake engine, real server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import wave
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from service.engines.base import (
    DecodeOptions,
    JobInterrupted,
    ProgressCallback,
    Result,
    Segment,
    SegmentCallback,
)
from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
EVAL_DIR = Path(os.environ.get("EVAL_DIR", REPO.parent / "shared" / "eval"))

# English clips with reference transcripts, short enough for the test suite.
ENGLISH_CLIPS = [
    "LDC93S1.wav",
    "61-70968-0000.flac",
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
    "uberi_english.wav",
    "1272-128104-0004-8k.wav",
]


def eval_clip(name: str) -> Path:
    path = EVAL_DIR / name
    if not path.is_file():
        pytest.fail(f"evaluation clip {path} is missing; set EVAL_DIR to the shared/eval folder")
    return path


def reference_text(name: str) -> str:
    return eval_clip(name).with_suffix(".txt").read_text(encoding="utf-8")


def word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    return float(jiwer.wer(normalize(reference), normalize(hypothesis)))


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int = 16_000) -> Path:
    """Write float32 mono samples in [-1, 1] as 16-bit PCM WAV."""
    data = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(data)
    return path


@pytest.fixture(scope="session")
def long_wav(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """About 90 s of real speech made by joining eval clips: several decoding windows."""
    from service.inference import audio

    names = ["1272-128104-0004-8k.wav", "mfa_acoustic_corpus.wav", *ENGLISH_CLIPS[:7]]
    parts = []
    for name in names:
        parts.append(audio.decode(eval_clip(name)))
        parts.append(np.zeros(8000, dtype=np.float32))
    return write_wav(tmp_path_factory.mktemp("audio") / "long.wav", np.concatenate(parts))


# -- engines ------------------------------------------------------------------------------


class SharedModelEngine:
    """The real openai-whisper engine with loaded models kept for the whole test session."""

    def __init__(self, models_dir: Path) -> None:
        from service.engines.openai_whisper import OpenAIWhisperEngine

        self._inner = OpenAIWhisperEngine(models_dir, device="cpu")
        self.name = self._inner.name
        self.device = self._inner.device
        self._models: dict[str, Any] = {}
        self._lock = threading.Lock()

    def check_model_name(self, name: str) -> None:
        self._inner.check_model_name(name)

    def is_english_only(self, name: str) -> bool:
        return self._inner.is_english_only(name)

    def list_models(self) -> list[dict[str, Any]]:
        return self._inner.list_models()

    def load(self, name: str) -> Any:
        with self._lock:
            if name not in self._models:
                self._models[name] = self._inner.load(name)
            return self._models[name]

    def transcribe(
        self,
        model: Any,
        audio: np.ndarray,
        options: DecodeOptions,
        on_progress: ProgressCallback,
        on_segment: SegmentCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result:
        return self._inner.transcribe(model, audio, options, on_progress, on_segment, should_stop)


@pytest.fixture(scope="session")
def real_engine(tmp_path_factory: pytest.TempPathFactory) -> SharedModelEngine:
    return SharedModelEngine(tmp_path_factory.mktemp("models"))


@dataclass
class FakeEngine:
    """Deterministic stand-in for queue logic tests: 'transcribes' to a description of the audio.

    `gate` holds every decode until set, so a test can observe a job in processing. Each step
    hands `on_segment` one small segment (" step N"), as a real engine does per window.
    """

    name: str = "fake"
    device: str = "cpu"
    steps: int = 4
    gate: threading.Event = field(default_factory=threading.Event)
    fail_with: Exception | None = None
    load_error: Exception | None = None
    decoded: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.gate.set()

    def check_model_name(self, name: str) -> None:
        from service.errors import ModelUnavailable

        if name not in ("tiny.en", "tiny", "base"):
            raise ModelUnavailable(f"Unknown model {name!r}.")

    def is_english_only(self, name: str) -> bool:
        return name.endswith(".en")

    def list_models(self) -> list[dict[str, Any]]:
        return [{"name": n, "bundled": True, "on_disk": True, "offline": True} for n in ("tiny.en", "tiny")]

    def load(self, name: str) -> str:
        if self.load_error is not None:
            raise self.load_error
        return name

    def transcribe(
        self,
        model: Any,
        audio: np.ndarray,
        options: DecodeOptions,
        on_progress: ProgressCallback,
        on_segment: SegmentCallback | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Result:
        duration = len(audio) / 16_000
        for step in range(1, self.steps + 1):
            while not self.gate.wait(0.05):
                on_progress((step - 1) / self.steps)  # lets shutdown interrupt a held decode
            if on_segment is not None:
                span = duration / self.steps
                start, end = (step - 1) * span, step * span
                on_segment(Segment(id=step - 1, start=start, end=end, text=f" step {step}"))
            on_progress(step / self.steps)
        if self.fail_with is not None:
            raise self.fail_with
        text = f"{len(audio)} samples"
        self.decoded.append(text)
        return Result(
            text=text,
            language=options.language or "en",
            duration_s=duration,
            segments=[Segment(id=0, start=0.0, end=duration, text=" " + text)],
        )


# Re-exported for tests that build their own interrupt behaviour.
__all__ = ["FakeEngine", "JobInterrupted"]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Tests built on these settings drive the fake engine with made-up audio (tones, silence):
    # no speech detection, so every job's whole recording reaches the engine.
    return Settings(storage_dir=tmp_path / "storage", beam_size=5, vad=False)


# -- real server processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServerProcess:
    """`python -m service` on loopback, as a user would start it."""

    storage_dir: Path
    port: int = field(default_factory=free_port)
    extra_args: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_ready: bool = True, timeout: float = 120.0) -> ServerProcess:
        self.log_path = self.storage_dir.parent / f"server-{self.port}-{time.monotonic_ns()}.log"
        self.storage_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "service",
                    "--port",
                    str(self.port),
                    "--storage-dir",
                    str(self.storage_dir),
                    *self.extra_args,
                ],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        if wait_ready:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode}:\n{self.log()}")
            try:
                health: dict[str, Any] = requests.get(self.url + "/health", timeout=2).json()
                if health.get("model_loaded"):
                    return health
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"server not ready after {timeout} s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=30)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    started: list[ServerProcess] = []

    def make(storage_dir: Path | None = None, extra_args: list[str] | None = None) -> ServerProcess:
        server = ServerProcess(storage_dir or tmp_path / "storage", extra_args=extra_args or [])
        started.append(server)
        return server

    yield make
    for server in started:
        server.kill()


def wait_for_status(url: str, job_id: str, statuses: set[str], timeout: float = 180.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = requests.get(f"{url}/status/{job_id}", timeout=10).json()
        if body.get("status") in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} never reached {statuses}; last status {body}")
