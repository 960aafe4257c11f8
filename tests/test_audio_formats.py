"""Each container a user is likely to send decodes in-process and transcribes correctly.

The files are made here from a real recording with PyAV's encoders (mp3, m4a/AAC, ogg/Opus,
webm/Opus, flac, 8-bit and 44.1 kHz stereo WAV), so each goes through a real codec.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
from conftest import eval_clip, reference_text, word_error_rate

from service.engines.base import DecodeOptions
from service.inference import audio

CLIP = "sense_and_sensibility_01_austen_64kb-0890.wav"  # 5.3 s of read speech


def encode(pcm: np.ndarray, path: Path, fmt: str, codec: str, rate: int, layout: str = "mono") -> Path:
    """Encode float mono 16 kHz samples into `path` with a real encoder."""
    resampler = av.AudioResampler(format="s16", layout=layout, rate=rate)
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = layout  # type: ignore[union-attr]
        source = av.AudioFrame.from_ndarray(
            (pcm * 32767).astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        source.sample_rate = 16_000
        source.time_base = Fraction(1, 16_000)
        source.pts = 0
        for frame in resampler.resample(source) + resampler.resample(None):
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                container.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            container.mux(packet)
    return path


FORMATS = [
    ("clip.mp3", "mp3", "libmp3lame", 16_000, "mono"),
    ("clip.m4a", "ipod", "aac", 16_000, "mono"),
    ("clip.ogg", "ogg", "libopus", 48_000, "mono"),
    ("clip.webm", "webm", "libopus", 48_000, "stereo"),
    ("clip.flac", "flac", "flac", 16_000, "mono"),
    ("clip-44k-stereo.wav", "wav", "pcm_s16le", 44_100, "stereo"),
    ("clip-8bit.wav", "wav", "pcm_u8", 16_000, "mono"),
]


@pytest.fixture(scope="module")
def source_pcm() -> np.ndarray:
    return audio.decode(eval_clip(CLIP))


@pytest.mark.parametrize(("name", "fmt", "codec", "rate", "layout"), FORMATS, ids=[f[0] for f in FORMATS])
def test_format_decodes_and_transcribes(
    tmp_path: Path,
    source_pcm: np.ndarray,
    real_engine: Any,
    name: str,
    fmt: str,
    codec: str,
    rate: int,
    layout: str,
) -> None:
    path = encode(source_pcm, tmp_path / name, fmt, codec, rate, layout)
    info = audio.probe(path)
    assert info.channels == (2 if layout == "stereo" else 1)
    pcm = audio.decode(path)
    assert pcm.dtype == np.float32 and pcm.ndim == 1
    # Encoders add priming and padding; the length stays within a few codec frames.
    assert abs(len(pcm) / 16_000 - len(source_pcm) / 16_000) < 0.1
    assert np.abs(pcm).max() <= 1.0
    result = real_engine.transcribe(real_engine.load("tiny.en"), pcm, DecodeOptions(), lambda _: None)
    assert word_error_rate(reference_text(CLIP), result.text) < 0.25, result.text


@pytest.mark.parametrize(("fmt", "codec", "rate"), [("wav", "pcm_s16le", 44_100), ("flac", "flac", 16_000)])
def test_decode_channels_keeps_each_channel(
    tmp_path: Path, source_pcm: np.ndarray, fmt: str, codec: str, rate: int
) -> None:
    """Speech on the left, silence on the right: the channels come back apart, in order."""
    stereo = np.stack([source_pcm, np.zeros_like(source_pcm)])
    path = tmp_path / f"left-only.{fmt}"
    resampler = av.AudioResampler(format="s16", layout="stereo", rate=rate)
    with av.open(str(path), mode="w", format=fmt) as container:
        stream = container.add_stream(codec, rate=rate)
        stream.layout = "stereo"  # type: ignore[union-attr]
        source = av.AudioFrame.from_ndarray(
            (stereo.T.reshape(1, -1) * 32767).astype(np.int16), format="s16", layout="stereo"
        )
        source.sample_rate = 16_000
        source.time_base = Fraction(1, 16_000)
        source.pts = 0
        for frame in resampler.resample(source) + resampler.resample(None):
            for packet in stream.encode(frame):  # type: ignore[union-attr]
                container.mux(packet)
        for packet in stream.encode(None):  # type: ignore[union-attr]
            container.mux(packet)
    channels = audio.decode_channels(path)
    assert channels.dtype == np.float32 and channels.shape[0] == 2
    assert abs(channels.shape[1] - len(source_pcm)) < 0.01 * 16_000
    n = min(channels.shape[1], len(source_pcm))
    assert np.corrcoef(channels[0, :n], source_pcm[:n])[0, 1] > 0.99
    assert np.abs(channels[1]).max() < 1e-3
    mono = audio.decode(path)
    assert np.abs(mono[:n] - channels[:, :n].mean(axis=0)).max() < 1e-3
    # The streamed decoder picks the same channels, block by block.
    for index in (0, 1):
        streamed = np.concatenate(list(audio.AudioStream(path, block_s=1.5, channel=index)))
        assert np.array_equal(streamed, channels[index])
    assert audio.AudioStream(path).channels == 2


def test_decode_channels_of_a_mono_file(source_pcm: np.ndarray) -> None:
    channels = audio.decode_channels(eval_clip(CLIP))
    assert channels.shape == (1, len(source_pcm))
    assert np.array_equal(channels[0], source_pcm)
