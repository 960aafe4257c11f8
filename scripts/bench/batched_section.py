"""The `batched` section: batched decoding of a job's chunks, and diarization at any length.

Every measurement runs in a fresh child process (`python scripts/bench/batched_section.py ...`),
so each one's peak RSS (VmHWM from /proc/self/status: model load included) is its own:

1. throughput: a 30 min recording from `long_audio.build` (--quick 5 min) through the service's
   pipeline (`pipeline.execute`, faster-whisper int8) with `batch_size` 1 (one chunk at a time)
   and the batched size, back to back: wall and CPU seconds, x real time, WER, and the ratios.
2. openai-whisper: the first 8 chunks' 30 s windows decoded by `whisper.decode` one by one and as
   one batch (same options: beam 5, timestamps): why the service keeps that engine sequential.
3. diarization: `Diarizer.turns_of_blocks` over the file's blocks (what a diarized job runs after
   its transcript) on conversations of the eval clips' four readers (`conversation.build`) of
   1, 10 and 60 min (--quick 1, 2 and 10 min): VmHWM, seconds per audio hour, DER (0.25 s collar)
   against the 1 min conversation's.
4. memory with batching on: the batched pipeline on a 10 min and a 3 h recording (--quick 2 and
   20 min); the difference of their VmHWM.

Runtime on 2 cores: 16.6 min at full size next to other work (the 3 h decode is 6 of them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if __name__ == "__main__":  # a measurement's child process
    _SCRIPTS = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(_SCRIPTS.parent), str(_SCRIPTS)]

from bench import conversation, long_audio
from bench.common import EVAL_DIR, SectionResult, Table, ratio, target

if TYPE_CHECKING:
    from bench.sections import Context

MIB = 1024 * 1024
BATCH = 8  # the batched arm: faster-whisper's own default, and its published CPU figure's
SPEED_TARGET = 2.0
WER_MARGIN_PT = 0.5
MEMORY_TARGET_MIB = 150.0
DIARIZATION_MEMORY_TARGET_MIB = 200.0
DER_MARGIN_PT = 5.0
OPENAI_WINDOWS = 4


@dataclass(frozen=True)
class Sizes:
    throughput: float
    memory_short: float
    memory_long: float
    talks: tuple[float, float, float]  # the baseline conversation, the shorter and the longer


FULL = Sizes(throughput=1800, memory_short=600, memory_long=3 * 3600, talks=(60, 600, 3600))
QUICK = Sizes(throughput=300, memory_short=120, memory_long=1200, talks=(60, 120, 600))


def clock(seconds: float) -> str:
    if seconds >= 3600:
        return f"{seconds / 3600:g} h"
    return f"{seconds / 60:.0f} min"


# -- the children ---------------------------------------------------------------------------------


def _vm_hwm_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _transcribe(path: str, batch: int, threads: int, beam: int) -> dict[str, Any]:
    from service.engines.base import DecodeOptions
    from service.engines.faster_whisper import FasterWhisperEngine
    from service.inference.models import ModelManager
    from service.inference.pipeline import TranscribeRequest, execute

    engine = FasterWhisperEngine(Path(os.environ["BENCH_MODELS"]), compute_type="int8", threads=threads)
    manager = ModelManager(engine, default="tiny.en", max_models=1, idle_seconds=-1)
    manager.load("tiny.en")
    request = TranscribeRequest("bench", path, "tiny.en", DecodeOptions(beam_size=beam), batch_size=batch)
    started, cpu = time.perf_counter(), time.process_time()
    result = execute(manager, request, lambda: False, lambda _: None)
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "text": result.text,
        "vm_hwm_mib": _vm_hwm_mib(),
    }


def _diarize(path: str) -> dict[str, Any]:
    from service.diarization import Diarizer
    from service.inference import audio

    diarizer = Diarizer()
    diarizer.load()
    started, cpu = time.perf_counter(), time.process_time()
    turns = diarizer.turns_of_blocks(audio.AudioStream(Path(path), 10.0))
    return {
        "wall_s": time.perf_counter() - started,
        "cpu_s": time.process_time() - cpu,
        "turns": [[t.start, t.end, t.speaker] for t in turns],
        "vm_hwm_mib": _vm_hwm_mib(),
    }


def _openai_decode(checkpoint: str, path: str, beam: int) -> dict[str, Any]:
    """The first chunks' windows through `whisper.decode`, one by one and as one batch: greedy
    (batched beam search is tried too, and its error kept)."""
    import torch
    import whisper

    from service.inference import audio
    from service.inference.chunking import speech_chunks

    model = whisper.load_model(checkpoint, device="cpu")
    stream = speech_chunks(audio.AudioStream(Path(path), 10.0))
    chunks = [c.audio for _, c in zip(range(OPENAI_WINDOWS), stream, strict=False)]
    mels = torch.stack(
        [whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(c))) for c in chunks]
    )
    out: dict[str, Any] = {"windows": len(chunks), "beam_size": beam}
    beams = whisper.DecodingOptions(language="en", beam_size=beam, fp16=False, without_timestamps=False)
    try:
        whisper.decode(model, mels[:2], beams)
        out["batched_beam_search"] = "ok"
    except Exception as exc:  # what openai-whisper does with a batch and a beam: kept as the figure
        out["batched_beam_search"] = f"{type(exc).__name__}: {exc}"
    greedy = whisper.DecodingOptions(language="en", fp16=False, without_timestamps=False)
    whisper.decode(model, mels[:1], greedy)  # warm-up
    for name, run in (
        ("one_by_one", lambda: [whisper.decode(model, m[None], greedy)[0].text for m in mels]),
        ("batched", lambda: [r.text for r in whisper.decode(model, mels, greedy)]),
    ):
        started, cpu = time.perf_counter(), time.process_time()
        texts = run()
        out[name] = {
            "wall_s": time.perf_counter() - started,
            "cpu_s": time.process_time() - cpu,
            "text": texts,
        }
    return out


def main(argv: list[str]) -> None:
    kind, *args = argv
    if kind == "transcribe":
        out = _transcribe(args[0], int(args[1]), int(args[2]), int(args[3]))
    elif kind == "diarize":
        out = _diarize(args[0])
    elif kind == "openai":
        out = _openai_decode(args[0], args[1], int(args[2]))
    else:
        raise SystemExit(f"unknown measurement {kind!r}")
    print("RESULT " + json.dumps(out), flush=True)


def _child(ctx: Context, *args: str) -> dict[str, Any]:
    env = dict(os.environ, BENCH_MODELS=str(ctx.workdir / "batched-models"))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), *args],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            result: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return result
    raise RuntimeError(f"measurement {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")


# -- the section ----------------------------------------------------------------------------------


def batched(ctx: Context) -> SectionResult:
    from service.diarization.metrics import der_breakdown

    sizes = QUICK if ctx.quick else FULL
    res = SectionResult(
        "batched",
        f"Batched decoding and diarization at any length, each measurement in a fresh process. "
        f"Throughput: a {clock(sizes.throughput)} recording (long_audio.build) through pipeline.execute "
        f"with faster-whisper int8 tiny.en, --batch-size 1 then {BATCH}, back to back. openai-whisper: "
        f"{OPENAI_WINDOWS} chunks' windows through whisper.decode one by one and as one batch. Memory: "
        f"VmHWM of the batched pipeline on {clock(sizes.memory_short)} and {clock(sizes.memory_long)}. "
        f"Diarization: the four readers taking turns for {', '.join(clock(s) for s in sizes.talks)}: "
        "VmHWM, seconds per audio hour, DER (0.25 s collar). One run of each.",
    )
    directory = ctx.workdir / "batched-audio"
    directory.mkdir(parents=True, exist_ok=True)

    def recording(seconds: float) -> long_audio.Recording:
        started = time.perf_counter()
        rec = long_audio.build(EVAL_DIR, directory / f"long-{round(seconds)}s.wav", seconds)
        ctx.log(f"  built a {clock(rec.duration_s)} recording in {time.perf_counter() - started:.0f} s")
        return rec

    beam, threads = str(ctx.beam_size), str(ctx.threads)
    # 1. throughput, back to back.
    rec = recording(sizes.throughput)
    arms: dict[int, dict[str, Any]] = {}
    for size in (1, BATCH):
        ctx.log(f"  faster-whisper, batch {size}: {clock(rec.duration_s)} recording")
        arm = _child(ctx, "transcribe", str(rec.path), str(size), threads, beam)
        arm["wer"] = long_audio.wer(rec.reference, arm.pop("text"))
        arm["x_real_time"] = ratio(rec.duration_s, arm["wall_s"])
        arms[size] = arm
        ctx.log(
            f"    {arm['wall_s']:.1f} s ({arm['x_real_time']:.1f}x real time), WER {arm['wer'] * 100:.2f} %"
        )
    speed = ratio(arms[1]["wall_s"], arms[BATCH]["wall_s"])
    cpu_speed = ratio(arms[1]["cpu_s"], arms[BATCH]["cpu_s"])
    wer_pt = (arms[BATCH]["wer"] - arms[1]["wer"]) * 100
    res.data["throughput"] = {
        "recording_s": rec.duration_s,
        "arms": arms,
        "speed_up": speed,
        "cpu_speed_up": cpu_speed,
    }
    table = Table(
        f"faster-whisper int8 on a {clock(rec.duration_s)} recording ({rec.speech_s:.0f} s of speech)",
        ["batch size", "wall s", "CPU s", "x real time", "WER %", "speed-up (wall)", "speed-up (CPU)"],
    )
    for size, arm in arms.items():
        table.rows.append(
            [
                size,
                arm["wall_s"],
                arm["cpu_s"],
                arm["x_real_time"],
                arm["wer"] * 100,
                speed if size == BATCH else None,
                cpu_speed if size == BATCH else None,
            ]
        )
    res.tables.append(table)
    res.targets.append(
        target(f"faster-whisper batch {BATCH} / batch 1 throughput", speed, ">=", SPEED_TARGET, "x")
    )
    res.targets.append(
        target(f"faster-whisper batch {BATCH} WER - batch 1 WER", wer_pt, "<=", WER_MARGIN_PT, " pt")
    )

    # 2. openai-whisper's own batched decode.
    ctx.log("  openai-whisper: whisper.decode one by one and batched")
    openai = _child(ctx, "openai", str(ctx.checkpoint), str(rec.path), beam)
    res.data["openai_whisper"] = openai
    one, many = openai["one_by_one"], openai["batched"]
    joined_one, joined_many = " ".join(one.pop("text")), " ".join(many.pop("text"))
    openai["wer_between"] = long_audio.wer(joined_one, joined_many) if joined_one.strip() else None
    res.tables.append(
        Table(
            f"openai-whisper tiny.en: {openai['windows']} chunk windows through whisper.decode, greedy "
            f"(batched beam {beam}: {openai['batched_beam_search']})",
            ["decode", "wall s", "CPU s", "speed-up (wall)"],
            [
                ["one by one", one["wall_s"], one["cpu_s"], None],
                ["one batch", many["wall_s"], many["cpu_s"], ratio(one["wall_s"], many["wall_s"])],
            ],
        )
    )

    # 3. diarization at any length.
    talks: dict[float, dict[str, Any]] = {}
    for seconds in sizes.talks:
        talk = conversation.build(EVAL_DIR, directory / f"talk-{round(seconds)}s.wav", seconds)
        ctx.log(f"  diarization: {clock(talk.duration_s)} conversation of {len(talk.speakers)} readers")
        run = _child(ctx, "diarize", str(talk.path))
        hypothesis = [tuple(t) for t in run.pop("turns")]
        scores = der_breakdown(talk.reference, hypothesis, collar=0.25)
        run.update(
            audio_s=talk.duration_s,
            der=scores.der,
            speakers=len({t[2] for t in hypothesis}),
            true_speakers=len(talk.speakers),
            s_per_audio_hour=run["wall_s"] / talk.duration_s * 3600,
        )
        talks[seconds] = run
        ctx.log(f"    DER {scores.der * 100:.1f} %, VmHWM {run['vm_hwm_mib']:.0f} MiB, {run['wall_s']:.0f} s")
    res.data["diarization"] = {clock(s): r for s, r in talks.items()}
    base, shorter, longer = (talks[s] for s in sizes.talks)
    res.tables.append(
        Table(
            "Diarization of the readers' conversations "
            "(a fresh process each; VmHWM includes torch and the encoder)",
            ["conversation", "VmHWM MiB", "wall s", "s per audio hour", "DER %", "speakers found / true"],
            [
                [
                    clock(s),
                    r["vm_hwm_mib"],
                    r["wall_s"],
                    r["s_per_audio_hour"],
                    r["der"] * 100,
                    f"{r['speakers']} / {r['true_speakers']}",
                ]
                for s, r in talks.items()
            ],
        )
    )
    label = f"{clock(sizes.talks[2])} - {clock(sizes.talks[1])}"
    res.targets += [
        target(
            f"diarization VmHWM, {label}",
            longer["vm_hwm_mib"] - shorter["vm_hwm_mib"],
            "<=",
            DIARIZATION_MEMORY_TARGET_MIB,
            " MiB",
        ),
        target(
            f"diarization time per audio hour, {clock(sizes.talks[2])} / {clock(sizes.talks[1])}",
            ratio(longer["s_per_audio_hour"], shorter["s_per_audio_hour"]),
            "<=",
            1.0,
            "x",
        ),
    ]
    for seconds, run in ((sizes.talks[1], shorter), (sizes.talks[2], longer)):
        res.targets.append(
            target(
                f"diarization DER {clock(seconds)} - DER {clock(sizes.talks[0])}",
                (run["der"] - base["der"]) * 100,
                "<=",
                DER_MARGIN_PT,
                " pt",
            )
        )
    # 4. memory with batching on.
    memory: dict[str, Any] = {}
    for seconds in (sizes.memory_short, sizes.memory_long):
        rec = recording(seconds)
        ctx.log(f"  faster-whisper, batch {BATCH}, memory: {clock(rec.duration_s)} recording")
        run = _child(ctx, "transcribe", str(rec.path), str(BATCH), threads, beam)
        run["wer"] = long_audio.wer(rec.reference, run.pop("text"))
        run["audio_s"] = rec.duration_s
        memory[clock(seconds)] = run
        ctx.log(f"    VmHWM {run['vm_hwm_mib']:.0f} MiB, {run['wall_s']:.0f} s")
    short, long = memory[clock(sizes.memory_short)], memory[clock(sizes.memory_long)]
    res.data["memory"] = memory
    res.tables.append(
        Table(
            f"Inference process peak RSS with --batch-size {BATCH} (MiB; a fresh process per recording)",
            ["recording", "VmHWM", "wall s", "x real time", "WER %"],
            [
                [name, r["vm_hwm_mib"], r["wall_s"], ratio(r["audio_s"], r["wall_s"]), r["wer"] * 100]
                for name, r in memory.items()
            ],
        )
    )
    res.targets.append(
        target(
            f"inference VmHWM, {clock(sizes.memory_long)} - {clock(sizes.memory_short)}, batched",
            long["vm_hwm_mib"] - short["vm_hwm_mib"],
            "<=",
            MEMORY_TARGET_MIB,
            " MiB",
        )
    )

    return res


if __name__ == "__main__":
    main(sys.argv[1:])
