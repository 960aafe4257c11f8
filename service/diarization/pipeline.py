"""Who spoke when: speech regions, speaker embeddings of sliding windows, clustering, smoothing.

Blocking and CPU-bound; the worker runs it off the event loop after transcription, in the same
job. `Diarizer` holds the encoder once loaded, so the worker keeps one warm beside the model.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

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
# Audio examined at once when finding and embedding speech: memory is bounded by this, not by
# the recording's length. Speech ending within SETTLE_S of a block's end may go on past it: it is
# looked at again with the next block.
BLOCK_S = 120.0
SETTLE_S = 5.0
_CONTEXT = 2 * HOP  # samples kept either side of a region, so its edge frames see real audio


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
    # Normalise each window, so loudness is no speaker cue (off: each speech region once).
    per_window_loudness: bool = True

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

    def label_stream(
        self, blocks: Iterable[np.ndarray], result: Result, options: DiarizationOptions | None = None
    ) -> Result:
        """As calling it with the whole recording, read block by block (bounded memory)."""
        return assign_speakers(result, self.turns_of_blocks(blocks, options or DiarizationOptions()))

    def turns(self, pcm: np.ndarray, options: DiarizationOptions | None = None) -> list[SpeakerTurn]:
        """Speaker turns (speech only, sorted), speakers named SPEAKER_n by first appearance."""
        step = round(BLOCK_S * SAMPLE_RATE)
        return self.turns_of_blocks((pcm[i : i + step] for i in range(0, len(pcm), step)), options)

    def turns_of_blocks(
        self, blocks: Iterable[np.ndarray], options: DiarizationOptions | None = None
    ) -> list[SpeakerTurn]:
        """Speaker turns of a recording given as consecutive 16 kHz mono blocks of any size.

        Speech is found and embedded `BLOCK_S` at a time, so what is held is a block of audio plus
        one 256-float embedding per 0.8 s of speech; clustering then sees a bounded sample of the
        embeddings (clustering.MAX_CLUSTERED_ROWS) and labels the rest by the nearest speaker, so
        the whole recording shares one set of speakers.
        """
        options = options or DiarizationOptions()
        config = self.config
        found = _Found()
        held = np.zeros(0, dtype=np.float32)
        held_from = 0  # the recording's sample at held[0]; always a multiple of HOP
        for block in blocks:
            held = np.concatenate((held, block.astype(np.float32, copy=False))) if held.size else block
            found.samples += block.size
            if held.size >= BLOCK_S * SAMPLE_RATE:
                cut = self._settle(held, held_from, found, final=False)
                held, held_from = held[cut:].copy(), held_from + cut
        self._settle(held, held_from, found, final=True)
        del held
        if not found.regions:
            return []
        if not found.windows:
            return [SpeakerTurn(start, end, "SPEAKER_1") for start, end in found.regions]
        labels = cluster(
            np.concatenate(found.embeddings),
            method=config.clustering,
            num_speakers=options.num_speakers,
            min_speakers=options.min_speakers or 1,
            max_speakers=options.max_speakers,
            threshold=config.threshold,
            min_cluster_fraction=config.min_speaker_fraction,
            max_min_cluster_size=max(2, round(config.min_speaker_cap_s / config.hop_s)),
        )
        return self._turns(found, labels)

    # -- speech and embeddings, a block at a time ----------------------------------------------
    def _settle(self, held: np.ndarray, held_from: int, found: _Found, final: bool) -> int:
        """Find the speech in `held`, embed what is final, and say where the next block starts
        (samples into `held`): speech that may go on past the block's end waits for the next."""
        config = self.config
        spans = speech_regions(held, config.vad, config.vad_threshold, config.vad_pad_s) if held.size else []
        cut = held.size
        if not final:
            limit = held.size / SAMPLE_RATE - SETTLE_S
            waiting = [span for span in spans if span[1] >= limit]
            resume_s = waiting[0][0] if waiting else limit
            if resume_s <= SETTLE_S:  # speech with no pause for a whole block: cut it at the limit
                spans = [(start, min(end, limit)) for start, end in spans if start < limit]
                resume_s = limit
            else:
                spans = [span for span in spans if span[1] < limit]
            cut = max(0, (round(resume_s * SAMPLE_RATE) - _CONTEXT) // HOP * HOP)
        base = held_from / SAMPLE_RATE
        mels: list[np.ndarray] = []
        for start, end in spans:
            start, end = max(base + start, found.reached), base + end
            if end - start <= 0:
                continue
            index = len(found.regions)
            found.regions.append((start, end))
            found.reached = end
            first, last = round(start / FRAME_S), round(end / FRAME_S)
            last = min(last, (held_from + held.size) // HOP + 1)
            windows = self._region_windows(first, last, index)
            if not windows:
                continue
            # The region's mel frames with real audio either side (frame f is centred on sample
            # f * HOP, exactly as over the whole recording).
            context = min(_CONTEXT, first * HOP - held_from)
            piece = held[first * HOP - held_from - context : last * HOP - held_from + _CONTEXT]
            mel = mel_spectrogram(piece if config.per_window_loudness else normalize_loudness(piece))
            mel = mel[context // HOP :]
            for window in windows:
                window_mel = mel[window.first - first : window.last - first]
                if config.per_window_loudness:
                    samples = held[window.first * HOP - held_from : window.last * HOP - held_from]
                    window_mel = window_mel * np.float32(_loudness_gain(samples) ** 2)  # power: gain²
                mels.append(window_mel)
            found.windows.extend(windows)
        if mels:
            found.embeddings.append(self.encoder.embed(mels))
        return cut

    def _region_windows(self, first: int, last: int, region: int) -> list[_Window]:
        size = round(self.config.window_s / FRAME_S)
        hop = max(1, round(self.config.hop_s / FRAME_S))
        length = last - first
        if length < round(self.config.min_window_s / FRAME_S):
            return []
        if length <= size:
            return [_Window(first, last, region)]
        starts = list(range(first, last - size + 1, hop))
        if starts[-1] != last - size:
            starts.append(last - size)
        return [_Window(s, s + size, region) for s in starts]

    # -- labels to turns ------------------------------------------------------------------------
    def _turns(self, found: _Found, labels: np.ndarray) -> list[SpeakerTurn]:
        """Each 10 ms frame of speech takes the vote of the windows covering it (speech no window
        covers: the nearest window's speaker); short runs join a neighbour; runs become turns."""
        windows = found.windows
        n_labels = int(labels.max()) + 1
        centres = np.array([(w.first + w.last) / 2 for w in windows])  # in time order
        by_region: dict[int, list[int]] = {}
        for index, window in enumerate(windows):
            by_region.setdefault(window.region, []).append(index)
        shortest = round(self.config.min_turn_s / FRAME_S)
        end_frame = found.samples // HOP + 2
        raw: list[list[int]] = []  # [first frame, last frame (exclusive), label]
        for region, (start, end) in enumerate(found.regions):
            first, last = round(start / FRAME_S), min(round(end / FRAME_S), end_frame)
            if last <= first:
                continue
            votes = np.zeros((last - first, n_labels), dtype=np.float32)
            for index in by_region.get(region, ()):
                window = windows[index]
                votes[window.first - first : window.last - first, labels[index]] += 1.0
            frames = np.argmax(votes, axis=1)
            uncovered = np.flatnonzero(~votes.any(axis=1))
            if uncovered.size:
                at = uncovered + first
                after = np.clip(np.searchsorted(centres, at), 0, len(centres) - 1)
                before = np.maximum(after - 1, 0)
                closer = np.abs(centres[before] - at) <= np.abs(centres[after] - at)
                frames[uncovered] = labels[np.where(closer, before, after)]
            changes = np.flatnonzero(np.diff(frames)) + 1
            edges = [0, *changes.tolist(), len(frames)]
            runs = [[first + a, first + b, int(frames[a])] for a, b in itertools.pairwise(edges)]
            raw.extend(_absorb_short_runs(runs, shortest))
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


@dataclass
class _Found:
    """What the blocks read so far gave: speech regions (s), their windows and embeddings."""

    regions: list[tuple[float, float]] = field(default_factory=list)
    windows: list[_Window] = field(default_factory=list)
    embeddings: list[np.ndarray] = field(default_factory=list)
    samples: int = 0
    reached: float = 0.0  # end of the last region kept: re-found speech never overlaps it


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
