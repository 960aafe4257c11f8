"""Audio decoding with PyAV (FFmpeg's libraries ship in its wheel; no ffmpeg binary needed).

Every function here is blocking and CPU- or disk-bound: callers run them in an executor.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from service.errors import InvalidAudio, UnsupportedAudio

SAMPLE_RATE = 16_000  # what Whisper's feature extractor expects
# How much audio the upload-time probe decodes to prove the file holds real samples.
_PROBE_FRAMES = 8
# Parameters no real recording has: a forged header (a sample rate of 1 turns 90 KB into hours).
MIN_SAMPLE_RATE = 1_000
MAX_CHANNELS = 64


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
        rate = stream.codec_context.sample_rate or 0
        if 0 < rate < MIN_SAMPLE_RATE:
            raise UnsupportedAudio(
                f"The uploaded audio declares a sample rate of {rate} Hz; real recordings use "
                f"{MIN_SAMPLE_RATE} Hz or more (8000 to 48000 are usual). The file's header is damaged."
            )
        if (stream.codec_context.channels or 0) > MAX_CHANNELS:
            raise UnsupportedAudio(
                f"The uploaded audio declares {stream.codec_context.channels} channels; "
                f"at most {MAX_CHANNELS} are accepted."
            )
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


class AudioStream:
    """A recording decoded block by block: 16 kHz float32 blocks of `block_s` seconds (the last
    one shorter), one channel (mixed down, or the one asked for), never the whole file at once.

    Packets that do not decode (a damaged stretch, junk appended) are skipped the way players
    skip them, and counted; the stream fails only when nothing at all decodes.
    """

    def __init__(self, path: Path, block_s: float = 30.0, channel: int | None = None) -> None:
        self.path = path
        self.block_samples = max(1, int(block_s * SAMPLE_RATE))
        self.channel = channel
        self.samples = 0  # decoded so far
        self.skipped_packets = 0
        self.skipped_s = 0.0  # the audio those packets held, where the container says
        self.declared_s: float | None = None
        with _open(path) as container:
            if not container.streams.audio:
                raise UnsupportedAudio("The file has no audio stream.")
            stream = container.streams.audio[0]
            if stream.duration is not None and stream.time_base is not None:
                self.declared_s = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                self.declared_s = container.duration / av.time_base
            self.channels = stream.codec_context.channels or 1

    @property
    def seconds(self) -> float:
        return self.samples / SAMPLE_RATE

    def _resampler(self, stream: av.audio.stream.AudioStream) -> av.AudioResampler:
        if self.channel is None or self.channels == 1:
            return av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
        layout = stream.codec_context.layout.name
        return av.AudioResampler(format="s16p", layout=layout, rate=SAMPLE_RATE)

    def _pick(self, frame: av.AudioFrame) -> np.ndarray:
        raw = frame.to_ndarray()
        if self.channel is None or self.channels == 1:
            return raw.reshape(-1)
        return raw.reshape(self.channels, -1)[self.channel]

    def _frames(self) -> Iterator[np.ndarray]:
        with _open(self.path) as container:
            stream = container.streams.audio[0]
            resampler = self._resampler(stream)
            packets = container.demux(stream)
            while True:
                try:
                    packet = next(packets)
                except StopIteration:
                    break
                except av.error.FFmpegError:
                    self.skipped_packets += 1  # the container itself is damaged from here on
                    break
                try:
                    frames = packet.decode()
                except av.error.FFmpegError:
                    self.skipped_packets += 1
                    if packet.duration and packet.time_base:
                        self.skipped_s += float(packet.duration * packet.time_base)
                    continue
                for frame in frames:
                    frame.pts = None  # the resampler keeps its own clock across odd timestamps
                    try:
                        outs = resampler.resample(frame)
                    except ValueError:
                        # The frame's rate or layout differs from the stream's so far: junk
                        # that parsed as a frame header, or a recording joined from parts.
                        if self.channel is not None and self.channels > 1:
                            self.skipped_packets += 1  # one channel of a changed layout: unknowable
                            self.skipped_s += frame.samples / (frame.sample_rate or SAMPLE_RATE)
                            continue
                        for out in resampler.resample(None):
                            yield self._pick(out)
                        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
                        outs = resampler.resample(frame)
                    for out in outs:
                        yield self._pick(out)
            for out in resampler.resample(None):
                yield self._pick(out)

    def __iter__(self) -> Iterator[np.ndarray]:
        """Blocks of exactly `block_samples` (the last may be shorter), float32 in [-1, 1]."""
        pending: list[np.ndarray] = []
        held = 0
        for piece in self._frames():
            pending.append(piece)
            held += piece.size
            while held >= self.block_samples:
                joined = np.concatenate(pending)
                block, rest = joined[: self.block_samples], joined[self.block_samples :]
                pending, held = ([rest] if rest.size else []), rest.size
                self.samples += block.size
                yield block.astype(np.float32) / 32768.0
        if held:
            block = np.concatenate(pending)
            self.samples += block.size
            yield block.astype(np.float32) / 32768.0
        if self.samples == 0:
            raise InvalidAudio("The audio contains no samples that could be decoded.")
