"""openai-whisper on PyTorch.

Progress comes from the window loop inside `whisper.transcribe`, which reports each decoded
window to a tqdm bar. The module's `tqdm` is swapped, once, for a bar that forwards to a
per-thread callback; the callback may raise `JobInterrupted` to stop between windows.
The same bar hands on each window's finished segments: it holds the list `whisper.transcribe`
appends them to, and at every update forwards the ones it has not sent yet.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import urllib.error
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from service.engines.base import (
    DecodeOptions,
    JobInterrupted,
    ProgressCallback,
    Result,
    Segment,
    SegmentCallback,
    StopCheck,
    Word,
)
from service.engines.bundled import assembled_ct2_dir, bundled_ct2_dir
from service.engines.ct2_import import ModelImportError, cached_import
from service.engines.openai_whisper_catalog import OpenAIWhisperCatalog
from service.errors import ModelUnavailable

log = logging.getLogger(__name__)

_progress = threading.local()
RawSegmentCallback = Callable[[dict[str, Any]], None]


def _callers_segments() -> list[dict[str, Any]] | None:
    """The list whisper.transcribe collects finished segments in (a local of the bar's creator).

    None if whisper changed shape: segments then reach the caller only after the decode.
    """
    try:
        frame = sys._getframe(2)  # 0: here, 1: the bar's __init__, 2: whisper.transcribe
    except ValueError:
        return None
    found = frame.f_locals.get("all_segments") if frame.f_code.co_name == "transcribe" else None
    return found if isinstance(found, list) else None


def _stop_hook(should_stop: StopCheck) -> Callable[..., None]:
    def check(_module: Any, _inputs: Any) -> None:
        if should_stop():
            raise JobInterrupted

    return check


class _ForwardingBar:
    """Stands in for tqdm.tqdm inside whisper.transcribe."""

    def __init__(self, total: int | None = None, **_: Any) -> None:
        self.total = total or 0
        self.n = 0
        self._callback: ProgressCallback | None = getattr(_progress, "callback", None)
        self._on_segment: RawSegmentCallback | None = getattr(_progress, "on_segment", None)
        self._segments = _callers_segments() if self._on_segment is not None else None
        self._sent = 0

    def __enter__(self) -> _ForwardingBar:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def update(self, n: int = 1) -> None:
        self.n += n
        # whisper updates the bar right after it appends a window's segments: they are final.
        if self._on_segment is not None and self._segments is not None:
            while self._sent < len(self._segments):
                self._sent += 1
                self._on_segment(self._segments[self._sent - 1])
        if self._callback is not None and self.total > 0:
            self._callback(min(1.0, self.n / self.total))


class _TqdmModule:
    tqdm = _ForwardingBar


def _install_progress_hook() -> None:
    # `whisper.transcribe` the attribute is the function; the module must be fetched by name.
    module = importlib.import_module("whisper.transcribe")
    module.tqdm = _TqdmModule  # type: ignore[attr-defined]


def _segment(raw: dict[str, Any], word_timestamps: bool) -> Segment:
    return Segment(
        id=int(raw["id"]),
        start=float(raw["start"]),
        end=float(raw["end"]),
        text=str(raw["text"]),
        avg_logprob=float(raw["avg_logprob"]),
        no_speech_prob=float(raw["no_speech_prob"]),
        words=_words(raw) if word_timestamps else None,
        seek=int(raw["seek"]),
        tokens=[int(t) for t in raw["tokens"]],
        temperature=float(raw["temperature"]),
        compression_ratio=float(raw["compression_ratio"]),
    )


def _words(segment: dict[str, Any]) -> list[Word]:
    return [
        Word(
            start=float(w["start"]),
            end=float(w["end"]),
            word=str(w["word"]),
            probability=float(w["probability"]),
        )
        for w in segment.get("words", [])
    ]


class OpenAIWhisperEngine(OpenAIWhisperCatalog):
    """The catalog's names (openai_whisper_catalog.py), plus loading and decoding on torch."""

    def __init__(self, models_dir: Path, device: str = "auto", threads: int = 0) -> None:
        super().__init__(models_dir, device)
        if threads > 0:
            # torch sizes its pool from the host's cores, which oversubscribes a container's quota.
            torch.set_num_threads(threads)
        _install_progress_hook()

    # -- loading ----------------------------------------------------------------------
    def load(self, name: str) -> Whisper:
        try:
            ct2_dir = bundled_ct2_dir(name) or assembled_ct2_dir(name, self.models_dir)
        except OSError as exc:  # joining a split bundle into the cache: disk full, read-only
            raise ModelUnavailable(f"The bundled model {name} could not be unpacked: {exc}") from exc
        if ct2_dir is not None:
            return self._load_imported(ct2_dir, name)
        if name in whisper.available_models():
            try:
                return whisper.load_model(name, device=self.device, download_root=str(self.models_dir))
            except (urllib.error.URLError, OSError, RuntimeError) as exc:
                checkpoint = os.path.basename(whisper._MODELS[name])
                raise ModelUnavailable(
                    f"Model {name!r} is not on this machine and could not be downloaded ({exc}). "
                    f"Use the bundled tiny.en, or place {checkpoint} in {self.models_dir}."
                ) from exc
        if os.path.isfile(name):
            try:
                return whisper.load_model(name, device=self.device)
            except Exception as exc:
                raise ModelUnavailable(f"Checkpoint {name} could not be loaded: {exc}") from exc
        raise ModelUnavailable(f"Unknown model {name!r}.")

    def _load_imported(self, ct2_dir: Path, name: str) -> Whisper:
        try:
            checkpoint_path = cached_import(ct2_dir, self.models_dir, name)
            try:
                checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
            except Exception as exc:  # a damaged cache file (disk trouble): import it afresh
                log.warning("cached checkpoint %s is unreadable (%s); importing again", checkpoint_path, exc)
                checkpoint_path = cached_import(ct2_dir, self.models_dir, name, refresh=True)
                checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
        except ModelImportError as exc:
            raise ModelUnavailable(f"The bundled model {name} could not be imported: {exc}") from exc
        model = Whisper(ModelDimensions(**checkpoint["dims"]))
        model.load_state_dict(checkpoint["model_state_dict"])
        if "alignment_heads" in checkpoint:
            model.set_alignment_heads(checkpoint["alignment_heads"].encode("ascii"))
        return model.to(self.device)

    # -- decoding ---------------------------------------------------------------------
    def transcribe(
        self,
        model: Whisper,
        audio: np.ndarray,
        options: DecodeOptions,
        on_progress: ProgressCallback,
        on_segment: SegmentCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Result:
        extra: dict[str, Any] = {}
        if options.beam_size > 1:
            extra = {"beam_size": options.beam_size, "best_of": options.beam_size}
        language = options.language
        if not model.is_multilingual:
            language = "en"
        if options.initial_prompt:
            extra["initial_prompt"] = options.initial_prompt
        if (temperatures := options.temperatures()) is not None:
            extra["temperature"] = temperatures
        sent = 0

        def forward(raw: dict[str, Any]) -> None:
            nonlocal sent
            sent += 1
            if on_segment is not None:
                on_segment(_segment(raw, options.word_timestamps))

        _progress.callback = on_progress
        _progress.on_segment = forward if on_segment is not None else None
        # Checked before every decoder step, so a cancel lands mid-window, not at its end.
        # One model decodes one file at a time here, so the hook is this call's alone.
        hook = model.decoder.register_forward_pre_hook(_stop_hook(should_stop)) if should_stop else None
        try:
            with torch.inference_mode():
                raw = model.transcribe(
                    torch.from_numpy(audio),
                    language=language,
                    task=options.task,
                    fp16=self.device == "cuda",
                    verbose=None,
                    word_timestamps=options.word_timestamps,
                    **extra,
                )
        finally:
            _progress.callback = None
            _progress.on_segment = None
            if hook is not None:
                hook.remove()
        segments = [_segment(s, options.word_timestamps) for s in raw["segments"]]
        if on_segment is not None:
            for segment in segments[sent:]:  # none, unless whisper's internals moved
                on_segment(segment)
        return Result(
            text=str(raw["text"]).strip(),
            language=raw.get("language"),
            duration_s=len(audio) / whisper.audio.SAMPLE_RATE,
            segments=segments,
        )
