"""Speaker embeddings from Resemblyzer's voice encoder, with only its weights taken from the package.

The `resemblyzer` wheel ships its trained encoder (`pretrained.pt`, 17 MB), so nothing is
downloaded. Its own module is not imported: that would pull librosa (whose numba-compiled STFT
costs seconds on the first call of every process) and webrtcvad (a C extension built from
source). The network is small and standard (3 LSTM layers, 256 units, a ReLU projection,
L2-normalised output) and its 40-band power mel spectrogram is computed here with numpy, to the
same definition (25 ms Hann window, 10 ms hop, Slaney mel scale and area normalisation).

torch comes in with the network (service/diarization/network.py) when the encoder loads, so
importing the diarization package costs no torch (the HTTP process validates diarization
options with it; only the inference process diarizes).
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from service.diarization.network import Network

SAMPLE_RATE = 16_000
N_FFT = 400  # 25 ms
HOP = 160  # 10 ms: one mel frame per 10 ms
N_MELS = 40
WINDOW_FRAMES = 160  # 1.6 s, the length the encoder was trained on
_BUCKET = 16  # window lengths are multiples of this many frames (few shapes: see `embed`)
EMBEDDING_SIZE = 256
# The encoder was trained on utterances normalised to this loudness (louder ones left alone).
TARGET_DBFS = -30.0


class EncoderUnavailable(RuntimeError):
    """The resemblyzer package (which holds the encoder's weights) is not installed."""


def weights_path() -> Path:
    """Where the installed resemblyzer package keeps its trained encoder, found without importing it."""
    spec = importlib.util.find_spec("resemblyzer")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(
            "Speaker diarization needs the encoder weights from the 'resemblyzer' package: "
            "pip install --no-deps resemblyzer"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"
    if not path.is_file():
        raise EncoderUnavailable(f"The resemblyzer package has no encoder weights at {path}.")
    return path


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear to 1 kHz (3 mels per 200 Hz), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    mel = hz / (200.0 / 3)
    log_region = hz >= 1000.0
    step = np.log(6.4) / 27.0
    mel[log_region] = 15.0 + np.log(hz[log_region] / 1000.0) / step
    return mel


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    mel = np.asarray(mel, dtype=np.float64)
    hz = mel * (200.0 / 3)
    log_region = mel >= 15.0
    step = np.log(6.4) / 27.0
    hz[log_region] = 1000.0 * np.exp(step * (mel[log_region] - 15.0))
    return hz


def mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> np.ndarray:
    """Triangular filters on the Slaney mel scale, each scaled to unit area: shape (n_mels, n_fft//2+1)."""
    fft_hz = np.linspace(0.0, sample_rate / 2, 1 + n_fft // 2)
    edges = _mel_to_hz(
        np.linspace(_hz_to_mel(np.array([0.0]))[0], _hz_to_mel(np.array([sample_rate / 2]))[0], n_mels + 2)
    )
    bank = np.zeros((n_mels, fft_hz.size))
    for band in range(n_mels):
        low, centre, high = edges[band], edges[band + 1], edges[band + 2]
        rising = (fft_hz - low) / (centre - low)
        falling = (high - fft_hz) / (high - centre)
        bank[band] = np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (high - low))
    return bank.astype(np.float32)


_FILTERBANK = mel_filterbank()
_WINDOW = (0.5 - 0.5 * np.cos(2 * np.pi * np.arange(N_FFT) / N_FFT)).astype(np.float32)  # periodic Hann


def mel_spectrogram(pcm: np.ndarray) -> np.ndarray:
    """Power mel spectrogram (not log), frames centred every 10 ms: shape (1 + len // 160, 40)."""
    padded = np.pad(pcm.astype(np.float32), N_FFT // 2)
    n_frames = 1 + (len(padded) - N_FFT) // HOP
    if n_frames <= 0:
        return np.zeros((0, N_MELS), dtype=np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(padded, N_FFT)[::HOP][:n_frames]
    power = np.abs(np.fft.rfft(frames * _WINDOW, axis=1)) ** 2
    return (power.astype(np.float32) @ _FILTERBANK.T).astype(np.float32)


def normalize_loudness(pcm: np.ndarray, target_dbfs: float = TARGET_DBFS) -> np.ndarray:
    """Raise quiet audio to the loudness the encoder was trained on; leave loud audio alone."""
    rms = float(np.sqrt(np.mean(np.square(pcm, dtype=np.float64)))) if pcm.size else 0.0
    if rms <= 1e-8:
        return pcm
    gain_db = target_dbfs - 20 * np.log10(rms)
    if gain_db <= 0:
        return pcm
    return (pcm * 10 ** (gain_db / 20)).astype(np.float32)


class SpeakerEncoder:
    """Loads the weights once; embeds batches of mel windows. Safe to call from several threads."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self._network: Network | None = None
        self._lock = threading.Lock()

    def load(self) -> None:
        with self._lock:
            if self._network is not None:
                return
            import torch

            from service.diarization.network import Network

            checkpoint = torch.load(weights_path(), map_location="cpu", weights_only=True)
            state = {k: v for k, v in checkpoint["model_state"].items() if not k.startswith("similarity_")}
            network = Network()
            network.load_state_dict(state)
            network.eval()
            self._network = network.to(self.device)

    def embed(self, mel_windows: list[np.ndarray], batch_size: int = 128) -> np.ndarray:
        """One L2-normalised 256-d embedding per window of mel frames (at most WINDOW_FRAMES used).

        Window lengths are cut down to a multiple of 16 frames (their centre is kept) and batches
        rounded up to a power of two: every call then reuses a few tensor shapes, and the CPU
        kernels, prepared once per shape (seconds each time otherwise), stay warm.
        """
        self.load()
        assert self._network is not None
        import torch  # loaded with the network: a dictionary lookup now

        out = np.zeros((len(mel_windows), EMBEDDING_SIZE), dtype=np.float32)
        by_length: dict[int, list[int]] = {}
        for index, window in enumerate(mel_windows):
            length = max(_BUCKET, min(len(window), WINDOW_FRAMES) // _BUCKET * _BUCKET)
            by_length.setdefault(length, []).append(index)
        with torch.inference_mode():
            for length, indices in by_length.items():
                for start in range(0, len(indices), batch_size):
                    chunk = indices[start : start + batch_size]
                    batch = np.zeros((1 << (len(chunk) - 1).bit_length(), length, N_MELS), dtype=np.float32)
                    for row, index in enumerate(chunk):
                        window = mel_windows[index]
                        skip = max(0, (len(window) - length) // 2)
                        piece = window[skip : skip + length]
                        batch[row, length - len(piece) :] = piece
                    embedded = self._network(torch.from_numpy(batch).to(self.device)).cpu().numpy()
                    out[chunk] = embedded[: len(chunk)]
        return out
