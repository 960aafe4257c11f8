"""The faster-whisper engine on real speech, in process and behind a real server."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import requests
from conftest import ENGLISH_CLIPS, ServerProcess, eval_clip, reference_text, word_error_rate
from test_engine import MEAN_WER_BOUND, WER_BOUNDS, WORDS_CLIP, check_word_timestamps

from service.cpus import threads_per_worker
from service.engines.base import DecodeOptions, JobInterrupted, Result, Segment
from service.engines.faster_whisper import FasterWhisperEngine
from service.errors import ModelUnavailable
from service.inference import audio
from service.jobs.formats import render


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> FasterWhisperEngine:
    return FasterWhisperEngine(tmp_path_factory.mktemp("models"), threads=threads_per_worker(0, 1))


@pytest.fixture(scope="module")
def model(engine: FasterWhisperEngine) -> Any:
    return engine.load("tiny.en")


@pytest.fixture(scope="module")
def live_segments() -> dict[str, list[tuple[int, Segment]]]:
    """Per clip, what on_segment heard during `results`: (progress reports so far, segment)."""
    return {}


@pytest.fixture(scope="module")
def results(
    engine: FasterWhisperEngine, model: Any, live_segments: dict[str, list[tuple[int, Segment]]]
) -> dict[str, tuple[Result, list[float]]]:
    out = {}
    for name in ENGLISH_CLIPS:
        progress: list[float] = []
        heard = live_segments[name] = []

        def on_segment(segment: Segment, progress: list[float] = progress, heard: list[Any] = heard) -> None:
            heard.append((len(progress), segment))

        pcm = audio.decode(eval_clip(name))
        result = engine.transcribe(model, pcm, DecodeOptions(beam_size=5), progress.append, on_segment)
        out[name] = (result, progress)
    return out


def test_defaults_pick_int8_on_cpu(engine: FasterWhisperEngine) -> None:
    assert (engine.device, engine.compute_type) == ("cpu", "int8")


@pytest.mark.parametrize("name", ENGLISH_CLIPS)
def test_word_error_rate_per_clip(results: dict[str, tuple[Result, list[float]]], name: str) -> None:
    result, _ = results[name]
    assert word_error_rate(reference_text(name), result.text) <= WER_BOUNDS[name], result.text


def test_mean_word_error_rate(results: dict[str, tuple[Result, list[float]]]) -> None:
    rates = [word_error_rate(reference_text(n), results[n][0].text) for n in ENGLISH_CLIPS]
    assert sum(rates) / len(rates) <= MEAN_WER_BOUND  # int8 measured 0.070; openai-whisper 0.068


def test_segments_progress_and_formats(results: dict[str, tuple[Result, list[float]]]) -> None:
    result, progress = results["1272-128104-0004-8k.wav"]
    assert result.language == "en"
    assert result.duration_s == pytest.approx(29.4, abs=0.1)
    assert result.segments and result.segments[-1].end <= result.duration_s + 0.5
    assert all(a.end <= b.start + 0.01 for a, b in zip(result.segments, result.segments[1:], strict=False))
    assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 2
    srt, _ = render(result.as_dict(), "srt")
    assert srt.startswith("1\n00:00:00,000 --> ") and "-->" in srt


def test_segments_are_handed_on_as_decoded(
    results: dict[str, tuple[Result, list[float]]], live_segments: dict[str, list[tuple[int, Segment]]]
) -> None:
    """Each segment reaches on_segment once, in order, right before the progress report after it."""
    for name in ENGLISH_CLIPS:
        result, _ = results[name]
        heard = live_segments[name]
        assert [s.as_dict() for _, s in heard] == [s.as_dict() for s in result.segments], name
        assert [count for count, _ in heard] == list(range(len(heard))), name
    assert len(live_segments["1272-128104-0004-8k.wav"]) >= 3


def test_word_timestamps(engine: FasterWhisperEngine, model: Any) -> None:
    pcm = audio.decode(eval_clip(WORDS_CLIP))
    result = engine.transcribe(model, pcm, DecodeOptions(word_timestamps=True), lambda _: None)
    check_word_timestamps(result)
    assert word_error_rate(reference_text(WORDS_CLIP), result.text) <= 0.1
    plain = engine.transcribe(model, pcm, DecodeOptions(), lambda _: None)
    assert all(segment.words is None for segment in plain.segments)
    assert [s.text for s in plain.segments] == [s.text for s in result.segments]


def test_progress_callback_can_interrupt(engine: FasterWhisperEngine, model: Any) -> None:
    def stop(fraction: float) -> None:
        raise JobInterrupted

    pcm = audio.decode(eval_clip("LDC93S1.wav"))
    with pytest.raises(JobInterrupted):
        engine.transcribe(model, pcm, DecodeOptions(), stop)


def test_unknown_model_names_are_refused(engine: FasterWhisperEngine, tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="Unknown model"):
        engine.check_model_name("tiny-but-wrong")
    engine.check_model_name("large-v3")  # a real name: accepted, loaded on first use
    (tmp_path / "model.bin").write_bytes(b"not a model")
    engine.check_model_name(str(tmp_path))  # a CTranslate2 directory path
    with pytest.raises(ModelUnavailable, match="could not be loaded"):
        engine.load(str(tmp_path))


@pytest.mark.slow
def test_two_workers_decode_two_jobs_at_once(server_factory: Any) -> None:
    server: ServerProcess = server_factory(
        extra_args=["--engine", "faster-whisper", "--workers", "2", "--threads", "2"]
    ).start()
    health = requests.get(server.url + "/health", timeout=5).json()
    assert (health["engine"], health["workers"]) == ("faster-whisper", 2)
    clips = ["1272-128104-0004-8k.wav", "mfa_acoustic_corpus.wav"]
    for index, name in enumerate(clips):
        with open(eval_clip(name), "rb") as fp:
            resp = requests.post(
                server.url + "/transcribe", files={"file": fp}, data={"job_id": f"fw-{index}"}, timeout=30
            )
        assert resp.status_code == 202, resp.text
    most_at_once = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        health = requests.get(server.url + "/health", timeout=5).json()
        most_at_once = max(most_at_once, len(health["active_jobs"]))
        states = {requests.get(f"{server.url}/status/fw-{i}", timeout=5).json()["status"] for i in (0, 1)}
        if states == {"completed"}:
            break
        time.sleep(0.05)
    assert most_at_once == 2, "the two jobs never ran side by side"
    body = requests.get(server.url + "/status/fw-0", timeout=5).json()
    assert body["status"] == "completed", body
    assert word_error_rate(reference_text(clips[0]), body["transcript"]) <= WER_BOUNDS[clips[0]]
    vtt = requests.get(server.url + "/download/fw-1?format=vtt", timeout=5)
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")
