"""Download formats rendered from a real decode and read back with independent parsers.

One real tiny.en decode (with word timestamps) feeds the rendering tests, so the timings are the
engine's own; srt, webvtt-py and csv parse what we write, as a subtitle player or a spreadsheet
would. One test downloads every format through the HTTP API.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import srt
import webvtt
from aiohttp.test_utils import TestClient
from conftest import eval_clip, reference_text, word_error_rate
from test_api import form, wait_status

from service.app import create_app
from service.engines.base import DecodeOptions
from service.inference import audio
from service.jobs import formats
from service.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

# 29 s of read speech: several segments, each with several words.
CLIP = "1272-128104-0004-8k.wav"
# Timestamps are stored rounded to milliseconds, and renderers round again.
SLACK = 0.002


@pytest.fixture(scope="module")
def result(real_engine: Any) -> dict[str, Any]:
    model = real_engine.load("tiny.en")
    decoded = real_engine.transcribe(
        model, audio.decode(eval_clip(CLIP)), DecodeOptions(word_timestamps=True), lambda _: None
    )
    out: dict[str, Any] = decoded.as_dict()
    assert len(out["segments"]) >= 2, out  # the checks below need more than one cue
    return out


def squash(text: str) -> str:
    return " ".join(text.split())


def joined_segments(result: dict[str, Any]) -> str:
    return squash(" ".join(segment["text"] for segment in result["segments"]))


def assert_monotonic(spans: list[tuple[float, float]], duration: float) -> None:
    assert spans
    for start, end in spans:
        assert 0 <= start <= end <= duration + SLACK, spans
    starts = [start for start, _ in spans]
    assert starts == sorted(starts), spans
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start + SLACK, spans  # cues do not overlap


def test_the_decode_is_a_fair_transcript(result: dict[str, Any]) -> None:
    assert word_error_rate(reference_text(CLIP), result["text"]) < 0.3
    assert squash(result["text"]) == joined_segments(result)


def test_srt_parses_with_the_srt_package(result: dict[str, Any]) -> None:
    body, content_type = formats.render(result, "srt")
    assert content_type == "application/x-subrip; charset=utf-8"
    cues = list(srt.parse(body))
    assert [cue.index for cue in cues] == list(range(1, len(result["segments"]) + 1))
    spans = [(cue.start.total_seconds(), cue.end.total_seconds()) for cue in cues]
    assert_monotonic(spans, result["duration"])
    for cue, segment in zip(cues, result["segments"], strict=True):
        assert cue.start.total_seconds() == pytest.approx(segment["start"], abs=SLACK)
        assert cue.end.total_seconds() == pytest.approx(segment["end"], abs=SLACK)
    assert squash(" ".join(cue.content for cue in cues)) == joined_segments(result)


def test_vtt_parses_with_webvtt_py(result: dict[str, Any]) -> None:
    body, content_type = formats.render(result, "vtt")
    assert content_type == "text/vtt; charset=utf-8"
    captions = webvtt.from_string(body).captions
    assert len(captions) == len(result["segments"])
    spans = [(caption.start_in_seconds, caption.end_in_seconds) for caption in captions]
    # webvtt-py truncates to whole milliseconds.
    assert_monotonic(spans, result["duration"])
    assert squash(" ".join(caption.text for caption in captions)) == joined_segments(result)


def test_tsv_parses_with_csv(result: dict[str, Any]) -> None:
    body, content_type = formats.render(result, "tsv")
    assert content_type == "text/tab-separated-values; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(body), delimiter="\t"))
    assert body.startswith("start\tend\ttext\n")
    assert len(rows) == len(result["segments"])
    for row, segment in zip(rows, result["segments"], strict=True):
        assert row["start"].isdigit() and row["end"].isdigit()  # integer milliseconds
        assert int(row["start"]) == round(1000 * segment["start"])
        assert int(row["end"]) == round(1000 * segment["end"])
    spans = [(int(row["start"]) / 1000, int(row["end"]) / 1000) for row in rows]
    assert_monotonic(spans, result["duration"])
    assert squash(" ".join(row["text"] for row in rows)) == joined_segments(result)


def test_verbose_json_has_openai_shape_and_words_inside_segments(result: dict[str, Any]) -> None:
    body, content_type = formats.render(result, "verbose_json", task="transcribe")
    assert content_type == "application/json; charset=utf-8"
    data = json.loads(body)
    assert list(data) == ["task", "language", "duration", "text", "segments", "words"]
    assert data["task"] == "transcribe" and data["language"] == "en"
    assert data["duration"] == result["duration"] and data["text"] == result["text"]
    assert_monotonic([(s["start"], s["end"]) for s in data["segments"]], data["duration"])
    assert squash(" ".join(s["text"] for s in data["segments"])) == squash(data["text"])
    flat = []
    for segment in data["segments"]:
        assert {"id", "start", "end", "text", "avg_logprob", "no_speech_prob", "words"} <= set(segment)
        assert segment["words"], segment
        for word in segment["words"]:
            assert segment["start"] - SLACK <= word["start"] <= word["end"] <= segment["end"] + SLACK
        assert squash("".join(w["word"] for w in segment["words"])) == squash(segment["text"])
        flat.extend(segment["words"])
    assert data["words"] == flat
    starts = [word["start"] for word in flat]
    assert starts == sorted(starts)


def test_verbose_json_without_word_times_has_no_words_and_keeps_the_task(result: dict[str, Any]) -> None:
    plain = {**result, "segments": [formats._without_words(s) for s in result["segments"]]}
    data = json.loads(formats.render(plain, "verbose_json", task="translate")[0])
    assert data["task"] == "translate"
    assert "words" not in data and all("words" not in s for s in data["segments"])
    assert all("speaker" not in s for s in data["segments"])  # not diarized
    # OpenAI's every segment field, from stand-ins where the stored result lacks them.
    assert all({"seek", "tokens", "temperature", "compression_ratio"} <= set(s) for s in data["segments"])


def test_speaker_labels_reach_tsv_and_verbose_json(result: dict[str, Any]) -> None:
    labelled = {
        **result,
        "segments": [
            {**segment, "speaker": f"SPEAKER_{index % 2 + 1}"}
            for index, segment in enumerate(result["segments"])
        ],
    }
    rows = list(csv.DictReader(io.StringIO(formats.render(labelled, "tsv")[0]), delimiter="\t"))
    assert [row["speaker"] for row in rows] == [s["speaker"] for s in labelled["segments"]]
    assert squash(" ".join(row["text"] for row in rows)) == joined_segments(result)
    data = json.loads(formats.render(labelled, "verbose_json")[0])
    assert [s["speaker"] for s in data["segments"]] == [s["speaker"] for s in labelled["segments"]]


def test_existing_callers_keep_working(result: dict[str, Any]) -> None:
    """render's new `task` argument has a default, so three-argument calls still work."""
    assert formats.render(result, "txt", "job")[0].strip()
    assert json.loads(formats.render(result, "json", "job")[0]) == result


async def test_every_format_downloads_with_its_content_type(
    settings: Settings, aiohttp_client: ClientFactory, real_engine: Any
) -> None:
    client = await aiohttp_client(create_app(settings, engine=real_engine))
    clip = eval_clip("sense_and_sensibility_01_austen_64kb-0870.wav")
    resp = await client.post("/transcribe", data=form(clip, job_id="fmt", word_timestamps="true"))
    assert resp.status == 202, await resp.text()
    done = await wait_status(client, "fmt", {"completed", "failed"}, timeout=120)
    assert done["status"] == "completed", done

    bodies = {}
    for fmt, (content_type, _) in formats.FORMATS.items():
        resp = await client.get(f"/download/fmt?format={fmt}")
        if fmt == "rttm":  # speaker turns only: this job was not diarized
            assert resp.status == 400 and "diarize=true" in (await resp.json())["error"]
            continue
        assert resp.status == 200, (fmt, await resp.text())
        assert resp.headers["Content-Type"] == content_type, fmt
        bodies[fmt] = await resp.text()
    assert word_error_rate(reference_text(clip.name), bodies["txt"]) < 0.25
    verbose = json.loads(bodies["verbose_json"])
    assert verbose["task"] == "transcribe" and verbose["language"] == "en" and verbose["words"]
    assert verbose["text"] == done["transcript"]
    assert bodies["tsv"].startswith("start\tend\ttext\n")
    assert len(list(srt.parse(bodies["srt"]))) == len(verbose["segments"])
    assert len(webvtt.from_string(bodies["vtt"]).captions) == len(verbose["segments"])

    resp = await client.get("/download/fmt?format=docx")
    assert resp.status == 400 and resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert "docx" in error
    for fmt in formats.FORMATS:
        assert fmt in error
