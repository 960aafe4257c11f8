"""whisper's language tables, transcript writers and model names, without importing torch.

`import whisper.tokenizer` (or `whisper.utils`) runs whisper/__init__.py first, and that imports
torch: about 1.5 s and a few hundred MB that the HTTP process has no use for (models live in the
inference process). whisper/tokenizer.py needs only the standard library and tiktoken, and
whisper/utils.py only the standard library, so they are loaded here from the installed package,
by path and under private module names, without running the package's __init__. The model table
(`whisper._MODELS`, in that __init__) is read from its source as a literal.

Where whisper is already imported (the inference process, or `--isolation thread`), its own
modules and table are used.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

__all__ = [
    "LANGUAGES",
    "TO_LANGUAGE_CODE",
    "ResultWriter",
    "WriteSRT",
    "WriteTSV",
    "WriteTXT",
    "WriteVTT",
    "available_models",
    "format_timestamp",
    "model_urls",
]


def _package_dir() -> Path:
    # find_spec of a top-level package locates it without executing it.
    spec = importlib.util.find_spec("whisper")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("No module named 'whisper'", name="whisper")
    return Path(next(iter(spec.submodule_search_locations)))


def _load(name: str) -> ModuleType:
    """whisper.<name>: the real module if whisper is imported, else the file loaded on its own."""
    if "whisper" in sys.modules:
        return importlib.import_module(f"whisper.{name}")
    private = f"service._whisper_{name}"
    module = sys.modules.get(private)
    if module is not None:
        return module
    spec = importlib.util.spec_from_file_location(private, _package_dir() / f"{name}.py")
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load whisper/{name}.py", name=private)
    module = importlib.util.module_from_spec(spec)
    sys.modules[private] = module  # dataclasses look their module up while the file runs
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[private]
        raise
    return module


@functools.cache
def _models_from_source() -> dict[str, str]:
    """`_MODELS` as whisper/__init__.py assigns it (a dict literal); whisper itself if that changed."""
    tree = ast.parse((_package_dir() / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if not any(isinstance(target, ast.Name) and target.id == "_MODELS" for target in targets):
            continue
        try:
            table = ast.literal_eval(value)
        except (ValueError, TypeError):  # built by code rather than written out: ask whisper below
            break
        names_and_urls = table.items() if isinstance(table, dict) else ()
        if names_and_urls and all(isinstance(k, str) and isinstance(v, str) for k, v in names_and_urls):
            return dict(names_and_urls)
        break
    import whisper  # slow (torch), but right whatever shape whisper's source has taken

    return dict(whisper._MODELS)


def model_urls() -> dict[str, str]:
    """whisper._MODELS: each official model name and the URL of its checkpoint."""
    whisper: Any = sys.modules.get("whisper")
    if whisper is not None:
        return dict(whisper._MODELS)
    return dict(_models_from_source())


def available_models() -> list[str]:
    """whisper.available_models(): the official model names, in whisper's order."""
    return list(model_urls())


if TYPE_CHECKING:
    from whisper.tokenizer import LANGUAGES, TO_LANGUAGE_CODE
    from whisper.utils import ResultWriter, WriteSRT, WriteTSV, WriteTXT, WriteVTT, format_timestamp
else:
    _tokenizer = _load("tokenizer")
    _utils = _load("utils")
    LANGUAGES = _tokenizer.LANGUAGES
    TO_LANGUAGE_CODE = _tokenizer.TO_LANGUAGE_CODE
    ResultWriter = _utils.ResultWriter
    WriteSRT = _utils.WriteSRT
    WriteTSV = _utils.WriteTSV
    WriteTXT = _utils.WriteTXT
    WriteVTT = _utils.WriteVTT
    format_timestamp = _utils.format_timestamp
