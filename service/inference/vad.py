"""Speech detection with Silero VAD, block by block, so hours of audio never sit in memory at once.

The ONNX weights ship inside faster-whisper's wheel (a dependency of the service), and run on
onnxruntime with one thread: about a thousand times faster than real time on one core.
The network keeps state between 32 ms frames; this wrapper carries it across blocks, so a
recording fed in pieces scores exactly as if it were scored whole.
"""

from __future__ import annotations

import functools
import os
from typing import Any

import numpy as np

FRAME_SAMPLES = 512  # 32 ms at 16 kHz: Silero's frame
_CONTEXT_SAMPLES = 64  # the tail of the previous frame each frame is scored with
_BATCH_FRAMES = 4096


@functools.lru_cache(maxsize=1)
def _session() -> Any:
    import onnxruntime
    from faster_whisper.utils import get_assets_path

    options = onnxruntime.SessionOptions()
    options.inter_op_num_threads = 1
    options.intra_op_num_threads = 1
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 4
    path = os.path.join(get_assets_path(), "silero_vad_v6.onnx")
    return onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"], sess_options=options)


def load() -> None:
    """Load the detector now (milliseconds), at start-up: the first job does not wait for it."""
    _session()


class FrameScorer:
    """A score per 32 ms frame of a 16 kHz mono stream, fed in blocks of any size: samples
    short of a whole frame wait for the next block."""

    def __init__(self) -> None:
        self._carry = np.zeros(0, dtype=np.float32)

    def feed(self, block: np.ndarray) -> np.ndarray:
        """Scores for every whole frame completed by `block` (float32, 16 kHz)."""
        samples = np.concatenate((self._carry, block)) if self._carry.size else block
        whole = samples.size - samples.size % FRAME_SAMPLES
        self._carry = samples[whole:].copy()
        if whole == 0:
            return np.zeros(0, dtype=np.float32)
        return self._score(samples[:whole])

    def flush(self) -> np.ndarray:
        """The last partial frame, padded with silence (none if the stream ended on a frame)."""
        if not self._carry.size:
            return np.zeros(0, dtype=np.float32)
        frame = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        frame[: self._carry.size] = self._carry
        self._carry = np.zeros(0, dtype=np.float32)
        return self._score(frame)

    def _score(self, samples: np.ndarray) -> np.ndarray:
        """Whole frames in, one score each out."""
        raise NotImplementedError


class SpeechDetector(FrameScorer):
    """Speech probability per frame, from Silero VAD."""

    def __init__(self) -> None:
        super().__init__()
        self._session = _session()
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(_CONTEXT_SAMPLES, dtype=np.float32)

    def _score(self, samples: np.ndarray) -> np.ndarray:
        frames = samples.reshape(-1, FRAME_SAMPLES)
        # Each frame is scored with the last 64 samples before it.
        context = np.empty((frames.shape[0], _CONTEXT_SAMPLES), dtype=np.float32)
        context[0] = self._context
        context[1:] = frames[:-1, -_CONTEXT_SAMPLES:]
        self._context = frames[-1, -_CONTEXT_SAMPLES:].copy()
        batch = np.concatenate((context, frames), axis=1)
        out = []
        for i in range(0, batch.shape[0], _BATCH_FRAMES):
            probs, self._h, self._c = self._session.run(
                None, {"input": batch[i : i + _BATCH_FRAMES], "h": self._h, "c": self._c}
            )
            out.append(np.asarray(probs, dtype=np.float32).reshape(-1))
        return np.concatenate(out)


class Loudness(FrameScorer):
    """Stands in for the detector when speech detection is off: every frame scores as speech,
    and quieter frames score lower, so forced cuts land where the recording is quietest."""

    def _score(self, samples: np.ndarray) -> np.ndarray:
        rms = np.sqrt(np.mean(samples.reshape(-1, FRAME_SAMPLES) ** 2, axis=1))
        return (0.9 + 0.1 * np.minimum(rms / 0.1, 1.0)).astype(np.float32)
