"""Cutting a recording into speech chunks at pauses, as it streams past.

Whisper reads 30 s at a time. A long recording is cut, before Whisper sees it, into chunks of
at most that length, each a contiguous stretch of the original audio: speech found by the
voice activity detector, with a little padding either side, and nearby stretches merged while
they fit. Cuts fall in pauses, so no word is split; long non-speech (silence, noise, music)
falls between chunks and is never decoded, which is where Whisper invents text.

Timestamps inside a chunk are offsets from its start in the original recording, so they map
back exactly (no silence is removed from inside a chunk). Everything here holds at most a
chunk and a pause of audio, whatever the recording's length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service.errors import AudioTooLong
from service.inference.audio import SAMPLE_RATE, AudioStream
from service.inference.vad import FRAME_SAMPLES, Loudness, SpeechDetector

_FRAME_S = FRAME_SAMPLES / SAMPLE_RATE


@dataclass(frozen=True)
class ChunkingOptions:
    """How speech is found and grouped. The defaults were tuned on the eval recordings so that
    chunked decoding loses no words against decoding each clip whole (docs/benchmarks.md)."""

    onset: float = 0.5  # a frame this likely to be speech starts a stretch of speech
    offset: float = 0.35  # ... and one below this, held for `min_silence_s`, ends it
    min_silence_s: float = 0.3
    min_speech_s: float = 0.25  # shorter blips (clicks, breaths) are dropped
    pad_s: float = 0.5  # audio kept either side of speech, so soft word edges are not clipped
    max_gap_s: float = 2.0  # stretches closer than this share a chunk (when they fit)
    max_chunk_s: float = 30.0  # Whisper's window
    # Off: every frame counts as speech (nothing skipped); long stretches are still cut in
    # their quietest moments, by loudness instead of the detector.
    detect_speech: bool = True
    # Decoding stops (the job fails) past this much audio, whatever the header said; 0 never.
    max_audio_s: float = 0.0


@dataclass(frozen=True)
class Chunk:
    """One contiguous stretch of the recording, in its own time."""

    start: int  # samples from the recording's start
    end: int
    audio: np.ndarray

    @property
    def start_s(self) -> float:
        return self.start / SAMPLE_RATE

    @property
    def end_s(self) -> float:
        return self.end / SAMPLE_RATE


class ChunkPlanner:
    """Speech probabilities per frame in, chunk boundaries (in samples) out, as soon as final."""

    def __init__(self, options: ChunkingOptions | None = None) -> None:
        o = self.options = options or ChunkingOptions()
        self._min_silence = max(1, round(o.min_silence_s / _FRAME_S))
        self._min_speech = round(o.min_speech_s / _FRAME_S)
        self._pad = round(o.pad_s * SAMPLE_RATE)  # samples
        self._max_gap = o.max_gap_s / _FRAME_S  # frames
        self._max_chunk = round(o.max_chunk_s * SAMPLE_RATE)  # samples
        self._max_region = max(1, int((o.max_chunk_s - 2 * o.pad_s) / _FRAME_S))  # frames
        self._frame = 0  # index of the next frame fed
        # The stretch of speech being read: its first frame, where a silence in it began, its scores.
        self._speech_start: int | None = None
        self._silence_start: int | None = None
        self._scores: list[float] = []
        # Speech found but not yet handed out: first and last frame (end exclusive) of the group.
        self._group: tuple[int, int] | None = None
        self._gap_before = float("inf")  # frames of non-speech before the group

    # -- frames to stretches of speech -------------------------------------------------------
    def feed(self, probs: np.ndarray) -> list[tuple[int, int]]:
        """Chunk boundaries that became final with these frames."""
        out: list[tuple[int, int]] = []
        o = self.options
        for p in probs.tolist():
            i = self._frame
            self._frame += 1
            if self._speech_start is None:
                if p >= o.onset:
                    self._speech_start, self._silence_start, self._scores = i, None, [p]
                    self._flush_group_if_unmergeable(i, out)
                elif self._group is not None and i - self._group[1] > self._max_gap:
                    self._emit(self._group, right_gap=i - self._group[1], out=out)
                continue
            self._scores.append(p)
            if p < o.offset:
                if self._silence_start is None:
                    self._silence_start = i
                elif i - self._silence_start >= self._min_silence:
                    self._end_speech(self._silence_start, out)
                    continue
            elif p >= o.onset:
                self._silence_start = None
            if i + 1 - self._speech_start >= self._max_region:
                self._split_speech(out)
            self._flush_group_if_unmergeable(self._speech_start, out)
        return out

    def _split_speech(self, out: list[tuple[int, int]]) -> None:
        """Speech with no pause for a whole window: cut at its least speech-like frame in the
        second half, so the cut falls between words as far as the detector can tell."""
        assert self._speech_start is not None
        half = len(self._scores) // 2
        tail = np.asarray(self._scores[half:])
        cut = half + len(tail) - 1 - int(np.argmin(tail[::-1]))  # ties: the latest, for long chunks
        start = self._speech_start
        self._add_region(start, start + cut, out)
        self._speech_start = start + cut
        self._scores = self._scores[cut:]
        self._silence_start = None

    def _end_speech(self, end: int, out: list[tuple[int, int]]) -> None:
        assert self._speech_start is not None
        if end - self._speech_start >= self._min_speech:
            self._add_region(self._speech_start, end, out)
        self._speech_start, self._silence_start, self._scores = None, None, []

    # -- stretches to chunks -----------------------------------------------------------------
    def _add_region(self, start: int, end: int, out: list[tuple[int, int]]) -> None:
        if self._group is None:
            self._group = (start, end)
            return
        if self._fits(start, end):
            self._group = (self._group[0], end)
            return
        gap = start - self._group[1]
        self._emit(self._group, right_gap=gap, out=out)
        self._group = (start, end)

    def _fits(self, start: int, end: int) -> bool:
        assert self._group is not None
        gap = start - self._group[1]
        span = end * FRAME_SAMPLES + self._pad - (self._group[0] * FRAME_SAMPLES - self._pad)
        return gap <= self._max_gap and span <= self._max_chunk

    def _flush_group_if_unmergeable(self, speech_start: int, out: list[tuple[int, int]]) -> None:
        """Hand out the waiting group as soon as the speech now being read can no longer join it,
        so the audio held never grows past about one chunk."""
        if self._group is None:
            return
        gap = speech_start - self._group[1]
        grown = (self._frame + 1) * FRAME_SAMPLES + self._pad - (self._group[0] * FRAME_SAMPLES - self._pad)
        if gap > self._max_gap or grown > self._max_chunk:
            self._emit(self._group, right_gap=gap, out=out)

    def _emit(self, group: tuple[int, int], right_gap: float, out: list[tuple[int, int]]) -> None:
        start, end = group
        left_pad = int(min(self._pad, self._gap_before * FRAME_SAMPLES / 2))
        right_pad = int(min(self._pad, right_gap * FRAME_SAMPLES / 2))
        out.append((max(0, start * FRAME_SAMPLES - left_pad), end * FRAME_SAMPLES + right_pad))
        self._gap_before = right_gap
        self._group = None

    def finish(self, total_samples: int) -> list[tuple[int, int]]:
        """The stream ended after `total_samples`: hand out what is left."""
        out: list[tuple[int, int]] = []
        if self._speech_start is not None:
            end = self._silence_start if self._silence_start is not None else self._frame
            self._end_speech(end, out)
        if self._group is not None:
            self._emit(self._group, right_gap=float("inf"), out=out)
        return [(start, min(end, total_samples)) for start, end in out if start < total_samples]

    def keep_from(self) -> int:
        """The earliest sample a future chunk can start at: audio before it may be let go."""
        frame = self._frame
        if self._group is not None:
            frame = self._group[0]
        elif self._speech_start is not None:
            frame = self._speech_start
        return max(0, frame * FRAME_SAMPLES - self._pad)


def speech_chunks(stream: AudioStream, options: ChunkingOptions | None = None) -> Iterator[Chunk]:
    """The recording's speech chunks, in order, read from `stream` in bounded memory."""
    planner = ChunkPlanner(options)
    detector = SpeechDetector() if planner.options.detect_speech else Loudness()
    held = np.zeros(0, dtype=np.float32)
    held_from = 0  # the recording's sample at held[0]

    def cut(start: int, end: int) -> Chunk:
        return Chunk(start, end, held[start - held_from : end - held_from].copy())

    limit = planner.options.max_audio_s
    for block in stream:
        if limit and stream.seconds > limit:
            raise AudioTooLong(
                f"The recording runs past --max-audio-seconds ({limit:g} s): decoding stopped "
                f"there. Its header claimed {_claimed(stream)}; split the recording, or raise the limit."
            )
        held = np.concatenate((held, block)) if held.size else block
        for start, end in planner.feed(detector.feed(block)):
            yield cut(start, end)
        drop = planner.keep_from() - held_from
        if drop > 0:
            held = held[drop:]
            held_from += drop
    planner.feed(detector.flush())
    for start, end in planner.finish(stream.samples):
        yield cut(start, end)


def _claimed(stream: AudioStream) -> str:
    return f"{stream.declared_s:.0f} s" if stream.declared_s is not None else "no length"
