"""The engine seam: what the worker needs from a speech-to-text implementation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol, runtime_checkable

import numpy as np

ProgressCallback = Callable[[float], None]
StopCheck = Callable[[], bool]
# Called with each segment as soon as it is final, for live streams (the result has them all too).
SegmentCallback = Callable[["Segment"], None]


# Whisper's mel frames per second of audio: the unit of a segment's `seek`.
FRAMES_PER_SECOND = 100
# How much the temperature rises each time a window fails whisper's quality checks.
TEMPERATURE_STEP = 0.2


class JobInterrupted(Exception):
    """Raised from the progress callback to stop a decode between windows (shutdown, cancel)."""


@dataclass(frozen=True)
class DecodeOptions:
    language: str | None = None
    task: str = "transcribe"
    beam_size: int = 5
    # Per-word times, so speaker changes can fall between words (diarization asks for them).
    word_timestamps: bool = False
    # Text the decoder sees as preceding the audio: names and spellings it should prefer.
    initial_prompt: str | None = None
    # Where sampling starts; on a failed window it rises by 0.2 up to 1. None: whisper's default (0).
    temperature: float | None = None

    def temperatures(self) -> tuple[float, ...] | None:
        """The fallback ladder both engines take, as whisper's CLI builds it; None for the default."""
        if self.temperature is None:
            return None
        steps = int((1.0 - self.temperature) / TEMPERATURE_STEP + 1e-9)
        return tuple(round(self.temperature + i * TEMPERATURE_STEP, 4) for i in range(steps + 1))


@dataclass
class Word:
    """One word with its time span; `word` keeps Whisper's leading space, so words join to text."""

    start: float
    end: float
    word: str
    probability: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "word": self.word,
            "probability": self.probability,
        }


@dataclass
class Segment:
    id: int
    start: float
    end: float
    text: str
    avg_logprob: float | None = None
    no_speech_prob: float | None = None
    words: list[Word] | None = None
    speaker: str | None = None
    # What the decoder reports about the window the segment came from, as OpenAI's verbose_json
    # carries them: the window's start in mel frames (100 a second, in the recording's time), the
    # token ids (timestamps included), the temperature that passed the quality checks, and the
    # text's gzip compression ratio (over 2.4 reads as a repetition loop).
    seek: int | None = None
    tokens: list[int] | None = None
    temperature: float | None = None
    compression_ratio: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id,
            "start": round(self.start, 3),
            "end": round(self.end, 3),
            "text": self.text,
            "avg_logprob": self.avg_logprob,
            "no_speech_prob": self.no_speech_prob,
        }
        for name in ("seek", "tokens", "temperature", "compression_ratio"):
            if (value := getattr(self, name)) is not None:
                out[name] = value
        # Only when set, so results without them serialise exactly as before.
        if self.speaker is not None:
            out["speaker"] = self.speaker
        if self.words is not None:
            out["words"] = [word.as_dict() for word in self.words]
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Segment:
        """A segment as `as_dict` wrote it (checkpoints)."""
        words = raw.get("words")
        return cls(
            id=int(raw["id"]),
            start=float(raw["start"]),
            end=float(raw["end"]),
            text=str(raw["text"]),
            avg_logprob=raw.get("avg_logprob"),
            no_speech_prob=raw.get("no_speech_prob"),
            words=None if words is None else [Word(**w) for w in words],
            speaker=raw.get("speaker"),
            seek=raw.get("seek"),
            tokens=raw.get("tokens"),
            temperature=raw.get("temperature"),
            compression_ratio=raw.get("compression_ratio"),
        )

    def shifted(self, offset: float, limit: float) -> Segment:
        """This segment of a chunk, in the recording's time; nothing ends past `limit`."""

        def at(t: float) -> float:
            return min(t + offset, limit)

        words = None
        if self.words is not None:
            words = [Word(at(w.start), at(w.end), w.word, w.probability) for w in self.words]
        seek = None if self.seek is None else self.seek + round(offset * FRAMES_PER_SECOND)
        return replace(self, start=at(self.start), end=at(self.end), words=words, seek=seek)


@dataclass(frozen=True)
class SpeakerTurn:
    """One stretch of speech by one speaker (diarization), in seconds."""

    start: float
    end: float
    speaker: str

    def as_dict(self) -> dict[str, Any]:
        return {"start": round(self.start, 3), "end": round(self.end, 3), "speaker": self.speaker}


@dataclass
class Result:
    text: str
    language: str | None
    duration_s: float
    segments: list[Segment] = field(default_factory=list)
    # Who spoke when, as found by diarization: finer than segment times (rttm is written from them).
    speaker_turns: list[SpeakerTurn] | None = None
    # Packets of the file that did not decode and were skipped, and the audio they held (the
    # job's status says so); not part of the transcript.
    skipped_packets: int = 0
    skipped_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out = {
            "text": self.text,
            "language": self.language,
            "duration": round(self.duration_s, 3),
            "segments": [segment.as_dict() for segment in self.segments],
        }
        if self.speaker_turns is not None:
            out["speaker_turns"] = [turn.as_dict() for turn in self.speaker_turns]
        return out


class ModelCatalog(Protocol):
    """What an engine knows about model names and its device, without loading anything.

    The HTTP process asks only this (models live in the inference process), so an engine's
    catalog must not need its inference libraries (torch) to answer.
    """

    name: str
    device: str

    def check_model_name(self, name: str) -> None:
        """Raise ModelUnavailable for a name this engine could never load (cheap, no I/O)."""

    def is_english_only(self, name: str) -> bool: ...

    def list_models(self) -> list[dict[str, Any]]:
        """Known model names: `name`, `bundled`, `on_disk`, `offline` (loadable with no network)."""
        ...


class Engine(ModelCatalog, Protocol):
    """Loads models and transcribes with them. Every method blocks: call from a worker thread."""

    def load(self, name: str) -> Any: ...

    def transcribe(
        self,
        model: Any,
        audio: np.ndarray,
        options: DecodeOptions,
        on_progress: ProgressCallback,
        on_segment: SegmentCallback | None = None,
        should_stop: StopCheck | None = None,
    ) -> Result:
        """Transcribe 16 kHz mono audio. `on_segment`, when given, hears every segment of the
        result, in order, as it is decoded (so streams can show text before the job ends).
        `should_stop`, when given, may be polled inside a window; when it says True the engine
        raises JobInterrupted as soon as it can (cancel within a fraction of a second)."""
        ...


@runtime_checkable
class BatchTranscriber(Protocol):
    """An engine that can decode several chunks in one call (faster-whisper). The pipeline
    batches a job's chunks when its engine is one; others decode them one by one."""

    def auto_batch_size(self) -> int:
        """Chunks decoded together when the setting says 0 (auto): chosen for the engine's device."""
        ...

    def transcribe_batch(
        self,
        model: Any,
        pieces: Sequence[np.ndarray],
        options: DecodeOptions,
        should_stop: StopCheck | None = None,
    ) -> list[Result]:
        """One Result per piece (16 kHz mono, at most one 30 s window each), in chunk time, as
        `transcribe` would give it; nothing is streamed before the whole batch is decoded."""
        ...
