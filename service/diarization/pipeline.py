"""Who spoke when: speech regions, speaker embeddings of sliding windows, clustering, smoothing.

Blocking and CPU-bound; the worker runs it off the event loop after transcription, in the same
job. `Diarizer` holds the encoder once loaded, so the worker keeps one warm beside the model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from service.diarization.assign import assign_speakers
from service.diarization.clustering import CLUSTER_METHODS, DEFAULT_THRESHOLD, cluster
from service.diarization.encoder import (
    HOP,
    SAMPLE_RATE,
    TARGET_DBFS,
    SpeakerEncoder,
    mel_spectrogram,
    normalize_loudness,
)
from service.diarization.vad import VAD_METHODS, speech_regions
from service.engines.base import Result, SpeakerTurn
from service.errors import BadRequest

MAX_SPEAKERS = 20  # the most a request may ask for; far beyond what short-window clustering resolves
FRAME_S = HOP / SAMPLE_RATE  # one mel frame: 10 ms


@dataclass(frozen=True)
class DiarizationOptions:
    """What a request may say about its speakers; None lets the diarizer estimate."""

    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None

    def __post_init__(self) -> None:
        for name in ("num_speakers", "min_speakers", "max_speakers"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise BadRequest(f"{name} must be between 1 and {MAX_SPEAKERS}, not {value}.")
        low, high = self.min_speakers or 1, self.max_speakers or MAX_SPEAKERS
        if low > high:
            raise BadRequest(f"min_speakers ({low}) is more than max_speakers ({high}).")
        if self.num_speakers is not None and not low <= self.num_speakers <= high:
            raise BadRequest(
                f"num_speakers ({self.num_speakers}) is outside min_speakers..max_speakers ({low}..{high})."
            )


@dataclass(frozen=True)
class DiarizerConfig:
    """How the diarizer works; the defaults are what scripts/bench_diarization.py measured best."""

    vad: str = "silero"
    vad_threshold: float = 0.35  # silero speech probability; 0.5 missed more speech (bench)
    vad_pad_s: float = 0.06  # silero pads each region by this much on both sides
    clustering: str = "agglomerative"
    threshold: float = DEFAULT_THRESHOLD  # agglomerative only
    window_s: float = 1.6  # the encoder's training length
    hop_s: float = 0.8
    min_window_s: float = 0.5  # speech shorter than this gets no embedding of its own
    min_turn_s: float = 0.8  # shorter turns inside a region join a neighbour (smoothing)
    # An estimated speaker with less speech than 5% of the windows joins the nearest one (noise,
    # laughter, a cough make no speaker). The share is capped at 10 s of windows, so a speaker
    # with 10 s in an hour still counts; an absolute floor alone split readers (bench).
    min_speaker_fraction: float = 0.05
    min_speaker_cap_s: float = 10.0
    per_window_loudness: bool = True  # normalise each window, so loudness is no speaker cue

    def __post_init__(self) -> None:
        if self.vad not in VAD_METHODS:
            raise ValueError(f"Unknown VAD {self.vad!r}; use one of {', '.join(VAD_METHODS)}.")
        if self.clustering not in CLUSTER_METHODS:
            raise ValueError(
                f"Unknown clustering {self.clustering!r}; use one of {', '.join(CLUSTER_METHODS)}."
            )


@dataclass(frozen=True)
class _Window:
    first: int  # mel frame index, inclusive
    last: int  # exclusive
    region: int


class Diarizer:
    """Speaker diarization of 16 kHz mono float32 audio. `load()` once; then call it per job."""

    def __init__(self, config: DiarizerConfig | None = None, device: str = "cpu") -> None:
        self.config = config or DiarizerConfig()
        self.encoder = SpeakerEncoder(device)

    def load(self) -> None:
        """Load the speaker encoder (about 0.1 s, 17 MB) so the first job does not wait for it."""
        self.encoder.load()

    def __call__(self, pcm: np.ndarray, result: Result, options: DiarizationOptions | None = None) -> Result:
        """`result` with a `speaker` on every segment, split where the speaker changes."""
        return assign_speakers(result, self.turns(pcm, options or DiarizationOptions()))

    def turns(self, pcm: np.ndarray, options: DiarizationOptions | None = None) -> list[SpeakerTurn]:
        """Speaker turns (speech only, sorted), speakers named SPEAKER_n by first appearance."""
        options = options or DiarizationOptions()
        config = self.config
        regions = speech_regions(pcm, config.vad, config.vad_threshold, config.vad_pad_s)
        if not regions:
            return []
        windows = self._windows(regions, len(pcm))
        if not windows:
            return [SpeakerTurn(start, end, "SPEAKER_1") for start, end in regions]
        # Loudness is no speaker cue: each window is normalised, or else the whole file once.
        mel = mel_spectrogram(pcm if config.per_window_loudness else normalize_loudness(pcm))
        mels = [self._window_mel(pcm, mel, w) for w in windows]
        embeddings = self.encoder.embed(mels)
        labels = cluster(
            embeddings,
            method=config.clustering,
            num_speakers=options.num_speakers,
            min_speakers=options.min_speakers or 1,
            max_speakers=options.max_speakers,
            threshold=config.threshold,
            min_cluster_fraction=config.min_speaker_fraction,
            max_min_cluster_size=max(2, round(config.min_speaker_cap_s / config.hop_s)),
        )
        frames = self._frame_labels(regions, windows, labels, len(mel))
        return self._turns_from_frames(regions, frames)

    # -- windows --------------------------------------------------------------------------
    def _windows(self, regions: list[tuple[float, float]], n_samples: int) -> list[_Window]:
        size = round(self.config.window_s / FRAME_S)
        hop = max(1, round(self.config.hop_s / FRAME_S))
        shortest = round(self.config.min_window_s / FRAME_S)
        last_frame = n_samples // HOP + 1
        windows: list[_Window] = []
        for index, (start, end) in enumerate(regions):
            first, last = round(start / FRAME_S), min(round(end / FRAME_S), last_frame)
            length = last - first
            if length < shortest:
                continue
            if length <= size:
                windows.append(_Window(first, last, index))
                continue
            starts = list(range(first, last - size + 1, hop))
            if starts[-1] != last - size:
                starts.append(last - size)
            windows.extend(_Window(s, s + size, index) for s in starts)
        return windows

    def _window_mel(self, pcm: np.ndarray, mel: np.ndarray, window: _Window) -> np.ndarray:
        if not self.config.per_window_loudness:
            return mel[window.first : window.last]
        samples = pcm[window.first * HOP : window.last * HOP]
        gain = _loudness_gain(samples)
        return mel[window.first : window.last] * np.float32(gain**2)  # power spectrum scales by gain²

    # -- labels ---------------------------------------------------------------------------
    def _frame_labels(
        self, regions: list[tuple[float, float]], windows: list[_Window], labels: np.ndarray, n_frames: int
    ) -> np.ndarray:
        """A speaker per 10 ms frame: the vote of the windows covering it, -1 outside speech."""
        n_labels = int(labels.max()) + 1
        votes = np.zeros((n_frames + 1, n_labels), dtype=np.float32)
        for window, label in zip(windows, labels.tolist(), strict=True):
            votes[window.first : window.last, label] += 1.0
        in_speech = np.zeros(n_frames + 1, dtype=bool)
        for start, end in regions:
            in_speech[round(start / FRAME_S) : round(end / FRAME_S)] = True
        frames = np.where(in_speech, np.argmax(votes, axis=1), -1)
        # Speech no window covers (a region too short for one): the nearest window's speaker.
        uncovered = np.flatnonzero(in_speech & ~votes.any(axis=1))
        if uncovered.size:
            centres = np.array([(w.first + w.last) / 2 for w in windows])  # in time order
            after = np.clip(np.searchsorted(centres, uncovered), 0, len(centres) - 1)
            before = np.maximum(after - 1, 0)
            closer = np.abs(centres[before] - uncovered) <= np.abs(centres[after] - uncovered)
            frames[uncovered] = labels[np.where(closer, before, after)]
        return frames

    def _turns_from_frames(self, regions: list[tuple[float, float]], frames: np.ndarray) -> list[SpeakerTurn]:
        shortest = round(self.config.min_turn_s / FRAME_S)
        raw: list[list[int]] = []  # [first frame, last frame (exclusive), label]
        for start, end in regions:
            first, last = round(start / FRAME_S), min(round(end / FRAME_S), len(frames))
            runs: list[list[int]] = []
            for frame in range(first, last):
                label = int(frames[frame])
                if runs and runs[-1][2] == label:
                    runs[-1][1] = frame + 1
                else:
                    runs.append([frame, frame + 1, label])
            runs = _absorb_short_runs(runs, shortest)
            raw.extend(runs)
        names: dict[int, str] = {}
        turns: list[SpeakerTurn] = []
        for first, last, label in raw:
            name = names.setdefault(label, f"SPEAKER_{len(names) + 1}")
            start, end = first * FRAME_S, last * FRAME_S
            if turns and turns[-1].speaker == name and start - turns[-1].end < 1e-6:
                turns[-1] = SpeakerTurn(turns[-1].start, end, name)
            else:
                turns.append(SpeakerTurn(start, end, name))
        return turns


def _loudness_gain(samples: np.ndarray) -> float:
    """The gain that brings a window to the encoder's training loudness (up or down)."""
    rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64)))) if samples.size else 0.0
    if rms <= 1e-6:
        return 1.0
    return float(10 ** ((TARGET_DBFS - 20 * np.log10(rms)) / 20))


def _absorb_short_runs(runs: list[list[int]], shortest: int) -> list[list[int]]:
    """Runs shorter than `shortest` frames join the longer neighbour (within one speech region)."""
    runs = [list(run) for run in runs]
    while len(runs) > 1:
        lengths = [run[1] - run[0] for run in runs]
        index = int(np.argmin(lengths))
        if lengths[index] >= shortest:
            break
        if index == 0:
            target = 1
        elif index == len(runs) - 1:
            target = index - 1
        else:
            target = index - 1 if lengths[index - 1] >= lengths[index + 1] else index + 1
        runs[target][0] = min(runs[target][0], runs[index][0])
        runs[target][1] = max(runs[target][1], runs[index][1])
        del runs[index]
        merged: list[list[int]] = []
        for run in runs:
            if merged and merged[-1][2] == run[2]:
                merged[-1][1] = run[1]
            else:
                merged.append(run)
        runs = merged
    return runs


_default: Diarizer | None = None


def diarize(
    pcm: np.ndarray,
    result: Result,
    options: DiarizationOptions | None = None,
    diarizer: Diarizer | None = None,
) -> Result:
    """Label `result`'s segments by speaker (a process-wide Diarizer is loaded on first use)."""
    global _default
    if diarizer is None:
        if _default is None:
            _default = Diarizer()
        diarizer = _default
    return diarizer(pcm, result, options)
