"""Diarization at any length: the recording is read in blocks, clustering sees a bounded sample,
and the speakers stay the same ones from start to end.

Real encoder, real speech (readers of the eval clips taking turns); the limits are lowered so a
few minutes of audio go through the paths an hours-long recording takes.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import EVAL_DIR, eval_clip

from service.diarization import Diarizer, clustering
from service.diarization import pipeline as diarization
from service.diarization.metrics import der_breakdown
from service.inference import audio

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench import conversation


@pytest.fixture(scope="module")
def diarizer() -> Diarizer:
    d = Diarizer()
    d.load()
    return d


def _speakers_on_a_sphere(rng: np.random.Generator, sizes: list[int]) -> tuple[np.ndarray, np.ndarray]:
    centres = rng.standard_normal((len(sizes), 256))
    rows = [c + rng.standard_normal((n, 256)) * 0.08 for c, n in zip(centres, sizes, strict=True)]
    points = np.concatenate(rows).astype(np.float32)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    order = rng.permutation(len(points))
    points, truth = points[order], truth[order]
    return points / np.linalg.norm(points, axis=1, keepdims=True), truth


def _agree(labels: np.ndarray, truth: np.ndarray) -> float:
    """Share of rows whose label is their true cluster's most common label."""
    hits = 0
    for t in np.unique(truth):
        hits += Counter(labels[truth == t].tolist()).most_common(1)[0][1]
    return hits / len(truth)


def test_a_sample_is_clustered_and_everyone_else_joins_their_speaker() -> None:
    # 6,000 windows (80 min of speech), one speaker with only 30 of them (24 s).
    points, truth = _speakers_on_a_sphere(np.random.default_rng(0), [3000, 2000, 970, 30])
    labels = clustering.cluster(points, max_rows=500, max_min_cluster_size=12)
    assert len(set(labels.tolist())) == 4
    assert _agree(labels, truth) > 0.99
    full = clustering.cluster(points[:1500])
    sampled = clustering.cluster(points[:1500], max_rows=300)
    assert _agree(sampled, full) > 0.99
    fixed = clustering.cluster(points, num_speakers=2, max_rows=500)
    assert len(set(fixed.tolist())) == 2


def _der(reference: list[tuple[float, float, str]], turns: list) -> float:
    return float(der_breakdown(reference, [(t.start, t.end, t.speaker) for t in turns], collar=0.25).der)


def test_blocks_give_the_turns_of_the_whole_recording(
    diarizer: Diarizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    pcm = audio.decode(eval_clip("picovoice_diarization_test.wav"))
    whole = diarizer.turns(pcm)
    monkeypatch.setattr(diarization, "BLOCK_S", 8.0)  # a block and a bit: speech cut at a block's end
    blocks = diarizer.turns(pcm)
    assert len({t.speaker for t in blocks}) == len({t.speaker for t in whole}) == 3
    assert _der([(t.start, t.end, t.speaker) for t in whole], blocks) < 0.05


@pytest.mark.timeout(240)
def test_a_long_conversation_keeps_its_speakers_throughout(
    diarizer: Diarizer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    talk = conversation.build(EVAL_DIR, tmp_path / "talk.wav", 240, readers="AEF")
    assert talk.speakers == {"A", "E", "F"}
    # Four-minute blocks and a 120-window sample: the paths a recording of hours takes.
    monkeypatch.setattr(diarization, "BLOCK_S", 60.0)
    monkeypatch.setattr(clustering, "MAX_CLUSTERED_ROWS", 120)
    turns = diarizer.turns_of_blocks(audio.AudioStream(talk.path, 10.0))
    assert len({t.speaker for t in turns}) == 3
    assert _der(talk.reference, turns) < 0.12
    # Each reader has one label in the first minute and the same one in the last.
    for reader in talk.speakers:
        spans = [(s, e) for s, e, r in talk.reference if r == reader]
        early = _label_of([x for x in spans if x[1] < 60], turns)
        late = _label_of([x for x in spans if x[0] > talk.duration_s - 60], turns)
        assert early == late, (reader, early, late)


def _label_of(spans: list[tuple[float, float]], turns: list) -> str:
    talk: Counter[str] = Counter()
    for start, end in spans:
        for turn in turns:
            overlap = min(end, turn.end) - max(start, turn.start)
            if overlap > 0:
                talk[turn.speaker] += overlap
    return talk.most_common(1)[0][0]
