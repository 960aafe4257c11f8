"""Batched decoding of a job's chunks: the same words as one by one, in the recording's time,
kept per chunk in order, and a crash mid-batch resumes after the last kept chunk.

Real faster-whisper (the bundled tiny.en), real speech: a recording built from the eval clips.
"""

from __future__ import annotations

import sys
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import EVAL_DIR

from service.engines.base import BatchTranscriber, DecodeOptions, JobInterrupted, Result
from service.engines.faster_whisper import FasterWhisperEngine
from service.inference.models import ModelManager
from service.inference.pipeline import GO_ON, STEP_ASIDE, TranscribeRequest, batch_size, execute

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench import long_audio

BATCH = 4


CLIPS = (
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "LDC93S1.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "uberi_english.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "61-70968-0000.flac",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
)
PAUSE_S = 3.0  # longer than the chunker's max_gap_s: every clip is a chunk of its own


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> long_audio.Recording:
    """Twelve short eval clips 3 s apart (about 90 s): twelve chunks, three batches of four."""
    path = tmp_path_factory.mktemp("batched") / "talk.wav"
    rec = long_audio.Recording(path=path, duration_s=0.0)
    blocks = [long_audio.silence(1.0)]
    position = 1.0
    for name in (CLIPS + CLIPS)[:12]:
        pcm, reference = long_audio.load_clip(EVAL_DIR, name)
        rec.clips.append(long_audio.Placed(name, position, position + pcm.size / 16_000, reference))
        blocks += [pcm, long_audio.silence(PAUSE_S)]
        position += pcm.size / 16_000 + PAUSE_S
    rec.duration_s = long_audio.write_wav(path, iter(blocks))
    return rec


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> ModelManager:
    engine = FasterWhisperEngine(tmp_path_factory.mktemp("models"), threads=2)
    return ModelManager(engine, default="tiny.en", max_models=1, idle_seconds=-1)


class Decodes:
    """Records what the engine is asked to decode (batches and single chunks), around the real one."""

    def __init__(self, manager: ModelManager) -> None:
        self.engine: Any = manager.engine
        self.batches: list[int] = []  # pieces per transcribe_batch call
        self.seconds = 0.0  # audio handed to either call

    def __enter__(self) -> Decodes:
        real_batch, real_one = self.engine.transcribe_batch, self.engine.transcribe

        def transcribe_batch(model: Any, pieces: list[np.ndarray], *args: Any, **kwargs: Any) -> list[Result]:
            self.batches.append(len(pieces))
            self.seconds += sum(p.size for p in pieces) / 16_000
            return list(real_batch(model, pieces, *args, **kwargs))

        def transcribe(model: Any, pcm: np.ndarray, *args: Any, **kwargs: Any) -> Result:
            self.seconds += pcm.size / 16_000
            return real_one(model, pcm, *args, **kwargs)

        self.engine.transcribe_batch, self.engine.transcribe = transcribe_batch, transcribe
        self._real = (real_batch, real_one)
        return self

    def __exit__(self, *_: object) -> None:
        self.engine.transcribe_batch, self.engine.transcribe = self._real


def _request(path: Path, size: int, done: tuple[dict[str, Any], ...] = ()) -> TranscribeRequest:
    return TranscribeRequest(
        "job", str(path), "tiny.en", DecodeOptions(beam_size=5), done=done, batch_size=size
    )


def test_the_engine_batches_and_the_pipeline_asks_it_to(manager: ModelManager) -> None:
    engine = manager.engine
    assert isinstance(engine, BatchTranscriber)
    assert batch_size(manager, TranscribeRequest("j", "x", "tiny.en", DecodeOptions(), batch_size=3)) == 3
    assert batch_size(manager, TranscribeRequest("j", "x", "tiny.en", DecodeOptions())) == 1
    auto = TranscribeRequest("j", "x", "tiny.en", DecodeOptions(), batch_size=0)
    assert batch_size(manager, auto) == engine.auto_batch_size() == 8  # CPU


@pytest.fixture(scope="module")
def decoded(
    manager: ModelManager, recording: long_audio.Recording
) -> dict[int, tuple[Result, list[dict[str, Any]], list[int]]]:
    """The recording decoded one chunk at a time and in batches: result, checkpoints, batch sizes."""
    out = {}
    for size in (1, BATCH):
        kept: list[dict[str, Any]] = []

        def checkpoint(chunk: dict[str, Any], kept: list[dict[str, Any]] = kept) -> str:
            kept.append(chunk)
            return GO_ON

        with Decodes(manager) as decodes:
            result = execute(
                manager, _request(recording.path, size), lambda: False, lambda _: None, None, checkpoint
            )
        out[size] = (result, kept, decodes.batches)
    return out


@pytest.mark.timeout(240)
def test_batched_and_sequential_give_the_same_words(
    decoded: dict[int, tuple[Result, list[dict[str, Any]], list[int]]], recording: long_audio.Recording
) -> None:
    (one, kept_one, _), (batched, kept, batches) = decoded[1], decoded[BATCH]
    assert batches and max(batches) == BATCH, batches
    assert long_audio.wer(one.text, batched.text) < 0.02, (one.text, batched.text)
    assert long_audio.wer(recording.reference, batched.text) < 0.2
    # Kept chunk by chunk either way: the same chunks, in order, none overlapping.
    assert [(c["start"], c["end"]) for c in kept_one] == [(c["start"], c["end"]) for c in kept]
    assert len(kept) == len(recording.clips)
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in pairwise(kept))
    # Segments in the recording's time: each inside its chunk, and clips start where they are.
    for chunk in kept:
        for seg in chunk["segments"]:
            assert chunk["start"] - 1e-3 <= seg["start"] <= seg["end"] <= chunk["end"] + 1e-3
    starts = [s.start for s in batched.segments]
    for clip in recording.clips:
        if clip.end_s - clip.start_s >= 2.0:
            nearest = min(starts, key=lambda t: abs(t - clip.start_s))
            assert abs(nearest - clip.start_s) < 1.0, (clip.name, clip.start_s, nearest)


class Crash(Exception):
    """The process dying: nothing after it runs, only the checkpoints already kept survive."""


@pytest.mark.timeout(240)
def test_a_crash_mid_batch_resumes_after_the_last_kept_chunk(
    manager: ModelManager,
    recording: long_audio.Recording,
    decoded: dict[int, tuple[Result, list[dict[str, Any]], list[int]]],
) -> None:
    kept: list[dict[str, Any]] = []
    crash_at = BATCH + 2  # the third chunk of the second batch

    def checkpoint(chunk: dict[str, Any]) -> str:
        if len(kept) == crash_at:
            raise Crash
        kept.append(chunk)
        return GO_ON

    with pytest.raises(Crash):
        execute(manager, _request(recording.path, BATCH), lambda: False, lambda _: None, None, checkpoint)
    assert len(kept) == crash_at
    rest: list[dict[str, Any]] = []

    def keep(chunk: dict[str, Any]) -> str:
        rest.append(chunk)
        return GO_ON

    with Decodes(manager) as resumed:
        again = execute(
            manager, _request(recording.path, BATCH, tuple(kept)), lambda: False, lambda _: None, None, keep
        )
    # Nothing before the last kept chunk was decoded again: the resumed run starts after it.
    assert rest and rest[0]["start"] >= kept[-1]["end"] - 1e-3
    remaining = sum(c["end"] - c["start"] for c in rest)
    assert resumed.seconds <= remaining * 1.5 + 1.0, (resumed.seconds, remaining)
    whole = decoded[BATCH][0]
    assert long_audio.wer(whole.text, again.text) < 0.02


@pytest.mark.timeout(240)
def test_stepping_aside_keeps_the_whole_batch_first(
    manager: ModelManager, recording: long_audio.Recording
) -> None:
    kept: list[dict[str, Any]] = []

    def checkpoint(chunk: dict[str, Any]) -> str:
        kept.append(chunk)
        return STEP_ASIDE

    with pytest.raises(JobInterrupted):
        execute(manager, _request(recording.path, BATCH), lambda: False, lambda _: None, None, checkpoint)
    assert len(kept) == BATCH, "a batch decoded is a batch kept, in order, before stepping aside"
    assert [c["start"] for c in kept] == sorted(c["start"] for c in kept)
