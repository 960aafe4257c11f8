"""The OpenAI-compatible API: the official `openai` client against a real server, and the shapes.

The client runs in its strict mode (`_strict_response_validation=True`, every response checked
against OpenAI's own types) as well as its default one. Real decodes are few (the transcript
cache answers repeats of the same audio and options), since every clip costs seconds on a
shared CPU. Queue, error, streaming and option plumbing run in-process on the fake engine.
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
    ENGLISH_CLIPS,
    FakeEngine,
    ServerProcess,
    SharedModelEngine,
    eval_clip,
    reference_text,
    word_error_rate,
    write_wav,
)
from openai.types.audio import (
    TranscriptionTextDeltaEvent,
    TranscriptionTextDoneEvent,
    TranscriptionVerbose,
    TranslationVerbose,
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


@pytest.fixture(scope="module")
def strict(server: ServerProcess) -> Iterator[openai.OpenAI]:
    """The client checking every response against OpenAI's types: a missing field raises."""
    with openai.OpenAI(
        base_url=server.url + "/v1",
        api_key="unused",
        max_retries=0,
        timeout=600,
        _strict_response_validation=True,
    ) as c:
        yield c


def _silence(tmp_path: Path, seconds: float) -> Path:
    return write_wav(tmp_path / "silence.wav", np.zeros(round(seconds * 16_000), dtype=np.float32))


def _joined(tmp_path: Path, names: list[str]) -> Path:
    """Clips joined with 2.5 s pauses: separate speech chunks, decoded one after another."""
    parts = []
    for name in names:
        parts += [audio.decode(eval_clip(name)), np.zeros(40_000, dtype=np.float32)]
    return write_wav(tmp_path / "joined.wav", np.concatenate(parts))


def _text_of(fmt: str, answer: Any) -> str:
    """The transcript inside each format, checked for that format's structure on the way."""
    if fmt == "json":
        assert isinstance(answer, openai.types.audio.Transcription)
        return answer.text
    if fmt == "verbose_json":
        assert isinstance(answer, openai.types.audio.TranscriptionVerbose)
        assert answer.segments and answer.duration > 0
        assert answer.usage is not None and answer.usage.seconds >= answer.duration
        for segment in answer.segments:
            assert 0 <= segment.start < segment.end <= answer.duration
            # The decoder's own figures, as OpenAI's segment has them.
            assert segment.tokens and segment.seek >= 0 and 0 <= segment.temperature <= 1
            assert 0.5 < segment.compression_ratio < 2.4 and segment.avg_logprob < 0
            assert segment.no_speech_prob < 0.5
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
    client: openai.OpenAI, strict: openai.OpenAI, server: ServerProcess, clip: str
) -> None:
    path = eval_clip(clip)
    job_ids = []
    for fmt in FORMATS:
        for sdk in (client, strict):
            with path.open("rb") as fp:
                raw = sdk.audio.transcriptions.with_raw_response.create(
                    file=fp, model="whisper-1", response_format=fmt
                )
            # OpenAI labels text, srt and vtt alike; some clients check for it.
            assert raw.headers["content-type"].startswith(
                "application/json" if "json" in fmt else "text/plain"
            )
            text = _text_of(fmt, raw.parse())
        job_ids.append(raw.headers["x-job-id"])
        assert raw.headers["x-model"] == "tiny.en"  # whisper-1 is the default model
        assert word_error_rate(reference_text(clip), text) <= 0.2, (fmt, text)
    # Ordinary jobs: each in GET /jobs, with the default model; the first decoded, the rest cached.
    listed = {
        job["job_id"]: job for job in requests.get(server.url + "/jobs?limit=500", timeout=10).json()["jobs"]
    }
    assert all(job_id.startswith("oai-") and listed[job_id]["status"] == "completed" for job_id in job_ids)
    assert {listed[job_id]["model"] for job_id in job_ids} == {"tiny.en"}
    assert all("note" in listed[job_id] for job_id in job_ids[1:])  # from the transcript cache


@pytest.mark.slow
@SDK_TRANSLATIONS
def test_verbose_json_translation_is_strictly_valid(strict: openai.OpenAI) -> None:
    with eval_clip(FRENCH).open("rb") as fp:
        answer = strict.audio.translations.create(file=fp, model="base", response_format="verbose_json")
    assert isinstance(answer, TranslationVerbose)
    assert answer.segments and all(s.tokens and s.compression_ratio > 0 for s in answer.segments)
    assert answer.segments[-1].end <= answer.duration


@pytest.mark.slow
def test_streaming_through_the_official_client(
    strict: openai.OpenAI, client: openai.OpenAI, server: ServerProcess, tmp_path: Path
) -> None:
    """Deltas come while the job still runs; they add up to the final text, which is the
    non-streamed transcript of the same audio; the job is an ordinary one."""
    path = _joined(tmp_path, [AUSTEN, *ENGLISH_CLIPS[3:6]])  # about 40 s: two speech chunks or more
    deltas: list[str] = []
    statuses: list[dict[str, Any]] = []
    done = None
    with (
        path.open("rb") as fp,
        strict.audio.transcriptions.with_streaming_response.create(
            file=fp, model="whisper-1", stream=True, response_format="text"
        ) as response,
    ):
        assert response.headers["content-type"].startswith("text/event-stream")
        job_id = response.headers["x-job-id"]
        for event in response.parse():
            if event.type == "transcript.text.delta":
                if not deltas:  # the job as it stands when the first text arrives
                    statuses.append(requests.get(f"{server.url}/status/{job_id}", timeout=10).json())
                deltas.append(event.delta)
            else:
                assert event.type == "transcript.text.done" and done is None
                done = event
    assert done is not None and len(deltas) >= 2
    assert statuses[0]["status"] == "processing", statuses  # text before the job's end
    assert "".join(deltas) == done.text
    assert done.usage is not None and done.usage.output_tokens > len(done.text.split())
    with path.open("rb") as fp:
        whole = client.audio.transcriptions.create(file=fp, model="whisper-1", response_format="text")
    assert done.text == whole.strip()
    assert (
        word_error_rate(" ".join(reference_text(n) for n in [AUSTEN, *ENGLISH_CLIPS[3:6]]), done.text) < 0.25
    )
    final = requests.get(f"{server.url}/status/{job_id}", timeout=10).json()
    assert final["status"] == "completed" and final["transcript"] == done.text


@pytest.mark.slow
def test_silence_is_empty_text_and_one_done_event(
    client: openai.OpenAI, strict: openai.OpenAI, tmp_path: Path
) -> None:
    path = _silence(tmp_path, 45)
    with path.open("rb") as fp:
        assert strict.audio.transcriptions.create(file=fp, model="whisper-1").text == ""
    with path.open("rb") as fp:
        verbose = strict.audio.transcriptions.create(
            file=fp, model="whisper-1", response_format="verbose_json"
        )
    assert verbose.text == "" and verbose.segments == [] and verbose.duration == 45
    with path.open("rb") as fp:
        events = list(client.audio.transcriptions.create(file=fp, model="whisper-1", stream=True))
    assert [(e.type, e.text) for e in events] == [("transcript.text.done", "")]  # type: ignore[union-attr]


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
def test_errors_through_the_official_client(
    strict: openai.OpenAI, server: ServerProcess, tmp_path: Path
) -> None:
    junk = tmp_path / "notes.wav"
    junk.write_bytes(b"this is not audio at all " * 200)
    with junk.open("rb") as fp, pytest.raises(openai.BadRequestError) as not_audio:
        strict.audio.transcriptions.create(file=fp, model="whisper-1")
    assert not_audio.value.body["param"] == "file"  # type: ignore[index]
    with eval_clip(SHORT).open("rb") as fp, pytest.raises(openai.NotFoundError) as typo:
        strict.audio.transcriptions.create(file=fp, model="tiny-en")
    assert typo.value.code == "model_not_found" and typo.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        strict.models.retrieve("tiny-en")
    with eval_clip(SHORT).open("rb") as fp, pytest.raises(openai.BadRequestError) as not_streamable:
        strict.audio.transcriptions.create(file=fp, model="whisper-1", response_format="srt", stream=True)
    assert not_streamable.value.body["param"] == "stream"  # type: ignore[index]
    # speaches' model ids name the same weights; OpenAI's names are the default model.
    with eval_clip(SHORT).open("rb") as fp:
        raw = strict.audio.transcriptions.with_raw_response.create(
            file=fp, model="Systran/faster-whisper-tiny.en"
        )
    assert raw.headers["x-model"] == "tiny.en" and raw.parse().text
    assert {"whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"} <= {
        m.id for m in strict.models.list()
    }
    no_file = requests.post(server.url + "/v1/audio/transcriptions", files={"model": (None, "whisper-1")})
    assert no_file.status_code == 400 and no_file.json()["error"]["param"] == "file"


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
    assert json.loads(bodies["json"][0]) == {
        "text": "46797 samples",
        "usage": {"type": "duration", "seconds": 3},
    }
    assert bodies["json"][1].startswith("application/json")
    assert bodies["text"] == ("46797 samples\n", "text/plain; charset=utf-8")
    assert bodies["srt"][0].startswith("1\n00:00:00,000 --> ")
    assert bodies["vtt"][0].startswith("WEBVTT")
    assert bodies["srt"][1] == bodies["vtt"][1] == "text/plain; charset=utf-8"  # as OpenAI sends them
    verbose = json.loads(bodies["verbose_json"][0])
    assert "words" not in verbose and verbose["text"] == "46797 samples"
    # The fake engine reports no decoder figures: stand-ins keep strict clients' checks passing.
    parsed = TranscriptionVerbose.model_validate(verbose)
    assert parsed.segments and parsed.segments[0].end <= parsed.duration


def _sse(body: str) -> list[dict[str, Any]]:
    """The JSON of each `data:` line, as OpenAI's client reads a stream."""
    return [json.loads(line[len("data: ") :]) for line in body.splitlines() if line.startswith("data: ")]


async def test_stream_sends_deltas_then_done(settings: Settings, aiohttp_client: ClientFactory) -> None:
    engine = FakeEngine()
    client = await aiohttp_client(create_app(settings, engine=engine))
    clip = eval_clip(SHORT)
    resp = await client.post("/v1/audio/transcriptions", data=_oai_form(clip, stream="true"))
    assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream; charset=utf-8"
    events = _sse(await resp.text())
    # The fake engine's live segments (" step N"); its stored text differs, so done carries that.
    assert [e["delta"] for e in events[:-1]] == ["step 1", " step 2", " step 3", " step 4"]
    assert all(TranscriptionTextDeltaEvent.model_validate(e) for e in events[:-1])
    done = TranscriptionTextDoneEvent.model_validate(events[-1])
    assert done.text == "46797 samples" and done.usage is not None
    assert done.usage.input_tokens == 147  # 50 a second of audio, rounded up
    status = await (await client.get(f"/status/{resp.headers['X-Job-Id']}")).json()
    assert status["status"] == "completed"  # an ordinary job, still there after the stream

    # From the transcript cache nothing is decoded live: the text comes as one delta, then done.
    resp = await client.post(
        "/v1/audio/transcriptions", data=_oai_form(clip, stream="true", response_format="text")
    )
    events = _sse(await resp.text())
    assert [e["type"] for e in events] == ["transcript.text.delta", "transcript.text.done"]
    assert events[0]["delta"] == events[1]["text"] == "46797 samples"

    # Per-word log probabilities when asked: the job decodes with word times.
    resp = await client.post(
        "/v1/audio/transcriptions", data=_oai_form(clip, stream="true", **{"include[]": "logprobs"})
    )
    assert resp.status == 200, await resp.text()
    events = _sse(await resp.text())
    assert events[-1]["type"] == "transcript.text.done" and "logprobs" in events[-1]
    assert engine.decoded and len(engine.decoded) == 2  # the first job and the logprobs one


async def test_a_dropped_stream_leaves_the_job_running(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    engine = FakeEngine()
    engine.gate.clear()
    client = await aiohttp_client(create_app(settings, engine=engine))
    resp = await client.post("/v1/audio/transcriptions", data=_oai_form(eval_clip(SHORT), stream="true"))
    assert resp.status == 200  # the headers come at once, with the job's id
    job_id = resp.headers["X-Job-Id"]
    await wait_status(client, job_id, {"processing"})
    resp.close()  # the client gives up mid-stream
    engine.gate.set()
    done = await wait_status(client, job_id, {"completed"})
    assert done["transcript"] == "46797 samples"


async def test_stream_reports_a_failed_job_as_an_error_event(
    settings: Settings, aiohttp_client: ClientFactory
) -> None:
    client = await aiohttp_client(create_app(settings, engine=FakeEngine(fail_with=RuntimeError("boom"))))
    resp = await client.post("/v1/audio/transcriptions", data=_oai_form(eval_clip(SHORT), stream="true"))
    assert resp.status == 200  # the stream had begun before the job failed
    events = _sse(await resp.text())
    assert events[-1]["error"]["type"] == "server_error" and "boom" in events[-1]["error"]["message"]
    assert all("error" in e or e["type"] == "transcript.text.delta" for e in events)


async def test_model_names(settings: Settings, aiohttp_client: ClientFactory) -> None:
    client = await aiohttp_client(create_app(settings, engine=FakeEngine()))
    clip = eval_clip(SHORT)
    for name, runs_on in [
        ("whisper-1", "tiny.en"),
        ("gpt-4o-mini-transcribe", "tiny.en"),
        ("Systran/faster-whisper-tiny", "tiny"),
        ("openai/whisper-base", "base"),
    ]:
        resp = await client.post("/v1/audio/transcriptions", data=_oai_form(clip, model=name))
        assert resp.status == 200 and resp.headers["X-Model"] == runs_on, (name, await resp.text())
    for name in ("i-do-not-exist", "Systran/faster-whisper-huge", "/etc/passwd", "whisper-2"):
        resp = await client.post("/v1/audio/transcriptions", data=_oai_form(clip, model=name))
        assert resp.status == 404, name
        body = (await resp.json())["error"]
        assert body["code"] == "model_not_found" and body["param"] == "model"
        assert (await client.get(f"/v1/models/{name}")).status == 404
    assert (await client.get("/v1/models/base")).status == 200  # the route takes it: so does this
    assert [name for name in leftover_files(settings) if not name.startswith("oai-")] == []  # refused early


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
    not_audio = await error(await client.post("/v1/audio/transcriptions", data=_oai_form(junk)), 400)
    assert not_audio["param"] == "file" and not_audio["code"] == "invalid_file_format"
    assert (await client.post("/transcribe", data=form(junk, job_id="junk"))).status == 415  # its own route
    stream = await error(
        await client.post("/v1/audio/transcriptions", data=_oai_form(clip, stream="yes please")), 400
    )
    assert stream["param"] == "stream"
    include = await error(
        await client.post("/v1/audio/transcriptions", data=_oai_form(clip, **{"include[]": "x"})), 400
    )
    assert include["param"] == "include[]"
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
    for _ in range(600):  # until the job runs (held at the engine's gate)
        jobs = (await (await client.get("/jobs")).json())["jobs"]
        if jobs and jobs[0]["status"] == "processing":
            break
        await asyncio.sleep(0.02)
    assert not request.done()  # the request waits for its transcript
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
    _has_decoder_figures(result)


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
    _has_decoder_figures(result)


def _has_decoder_figures(result: Result) -> None:
    """The fields OpenAI's segment has beyond times and text, from the engine itself."""
    for segment in result.segments:
        assert segment.tokens and segment.seek == 0  # one window
        assert segment.temperature == 0.0 and segment.compression_ratio and segment.compression_ratio > 0.5
