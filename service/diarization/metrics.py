"""Diarization error rate, to the standard (NIST md-eval) definition, for tests and the benchmark.

DER = (missed speech + false alarm + speaker confusion) / total reference speech time, counted
per speaker over time (so overlapping speech counts once per speaker), after the best
one-to-one mapping of hypothesis speakers to reference speakers (Hungarian algorithm on their
overlap). A collar of `collar` seconds on each side of every reference boundary is not scored:
0.25 s is the usual value (pyannote.metrics writes the same thing as `collar=0.5`, the total).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

Span = tuple[float, float, str]  # start, end, speaker
_STEP = 0.001  # scoring resolution, seconds


@dataclass(frozen=True)
class DerBreakdown:
    missed: float
    false_alarm: float
    confusion: float
    total: float  # scored reference speech, seconds

    @property
    def der(self) -> float:
        return (self.missed + self.false_alarm + self.confusion) / self.total if self.total > 0 else 0.0


def _activity(spans: Sequence[Span], n: int) -> tuple[list[str], np.ndarray]:
    speakers = sorted({speaker for _, _, speaker in spans})
    active = np.zeros((len(speakers), n), dtype=bool)
    index = {speaker: i for i, speaker in enumerate(speakers)}
    for start, end, speaker in spans:
        active[index[speaker], max(0, round(start / _STEP)) : max(0, round(end / _STEP))] = True
    return speakers, active


def der_breakdown(
    reference: Sequence[Span], hypothesis: Sequence[Span], collar: float = 0.25
) -> DerBreakdown:
    from scipy.optimize import linear_sum_assignment

    end = max([e for _, e, _ in [*reference, *hypothesis]], default=0.0)
    n = round(end / _STEP) + 2
    _, ref = _activity(reference, n)
    _, hyp = _activity(hypothesis, n)
    scored = np.ones(n, dtype=bool)
    if collar > 0:
        width = round(collar / _STEP)
        for start, stop, _ in reference:
            for edge in (round(start / _STEP), round(stop / _STEP)):
                scored[max(0, edge - width) : edge + width] = False
    ref, hyp = ref[:, scored], hyp[:, scored]
    n_ref, n_hyp = ref.sum(axis=0), hyp.sum(axis=0)
    correct = 0.0
    if len(ref) and len(hyp):
        overlap = ref.astype(np.float64) @ hyp.T.astype(np.float64)
        rows, cols = linear_sum_assignment(-overlap)
        correct = float(overlap[rows, cols].sum())
    total = float(n_ref.sum())
    missed = float(np.maximum(n_ref - n_hyp, 0).sum())
    false_alarm = float(np.maximum(n_hyp - n_ref, 0).sum())
    confusion = float(np.minimum(n_ref, n_hyp).sum()) - correct
    return DerBreakdown(missed * _STEP, false_alarm * _STEP, confusion * _STEP, total * _STEP)


def diarization_error_rate(
    reference: Sequence[Span], hypothesis: Sequence[Span], collar: float = 0.25
) -> float:
    return der_breakdown(reference, hypothesis, collar).der


# -- reference material: speech found by energy, and clips joined with known speaker turns ---------


def _otsu(values: np.ndarray, bins: int = 100) -> float:
    """The threshold that best splits `values` into two classes (quiet, loud): Otsu's method."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    best, threshold = -1.0, float(centres[bins // 2])
    for split in range(1, bins):
        low, high = counts[:split].sum(), counts[split:].sum()
        if low == 0 or high == 0:
            continue
        mean_low = (counts[:split] * centres[:split]).sum() / low
        mean_high = (counts[split:] * centres[split:]).sum() / high
        spread = float(low * high * (mean_low - mean_high) ** 2)
        if spread > best:
            best, threshold = spread, float(centres[split])
    return threshold


def energy_speech(
    pcm: np.ndarray, sample_rate: int = 16_000, fill_gap_s: float = 0.3
) -> list[tuple[float, float]]:
    """Speech spans of a clean recording by frame energy, independent of any VAD under comparison.

    10 ms frames louder than the Otsu threshold of the clip's frame levels (floored 60 dB under
    its peak) are speech; pauses shorter than `fill_gap_s` are bridged, blips under 0.1 s dropped.
    """
    frame = sample_rate // 100
    n = len(pcm) // frame
    if n == 0:
        return []
    power = np.mean(np.square(pcm[: n * frame].reshape(n, frame), dtype=np.float64), axis=1)
    level = 10 * np.log10(power + 1e-12)
    level = np.maximum(level, np.percentile(level, 99) - 60.0)
    loud = level > _otsu(level)
    spans: list[tuple[float, float]] = []
    start: int | None = None
    for index, on in enumerate([*loud.tolist(), False]):
        if on and start is None:
            start = index
        elif not on and start is not None:
            if spans and start / 100 - spans[-1][1] < fill_gap_s:
                spans[-1] = (spans[-1][0], index / 100)
            else:
                spans.append((start / 100, index / 100))
            start = None
    return [(s, e) for s, e in spans if e - s >= 0.1]


def pauses(pcm: np.ndarray, sample_rate: int = 16_000, min_pause_s: float = 0.2) -> list[float]:
    """Middles of the pauses inside a clip (by `energy_speech`): places to cut it into turns."""
    spans = energy_speech(pcm, sample_rate, fill_gap_s=0.0)
    return [(a[1] + b[0]) / 2 for a, b in itertools.pairwise(spans) if b[0] - a[1] >= min_pause_s]


def cut_into_turns(pcm: np.ndarray, about_s: float = 6.0, sample_rate: int = 16_000) -> list[np.ndarray]:
    """Cut a clip at pauses into pieces of roughly `about_s` seconds (a speaker's turns)."""
    cuts: list[int] = []
    last = 0.0
    for point in pauses(pcm, sample_rate):
        if point - last >= about_s and len(pcm) / sample_rate - point >= about_s / 2:
            cuts.append(round(point * sample_rate))
            last = point
    bounds = [0, *cuts, len(pcm)]
    return [pcm[a:b] for a, b in itertools.pairwise(bounds)]


def join_turns(
    pieces: Sequence[tuple[str, np.ndarray]], gap_s: float = 0.4, sample_rate: int = 16_000
) -> tuple[np.ndarray, list[Span]]:
    """Concatenate (speaker, samples) pieces with `gap_s` of silence between them.

    Each piece is brought to one loudness (-26 dBFS), so loudness is no clue to who speaks. Returns
    the audio and the reference: each piece's energy-found speech labelled with its speaker.
    """
    gap = np.zeros(round(gap_s * sample_rate), dtype=np.float32)
    parts: list[np.ndarray] = []
    reference: list[Span] = []
    offset = 0.0
    for speaker, samples in pieces:
        rms = float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
        level = (samples * (10 ** (-26 / 20) / rms)).astype(np.float32) if rms > 0 else samples
        level = np.clip(level, -1.0, 1.0)
        reference.extend((offset + s, offset + e, speaker) for s, e in energy_speech(level, sample_rate))
        parts.extend([level, gap])
        offset += (len(level) + len(gap)) / sample_rate
    return np.concatenate(parts[:-1]) if parts else np.zeros(0, np.float32), reference
