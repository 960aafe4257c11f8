"""Speech regions: where someone is talking, so that embeddings come from speech only.

Two detectors, chosen by measurement (scripts/bench_diarization.py):
- `silero`: Silero VAD v6, the ONNX model that faster-whisper (already a dependency) ships in
  its wheel, run through faster-whisper's own helper. The `silero-vad` package holds the same
  model but calls `torch.set_num_threads(1)` when imported, which would slow the whole service.
- `webrtc`: WebRTC's GMM detector (`webrtcvad-wheels`, optional), 30 ms frames, smoothed here.
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000
VAD_METHODS = ("silero", "webrtc")


def speech_regions(
    pcm: np.ndarray, method: str = "silero", threshold: float = 0.35, pad_s: float = 0.06
) -> list[tuple[float, float]]:
    """Sorted, disjoint (start, end) spans of speech, in seconds (`threshold`, `pad_s`: silero only)."""
    if method == "silero":
        regions = _silero(pcm, threshold, pad_s)
    elif method == "webrtc":
        regions = _webrtc(pcm)
    else:
        raise ValueError(f"Unknown VAD {method!r}; use one of {', '.join(VAD_METHODS)}.")
    return merge_close(regions, gap=0.0)


def merge_close(regions: list[tuple[float, float]], gap: float) -> list[tuple[float, float]]:
    """Join spans separated by at most `gap` seconds (and any that overlap)."""
    merged: list[tuple[float, float]] = []
    for start, end in sorted(regions):
        if merged and start - merged[-1][1] <= gap:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def _silero(pcm: np.ndarray, threshold: float, pad_s: float) -> list[tuple[float, float]]:
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    # Short pads and silences: turns between speakers are often separated by a fraction of a second.
    options = VadOptions(
        threshold=threshold,
        min_speech_duration_ms=200,
        min_silence_duration_ms=250,
        speech_pad_ms=round(pad_s * 1000),
    )
    spans = get_speech_timestamps(pcm.astype(np.float32), options, sampling_rate=SAMPLE_RATE)
    return [(span["start"] / SAMPLE_RATE, span["end"] / SAMPLE_RATE) for span in spans]


def _webrtc(pcm: np.ndarray, aggressiveness: int = 3) -> list[tuple[float, float]]:
    try:
        import webrtcvad
    except ImportError as exc:
        raise RuntimeError("The webrtc VAD needs the webrtcvad-wheels package.") from exc
    frame = SAMPLE_RATE * 30 // 1000
    data = (np.clip(pcm, -1.0, 1.0) * 32767).astype("<i2")
    vad = webrtcvad.Vad(aggressiveness)
    flags = np.array(
        [
            vad.is_speech(data[i : i + frame].tobytes(), SAMPLE_RATE)
            for i in range(0, len(data) - frame + 1, frame)
        ],
        dtype=bool,
    )
    if not flags.size:
        return []
    # A majority vote over 5 frames (150 ms) removes isolated flips; 2 frames of padding each side.
    votes = np.convolve(flags.astype(np.float32), np.ones(5) / 5, mode="same") >= 0.5
    regions: list[tuple[float, float]] = []
    start: int | None = None
    for index, on in enumerate([*votes.tolist(), False]):
        if on and start is None:
            start = index
        elif not on and start is not None:
            regions.append((max(0, start - 2) * 0.03, min(len(votes), index + 2) * 0.03))
            start = None
    regions = merge_close(regions, gap=0.25)
    return [(s, e) for s, e in regions if e - s >= 0.2]
