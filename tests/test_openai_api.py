"""The OpenAI-compatible API: the official `openai` client against a real server, and the shapes.

Real decodes are few (tiny.en with beam 1, the transcript cache answers repeats of the same
audio and options), since every clip costs seconds on a shared CPU. Queue, error and option
plumbing run in-process on the fake engine.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import requests
import srt
import webvtt
from conftest import (
    FakeEngine,
    ServerProcess,
    SharedModelEngine,
    eval_clip,
    reference_text,
    word_error_rate,
)
from test_api import ClientFactory, form, leftover_files, wait_status

from service.app import create_app
from service.engines.base import DecodeOptions, Result
from service.inference import audio
from service.settings import Settings

SHORT = "LDC93S1.wav"
AUSTEN = "sense_and_sensibility_01_austen_64kb-0870.wav"  # about 7 s; names John Dashwood
FRENCH = "fr_picovoice_test_fr.wav"
FORMATS = ("json", "text", "srt", "verbose_json", "vtt")
# The SDK marks audio.translations deprecated (OpenAI retires whisper-1); the call still works.
SDK_TRANSLATIONS = pytest.mark.filterwarnings("ignore:deprecated:DeprecationWarning")


# -- the official client against a real server ------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module: its transcript cache makes every format after the first free."""
    proc = ServerProcess(tmp_path_factory.mktemp("openai") / "storage", extra_args=[])  # beam 5, as users get
    proc.start(timeout=300)
    yield proc
    proc.kill()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=600) as c:
        yield c


def _text_of(fmt: str, answer: Any) -> str:
    """The transcript inside each format, checked for that format's structure on the way."""
    if fmt == "json":
        assert isinstance(answer, openai.types.audio.Transcription)
        return answer.text
    if fmt == "verbose_json":
        assert isinstance(answer, openai.types.audio.TranscriptionVerbose)
        assert answer.segments and answer.duration > 0
        for segment in answer.segments:
            assert 0 <= segment.start < segment.end <= answer.duration + 0.5
        return answer.text
    assert isinstance(answer, str)
    if fmt == "srt":
        cues = list(srt.parse(answer))
        assert cues and cues[0].start.total_seconds() >= 0
        return " ".join(cue.content for cue in cues)
    if fmt == "vtt":
        captions = webvtt.from_string(answer).captions
        assert captions and captions[0].start_in_seconds >= 0
        return " ".join(caption.text for caption in captions)
    assert "\n" not in answer.strip()  # text: one string, as OpenAI sends it
    return answer


@pytest.mark.slow
@pytest.mark.parametrize("clip", [SHORT, AUSTEN])
def test_every_response_format_through_the_official_client(
    client: openai.OpenAI, server: ServerProcess, clip: str
) -> None:
    path = eval_clip(clip)
    job_ids = []
    for fmt in FORMATS:
        with path.open("rb") as fp:
            raw = client.audio.transcriptions.with_raw_response.create(
                file=fp, model="whisper-1", response_format=fmt
            )
        job_ids.append(raw.headers["x-job-id"])
        assert raw.headers["x-model"] == "tiny.en"  # whisper-1 is the default model
        text = _text_of(fmt, raw.parse())
        assert word_error_rate(reference_text(clip), text) <= 0.2, (fmt, text)
    # Ordinary jobs: each in GET /jobs, with the default model; the first decoded, the rest cached.
    listed = {
        job["job_id"]: job for job in requests.get(server.url + "/jobs?limit=500", timeout=10).json()["jobs"]
    }
    assert all(job_id.startswith("oai-") and listed[job_id]["status"] == "completed" for job_id in job_ids)
    assert {listed[job_id]["model"] for job_id in job_ids} == {"tiny.en"}
    assert all("note" in listed[job_id] for job_id in job_ids[1:])  # from the transcript cache


@pytest.mark.slow
def test_verbose_json_words_prompt_and_temperature(client: openai.OpenAI) -> None:
    with eval_clip(AUSTEN).open("rb") as fp:
        answer = client.audio.transcriptions.create(
            file=fp,
            model="tiny.en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
            prompt="Mr. Jon Dashwoode and Mrs. Dashwoode.",
            temperature=0,
            language="en",
        )
    assert answer.words, answer
    assert all(w.start <= w.end for w in answer.words)
    assert [w.start for w in answer.words] == sorted(w.start for w in answer.words)
    assert word_error_rate(answer.text, "".join(w.word for w in answer.words)) <= 0.05
    assert "Dashwoode" in answer.text  # the prompt's spelling reached the decoder
    assert word_error_rate(reference_text(AUSTEN), answer.text) <= 0.3


@pytest.mark.slow
@SDK_TRANSLATIONS
def test_translation_to_english_on_base(client: openai.OpenAI) -> None:
    with eval_clip(FRENCH).open("rb") as fp:
        english = client.audio.translations.create(file=fp, model="base", response_format="text")
    words = set(english.lower().replace(",", " ").replace(".", " ").split())
    # "Under the consulate he became curator of waters and forests and general counsel."
    expected = {"the", "he", "and", "of", "water", "waters", "forest", "forests", "general", "consulate"}
    assert english.lower().startswith("under the consul") and len(words & expected) >= 3, english
    assert not words & {"sous", "le", "et", "des", "il", "eaux", "devient"}, english


@pytest.mark.slow
def test_models_list(client: openai.OpenAI) -> None:
    models = client.models.list()
    ids = [model.id for model in models.data]
    assert ids[0] == "whisper-1"
    assert "tiny.en" in ids and "base" in ids  # bundled, and offline from the dev extra
    assert all(model.object == "model" and model.owned_by and model.created > 0 for model in models.data)
    assert client.models.retrieve("tiny.en").id == "tiny.en"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


@pytest.mark.slow
@SDK_TRANSLATIONS
def test_bad_requests_raise_bad_request_error(client: openai.OpenAI, server: ServerProcess) -> None:
    clip = eval_clip(SHORT)
    with clip.open("rb") as fp, pytest.raises(openai.BadRequestError) as bad_format:
        client.audio.transcriptions.create(file=fp, model="whisper-1", response_format="docx")
    assert "response_format" in bad_format.value.message
    assert bad_format.value.body["param"] == "response_format"
    with clip.open("rb") as fp, pytest.raises(openai.BadRequestError) as english_only:
        client.audio.translations.create(file=fp, model="whisper-1")
    assert "multilingual" in english_only.value.message and "model=base" in english_only.value.message
    # The raw body is OpenAI's shape on /v1, the service's own everywhere else.
    with clip.open("rb") as fp:
        raw = requests.post(
            server.url + "/v1/audio/transcriptions", files={"file": fp}, data={"temperature": "3"}
        )
    assert raw.status_code == 400
    assert raw.json() == {
        "error": {
            "message": "temperature must be a number from 0 to 1, not '3'.",
            "type": "invalid_request_error",
            "param": "temperature",
            "code": "invalid_value",
        }
    }
    assert requests.get(server.url + "/status/nope", timeout=10).json() == {"error": "No job with id 'nope'."}
    assert requests.get(server.url + "/v1/nothing", timeout=10).json()["error"]["code"] == "not_found"


@pytest.mark.slow
def test_api_token_is_the_clients_api_key(server_factory: Any) -> None:
    token = "tok-" + "7" * 20
    secured = server_factory(extra_args=["--api-token", token]).start(timeout=300)
    with openai.OpenAI(base_url=secured.url + "/v1", api_key="wrong", max_retries=0) as wrong:
        with pytest.raises(openai.AuthenticationError) as denied:
            wrong.models.list()
        assert denied.value.body == {
            "message": "Missing or wrong API token: send the header 'Authorization: Bearer <token>'.",
            "type": "invalid_request_error",
            "param": None,
            "code": "invalid_api_key",
        }
        with eval_clip(SHORT).open("rb") as fp, pytest.raises(openai.AuthenticationError):
            wrong.audio.transcriptions.create(file=fp, model="whisper-1")
    with openai.OpenAI(base_url=secured.url + "/v1", api_key=token, max_retries=0) as right:
        assert "whisper-1" in [model.id for model in right.models.list().data]


# -- in-process, on the fake engine -------------------------------------------------------------


@dataclasses.dataclass
class RecordingEngine(FakeEngine):
    """The fake engine, keeping the decode options each job reached it with."""

    seen: list[DecodeOptions] = dataclasses.field(default_factory=list)

    def transcribe(
        self, model: Any, pcm: np.ndarray, options: DecodeOptions, *args: Any, **kw: Any
    ) -> Result:
        self.seen.append(options)
        return super().transcribe(model, pcm, options, *args, **kw)


def _oai_form(path: Path, **fields: str | list[str]) -> Any:
    from aiohttp import FormData

    body = FormData()
    for key, value in fields.items():
        for item in value if isinstance(value, list) else [value]:
            body.add_field(key, item)
    body.add_field("file", path.read_bytes(), filename=path.name, content_type="audio/wav")
    return body


async def test_options_reach_the_engine_from_both_routes(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = RecordingEngine()
    client = await aiohttp_client(create_app(settings, engine=engine))
    clip = eval_clip(SHORT)
    resp = await client.post(
        "/v1/audio/transcriptions",
        data=_oai_form(
            clip,
            model="gpt-4o-transcribe",
            prompt="Dashwoode",
            temperature="0.4",
            response_format="verbose_json",
            **{"timestamp_granularities[]": ["segment", "word"]},
        ),
    )
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["task"] == "transcribe" and body["segments"]
    job_id = resp.headers["X-Job-Id"]
    status = await (await client.get(f"/status/{job_id}")).json()
    assert status["model"] == "tiny.en"  # an unknown name is the default
    assert status["options"] == {"initial_prompt": "Dashwoode", "temperature": 0.4, "word_timestamps": True}
    assert engine.seen[-1].initial_prompt == "Dashwoode" and engine.seen[-1].temperature == 0.4
    assert engine.seen[-1].word_timestamps

    resp = await client.post(
        "/transcribe", data=form(clip, job_id="own", prompt="Jon", temperature="0", model="tiny.en")
    )
    assert resp.status == 202
    await wait_status(client, "own", {"completed"})
    assert engine.seen[-1].initial_prompt == "Jon" and engine.seen[-1].temperature is None  # 0 = default
    resp = await client.post("/transcribe", data=form(clip, job_id="hot", temperature="1.5"))
    assert resp.status == 400 and "temperature" in (await resp.json())["error"]
    assert [name for name in leftover_files(settings) if not name.startswith("oai-")] == ["own.wav"]


async def test_each_response_format_shape(settings: Settings, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    clip = eval_clip(SHORT)
    bodies = {}
    for fmt in FORMATS:
        resp = await client.post("/v1/audio/transcriptions", data=_oai_form(clip, response_format=fmt))
        assert resp.status == 200, await resp.text()
        bodies[fmt] = (await resp.text(), resp.headers["Content-Type"])
    assert json.loads(bodies["json"][0]) == {"text": "46797 samples"}
    assert bodies["json"][1].startswith("application/json")
    assert bodies["text"] == ("46797 samples\n", "text/plain; charset=utf-8")
    assert bodies["srt"][0].startswith("1\n00:00:00,000 --> ")
    assert bodies["vtt"][0].startswith("WEBVTT")
    verbose = json.loads(bodies["verbose_json"][0])
    assert "words" not in verbose and verbose["text"] == "46797 samples"


async def test_errors_in_openai_shape(tmp_path: Path, aiohttp_client: ClientFactory) -> None:
    settings = Settings(storage_dir=tmp_path / "storage", max_queue=1, max_upload_bytes=200_000)
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    clip = eval_clip(SHORT)

    async def error(resp: Any, status: int) -> dict[str, Any]:
        assert resp.status == status, await resp.text()
        body: dict[str, Any] = (await resp.json())["error"]
        assert set(body) == {"message", "type", "param", "code"}
        return body

    bad = await error(
        await client.post("/v1/audio/transcriptions", data=_oai_form(clip, response_format="x")), 400
    )
    assert bad["param"] == "response_format" and bad["type"] == "invalid_request_error"
    lang = await error(
        await client.post("/v1/audio/transcriptions", data=_oai_form(clip, language="de")), 400
    )
    assert lang["param"] == "language"
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio at all" * 100)
    assert (await error(await client.post("/v1/audio/transcriptions", data=_oai_form(junk)), 415))["code"]
    big = tmp_path / "big.wav"
    big.write_bytes(b"\0" * 400_000)
    too_big = await error(await client.post("/v1/audio/transcriptions", data=_oai_form(big)), 413)
    assert too_big["code"] == "file_too_large"
    assert leftover_files(settings) == []

    # Backpressure: one job runs (held), one waits; the queue is full.
    await client.post("/transcribe", data=form(clip, job_id="run"))
    await wait_status(client, "run", {"processing"})
    other = tmp_path / "other.wav"
    other.write_bytes(clip.read_bytes()[:-2] + b"\1\1")
    await client.post("/transcribe", data=form(other, job_id="queued"))
    resp = await client.post("/v1/audio/transcriptions", data=_oai_form(clip))
    full = await error(resp, 429)
    assert full["code"] == "rate_limit_exceeded" and int(resp.headers["Retry-After"]) >= 1
    engine.gate.set()


async def test_waits_past_a_minute_and_answers_when_the_job_ends(
    settings: Settings, aiohttp_client: ClientFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The request outlasts several long-poll steps (shortened here) and sees the job's end."""
    import asyncio

    from service.usecases import views

    monkeypatch.setattr(views, "MAX_WAIT_SECONDS", 0.2)
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    request = asyncio.ensure_future(
        client.post("/v1/audio/transcriptions", data=_oai_form(eval_clip(SHORT), response_format="text"))
    )
    await asyncio.sleep(1.0)
    assert not request.done()
    jobs = (await (await client.get("/jobs")).json())["jobs"]
    assert [job["status"] for job in jobs] == ["processing"] and jobs[0]["job_id"].startswith("oai-")
    engine.gate.set()
    resp = await request
    assert resp.status == 200 and await resp.text() == "46797 samples\n"


async def test_failed_job_is_a_server_error_not_retried(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine(fail_with=RuntimeError("decoder exploded"))
    client = await aiohttp_client(create_app(settings, engine=engine))
    resp = await client.post("/v1/audio/transcriptions", data=_oai_form(eval_clip(SHORT)))
    assert resp.status == 500 and resp.headers["x-should-retry"] == "false"
    body = (await resp.json())["error"]
    assert body["type"] == "server_error" and "decoder exploded" in body["message"]


# -- the engine honours prompt and temperature (real tiny.en) ---------------------------------


@pytest.mark.slow
def test_engine_prompt_and_deterministic_temperature(real_engine: SharedModelEngine) -> None:
    model = real_engine.load("tiny.en")
    pcm = audio.decode(eval_clip(SHORT))
    greedy = DecodeOptions(beam_size=1, temperature=0.0)
    first = real_engine.transcribe(model, pcm, greedy, lambda _: None)
    again = real_engine.transcribe(model, pcm, greedy, lambda _: None)
    assert first.text == again.text and word_error_rate(reference_text(SHORT), first.text) <= 0.2
    prompted = DecodeOptions(beam_size=1, initial_prompt="Mr. Jon Dashwoode and Mrs. Dashwoode.")
    result = real_engine.transcribe(model, audio.decode(eval_clip(AUSTEN)), prompted, lambda _: None)
    assert "Dashwoode" in result.text, result.text


def test_temperature_ladder() -> None:
    assert DecodeOptions().temperatures() is None
    assert DecodeOptions(temperature=0.0).temperatures() == (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    assert DecodeOptions(temperature=0.5).temperatures() == (0.5, 0.7, 0.9)
    assert DecodeOptions(temperature=1.0).temperatures() == (1.0,)


@pytest.mark.slow
def test_faster_whisper_engine_honours_prompt_and_temperature(tmp_path: Path) -> None:
    from service.cpus import threads_per_worker
    from service.engines.faster_whisper import FasterWhisperEngine

    engine = FasterWhisperEngine(tmp_path / "models", threads=threads_per_worker(0, 1))
    model = engine.load("tiny.en")
    options = DecodeOptions(
        beam_size=1, temperature=0.0, initial_prompt="Mr. Jon Dashwoode and Mrs. Dashwoode."
    )
    result = engine.transcribe(model, audio.decode(eval_clip(AUSTEN)), options, lambda _: None)
    assert "Dashwoode" in result.text, result.text
