"""Audio decoding with PyAV (FFmpeg's libraries ship in its wheel; no ffmpeg binary needed).

Every function here is blocking and CPU- or disk-bound: callers run them in an executor.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from service.errors import InvalidAudio, UnsupportedAudio

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects
# How much audio the upload-time probe decodes to prove the file holds real samples.
_PROBE_FRAMES = 8


@dataclass(frozen=True)
class AudioInfo:
    """What the upload-time probe learnt about a file."""

    format_name: str
    codec: str
    duration_s: float | None
    sample_rate: int
    channels: int


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise UnsupportedAudio(
            "The uploaded file is not audio that can be decoded (send WAV, MP3, M4A, FLAC, OGG or WebM)."
        ) from exc


def probe(path: Path) -> AudioInfo:
    """Check that `path` is decodable audio with at least one sample, without decoding it all."""
    with _open(path) as container:
        if not container.streams.audio:
            raise UnsupportedAudio("The uploaded file has no audio stream.")
        stream = container.streams.audio[0]
        samples = 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                samples += frame.samples
                if samples and index >= _PROBE_FRAMES:
                    break
        except av.error.FFmpegError as exc:
            raise UnsupportedAudio(f"The uploaded audio cannot be decoded: {exc}") from exc
        if samples == 0:
            raise InvalidAudio("The uploaded audio contains no samples (zero-length audio).")
        duration: float | None = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / av.time_base
        return AudioInfo(
            format_name=container.format.name,
            codec=stream.codec_context.name,
            duration_s=duration,
            sample_rate=stream.codec_context.sample_rate or 0,
            channels=stream.codec_context.channels or 0,
        )


def decode(path: Path) -> np.ndarray:
    """Decode the first audio stream to 16 kHz mono float32 in [-1, 1], as Whisper expects."""
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise UnsupportedAudio("The file has no audio stream.")
        stream = container.streams.audio[0]
        try:
            for frame in container.decode(stream):
                frame.pts = None  # let the resampler keep its own clock across odd timestamps
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(-1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(-1))
        except av.error.FFmpegError as exc:
            raise UnsupportedAudio(f"The audio cannot be decoded: {exc}") from exc
    if not chunks:
        raise InvalidAudio("The audio contains no samples.")
    pcm = np.concatenate(chunks)
    if pcm.size == 0:
        raise InvalidAudio("The audio contains no samples.")
    return pcm.astype(np.float32) / 32768.0


def decode_channels(path: Path) -> np.ndarray:
    """Decode the first audio stream to 16 kHz float32 keeping its channels: shape (channels, samples).

    For recordings with one speaker per channel (calls), which are transcribed channel by channel.
    """
    chunks: list[np.ndarray] = []
    with _open(path) as container:
        if not container.streams.audio:
            raise UnsupportedAudio("The file has no audio stream.")
        stream = container.streams.audio[0]
        channels = stream.codec_context.channels or 1
        # Planar output keeps each channel in its own row, whatever the source layout.
        layout = stream.codec_context.layout.name if channels > 1 else "mono"
        resampler = av.AudioResampler(format="s16p", layout=layout, rate=SAMPLE_RATE)
        try:
            for frame in container.decode(stream):
                frame.pts = None
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().reshape(channels, -1))
            for out in resampler.resample(None):
                chunks.append(out.to_ndarray().reshape(channels, -1))
        except av.error.FFmpegError as exc:
            raise UnsupportedAudio(f"The audio cannot be decoded: {exc}") from exc
    if not chunks or sum(chunk.shape[1] for chunk in chunks) == 0:
        raise InvalidAudio("The audio contains no samples.")
    return np.concatenate(chunks, axis=1).astype(np.float32) / 32768.0
