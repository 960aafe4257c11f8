"""openai-whisper's model names and device, without torch: the HTTP process's view of the engine.

With `--isolation process` (the default) models live in the inference process; the HTTP process
only checks and lists names and reports the device, and importing torch for that would cost it
about 1.5 s of start-up and a few hundred MB. OpenAIWhisperEngine (openai_whisper.py) is this
catalog plus loading and decoding, which need torch.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from service.engines import whisper_tables
from service.engines.bundled import is_bundled
from service.errors import ModelUnavailable

_UNKNOWN = object()


def _torch_build_is_cpu_only() -> bool:
    """True only if torch/version.py, read without importing torch, says no CUDA and no ROCm."""
    spec = importlib.util.find_spec("torch")  # a top-level package: found, not executed
    if spec is None or not spec.submodule_search_locations:
        return False
    path = Path(next(iter(spec.submodule_search_locations))) / "version.py"
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (OSError, SyntaxError, ValueError):
        return False
    found: dict[str, object] = {}
    for node in tree.body:
        target: ast.expr
        if isinstance(node, ast.AnnAssign) and node.value is not None:
            target, value = node.target, node.value
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target, value = node.targets[0], node.value
        else:
            continue
        if isinstance(target, ast.Name) and target.id in ("cuda", "hip"):
            try:
                found[target.id] = ast.literal_eval(value)
            except (ValueError, TypeError):
                return False
    return found.get("cuda", _UNKNOWN) is None and found.get("hip", _UNKNOWN) is None


def torch_device(device: str) -> str:
    """The device torch decodes on: `auto` is cuda when torch.cuda.is_available(), else cpu.

    A CPU-only build of torch (the default install) has no CUDA, which its version file says
    without torch being imported; only a GPU build is asked, and that imports torch.
    """
    if device != "auto":
        return device
    if "torch" not in sys.modules and _torch_build_is_cpu_only():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class OpenAIWhisperCatalog:
    """openai-whisper's model names (whisper's table, bundled models, .pt checkpoints on disk)."""

    name = "openai-whisper"

    def __init__(self, models_dir: Path, device: str = "auto") -> None:
        self.models_dir = models_dir
        self.device = torch_device(device)

    def check_model_name(self, name: str) -> None:
        if name in whisper_tables.available_models():
            return
        if name.endswith(".pt") and os.path.isfile(name):
            return
        raise ModelUnavailable(
            f"Unknown model {name!r}. Use one of: {', '.join(whisper_tables.available_models())}, "
            "or start the service with --model pointing at a .pt checkpoint."
        )

    def is_english_only(self, name: str) -> bool:
        return name.endswith(".en") or Path(name).stem.endswith(".en")

    def list_models(self) -> list[dict[str, Any]]:
        """Every name this engine knows, and whether it can load without the network."""
        out = []
        for name, url in whisper_tables.model_urls().items():
            bundled = is_bundled(name)
            on_disk = (self.models_dir / os.path.basename(url)).is_file() or any(
                self.models_dir.glob(f"{name}-*.pt")
            )
            out.append({"name": name, "bundled": bundled, "on_disk": on_disk, "offline": bundled or on_disk})
        return out
